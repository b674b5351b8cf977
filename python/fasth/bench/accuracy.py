"""Accuracy beside speed: the orthogonality of each method's ``U`` and its gradients'
error against a float64 reference (an independent method's where one is named and fast
enough, else the method's own float64 run)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from .cases import METHODS, Impl, Problem, make_problem, wide

# A float64 forward + backward takes up to about this many times the float32 one: the
# reference runs only when that estimate fits the gradient budget.
FLOAT64_COST = 3


def rel_err(got: list, ref: list) -> float:
    """The largest ``max|a - b| / max|b|`` over paired arrays."""
    err = 0.0
    for a, b in zip(got, ref):
        a = a.detach().resolve_conj().cpu().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)
        b = b.detach().resolve_conj().cpu().numpy() if isinstance(b, torch.Tensor) else np.asarray(b)
        a, b = (x.astype(np.complex128 if x.dtype.kind == "c" else np.float64) for x in (a, b))
        err = max(err, float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-300)))
    return err


def orth_err(U: Any) -> float:
    """``max|U^H U - I|``."""
    U = torch.as_tensor(np.array(U)) if not isinstance(U, torch.Tensor) else U
    U = U.detach()
    return float((U.mH @ U - torch.eye(U.shape[1], dtype=U.dtype, device=U.device)).abs().max())


class Accuracy:
    """The suite's accuracy entries, one per (dtype, d, method)."""

    def __init__(self, cfg: Any) -> None:
        self.cfg = cfg
        self.entries: list[dict] = []

    def entry(self, dtype: str, d: int, name: str) -> dict:
        for e in self.entries:
            if (e["dtype"], e["d"], e["method"]) == (dtype, d, name):
                return e
        self.entries.append({"dtype": dtype, "d": d, "method": name})
        return self.entries[-1]

    def measure(self, op: str, dtype: str, d: int, n_label: str, p: Problem,
                rows: dict, impls: dict[str, Impl]) -> None:
        """Orthogonality of U (matrix op) and gradient error (first n of fwd+bwd) per method."""
        if op == "matrix":
            for name, impl in impls.items():
                self.entry(dtype, d, name)["orth_err"] = orth_err(impl.mat())
        if op != "fwd+bwd" or n_label != self.cfg.ns[0]:
            return
        p64 = make_problem(d, p.n, wide(p.dtype), self.cfg.device)
        too_slow = lambda m: rows.get(m, {}).get("median_s", math.inf) * FLOAT64_COST > self.cfg.grad_budget_s  # noqa: E731
        refs: dict[str, list] = {}
        for name, impl in impls.items():
            ref = METHODS[name].ref or name
            if too_slow(ref):
                ref = name  # the independent reference is too slow here: its own float64 run
            entry = self.entry(dtype, d, name)
            entry["grad_ref"] = f"{ref} (float64)"
            if ref == name and dtype in ("float64", "complex128"):
                entry["grad_err"] = None  # its own reference
                continue
            if too_slow(ref):
                entry["grad_note"] = "reference too slow"
                continue
            if ref not in refs:
                refs[ref] = METHODS[ref].make(p64).fb()  # type: ignore[misc]
            entry["grad_err"] = rel_err(impl.fb(), refs[ref])
