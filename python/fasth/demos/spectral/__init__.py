"""``python -m fasth spectral``: exact spectral normalisation against power iteration.

On scikit-learn's digits (built in, no download), each experiment trained twice, with
power-iteration spectral norm (one iteration per step, as
``torch.nn.utils.parametrizations.spectral_norm``) and with fasth's exact layers:

1. a Lipschitz classifier (dense layers, MaxMin activations): test accuracy, every layer's
   TRUE spectral norm measured afterwards by a dense SVD of the weight the model actually
   uses, the network's Lipschitz bound (product of true norms), certified accuracy at a few
   L2 radii (correct with ``margin / (sqrt(2) * L) > radius``), time per training step;
2. an i-ResNet (blocks ``x + g(x)``, ``g`` built to be ``0.9``-Lipschitz): inversion by
   fixed-point iteration, iterations and reconstruction error, each block's true Lipschitz
   bound.

Then a time-per-step comparison on one network at ``n = 4d``, ``16d``, ``32d`` and ``d/4``.
Prints a table, writes ``spectral.png`` (claimed vs true norm per layer over training) and
``spectral.json`` to ``--out``."""

from __future__ import annotations

import argparse
import json
import math
import os
import sys

import numpy as np

from fasth._cli import check_device
from fasth.bench.timing import interleaved, median_ms, ratio, time_once

RADII = (0.1, 0.25, 0.5)
BOUND_IRESNET = 0.9

METHODS = ("power", "fasth")


def steps_per_run(args, n_train: int) -> int:
    return args.epochs * (n_train // args.batch)


# Untimed-for-the-median steps before the timed ones: the first compiles (JAX) or allocates.
WARMUP_STEPS = 3


def collect(framework: str, device: str, data, args, run_classifier, run_iresnet,
            timing_step) -> dict:
    """The demo's three parts for one framework: the classifier and the i-ResNet trained with
    each method, then the time per step at n = 4d, 16d, 32d and d/4, the methods interleaved
    (``timing_step(method, d, n)`` gives one synchronised training step of the timing network)."""
    from tqdm.auto import tqdm

    d = args.timing_width
    shapes = [(d, 4 * d), (d, 16 * d), (d, 32 * d), (d, d // 4)]
    total = 4 * steps_per_run(args, data[0].shape[0]) + len(shapes)
    bar = None if args.no_progress else tqdm(total=total, desc=f"spectral ({framework})", unit="step")
    res = {"framework": framework, "device": device, "classifier": {}, "iresnet": {}, "timing": []}

    def note(text: str) -> None:
        if bar is not None:
            bar.set_postfix_str(text)

    for m in METHODS:
        note(f"classifier/{m}")
        res["classifier"][m], dims, _ = run_classifier(m, data, args, bar)
    res["classifier"]["arch"] = "->".join(map(str, dims)) + " (MaxMin)"
    for m in METHODS:
        note(f"i-ResNet/{m}")
        res["iresnet"][m], arch, _ = run_iresnet(m, data, args, bar)
    res["iresnet"]["arch"] = arch
    for dd, n in shapes:
        note(f"timing n={n}")
        t = interleaved({m: timing_step(m, dd, n) for m in METHODS}, args.timing_steps,
                        warmup=WARMUP_STEPS)
        res["timing"].append({"d": dd, "n": n, **{f"{m}_ms": median_ms(t[m]) for m in METHODS},
                              "fasth_over_power": ratio(t["fasth"], t["power"])["median"]})
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    return res


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m fasth spectral", description=__doc__.split("\n\n")[0])
    p.add_argument("--framework", choices=("torch", "jax"), default="torch")
    p.add_argument("--epochs", type=int, default=30, help="epochs of each training run")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--lr", type=float, default=3e-3, help="Adam learning rate")
    p.add_argument("--width", type=int, default=256, help="hidden width of the classifier")
    p.add_argument("--blocks", type=int, default=3, help="residual blocks of the i-ResNet")
    p.add_argument("--timing-width", type=int, default=256, help="d of the timing network")
    p.add_argument("--timing-steps", type=int, default=20)
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="spectral_out", help="directory for spectral.png / spectral.json")
    p.add_argument("--no-progress", action="store_true")
    return p


def load_digits(seed: int):
    """Digits scaled to [0, 1] as float32 (N, 64), split 80/20."""
    from sklearn.datasets import load_digits as _load

    X, y = _load(return_X_y=True)
    X = (X / 16.0).astype(np.float32)
    y = y.astype(np.int64)
    perm = np.random.default_rng(seed).permutation(len(y))
    cut = int(0.8 * len(y))
    tr, te = perm[:cut], perm[cut:]
    return X[tr], y[tr], X[te], y[te]


def certified(margins: np.ndarray, correct: np.ndarray, lipschitz: float) -> dict[str, float]:
    """Fraction correct and certified at each radius: ``margin / (sqrt(2) L) > radius``."""
    radius = margins / (np.sqrt(2.0) * lipschitz)
    return {str(r): float(np.mean(correct & (radius > r))) for r in RADII}


def train_loop(batch, step, n: int, args, bar, order, norms, *, skip_first: bool = False,
               log_every: int = 5) -> tuple[float, dict]:
    """Both frameworks' training loop: ``args.epochs`` epochs of ``args.batch`` rows in the
    order ``order()`` gives (a permutation of ``range(n)``); ``batch(idx)`` gathers a batch,
    ``step(*batch)`` runs one synchronised optimiser step (timed); ``norms()`` gives the
    (true, claimed) norms of the spectral layers, logged every ``log_every`` steps. Returns
    the median ms per step (the first, compiling step left out with ``skip_first``) and the
    norm history."""
    hist: dict[str, list] = {"step": [], "true": [], "claimed": []}
    times: list[float] = []
    count = 0

    def log() -> None:
        true, claimed = norms()
        hist["step"].append(count)
        hist["true"].append(true)
        hist["claimed"].append(claimed)

    log()
    for _ in range(args.epochs):
        perm = order()
        for i in range(0, n - args.batch + 1, args.batch):
            b = batch(perm[i:i + args.batch])
            times.append(time_once(lambda: step(*b)))
            count += 1
            if bar is not None:
                bar.update(1)
            if count % log_every == 0:
                log()
    if hist["step"][-1] != count:
        log()
    timed = times[1:] if skip_first else times
    return median_ms(timed or times), hist


def fixed_point(update, x, change, tol: float = 1e-5, max_iter: int = 200):
    """Iterates ``x = update(x)`` until ``change(new, old)`` (a float: the largest row move
    relative to the row's scale) falls below ``tol``; ``(x, iterations, converged)``."""
    for it in range(1, max_iter + 1):
        nx = update(x)
        step = change(nx, x)
        x = nx
        if not math.isfinite(step):
            return x, it, False
        if step < tol:
            return x, it, True
    return x, max_iter, False


def classifier_result(logits: np.ndarray, labels: np.ndarray, norms: list[float],
                      claimed: list[float], ms: float, hist: dict) -> dict:
    """The classifier's metrics from its test logits (float64) and its layers' norms: the
    Lipschitz bound is the product of the true norms, certified at margin / (sqrt(2) L)."""
    top2 = np.sort(logits, axis=-1)[:, -2:]
    margins = top2[:, 1] - top2[:, 0]
    correct = logits.argmax(-1) == labels
    L = math.prod(norms)
    return {"acc": float(correct.mean()), "true_norms": norms, "claimed": claimed,
            "lipschitz": L, "lipschitz_claimed": math.prod(claimed),
            "certified": certified(margins, correct, L), "ms_per_step": ms, "history": hist}


def iresnet_result(acc: float, norms: list[float], iters: list[int], err: float, ok: bool,
                   ms: float, hist: dict, blocks: int, d: int, hidden: int) -> tuple[dict, str]:
    """The i-ResNet's metrics (each block's Lipschitz bound: the product of its two layers'
    true norms) and its description."""
    block_lip = [norms[2 * i] * norms[2 * i + 1] for i in range(blocks)]
    return {"acc": acc, "block_lip": block_lip, "true_norms": norms, "iters": iters,
            "recon_err": err, "converged": bool(ok), "ms_per_step": ms, "history": hist}, \
        f"{blocks} blocks {d}->{hidden}->{d}"


def _fmt_norms(xs) -> str:
    return " ".join(f"{x:.4f}" for x in xs)


def table(res: dict) -> str:
    lines = []
    add = lines.append
    add(f"fasth spectral ({res['framework']}, {res['device']}, float32)")
    add("")
    add("1. Lipschitz classifier " + res["classifier"]["arch"])
    head = (f"{'method':<8} {'test acc':>8} {'claimed L':>9} {'true L':>8} "
            + " ".join(f"{'cert@' + str(r):>9}" for r in RADII) + f" {'ms/step':>8}  true layer norms (SVD)")
    add(head)
    add("-" * len(head))
    for m in ("power", "fasth"):
        r = res["classifier"][m]
        add(f"{m:<8} {r['acc']:>8.4f} {r['lipschitz_claimed']:>9.4f} {r['lipschitz']:>8.4f} "
            + " ".join(f"{r['certified'][str(x)]:>9.4f}" for x in RADII)
            + f" {r['ms_per_step']:>8.3f}  {_fmt_norms(r['true_norms'])}")
    add("   claimed - true, max over layers: "
        + ", ".join(f"{m} {max(abs(c - t) for c, t in zip(res['classifier'][m]['claimed'], res['classifier'][m]['true_norms'])):.2e}"
                    for m in ("power", "fasth")))
    add("")
    add(f"2. i-ResNet, {res['iresnet']['arch']}, each g claimed {BOUND_IRESNET}-Lipschitz; "
        "inverse by fixed point")
    head = (f"{'method':<8} {'test acc':>8} {'max Lip(g)':>10} {'iters':>14} {'recon err':>10} "
            f"{'ms/step':>8}  true Lip(g) bound per block")
    add(head)
    add("-" * len(head))
    for m in ("power", "fasth"):
        r = res["iresnet"][m]
        its = "/".join(str(i) for i in r["iters"])
        add(f"{m:<8} {r['acc']:>8.4f} {max(r['block_lip']):>10.4f} {its:>14} {r['recon_err']:>10.2e} "
            f"{r['ms_per_step']:>8.3f}  {_fmt_norms(r['block_lip'])}"
            + ("" if r["converged"] else "  (did not converge)"))
    add("")
    add("3. time per training step, same network (3 dense d x d layers), power iteration vs fasth, "
        "interleaved (ratio: fasth / power, step by step)")
    head = f"{'d':>5} {'n':>6} {'regime':>8} {'power ms':>9} {'fasth ms':>9} {'ratio':>6}"
    add(head)
    add("-" * len(head))
    for t in res["timing"]:
        regime = "n>=4d" if t["n"] >= 4 * t["d"] else ("n<d" if t["n"] < t["d"] else "")
        add(f"{t['d']:>5} {t['n']:>6} {regime:>8} {t['power_ms']:>9.3f} {t['fasth_ms']:>9.3f} "
            f"{t['fasth_over_power']:>6.2f}")
    add("n >= 4d: fasth builds W = U diag(s) V^T once per step, a cost independent of n (about")
    add("38 d^3 flops per layer with the backward, against 6 d^2 n for the layer's GEMMs), so the")
    add("ratio falls toward 1 as n grows. n < d: U and V are applied to the activations.")
    return "\n".join(lines)


def plot(res: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(12, 8), sharex="col")
    for col, exp in enumerate(("classifier", "iresnet")):
        for row, m in enumerate(("power", "fasth")):
            ax = axes[row, col]
            h = res[exp][m]["history"]
            true = np.asarray(h["true"])
            claimed = np.asarray(h["claimed"])
            for j in range(true.shape[1]):
                line, = ax.plot(h["step"], true[:, j], label=f"layer {j} true (SVD)")
                ax.plot(h["step"], claimed[:, j], "--", color=line.get_color(), alpha=0.7)
            ax.set_title(f"{exp}: {m} (solid: true ||W||_2 by SVD, dashed: claimed)")
            ax.set_ylabel("spectral norm")
            if row == 1:
                ax.set_xlabel("training step")
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = parser()
    args = p.parse_args(argv)
    check_device(p, args.device, args.framework)
    data = load_digits(args.seed)
    if args.framework == "torch":
        from . import torch_demo as demo
    else:
        from . import jax_demo as demo
    res = demo.run(args, data)
    text = table(res)
    print(text)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "spectral.json"), "w") as f:
        json.dump(res, f, indent=1)
    plot(res, os.path.join(args.out, "spectral.png"))
    print(f"\nwrote {os.path.join(args.out, 'spectral.png')} and spectral.json", file=sys.stderr)
    return 0
