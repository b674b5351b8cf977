"""``python -m fasth bench --layers``: a training step of fasth's layers beside the
alternatives, the fixed cost of one call, and the backend calls per operation.

1. Training steps (forward, backward, Adam step) of ``d x d`` layers on a ``(batch, d)``
   input: fasth's ``Orthogonal``, ``SVDLinear``, ``orthogonal(nn.Linear)`` and
   ``SpectralLinear`` beside ``nn.Linear``, torch's ``parametrizations.orthogonal`` with each
   of its maps, ``parametrizations.spectral_norm``, and geotorch's ``orthogonal`` and nflows'
   ``SVDLinear`` when installed. Every layer of one size is timed interleaved with the
   others, so each ratio (to ``nn.Linear``, and an alternative's to its fasth counterpart)
   is taken pair by pair within one run.
2. Fixed cost per call: eager ``fasth.torch.apply`` at ``d = 8``, ``n = 1`` (forward,
   forward + backward) beside ``W @ X`` of that size, ``fasth.apply`` on numpy arrays beside
   numpy's ``W @ X``; ``matrix(V)`` forward + backward at ``d = 512`` beside torch's Cayley
   map and a ``d x d x d`` GEMM; in the full set, ``apply`` with ``k = 8`` against ``k = 16``
   reflectors at ``d = 4096``, ``n = 1024``.
3. Backend calls (BLAS calls or kernel launches, from ``fasth.profile()``) of each fasth
   training step and each fixed-cost operation, and of ``apply`` by the CPU's and CUDA's
   plans (both run on the CPU backend: ``fasth.bench.plans``).

Each thread count of ``--threads`` is measured in turn."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from .accuracy import orth_err
from .environment import threads as threads_of
from .timing import Budget, interleaved, ratio, summary, sync_for

LINEAR = "nn.Linear"
STEP_LR = 1e-4  # Adam's step while timing: small, so every layer stays near where it started
CALL_WARMUP = 2  # untimed calls of a fixed-cost op: the first one builds and caches its plan


class Unavailable(Exception):
    """A layer that cannot be built here (its package is not installed)."""


@dataclass
class Layer:
    make: Callable[[int], nn.Module]  # d -> a d x d layer (float32, CPU; moved after)
    peer: str | None = None  # the fasth layer an alternative is compared with
    orthogonal: Callable[[nn.Module], torch.Tensor] | None = None  # its weight, if orthogonal
    fasth: bool = False  # calls into fasth (its backend calls are counted)


def _fasth() -> Any:
    import fasth.torch as ft

    return ft


def _torch_orthogonal(kind: str) -> Callable[[int], nn.Module]:
    def make(d: int) -> nn.Module:
        from torch.nn.utils import parametrizations

        return parametrizations.orthogonal(nn.Linear(d, d), orthogonal_map=kind)

    return make


def _spectral_norm(d: int) -> nn.Module:
    from torch.nn.utils import parametrizations

    return parametrizations.spectral_norm(nn.Linear(d, d))


def _geotorch(d: int) -> nn.Module:
    try:
        import geotorch
    except ImportError:
        raise Unavailable("geotorch is not installed") from None
    lin = nn.Linear(d, d)
    geotorch.orthogonal(lin, "weight")
    return lin


class _FirstOutput(nn.Module):
    """A flow transform's output without its log-determinant (nflows returns both)."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x)[0]


def _nflows(d: int) -> nn.Module:
    try:
        from nflows.transforms.svd import SVDLinear
    except ImportError:
        raise Unavailable("nflows is not installed") from None
    return _FirstOutput(SVDLinear(d, num_householder=d))


def _weight(m: nn.Module) -> torch.Tensor:
    return m.weight


LAYERS: dict[str, Layer] = {
    LINEAR: Layer(lambda d: nn.Linear(d, d)),
    "fasth Orthogonal": Layer(lambda d: _fasth().Orthogonal(d), orthogonal=_weight, fasth=True),
    "fasth SVDLinear": Layer(lambda d: _fasth().SVDLinear(d, d), fasth=True),
    "fasth orthogonal(Linear)": Layer(lambda d: _fasth().orthogonal(nn.Linear(d, d)),
                                      orthogonal=_weight, fasth=True),
    "fasth SpectralLinear": Layer(lambda d: _fasth().SpectralLinear(d, d), fasth=True),
    "torch orthogonal(matrix_exp)": Layer(_torch_orthogonal("matrix_exp"), "fasth orthogonal(Linear)",
                                          _weight),
    "torch orthogonal(cayley)": Layer(_torch_orthogonal("cayley"), "fasth orthogonal(Linear)", _weight),
    "torch orthogonal(householder)": Layer(_torch_orthogonal("householder"), "fasth orthogonal(Linear)",
                                           _weight),
    "torch spectral_norm": Layer(_spectral_norm, "fasth SpectralLinear"),
    "geotorch orthogonal": Layer(_geotorch, "fasth orthogonal(Linear)", _weight),
    "nflows SVDLinear": Layer(_nflows, "fasth SVDLinear"),
}


@dataclass
class LayerConfig:
    device: str
    dtype: str
    ds: list[int]
    batches: list[int]
    threads: list[int | None]  # None: each library's own default
    layers: list[str]
    repeats: int
    slow_s: float  # a first step slower than this is the only sample
    cap_s: float  # a layer whose estimated step time exceeds this is skipped
    full: bool  # the fixed-cost cases outside --quick too


@dataclass
class LayerBench:
    cfg: LayerConfig
    steps: list[dict] = field(default_factory=list)
    calls: list[dict] = field(default_factory=list)
    accuracy: list[dict] = field(default_factory=list)
    plans: list[dict] = field(default_factory=list)

    def run(self, progress: Callable[[str], None] = lambda s: None) -> None:
        from .plans import CALL_SIZES, apply_calls

        self.plans[:] = [apply_calls(d, n, dev) for d, n in CALL_SIZES for dev in ("cpu", "cuda")]
        for n in self.cfg.threads:
            with threads_of(n):
                budget = Budget(self.cfg.cap_s)
                for d in self.cfg.ds:
                    for b in self.cfg.batches:
                        progress(f"threads={n} d={d} batch={b}")
                        self.step_group(n, d, b, budget)
                for name, fns, base, counted in fixed_cost_cases(self.cfg):
                    progress(f"threads={n} {name}")
                    self.call_group(n, name, fns, base, counted)

    def step_group(self, n: int | None, d: int, batch: int, budget: Budget) -> None:
        cfg = self.cfg
        dtype, dev = getattr(torch, cfg.dtype), torch.device(cfg.device)
        torch.manual_seed(d * 1000 + batch)  # one input and initialisation per size
        x = torch.randn(batch, d, dtype=dtype, device=dev)
        rows, fns, modules = {}, {}, {}
        for name in cfg.layers:
            row = rows[name] = {"threads": n, "d": d, "batch": batch, "layer": name, "status": "ok",
                                "note": ""}
            est = budget.over((name, batch), d)
            if est is not None:
                row.update(status="skipped", note=f"est. {est:.0f} s")
                continue
            try:
                m = LAYERS[name].make(d).to(device=dev, dtype=dtype)
            except Unavailable as e:
                row.update(status="unavailable", note=str(e))
                continue
            modules[name], fns[name] = m, train_step(m, x)
        samples = interleaved(fns, cfg.repeats, sync=sync_for(cfg.device), slow_s=cfg.slow_s,
                              on_error=lambda m, e: rows[m].update(status="error",
                                                                   note=f"{type(e).__name__}: {e}"[:120]))
        for name, ts in samples.items():
            row = rows[name]
            row.update({"times_s": ts, "reps": len(ts), "note": "1 rep" if len(ts) < cfg.repeats else ""},
                       **{f"{k}_s": v for k, v in summary(ts).items()})
            budget.record((name, batch), d, row["median_s"])
            if name != LINEAR and LINEAR in samples:
                row["vs_linear"] = ratio(ts, samples[LINEAR])
            peer = LAYERS[name].peer
            if peer in samples:
                row["vs_peer"] = ratio(ts, samples[peer])
        first = n == cfg.threads[0] and batch == cfg.batches[0]
        for name in samples:
            if LAYERS[name].fasth and n == cfg.threads[0]:
                rows[name].update(backend_calls(fns[name], cfg.device))
            if first and LAYERS[name].orthogonal is not None:
                with torch.no_grad():
                    W = LAYERS[name].orthogonal(modules[name])
                self.accuracy.append({"d": d, "layer": name, "orth_err": orth_err(W)})
        self.steps.extend(rows.values())

    def call_group(self, n: int | None, name: str, fns: dict, base: str, counted: set) -> None:
        cfg = self.cfg
        samples = interleaved(fns, cfg.repeats, warmup=CALL_WARMUP, sync=sync_for(cfg.device))
        for op, ts in samples.items():
            row = {"threads": n, "case": name, "op": op, "base": base, "times_s": ts,
                   **{f"{k}_s": v for k, v in summary(ts).items()}}
            if op != base:
                row["vs_base"] = ratio(ts, samples[base])
            if op in counted and n == cfg.threads[0]:
                row.update(backend_calls(fns[op], cfg.device))
            self.calls.append(row)


def train_step(m: nn.Module, x: torch.Tensor) -> Callable[[], None]:
    """One training step of ``m`` on ``x``: forward, mean-square loss, backward, Adam step."""
    opt = torch.optim.Adam(m.parameters(), lr=STEP_LR)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        m(x).square().mean().backward()
        opt.step()

    return step


def backend_calls(fn: Callable[[], object], device: str) -> dict:
    """The backend calls fasth makes in one call of ``fn``."""
    import fasth

    with fasth.profile() as p:
        fn()
        sync_for(device)()
    return {"backend_calls": p.calls, "by_op": dict(sorted(p.by_op.items()))}


# fixed cost per call ----------------------------------------------------------------------

SMALL_D = 8  # a size where every operation's cost is its fixed cost per call
MATRIX_D = 512  # a size where materialising U is worth comparing with a dense solve
WIDE = (4096, 1024)  # d, n where few reflectors (k = 8, 16) meet a large X
RECURRENCE = (256, 32, 16)  # d, batch, steps: one U applied at every step, as in an RNN


def _grads(f: Callable, leaves: list[torch.Tensor], G: torch.Tensor) -> Callable[[], list]:
    return lambda: torch.autograd.grad(f(*leaves), leaves, G)


def fixed_cost_cases(cfg: LayerConfig):
    """(case, {op: fn}, the op the others are divided by, the ops that call fasth)."""
    import fasth
    import fasth.torch as ft

    dtype, dev = getattr(torch, cfg.dtype), torch.device(cfg.device)
    g = torch.Generator().manual_seed(0)
    rand = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64).to(dev, dtype)  # noqa: E731
    d = SMALL_D
    V, W, X, G = rand(d, d), rand(d, d), rand(d, 1), rand(d, 1)
    Vl, Wl, Xl = (t.clone().requires_grad_() for t in (V, W, X))

    def no_grad(f: Callable) -> Callable[[], Any]:
        def call():
            with torch.no_grad():
                return f()
        return call

    yield (f"eager forward, d={d} n=1", {"fasth.torch.apply": no_grad(lambda: ft.apply(V, X)),
                                         "W @ X": no_grad(lambda: W @ X)}, "W @ X", {"fasth.torch.apply"})
    yield (f"eager forward + backward, d={d} n=1",
           {"fasth.torch.apply": _grads(ft.apply, [Vl, Xl], G),
            "W @ X": _grads(torch.matmul, [Wl, Xl], G)}, "W @ X", {"fasth.torch.apply"})
    npdt = np.dtype(cfg.dtype)
    Vn, Wn, Xn = (t.detach().cpu().numpy().astype(npdt) for t in (V, W, X))
    yield (f"numpy forward, d={d} n=1", {"fasth.apply": lambda: fasth.apply(Vn, Xn),
                                         "W @ X (numpy)": lambda: Wn @ Xn},
           "W @ X (numpy)", {"fasth.apply"})
    d = MATRIX_D
    A, B, GU = (rand(d, d) for _ in range(3))
    Vm, Am, Bm = (t.clone().requires_grad_() for t in (A, A, B))
    eye = torch.eye(d, dtype=dtype, device=dev)

    def cayley(A: torch.Tensor) -> torch.Tensor:
        S = A - A.T
        return torch.linalg.solve(eye + S, eye - S)

    yield (f"materialise U forward + backward, d={d}",
           {"fasth.torch.matrix": _grads(ft.matrix, [Vm], GU),
            "Cayley solve(I + S, I - S)": _grads(cayley, [Am], GU),
            f"GEMM {d}x{d}x{d}": _grads(torch.matmul, [Am, Bm], GU)},
           f"GEMM {d}x{d}x{d}", {"fasth.torch.matrix"})
    d, n, steps = RECURRENCE
    Vr, Xs = rand(d, d).requires_grad_(), rand(steps, d, n)

    def recurrence(make_step: Callable) -> Callable[[], Any]:
        def run():  # h = tanh(U h + x_t), then the gradient of |h|^2 in V
            h, step = torch.zeros_like(Xs[0]), make_step()
            for x in Xs:
                h = torch.tanh(step(h) + x)
            return torch.autograd.grad(h.square().sum(), Vr)
        return run

    yield (f"recurrence of {steps} steps, forward + backward, d={d} n={n}",
           {"apply at every step": recurrence(lambda: lambda h: ft.apply(Vr, h)),
            "Reflectors (factors once)": recurrence(lambda: ft.Reflectors(Vr).apply)},
           "apply at every step", {"apply at every step", "Reflectors (factors once)"})
    if cfg.full:
        d, n = WIDE
        X = rand(d, n)
        Vk = {k: rand(d, k) for k in (8, 16)}
        yield (f"few reflectors forward, d={d} n={n}",
               {f"apply k={k}": no_grad(lambda k=k: ft.apply(Vk[k], X)) for k in (8, 16)},
               "apply k=16", {"apply k=8", "apply k=16"})


def groups(cfg: LayerConfig) -> int:
    """How many groups ``LayerBench.run`` measures (for a progress bar)."""
    return len(cfg.threads) * (len(cfg.ds) * len(cfg.batches) + 5 + cfg.full)
