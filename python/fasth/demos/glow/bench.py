"""``python -m fasth glow --bench``: forward (log-likelihood), inverse (sampling) and forward +
backward of the torch Glow with the ``plain``, ``lu`` and ``svd`` 1x1 convolutions on
CIFAR-10-shaped input, for the whole model and for its 1x1 convolutions alone (each run on
the activations it sees inside the model, each level's matrices built in one batched call
as the model does, or with ``--per-step`` one step at a time, as openai/glow does). All
cells are measured in one run, interleaved within every repeat (``fasth.bench.timing``); the
table gives medians and the ratios to ``svd``, repeat by repeat."""

from __future__ import annotations

from fasth.bench.timing import interleaved, median_ms, ratio, sync_for

GPU_SIZES = dict(levels=3, steps=32, width=512, batch_size=64)
CPU_SIZES = dict(levels=3, steps=4, width=64, batch_size=64)
GPU_REPEATS, CPU_REPEATS = 20, 15  # small CPU timings are noisy, but take longer
COLUMNS = ("forward", "inverse", "fwd+bwd")


def run(args) -> dict:
    """Prints the table; returns the medians in ms, ``{(row, column, conv): ms}``."""
    import torch

    from . import with_sizes
    from .flow import CONVS
    from .torch_convs import InvConv, conv_inverse_weights, conv_weights
    from .torch_model import Glow

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    args = with_sizes(args, GPU_SIZES if device.type == "cuda" else CPU_SIZES)
    repeats = args.repeats or (GPU_REPEATS if device.type == "cuda" else CPU_REPEATS)
    shape, n = (3, 32, 32), args.batch_size
    torch.manual_seed(0)
    x = torch.rand(n, *shape, device=device) - 0.5
    models = {}
    for kind in CONVS:
        m = Glow(shape, args.levels, args.steps, args.width, kind, seed=args.seed,
                 batch_levels=not args.per_step).to(device)
        m.initialize(x)
        models[kind] = m

    # The activations each 1x1 conv sees in the model (and a cotangent for its output).
    conv_in: dict[str, list] = {k: [] for k in CONVS}
    for kind, m in models.items():
        hs = [c.register_forward_hook(lambda mod, inp, out, k=kind: conv_in[k].append(inp[0].detach()))
              for c in m.modules() if isinstance(c, InvConv)]
        with torch.no_grad():
            m(x)
        for h in hs:
            h.remove()
    levels = {k: m.convs() for k, m in models.items()}
    convs = {k: [c for level in ls for c in level] for k, ls in levels.items()}
    conv_out = {k: [c(xi, xi.new_zeros(()))[0].detach() for c, xi in zip(convs[k], conv_in[k])]
                for k in CONVS}

    def by_level(k, acts):  # (level's convs, their activations); one conv a time per step
        i = 0
        for level in levels[k]:
            for part in ([[c] for c in level] if args.per_step else [level]):
                yield part, acts[i:i + len(part)]
                i += len(part)

    def model_fwd(k):
        with torch.no_grad():
            models[k](x)

    def model_inv(k):
        with torch.no_grad():
            models[k].sample(n, 1.0)

    def model_fwdbwd(k):
        m = models[k]
        m.zero_grad(set_to_none=True)
        (-m(x).mean()).backward()

    def conv_fwd(k):
        with torch.no_grad():
            for level, xs in by_level(k, conv_in[k]):
                W, lad = conv_weights(level)
                for j, (c, xi) in enumerate(zip(level, xs)):
                    c(xi, xi.new_zeros(()), (W[j], lad[j]))

    def conv_inv(k):
        with torch.no_grad():
            for level, ys in by_level(k, conv_out[k]):
                Winv = conv_inverse_weights(level)
                for j, (c, yi) in enumerate(zip(level, ys)):
                    c.inverse(yi, Winv[j])

    def conv_fwdbwd(k):
        loss = 0
        for level, xs in by_level(k, conv_in[k]):
            W, lad = conv_weights(level)
            for j, (c, xi) in enumerate(zip(level, xs)):
                xi = xi.requires_grad_()
                y, ld = c(xi, xi.new_zeros(()), (W[j], lad[j]))
                loss = loss + y.mean() + ld
        loss.backward()

    rows = {"model": (model_fwd, model_inv, model_fwdbwd), "1x1 convs": (conv_fwd, conv_inv, conv_fwdbwd)}
    how = "one step at a time" if args.per_step else "one batched call per scale"
    print(f"Glow bench on {device} ({torch.get_num_threads()} threads): batch {n}, 3x32x32, "
          f"{args.levels} scales (L) of {args.steps} steps (K), width {args.width}, 1x1-conv matrices {how}; "
          f"{repeats} interleaved repeats, medians "
          f"({len(convs['svd'])} 1x1 convs of {sorted({c.c for c in convs['svd']})} channels)", flush=True)
    cells = {(r, col, k): (lambda fn=fn, k=k: fn(k))
             for r, fns in rows.items() for col, fn in zip(COLUMNS, fns) for k in CONVS}
    times = interleaved(cells, repeats, sync=sync_for(device))
    med = {key: median_ms(t) for key, t in times.items()}
    head = f"{'':<10} {'conv':<10}" + "".join(f"{c + ' ms':>14}" for c in COLUMNS)
    print(head)
    print("-" * len(head))
    for r in rows:
        for k in CONVS:
            print(f"{r:<10} {k:<10}" + "".join(f"{med[r, c, k]:>14.2f}" for c in COLUMNS))
        for k in ("plain", "lu"):
            print(f"{r:<10} {k + '/svd':<10}" + "".join(
                f"{ratio(times[r, c, k], times[r, c, 'svd'])['median']:>13.2f}x" for c in COLUMNS))
    return med
