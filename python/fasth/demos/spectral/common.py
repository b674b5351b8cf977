"""What both frameworks' spectral demos share: the data, the training loop, the fixed-point
inversion, the metrics, and ``collect``, which runs the three parts for one framework and
hands each finished part to ``save`` as it ends."""

from __future__ import annotations

import math

import numpy as np

from fasth.bench.timing import interleaved, median_ms, ratio, time_once

RADII = (0.1, 0.25, 0.5)
BOUND_IRESNET = 0.9

METHODS = ("power", "fasth")


def steps_per_run(args, n_train: int) -> int:
    return args.epochs * (n_train // args.batch)


# Untimed-for-the-median steps before the timed ones: the first compiles (JAX) or allocates.
WARMUP_STEPS = 3


def collect(framework: str, device: str, data, args, run_classifier, run_iresnet,
            timing_step, save=lambda part, row: None) -> dict:
    """The demo's three parts for one framework: the classifier and the i-ResNet trained with
    each method, then the time per step at n = 4d, 16d, 32d and d/4, the methods interleaved
    (``timing_step(method, d, n)`` gives one synchronised training step of the timing network).
    ``save(part, row)`` receives each training run's and each timing's result as it ends."""
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
        save("classifier", {"method": m, **res["classifier"][m]})
    res["classifier"]["arch"] = "->".join(map(str, dims)) + " (MaxMin)"
    for m in METHODS:
        note(f"i-ResNet/{m}")
        res["iresnet"][m], arch, _ = run_iresnet(m, data, args, bar)
        save("iresnet", {"method": m, **res["iresnet"][m]})
    res["iresnet"]["arch"] = arch
    for dd, n in shapes:
        note(f"timing n={n}")
        t = interleaved({m: timing_step(m, dd, n) for m in METHODS}, args.timing_steps,
                        warmup=WARMUP_STEPS)
        res["timing"].append({"d": dd, "n": n, **{f"{m}_ms": median_ms(t[m]) for m in METHODS},
                              "fasth_over_power": ratio(t["fasth"], t["power"])["median"]})
        save("timing", res["timing"][-1])
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    return res


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


def flatness(weights: list[np.ndarray]) -> float:
    """The median over layers of each weight's median singular value over its largest: near 1
    when a layer contracts every direction about as much as its norm says (float64 SVDs)."""
    return float(np.median([np.median(s) / s.max() for s in
                            (np.linalg.svd(np.asarray(W, np.float64), compute_uv=False) for W in weights)]))


def iresnet_result(acc: float, norms: list[float], iters: list[int], err: float, ok: bool,
                   ms: float, hist: dict, blocks: int, d: int, hidden: int,
                   flat: float) -> tuple[dict, str]:
    """The i-ResNet's metrics (each block's Lipschitz bound: the product of its two layers'
    true norms; ``flat``: ``flatness`` of its layers) and its description."""
    block_lip = [norms[2 * i] * norms[2 * i + 1] for i in range(blocks)]
    return {"acc": acc, "block_lip": block_lip, "true_norms": norms, "iters": iters, "flatness": flat,
            "recon_err": err, "converged": bool(ok), "ms_per_step": ms, "history": hist}, \
        f"{blocks} blocks {d}->{hidden}->{d}"


