"""Measuring the suite: for each operation and size every method is repeated interleaved
with the others (``timing.interleaved``), so the ratios (baseline / fasth, fasth / GEMM)
are taken pair by pair from the same repeat. Methods too slow for a size are timed once, or
skipped when the previous size says they would take too long (said in the table)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from .accuracy import Accuracy
from .cases import DROP_IN_HP, GEMM, METHODS, TORCH_HP, Unavailable, make_problem
from .timing import Budget, interleaved, ratio, summary, sync_for


@dataclass
class Config:
    device: str
    dtypes: list[str]
    ds: list[int]
    ns: list[str]  # ints, or "d"
    ops: list[str]
    methods: list[str]
    repeats: int
    slow_s: float  # a first call slower than this is the only sample
    cap_s: float  # a method whose estimated time exceeds this is skipped
    grad_budget_s: float  # gradient reference run only below this


@dataclass
class Suite:
    cfg: Config
    results: list[dict] = field(default_factory=list)
    warm: set = field(default_factory=set)  # (method, op) called once already (lazy set-up)

    def __post_init__(self) -> None:
        self.budget = Budget(self.cfg.cap_s)
        self.acc = Accuracy(self.cfg)

    @property
    def accuracy(self) -> list[dict]:
        return self.acc.entries

    def group(self, op: str, dtype: str, d: int, n_label: str) -> None:
        cfg, n = self.cfg, d if n_label == "d" else int(n_label)
        p = make_problem(d, n, getattr(torch, dtype), cfg.device)
        rows, fns, impls = {}, {}, {}
        for name in cfg.methods:
            row = rows[name] = {"op": op, "dtype": dtype, "d": d, "n": n, "n_label": n_label,
                                "method": name, "status": "ok", "note": ""}
            try:
                impl = METHODS[name].make(p)
            except Unavailable as e:
                row.update(status="unavailable", note=str(e))
                continue
            fn = {"apply": impl.fwd, "fwd+bwd": impl.fb, "matrix": impl.mat, "jvp": impl.jvp}[op]
            if fn is None:
                row.update(status="n/a")
                continue
            est = self.budget.over((name, op, dtype, n_label), d, METHODS[name].cap)
            if est is not None:
                row.update(status="skipped", note=f"est. {est:.0f} s")
                continue
            try:
                if impl.compiles or (name, op) not in self.warm:
                    fn()  # lazy set-up or compilation, not timed
                    self.warm.add((name, op))
            except Exception as e:  # noqa: BLE001 - a baseline failing is a result, not a crash
                _failed(row, e)
                continue
            fns[name], impls[name] = fn, impl
        slow = {m: math.inf if METHODS[m].cap == math.inf else cfg.slow_s for m in fns}
        samples = interleaved(fns, cfg.repeats, sync=sync_for(cfg.device), slow_s=slow,
                              on_error=lambda m, e: _failed(rows[m], e))
        base = samples.get("fasth", [])
        for name, ts in samples.items():
            row = rows[name]
            row.update({"times_s": ts, "reps": len(ts), "note": "1 rep" if len(ts) < cfg.repeats else ""},
                       **{f"{k}_s": v for k, v in summary(ts).items()})
            self.budget.record((name, op, dtype, n_label), d, row["median_s"])
            if name != "fasth" and (r := ratio(ts, base)):
                row["vs_fasth"] = r
        if "vs_fasth" in rows.get(GEMM, {}):
            rows["fasth"]["fasth_over_gemm"] = ratio(base, samples[GEMM])
        if (r := ratio(samples.get(TORCH_HP, []), samples.get(DROP_IN_HP, [])) if
                TORCH_HP in samples and DROP_IN_HP in samples else None):
            rows[TORCH_HP]["vs_drop_in"] = r  # torch's householder_product / fasth's drop-in
        impls = {m: impls[m] for m in samples}
        if cfg.device == "cuda" and op == "fwd+bwd":
            self._peak_memory(rows, fns, impls)
        self.results.extend(rows.values())
        self.acc.measure(op, dtype, d, n_label, p, rows, impls)

    @staticmethod
    def _peak_memory(rows: dict, fns: dict, impls: dict) -> None:
        """The extra CUDA memory one forward + backward of each torch method allocates."""
        for name, impl in ((k, v) for k, v in impls.items() if v.torch):
            impl.clear()
            torch.cuda.synchronize()
            before = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
            fns[name]()
            torch.cuda.synchronize()
            rows[name]["peak_extra_bytes"] = torch.cuda.max_memory_allocated() - before


def _failed(row: dict, e: Exception) -> None:
    row.update(status="error", note=f"{type(e).__name__}: {e}"[:120])
