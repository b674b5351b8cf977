"""The one timing utility of fasth's benchmarks, demos and self-check.

Functions compared with each other are timed in one run, interleaved: every repeat calls
each of them once, in an order that rotates from repeat to repeat, so that clock, thermal
and neighbour drift hit them alike and a ratio can be taken pair by pair (repeat ``r`` of
one against repeat ``r`` of the other). Each call is synchronised with the device before and
after (``sync``), or timed by CUDA events (``clock="cuda"``), which leave the host-side
synchronisation latency out.

Imports no array library at module level (the JAX demos use it without torch)."""

from __future__ import annotations

import math
import time
from typing import Callable, Hashable, Mapping, TypeVar

import numpy as np

K = TypeVar("K", bound=Hashable)
Fn = Callable[[], object]


def no_sync() -> None:
    """The host's results are ready when the call returns (CPU, or a call that blocks)."""


def sync_for(device: object) -> Callable[[], None]:
    """A function that waits for ``device``'s queued work: torch's CUDA synchronize for a
    CUDA device (a name or a ``torch.device``), else nothing."""
    if str(device).startswith("cuda"):
        import torch

        return torch.cuda.synchronize
    return no_sync


def time_once(fn: Fn, sync: Callable[[], None] = no_sync, *, inner: int = 1,
              clock: str = "wall") -> float:
    """Seconds per call of ``fn`` over ``inner`` back-to-back calls (one measurement)."""
    if clock == "cuda":
        import torch

        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(inner):
            fn()
        stop.record()
        stop.synchronize()
        return start.elapsed_time(stop) * 1e-3 / inner
    if clock != "wall":
        raise ValueError(f"clock must be 'wall' or 'cuda', got {clock!r}")
    sync()
    t = time.perf_counter()
    for _ in range(inner):
        fn()
    sync()
    return (time.perf_counter() - t) / inner


def interleaved(fns: Mapping[K, Fn], repeats: int, *, warmup: int = 1, inner: int = 1,
                sync: Callable[[], None] = no_sync, clock: str = "wall",
                slow_s: float | Mapping[K, float] = math.inf,
                on_error: Callable[[K, Exception], None] | None = None) -> dict[K, list[float]]:
    """Seconds per call of each function: ``warmup`` (at least one) timed, discarded calls
    each, then ``repeats`` interleaved repeats in a rotating order. A function whose last warm-up call
    took longer than ``slow_s`` (one for all, or per name) keeps that one sample and sits the
    repeats out (a method far too slow to repeat is still measured). With ``on_error``, a
    function that raises in its warm-up is left out and its exception handed on (a baseline
    failing is a result); without, the exception propagates."""
    samples: dict[K, list[float]] = {}
    for name, fn in fns.items():
        t, slow = math.inf, slow_s.get(name, math.inf) if isinstance(slow_s, Mapping) else slow_s
        try:
            for _ in range(max(warmup, 1)):
                t = time_once(fn, sync, inner=inner, clock=clock)
        except Exception as e:  # noqa: BLE001 - reported through on_error
            if on_error is None:
                raise
            on_error(name, e)
            continue
        samples[name] = [t] if t > slow else []
    names = [n for n in samples if not samples[n]]
    for r in range(repeats if names else 0):
        for name in names[r % len(names):] + names[:r % len(names)]:
            samples[name].append(time_once(fns[name], sync, inner=inner, clock=clock))
    return samples


def settled(fns: Mapping[K, Fn], repeats: int, *, sync: Callable[[], None] = no_sync,
            tol: float = 0.1, patience: int = 2,
            max_rounds: int = 10) -> tuple[dict[K, list[float]], dict[K, float], bool]:
    """``interleaved`` rounds of ``repeats`` until ``patience`` rounds in a row beat no
    function's fastest call so far by more than ``tol`` (a fresh process runs its first calls
    while thread pools start and caches fill, which one warm-up call does not cover on a loaded
    machine). The last round's samples, each function's fastest call over all rounds, and
    whether it settled within ``max_rounds``."""
    best: dict[K, float] = {}
    quiet = 0
    for r in range(max_rounds):
        samples = interleaved(fns, repeats, sync=sync)
        now = {k: min(v) for k, v in samples.items()}
        quiet = quiet + 1 if r > 0 and all(now[k] >= (1 - tol) * best[k] for k in now) else 0
        best = {k: min(now[k], best.get(k, math.inf)) for k in now}
        if quiet >= patience:
            return samples, best, True
    return samples, best, False


def summary(xs: list[float]) -> dict[str, float]:
    """Median and the 25-75 percentile spread."""
    q = np.percentile(xs, [25, 50, 75])
    return {"median": float(q[1]), "p25": float(q[0]), "p75": float(q[2])}


def ratio(times: list[float], base: list[float]) -> dict[str, float] | None:
    """``summary`` of ``times[r] / base[r]``, repeat by repeat (a side measured once is
    paired with the other's first repeat); None when a side has no sample."""
    pairs = [t / b for t, b in zip(times, base)]
    return summary(pairs) if pairs else None


def median_ms(times: list[float]) -> float:
    return 1e3 * float(np.median(times))


class Budget:
    """Skips a case whose time, estimated from the same case at the previous (smaller) size
    as growing like ``size**power``, exceeds ``cap_s`` (times the case's own factor)."""

    def __init__(self, cap_s: float, power: float = 3.0) -> None:
        self.cap_s, self.power = cap_s, power
        self.last: dict[Hashable, tuple[float, float]] = {}

    def estimate(self, key: Hashable, size: float) -> float:
        if key not in self.last:
            return 0.0
        s0, t0 = self.last[key]
        return t0 * (size / s0) ** self.power

    def over(self, key: Hashable, size: float, factor: float = 1.0) -> float | None:
        """The estimate when it is over the cap, else None."""
        est = self.estimate(key, size)
        return est if est > self.cap_s * factor else None

    def record(self, key: Hashable, size: float, seconds: float) -> None:
        self.last[key] = (size, seconds)
