"""The core's plans run directly: each run writes only the buffers its plan sizes, the call
counter, errors naming a missing pointer, and the tape (what the backward reads instead of
recomputing) against the backward from the output."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import fasth
import fasth._engine
import fasth._native
from fasth._spec import APPLY, HOUSEHOLDER, Spec

from helpers import DTYPES, assert_close, randn, random_v
from reference import ref_apply_grad


PLANS = [  # (op, kind, V shape, tau shape, X shape, transpose, thin, block, strategy)
    ("apply", "householder", (20, 14), (), (3, 20, 5), False, False, 4, "blockwise"),
    ("apply", "householder", (3, 20, 14), (), (3, 20, 5), True, False, 0, "blockwise"),
    ("apply", "householder", (20, 30), (), (2, 20, 41), True, False, 0, "materialize"),
    ("apply", "householder", (9, 4), (), (9, 3), False, False, 37, "blockwise"),  # leaves of 1
    ("matrix", "householder", (2, 20, 14), (), (), False, True, 0, "auto"),
    ("matrix", "householder", (20, 25), (), (), False, False, 0, "auto"),
    ("apply", "lapack", (2, 20, 14), (2, 11), (2, 20, 6), False, False, 4, "auto"),
    ("apply", "lapack", (20, 14), (11,), (3, 20, 6), True, False, 0, "auto"),
    ("matrix", "lapack", (2, 20, 14), (2, 11), (), False, False, 0, "auto"),
    # Y not V itself (direct_y off, as fasth.jax plans) and k a multiple of 256: Y-like
    # buffers take padded rows
    ("apply", "householder", (260, 256), (), (2, 260, 5), False, False, 64, "blockwise", False),
    ("apply", "householder", (2, 258, 256), (), (2, 258, 17), True, False, 0, "blockwise", False),
    ("apply", "householder", (260, 256), (), (260, 300), False, False, 0, "materialize", False),
    ("matrix", "householder", (256, 256), (), (), False, False, 0, "auto", False),
    # V itself as Y, its rows 256 elements apart: a forward reads a padded copy of it
    ("apply", "householder", (2, 270, 256), (), (2, 270, 5), True, False, 64, "blockwise"),
    ("matrix", "householder", (256, 256), (), (), False, False, 0, "auto"),
    # CUDA's plans (run here on the CPU backend): one block whose T is a solve
    ("apply", "householder", (200, 200), (), (2, 200, 7), True, False, 0, "blockwise", False, "cuda"),
    ("matrix", "householder", (200, 150), (), (), False, True, 0, "auto", False, "cuda"),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", PLANS, ids=[f"{c[0]}-{c[1]}-{i}" for i, c in enumerate(PLANS)])
def test_plan_writes_only_its_buffers(rng, dtype, case):
    """A run writes every element of the factors it sizes (deterministic: an output) and
    nothing past the outputs, factors and workspaces the plan sizes (each buffer is followed by
    NaN guards): the workspace sizes come from the code that carves them."""
    core = fasth._core
    op, kind, vs, ts, xs, transpose, thin, block, strategy, direct_y, device = case + (True, "cpu")[len(case) - 9:]
    op, kind = getattr(core.Op, op), getattr(core.Kind, kind)
    lapack, apply = kind == core.Kind.lapack, op == core.Op.apply
    V, X = randn(rng, vs, dtype), randn(rng, xs, dtype) if apply else None
    tau = randn(rng, ts, dtype) if lapack else None
    dense = lambda shape: tuple(int(np.prod(shape[i + 1:], dtype=np.int64)) for i in range(len(shape)))  # noqa: E731
    plan = core.Plan(op, kind, vs, dense(vs), ts, dense(ts), xs, dense(xs), transpose, thin, block,
                     getattr(core.Strategy, {"auto": "automatic"}.get(strategy, strategy)),
                     getattr(core.Device, device), direct_y=direct_y,
                     complex=np.dtype(dtype).kind == "c")
    guard = 64
    code = DTYPES.index(dtype)

    def guarded(size, fill=np.nan):
        return np.full(int(size) + guard, fill, dtype)

    def strided(shape_strides):
        shape, strides = shape_strides
        n = 1 + sum((s - 1) * st for s, st in zip(shape, strides)) if all(shape) else 0
        buf = guarded(n)
        view = np.lib.stride_tricks.as_strided(buf, shape, [st * buf.itemsize for st in strides])
        return buf, view

    obuf, out = strided(plan.out)
    f, ws = guarded(plan.factors_size), guarded(plan.forward_workspace)
    for _ in range(2):  # the factors come out the same whatever was in the buffer before
        f[: plan.factors_size] = rng.standard_normal(plan.factors_size)
        core.forward(plan, code, V, tau, X, out, f, ws, blas=fasth._native.scipy_blas())
        if _ == 0:
            first = f[: plan.factors_size].copy()
    np.testing.assert_array_equal(f[: plan.factors_size], first)
    for b, n in ((obuf, obuf.size - guard), (f, plan.factors_size), (ws, plan.forward_workspace)):
        assert np.isnan(b[n:]).all()
    saved = out if not lapack else X if apply else None
    G = randn(rng, plan.out[0], dtype)
    # The backward from the output (or input), then from the tape where the plan keeps one.
    tape = guarded(plan.tape_size)
    if plan.tape_size:
        core.forward(plan, code, V, tau, X, out, f, ws, blas=fasth._native.scipy_blas(), tape=tape)
        assert not np.isnan(tape[: plan.tape_size]).any()  # an output: every element written
        assert np.isnan(tape[plan.tape_size:]).all()
        assert np.isnan(ws[plan.forward_workspace:]).all()
    for t in (None, tape) if plan.tape_size else (None,):
        dvb, dV = strided(plan.dV)
        dtb, dtau = strided(plan.dtau) if lapack else (None, None)
        dxb, dX = strided(plan.dX) if apply else (None, None)
        wb = guarded(plan.backward_workspace)
        sv = () if saved is None else (saved.shape, tuple(s // saved.itemsize for s in saved.strides))
        core.backward(plan, code, V, f, saved if t is None else None, *(sv or ((), ())), G,
                      G.shape, tuple(s // G.itemsize for s in G.strides), dV, dtau, dX, wb,
                      blas=fasth._native.scipy_blas(), tape=t)
        for b in (dvb, dtb, dxb):
            if b is not None:
                assert np.isnan(b[b.size - guard:]).all()
                assert not np.isnan(b[: b.size - guard]).all() or b.size == guard
        assert np.isnan(wb[plan.backward_workspace:]).all()


def test_profile_counts_backend_calls(rng):
    V, X = random_v(rng, (64, 64)), randn(rng, (64, 8))
    with fasth.profile() as p:
        fasth.apply(V, X, block=16)
    assert p.calls == sum(p.by_op.values()) > 0
    assert p.by_op["gemm"] >= 4 * 2  # four blocks of two gemms and a trmm each
    assert p.by_op["trmm"] >= 4
    with fasth.profile() as q:
        pass
    assert q.calls == 0


@pytest.mark.parametrize("missing", ["V", "factors", "saved", "grad", "dV", "workspace"])
def test_plan_runs_name_a_missing_pointer(rng, missing):
    """A C++ caller (or binding) that leaves out an array the run needs gets an error naming
    it, not a crash."""
    V, X = random_v(rng, (32, 32)), randn(rng, (32, 4))
    c = fasth._engine.resolve(Spec(APPLY, HOUSEHOLDER), "numpy", (V, None, X))
    out, f = fasth._engine.forward(c, V, None, X)
    G = randn(rng, out.shape)
    dV, ws = np.empty(c.dV[0]), np.empty(max(c.backward_ws, 1))
    given = {"V": V, "factors": f, "saved": out, "grad": G, "dV": dV, "workspace": ws}
    given[missing] = None
    arg = lambda a: None if a is None else a.ctypes.data
    elements = lambda a: tuple(s // a.itemsize for s in a.strides)
    with pytest.raises(ValueError, match=f"backward needs {missing}"):
        c.module.backward(c.plan, c.dtype_code, arg(given["V"]), arg(given["factors"]), arg(given["saved"]),
                          out.shape, elements(out), arg(given["grad"]), G.shape, elements(G),
                          arg(given["dV"]), None, None, arg(given["workspace"]), blas=c.blas)


# V shape, X shape, transpose, block, V row-major, scale of V, zero columns
TAPE_CASES = [
    ((16, 16), (16, 5), False, 4, False, 1.0, ()),
    ((16, 13), (16, 5), True, 4, True, 1.0, ()),  # a short last block
    ((16, 13), (3, 16, 5), False, 4, False, 1.0, ()),  # V shared by a batch
    ((3, 16, 13), (3, 16, 5), True, 4, True, 1.0, (2,)),  # a V per entry, a zero column
    ((2, 20, 20), (2, 20, 7), False, 3, False, 1.0, ()),
    ((33, 40), (33, 4), False, 8, False, 1e-30, ()),  # k > d; norms normalised first
    ((2, 64, 64), (2, 64, 9), True, 16, True, 1e30, ()),
    ((12, 5), (2, 12, 3), False, 2, True, 1.0, ()),
    ((24, 20), (24, 17), True, 8, False, 1.0, ()),  # a row-major out of 16+ columns: in place
]


@pytest.mark.parametrize("case", TAPE_CASES)
def test_backward_from_tape_matches_backward_from_output(rng, case):
    """The forward's tape (each block's input and products) gives the gradients that the
    backward recovering each block's input from the output gives, and the reference's."""
    vshape, xshape, transpose, block, row_major, scale, zeros = case
    V = random_v(rng, vshape, zero_cols=zeros) * scale
    V = np.ascontiguousarray(V) if row_major else np.asfortranarray(V)
    X, G = randn(rng, xshape), randn(rng, xshape)
    c = fasth._engine.resolve(Spec(APPLY, HOUSEHOLDER, transpose, False, block, "blockwise"), "numpy",
                              (V, None, X))
    assert c.tape_size > 0
    out, f, tape = fasth._engine.forward(c, V, None, X, tape=True)
    assert_close(out, fasth._engine.forward(c, V, None, X)[0].astype(np.float64), "float64", 1)
    with fasth.profile() as from_output:
        dV, _, dX = fasth._engine.backward(c, V, f, out, G)
    with fasth.profile() as from_tape:
        dVt, _, dXt = fasth._engine.backward(c, V, f, None, G, tape=tape)
    assert from_tape.by_op["gemm"] < from_output.by_op["gemm"]
    assert_close(dXt, dX, "float64", vshape[-2])
    assert_close(dVt * scale, dV * scale, "float64", vshape[-2])
    rdV, rdX = ref_apply_grad(V, X, G, transpose)
    assert_close(dXt, rdX, "float64", vshape[-2])
    assert_close(dVt * scale, rdV * scale, "float64", vshape[-2])


def test_tape_only_where_small():
    """A tape is kept up to 2^24 elements (a layer's activations), not for large problems; a
    householder U is made blockwise with a tape on the CPU where the tape fits, else as one
    block (and always on the GPU)."""
    core, dense = fasth._core, fasth._engine.dense_strides
    args = lambda d, n, dev=core.Device.cpu: ((d, d), dense((d, d)), (), (), (d, n), dense((d, n)),
                                              False, False, 0, core.Strategy.blockwise, dev)
    apply, matrix = (lambda *a: core.Plan(op, core.Kind.householder, *args(*a))
                     for op in (core.Op.apply, core.Op.matrix))
    assert apply(512, 128).tape_size > 0
    assert apply(4096, 4096).tape_size == 0
    assert matrix(512, 0).tape_size > 0 and matrix(512, 0).strategy == core.Strategy.blockwise
    assert matrix(2048, 0).tape_size == 0 and matrix(2048, 0).strategy == core.Strategy.materialize
    assert matrix(64, 0, core.Device.cuda).tape_size == 0
