"""Any device's plan run on the CPU backend (SciPy's BLAS) on numpy arrays. The algorithm is
the same on every device; a plan decides its blocks and paths. So CUDA's plans run here
make the backend calls that are launches on a GPU, counted on any machine, and their paths
can be checked against the reference without a GPU. Two backend properties differ: at
d <= 128 CUDA builds U in one launch (its small-d path), and its larft takes blocks of up to
128 columns in one launch where the CPU's takes 32, so for blocks of 33 to 128 this run
builds T in 4 calls (a solve) or by merging leaves, where a GPU makes one launch."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .. import _arrays, _engine, _native
from .._profile import profile
from .._spec import APPLY, HOUSEHOLDER, MATRIX, Spec

# The sizes of the launch targets and of a layer's usual apply: (d, n), k = d.
CALL_SIZES = [(1024, 256), (1024, 64), (512, 128), (256, 32), (2048, 256)]


class Run(NamedTuple):
    out: np.ndarray
    dV: np.ndarray
    dX: np.ndarray | None
    forward_calls: int
    backward_calls: int


def plan(op: str, vshape: tuple, xshape: tuple = (), *, device: str = "cuda",
         transpose: bool = False, thin: bool = False, block: int = 0) -> _native.core.Plan:
    """A householder ``apply`` or ``matrix`` plan for ``device``, dense C-order arrays."""
    dense = _engine.dense_strides
    s = Spec(APPLY if op == "apply" else MATRIX, HOUSEHOLDER, transpose, thin, block)
    return _native.new_plan(s, (vshape, dense(vshape)), ((), ()), (xshape, dense(xshape)), device)


def run(p: _native.core.Plan, V: np.ndarray, X: np.ndarray | None, G: np.ndarray, tape: bool = True) -> Run:
    """The plan's forward (keeping its tape where it has one) and backward on the CPU
    backend, with the backend calls of each."""
    dt, xp = V.dtype, _arrays.namespace(V)
    code, core, blas = _engine.DTYPE_CODES[str(dt)], _native.core, _native.scipy_blas()
    out, f = np.empty(p.out[0], dt), np.empty(p.factors_size, dt)
    t = np.empty(p.tape_size, dt) if tape and p.tape_size else None
    with profile() as fwd:
        core.forward(p, code, V, None, X, out, f, np.empty(p.forward_workspace, dt),
                      blas=blas, tape=t)
    dV = np.empty(p.dV[0], dt)
    dX = None if X is None else np.empty(p.dX[0], dt)
    G = np.ascontiguousarray(G.reshape(out.shape), dtype=dt)
    with profile() as bwd:
        core.backward(p, code, V, f, None if t is not None else out, out.shape, xp.strides(out),
                       G, G.shape, xp.strides(G), dV, None, dX,
                       np.empty(p.backward_workspace, dt), blas=blas, tape=t)
    return Run(out, dV, dX, fwd.calls, bwd.calls)


def apply_calls(d: int, n: int, device: str) -> dict:
    """Backend calls of a float32 ``apply`` of ``d x d`` reflectors to ``(d, n)`` by
    ``device``'s plan: its block, a forward, and a forward + backward from the tape (as
    ``fasth.torch`` and ``fasth.jax`` run them)."""
    rng = np.random.default_rng(0)
    V, X, G = (rng.standard_normal(s).astype(np.float32) for s in ((d, d), (d, n), (d, n)))
    p = plan("apply", (d, d), (d, n), device=device)
    r = run(p, V, X, G)
    return {"d": d, "n": n, "device": device, "block": p.block, "forward": r.forward_calls,
            "forward_backward": r.forward_calls + r.backward_calls}
