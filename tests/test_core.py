"""The functional API (no autograd) against the float64 loop-over-reflectors reference:
forward, transpose, matrix, gradients, batching, layouts, empty and odd sizes, properties,
bad input and a property-based fuzz. Runs on every device of the `device` fixture."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fasth
import fasth._engine
import fasth._functional
import fasth._native
from fasth._spec import APPLY, HOUSEHOLDER, MATRIX, Spec
import fasth._arrays
from fasth.bench import plans
from reference import (finite_difference, ref_apply, ref_apply_grad, ref_matrix,
                       ref_matrix_grad, tolerance)

DTYPES = ["float32", "float64"]
STRATEGIES = ["auto", "blockwise", "materialize"]


def random_v(rng, shape, dtype="float64", zero_cols=()):
    """Householder vectors with column norms in [0.5, 2] (a gradient scales like 1/|v|)."""
    V = rng.standard_normal(shape)
    V /= np.maximum(np.linalg.norm(V, axis=-2, keepdims=True), 1e-300)
    V *= rng.uniform(0.5, 2.0, (*shape[:-2], 1, shape[-1]))
    V[..., list(zero_cols)] = 0
    return V.astype(dtype)


def randn(rng, shape, dtype="float64"):
    return rng.standard_normal(shape).astype(dtype)


def assert_close(got, ref, dtype, length):
    """max |got - ref| <= tolerance(dtype, length) * max(1, max |ref|)."""
    got = np.asarray(got)
    assert got.shape == ref.shape, (got.shape, ref.shape)
    assert got.dtype == np.dtype(dtype), (got.dtype, dtype)
    scale = max(1.0, float(np.abs(ref).max(initial=0)))
    err = float(np.abs(got.astype(np.float64) - ref).max(initial=0))
    assert err <= tolerance(dtype, length) * scale, (
        f"error {err:.3g} > {tolerance(dtype, length) * scale:.3g} ({dtype}, length {length})")


# ---------------------------------------------------------------------------------------
# The reference itself: its gradients against finite differences.

@pytest.mark.parametrize("transpose", [False, True])
def test_reference_gradients_match_finite_differences(rng, transpose):
    V = random_v(rng, (5, 3), zero_cols=[1])
    X, G = randn(rng, (5, 2)), randn(rng, (5, 2))
    dV, dX = ref_apply_grad(V, X, G, transpose)
    np.testing.assert_allclose(dV, finite_difference(lambda v: ref_apply(v, X, transpose), V, G),
                               atol=1e-7)
    np.testing.assert_allclose(dX, finite_difference(lambda x: ref_apply(V, x, transpose), X, G),
                               atol=1e-7)
    assert np.all(dV[:, 1] == 0)
    for thin in (False, True):
        Gm = randn(rng, (5, 3 if thin else 5))
        np.testing.assert_allclose(ref_matrix_grad(V, Gm, thin),
                                   finite_difference(lambda v: ref_matrix(v, thin), V, Gm),
                                   atol=1e-7)


def test_reference_is_orthogonal_and_ordered(rng):
    V = random_v(rng, (4, 3))
    U = ref_matrix(V)
    np.testing.assert_allclose(U.T @ U, np.eye(4), atol=1e-14)
    H = [np.eye(4) - 2 * np.outer(v, v) / (v @ v) for v in V.T]
    np.testing.assert_allclose(U, H[0] @ H[1] @ H[2], atol=1e-14)
    X = randn(rng, (4, 2))
    np.testing.assert_allclose(ref_apply(V, X, True), U.T @ X, atol=1e-14)


# ---------------------------------------------------------------------------------------
# Forward against the reference.

SIZES = [(1, 1, 1), (2, 1, 3), (5, 3, 4), (7, 7, 2), (13, 5, 9), (33, 20, 3), (17, 16, 40)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("d,k,n", SIZES)
@pytest.mark.parametrize("transpose", [False, True])
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_apply(xp, rng, dtype, d, k, n, transpose, strategy):
    V, X = random_v(rng, (d, k), dtype), randn(rng, (d, n), dtype)
    out = fasth.apply(xp(V), xp(X), transpose, strategy=strategy)
    assert_close(xp.numpy(out), ref_apply(V, X, transpose), dtype, d)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("block", [1, 3, 7, 12])  # 7 == k, 12 > k
@pytest.mark.parametrize("transpose", [False, True])
@pytest.mark.parametrize("strategy", ["blockwise", "materialize"])
def test_apply_block_sizes(xp, rng, dtype, block, transpose, strategy):
    d, k, n = 11, 7, 5
    V, X = random_v(rng, (d, k), dtype), randn(rng, (d, n), dtype)
    out = fasth.apply(xp(V), xp(X), transpose, block=block, strategy=strategy)
    assert_close(xp.numpy(out), ref_apply(V, X, transpose), dtype, d)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("d,k,block", [
    (90, 80, 33), (90, 80, 40), (90, 80, 64),  # 80 = 2 * 33 + 14 = 2 * 40 = 64 + 16
    (90, 80, 37),  # prime: leaves of one reflector
    (210, 200, 160),  # wider than CUDA's larft too (leaves of 80 there, 32 on the CPU)
])
def test_blocks_wider_than_larft(xp, rng, dtype, d, k, block):
    """Blocks wider than the backend's larft (CPU: 32; CUDA: 128) get T from leaves merged
    with gemm: uneven leaf counts, a short last block and a batch of V included."""
    n = 6
    V, X, G = random_v(rng, (2, d, k), dtype), randn(rng, (2, d, n), dtype), randn(rng, (2, d, n), dtype)
    for transpose in (False, True):
        out = fasth.apply(xp(V), xp(X), transpose, block=block, strategy="blockwise")
        assert_close(xp.numpy(out), ref_apply(V, X, transpose), dtype, d)
        dV, dX = fasth.apply_backward(xp(V), out, xp(G), transpose, block=block, strategy="blockwise")
        rdV, rdX = ref_apply_grad(V, X, G, transpose)
        assert_close(xp.numpy(dV), rdV, dtype, d + n)
        assert_close(xp.numpy(dX), rdX, dtype, d)
    assert_close(xp.numpy(fasth.matrix(xp(V), block=block)), ref_matrix(V), dtype, d)


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
                     getattr(core.Device, device), direct_y=direct_y)
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


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("d,k", [(1, 1), (3, 2), (6, 6), (13, 5), (20, 20)])
@pytest.mark.parametrize("thin", [False, True])
@pytest.mark.parametrize("block", [None, 1, 3])
def test_matrix(xp, rng, dtype, d, k, thin, block):
    V = random_v(rng, (d, k), dtype)
    U = fasth.matrix(xp(V), thin, block=block)
    assert_close(xp.numpy(U), ref_matrix(V, thin), dtype, d)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("transpose", [False, True])
@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("vbatch,xbatch", [
    ((2, 3), (2, 3)),   # batched V
    ((), (2, 3)),       # one V shared by a batch of X
    ((1,), (4,)),       # a batch of one V is shared too
    ((1, 1), ()),       # ... and its batch dimensions dropped
    ((3,), (3,)),
])
def test_apply_batched(xp, rng, dtype, transpose, strategy, vbatch, xbatch):
    d, k, n = 6, 4, 3
    V, X = random_v(rng, (*vbatch, d, k), dtype), randn(rng, (*xbatch, d, n), dtype)
    out = fasth.apply(xp(V), xp(X), transpose, strategy=strategy)
    assert_close(xp.numpy(out), ref_apply(V, X, transpose), dtype, d)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("thin", [False, True])
def test_matrix_batched(xp, rng, dtype, thin):
    V = random_v(rng, (2, 3, 5, 3), dtype)
    U = fasth.matrix(xp(V), thin)
    assert_close(xp.numpy(U), ref_matrix(V, thin), dtype, 5)


# ---------------------------------------------------------------------------------------
# Empty sizes: results of the right shape, no crash.

@pytest.mark.parametrize("vshape,xshape", [
    ((0, 0), (0, 3)),         # d = 0
    ((4, 0), (4, 3)),         # k = 0: U = I
    ((4, 2), (4, 0)),         # n = 0
    ((0, 0), (2, 0, 0)),
    ((1, 0), (1, 1)),
    ((0, 4, 2), (0, 4, 3)),   # batch 0
    ((4, 2), (0, 4, 3)),      # shared V, batch 0
])
@pytest.mark.parametrize("transpose", [False, True])
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_empty(xp, rng, request, vshape, xshape, transpose, strategy):
    V, X = random_v(rng, vshape), randn(rng, xshape)
    out = fasth.apply(xp(V), xp(X), transpose, strategy=strategy)
    assert_close(xp.numpy(out), ref_apply(V, X, transpose), "float64", 1)
    G = randn(rng, xshape)
    dV, dX = fasth.apply_backward(xp(V), out, xp(G), transpose, strategy=strategy)
    rdV, rdX = ref_apply_grad(V, X, G, transpose)
    assert_close(xp.numpy(dV), rdV, "float64", 4)
    assert_close(xp.numpy(dX), rdX, "float64", 4)


@pytest.mark.parametrize("vshape", [(0, 0), (4, 0), (1, 0), (2, 0, 0), (0, 3, 2)])
@pytest.mark.parametrize("thin", [False, True])
def test_matrix_empty(xp, rng, request, vshape, thin):
    V = random_v(rng, vshape)
    U = fasth.matrix(xp(V), thin)
    ref = ref_matrix(V, thin)
    assert_close(xp.numpy(U), ref, "float64", 1)
    G = randn(rng, ref.shape)
    dV = fasth.matrix_backward(xp(V), U, xp(G), thin)
    assert_close(xp.numpy(dV), ref_matrix_grad(V, G, thin), "float64", 4)


# ---------------------------------------------------------------------------------------
# Memory layouts.

LAYOUTS = ["C", "F", "step", "slice", "fslice", "batchstep"]


@pytest.mark.parametrize("vlayout", LAYOUTS)
@pytest.mark.parametrize("xlayout", LAYOUTS)
@pytest.mark.parametrize("shared", [False, True])
def test_layouts(xp, rng, vlayout, xlayout, shared):
    d, k, n, B, dtype = 7, 5, 4, 3, "float32"
    V = random_v(rng, (d, k) if shared else (B, d, k), dtype)
    X, G = randn(rng, (B, d, n), dtype), randn(rng, (B, d, n), dtype)
    out = fasth.apply(xp(V, vlayout), xp(X, xlayout))
    assert_close(xp.numpy(out), ref_apply(V, X), dtype, d)
    dV, dX = fasth.apply_backward(xp(V, vlayout), xp(xp.numpy(out), xlayout), xp(G, xlayout))
    rdV, rdX = ref_apply_grad(V, X, G)
    assert_close(xp.numpy(dV), rdV, dtype, d + B * n)
    assert_close(xp.numpy(dX), rdX, dtype, d)
    U = fasth.matrix(xp(V, vlayout))
    assert_close(xp.numpy(U), ref_matrix(V), dtype, d)


def test_column_major_transposed_view(xp, rng):
    A = randn(rng, (6, 9))  # (n, d): X = A.T is column-major
    V = random_v(rng, (9, 4))
    X = xp(A).T
    out = fasth.apply(xp(V), X)
    assert_close(xp.numpy(out), ref_apply(V, A.T), "float64", 9)


@pytest.fixture
def copies(monkeypatch):
    """Shapes of the arrays fasth copies because BLAS cannot address them."""
    seen = []
    ns = fasth._arrays
    for cls in (ns.Namespace, ns.TorchNamespace, ns.CupyNamespace):
        orig = cls.contiguous

        def spy(self, a, orig=orig):
            seen.append(tuple(a.shape))
            return orig(self, a)

        monkeypatch.setattr(cls, "contiguous", spy)
    return seen


def test_strided_views_are_used_as_they_are(xp, rng, copies):
    """Any strides reach the core without a copy in Python (the core copies what BLAS cannot
    address into its workspace); only leading dimensions that no one stride walks are copied."""
    d, k = 6, 3
    V = random_v(rng, (d, k))
    big = randn(rng, (d, 10))
    X = xp(big)
    out = fasth.apply(xp(V), X[:, ::2])  # strides (10, 2): BLAS can't address it
    assert_close(xp.numpy(out), ref_apply(V, big[:, ::2]), "float64", d)
    for strategy in ("blockwise", "materialize"):
        G = X[:, 1::2]
        dV, dX = fasth.apply_backward(xp(V), out, G, strategy=strategy)
        rdV, rdX = ref_apply_grad(V, big[:, ::2], big[:, 1::2])
        assert_close(xp.numpy(dV), rdV, "float64", d + 5)
        assert_close(xp.numpy(dX), rdX, "float64", d)
    assert copies == []
    B = randn(rng, (3, 2, d, 4))
    Xb = xp(B).transpose(0, 1) if xp.lib == "torch" else xp(B).swapaxes(0, 1)  # (2, 3, d, 4)
    out = fasth.apply(xp(V), Xb)
    assert_close(xp.numpy(out), ref_apply(V, B.swapaxes(0, 1)), "float64", d)
    assert copies == [(2, 3, d, 4)]
    copies.clear()
    out = fasth.apply(xp(V), X[:, 1:5])  # row-major, leading dimension 10: used in place
    assert_close(xp.numpy(out), ref_apply(V, big[:, 1:5]), "float64", d)
    assert copies == []
    out = fasth.apply(xp(V), xp(big.T.copy()).T[:, 1:5])  # column-major window
    assert_close(xp.numpy(out), ref_apply(V, big[:, 1:5]), "float64", d)
    assert copies == []


# ---------------------------------------------------------------------------------------
# Gradients against the reference.

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("d,k,n", [(1, 1, 2), (5, 3, 4), (7, 7, 2), (13, 5, 9), (17, 16, 40)])
@pytest.mark.parametrize("transpose", [False, True])
@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("block", [None, 1, 3])
def test_apply_backward(xp, rng, dtype, d, k, n, transpose, strategy, block):
    V, X, G = random_v(rng, (d, k), dtype), randn(rng, (d, n), dtype), randn(rng, (d, n), dtype)
    out = fasth.apply(xp(V), xp(X), transpose, strategy=strategy, block=block)
    dV, dX = fasth.apply_backward(xp(V), out, xp(G), transpose, strategy=strategy, block=block)
    rdV, rdX = ref_apply_grad(V, X, G, transpose)
    assert_close(xp.numpy(dV), rdV, dtype, d + n)
    assert_close(xp.numpy(dX), rdX, dtype, d)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("transpose", [False, True])
@pytest.mark.parametrize("strategy", ["blockwise", "materialize"])
@pytest.mark.parametrize("vbatch,xbatch", [((2, 3), (2, 3)), ((), (2, 3)), ((1,), (4,))])
def test_apply_backward_batched(xp, rng, dtype, transpose, strategy, vbatch, xbatch):
    """A shared V gets the gradient summed over the batch, in V's own shape."""
    d, k, n = 6, 4, 3
    V = random_v(rng, (*vbatch, d, k), dtype)
    X, G = randn(rng, (*xbatch, d, n), dtype), randn(rng, (*xbatch, d, n), dtype)
    out = fasth.apply(xp(V), xp(X), transpose, strategy=strategy)
    dV, dX = fasth.apply_backward(xp(V), out, xp(G), transpose, strategy=strategy)
    rdV, rdX = ref_apply_grad(V, X, G, transpose)
    assert rdV.shape == V.shape
    assert_close(xp.numpy(dV), rdV, dtype, d + n * math.prod(xbatch))
    assert_close(xp.numpy(dX), rdX, dtype, d)


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("transpose", [False, True])
def test_zero_vectors_are_identity_with_zero_gradient(xp, rng, strategy, transpose):
    d, k, n = 7, 5, 3
    V = random_v(rng, (d, k), zero_cols=[0, 2, 4])
    X, G = randn(rng, (d, n)), randn(rng, (d, n))
    out = fasth.apply(xp(V), xp(X), transpose, strategy=strategy, block=2)
    assert_close(xp.numpy(out), ref_apply(V[:, [1, 3]], X, transpose), "float64", d)
    dV, dX = fasth.apply_backward(xp(V), out, xp(G), transpose, strategy=strategy, block=2)
    dV = xp.numpy(dV)
    assert np.all(dV[:, [0, 2, 4]] == 0)
    assert_close(dV, ref_apply_grad(V, X, G, transpose)[0], "float64", d + n)
    assert_close(xp.numpy(fasth.matrix(xp(np.zeros((d, k))))), np.eye(d), "float64", d)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("d,k", [(1, 1), (5, 3), (6, 6), (13, 5)])
@pytest.mark.parametrize("thin", [False, True])
@pytest.mark.parametrize("block", [None, 1, 3])
def test_matrix_backward(xp, rng, dtype, d, k, thin, block):
    V = random_v(rng, (2, d, k), dtype, zero_cols=[k - 1])
    U = fasth.matrix(xp(V), thin, block=block)
    G = randn(rng, xp.numpy(U).shape, dtype)
    dV = xp.numpy(fasth.matrix_backward(xp(V), U, xp(G), thin, block=block))
    assert_close(dV, ref_matrix_grad(V, G, thin), dtype, 2 * d)
    assert np.all(dV[..., k - 1] == 0)


def test_factors_are_reusable(xp, rng):
    d, k, n = 9, 6, 4
    V, X, G = random_v(rng, (d, k)), randn(rng, (2, d, n)), randn(rng, (2, d, n))
    out, f = fasth._functional.apply_with_factors(xp(V), xp(X), block=4)
    dV, dX = fasth.apply_backward(xp(V), out, xp(G), factors=f, block=4)
    dV2, dX2 = fasth.apply_backward(xp(V), out, xp(G), block=4)
    np.testing.assert_array_equal(xp.numpy(dV), xp.numpy(dV2))
    np.testing.assert_array_equal(xp.numpy(dX), xp.numpy(dX2))
    U, f = fasth._functional.matrix_with_factors(xp(V), block=2)
    Gm = randn(rng, (d, d))
    dV = fasth.matrix_backward(xp(V), U, xp(Gm), factors=f, block=2)
    assert_close(xp.numpy(dV), ref_matrix_grad(V, Gm), "float64", 2 * d)


# ---------------------------------------------------------------------------------------
# Properties.

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("d,k", [(1, 1), (8, 3), (33, 33), (64, 40)])
def test_properties(xp, rng, dtype, d, k):
    eps = np.finfo(dtype).eps
    V, X = random_v(rng, (d, k), dtype), randn(rng, (d, 5), dtype)
    U = xp.numpy(fasth.matrix(xp(V))).astype(np.float64)
    assert np.abs(U.T @ U - np.eye(d)).max() <= 8 * eps * math.sqrt(d)
    thin = xp.numpy(fasth.matrix(xp(V), thin=True))
    assert_close(thin, U[:, :k], dtype, d)
    back = fasth.apply(xp(V), fasth.apply(xp(V), xp(X)), transpose=True)
    assert_close(xp.numpy(back), X.astype(np.float64), dtype, d)
    assert_close(xp.numpy(fasth.apply(xp(V), xp(X))), U @ X, dtype, d)
    assert_close(xp.numpy(fasth.apply(xp(V), xp(X), True)), U.T @ X, dtype, d)


# ---------------------------------------------------------------------------------------
# Non-finite values propagate, column by column.

@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("strategy", ["blockwise", "materialize"])
@pytest.mark.parametrize("transpose", [False, True])
def test_non_finite_propagates(xp, rng, bad, strategy, transpose):
    d, k, n = 6, 4, 5
    V, X = random_v(rng, (d, k)), randn(rng, (d, n))
    X[2, 1] = bad
    out = xp.numpy(fasth.apply(xp(V), xp(X), transpose, strategy=strategy))
    assert not np.isfinite(out[:, 1]).any()
    ok = [0, 2, 3, 4]
    assert_close(out[:, ok], ref_apply(V, X[:, ok], transpose), "float64", d)


# ---------------------------------------------------------------------------------------
# Bad input: TypeError / ValueError whose message names the argument.

def _bad_cases():
    r = np.random.default_rng(1)
    V, X = random_v(r, (5, 3)), randn(r, (5, 4))
    a, ab, m, mb = fasth.apply, fasth.apply_backward, fasth.matrix, fasth.matrix_backward
    return [
        ("V rank", lambda t: a(t(V[:, 0]), t(X)), ValueError, r"V must have at least 2"),
        ("X rank", lambda t: a(t(V), t(X[:, 0])), ValueError, r"X must have at least 2"),
        ("X rows", lambda t: a(t(V), t(X[:4])), ValueError, r"X has 4 rows.*d = 5"),
        ("int V", lambda t: a(t(V.astype(np.int64)), t(X)), TypeError, r"V has dtype int64"),
        ("complex X", lambda t: a(t(V), t(X.astype(np.complex128))), TypeError,
         r"X has dtype complex128"),
        ("half V", lambda t: m(t(V.astype(np.float16))), TypeError, r"V has dtype float16"),
        ("bool X", lambda t: a(t(V), t(X > 0)), TypeError, r"X has dtype bool"),
        ("mixed dtypes", lambda t: a(t(V.astype(np.float32)), t(X)), TypeError,
         r"V is float32, X is float64"),
        ("batch mismatch", lambda t: a(t(np.stack([V, V])), t(np.stack([X, X, X]))),
         ValueError, r"batch dimensions of V \(2,\) and X \(3,\)"),
        ("batched V, unbatched X", lambda t: a(t(np.stack([V, V])), t(X)), ValueError,
         r"batch dimensions of V"),
        ("block 0", lambda t: a(t(V), t(X), block=0), ValueError, r"block must be"),
        ("strategy", lambda t: a(t(V), t(X), strategy="fast"), ValueError, r"strategy must be"),
        ("grad shape", lambda t: ab(t(V), t(X), t(X[:, :3])), ValueError, r"grad has shape"),
        ("out rows", lambda t: ab(t(V), t(X[:4]), t(X[:4])), ValueError, r"out has 4 rows"),
        ("factors size", lambda t: ab(t(V), t(X), t(X), factors=t(np.zeros(1))), ValueError,
         r"factors"),
        ("matrix U shape", lambda t: mb(t(V), t(X), t(X)), ValueError, r"U has shape"),
        ("matrix grad shape", lambda t: mb(t(V), t(np.eye(5)), t(X)), ValueError,
         r"grad has shape"),
        ("matrix thin", lambda t: mb(t(V), t(np.eye(5)), t(np.eye(5)), thin=True), ValueError,
         r"U has shape"),
        ("matrix int", lambda t: m(t(np.ones((3, 2), np.int32))), TypeError,
         r"V has dtype int32"),
        ("rank 1 V", lambda t: m(t(V[0])), ValueError, r"V must have at least 2 dimensions"),
    ]


BAD = _bad_cases()


@pytest.mark.parametrize("case", BAD, ids=[c[0] for c in BAD])
def test_bad_input(xp, case):
    _, call, exc, match = case
    with pytest.raises(exc, match=match):
        call(xp)


def test_mixed_libraries(rng):
    torch = pytest.importorskip("torch")
    V, X = random_v(rng, (5, 3)), randn(rng, (5, 4))
    with pytest.raises(TypeError, match=r"X is a torch array but V is a numpy array"):
        fasth.apply(V, torch.from_numpy(X))
    with pytest.raises(TypeError, match=r"grad is a numpy array but V is a torch array"):
        fasth.apply_backward(torch.from_numpy(V), torch.from_numpy(X), X)


def test_mixed_devices(device, rng):
    if device == "cpu":
        pytest.skip("needs a second device")
    import torch

    V, X = random_v(rng, (5, 3)), randn(rng, (5, 4))
    with pytest.raises(ValueError, match=r"X is on cpu"):
        fasth.apply(torch.from_numpy(V).cuda(), torch.from_numpy(X))


@pytest.mark.parametrize("which", ["V", "X"])
def test_non_array_names_the_argument(rng, which):
    args = {"V": random_v(rng, (5, 3)), "X": randn(rng, (5, 4))}
    args[which] = args[which].tolist()
    with pytest.raises(TypeError, match=rf"\b{which}\b"):
        fasth.apply(args["V"], args["X"])


# ---------------------------------------------------------------------------------------
# Property-based fuzz: a correct result, or a TypeError/ValueError when the input is bad.

FUZZ_DTYPES = ["float32", "float64", "float16", "int64", "complex128"]


@st.composite
def fuzz_case(draw):
    op = draw(st.sampled_from(["apply", "apply_backward", "matrix", "matrix_backward"]))
    d = draw(st.integers(0, 9))
    k = draw(st.integers(0, d + 3))  # any k: more reflectors than rows too
    n = draw(st.integers(0, 6))
    xbatch = draw(st.sampled_from([(), (0,), (1,), (3,), (2, 2)]))
    vbatch = draw(st.sampled_from([(), xbatch, xbatch, (1,), (2,)]))
    dtypes = draw(st.sampled_from([("float32",) * 3, ("float64",) * 3, ("float64",) * 3,
                                   *((a, b, b) for a in FUZZ_DTYPES for b in FUZZ_DTYPES)]))
    return dict(
        op=op, d=d, k=k, n=n, xbatch=xbatch, vbatch=vbatch, dtypes=dtypes,
        xrows=draw(st.sampled_from([d, d, d, d + 1])),
        layouts=draw(st.tuples(*[st.sampled_from(LAYOUTS)] * 3)),
        transpose=draw(st.booleans()), thin=draw(st.booleans()),
        strategy=draw(st.sampled_from(STRATEGIES)),
        block=draw(st.one_of(st.none(), st.integers(-1, 11))),
        seed=draw(st.integers(0, 2**32 - 1)),
    )


def _fuzz_error(c) -> bool:
    """Whether the case is bad input."""
    vdt, xdt, gdt = c["dtypes"]
    used = {"apply": {vdt, xdt}, "apply_backward": {vdt, xdt, gdt}, "matrix": {vdt},
            "matrix_backward": {vdt, gdt}}[c["op"]]
    if not used <= {"float32", "float64"} or len(used) > 1:
        return True
    if c["block"] is not None and c["block"] < 1:
        return True
    if c["op"].startswith("apply"):
        vb, xb = c["vbatch"], c["xbatch"]
        return c["xrows"] != c["d"] or (vb != xb and math.prod(vb) != 1)
    return False


@settings(max_examples=100, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(c=fuzz_case())
def test_fuzz(xp, c):
    rng = np.random.default_rng(c["seed"])
    d, k, n, (vdt, xdt, gdt) = c["d"], c["k"], c["n"], c["dtypes"]
    lv, lx, lg = c["layouts"]
    V = random_v(rng, (*c["vbatch"], d, k)).astype(vdt)
    expect_error = _fuzz_error(c)
    if c["op"].startswith("apply"):
        X = randn(rng, (*c["xbatch"], c["xrows"], n)).astype(xdt)
        kw = dict(block=c["block"], strategy=c["strategy"])
        try:
            out = fasth.apply(xp(V, lv), xp(X, lx), c["transpose"], **kw)
            if c["op"] == "apply_backward":
                G = randn(rng, X.shape).astype(gdt)
                # feed back the result, in a possibly different layout
                back = xp(xp.numpy(out), lx) if vdt == xdt == gdt else xp(X, lx)
                dV, dX = fasth.apply_backward(xp(V, lv), back, xp(G, lg), c["transpose"], **kw)
        except (TypeError, ValueError):
            assert expect_error, "valid input was rejected"
            return
        assert not expect_error, "bad input was accepted"
        dt = np.dtype(vdt).name
        assert_close(xp.numpy(out), ref_apply(V, X, c["transpose"]), dt, d)
        if c["op"] == "apply_backward":
            rdV, rdX = ref_apply_grad(V, X, G, c["transpose"])
            assert_close(xp.numpy(dV), rdV, dt, d + n * max(1, math.prod(c["xbatch"])))
            assert_close(xp.numpy(dX), rdX, dt, d)
    else:
        try:
            U = fasth.matrix(xp(V, lv), c["thin"], block=c["block"])
            if c["op"] == "matrix_backward":
                G = randn(rng, xp.numpy(U).shape).astype(gdt)
                dV = fasth.matrix_backward(xp(V, lv), xp(xp.numpy(U), lx), xp(G, lg),
                                           c["thin"], block=c["block"])
        except (TypeError, ValueError):
            assert expect_error, "valid input was rejected"
            return
        assert not expect_error, "bad input was accepted"
        dt = np.dtype(vdt).name
        assert_close(xp.numpy(U), ref_matrix(V, c["thin"]), dt, d)
        if c["op"] == "matrix_backward":
            assert_close(xp.numpy(dV), ref_matrix_grad(V, G, c["thin"]), dt, 2 * d)


# ---------------------------------------------------------------------------------------
# Any number of reflectors, and any scale of a reflector's vector.

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("d,k", [(3, 5), (4, 9), (1, 3), (6, 13)])
@pytest.mark.parametrize("transpose", [False, True])
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_more_reflectors_than_rows(xp, rng, dtype, d, k, transpose, strategy):
    """A product of any number of reflectors is orthogonal: k > d works forward and backward,
    and the thin frame is U[:, :min(k, d)]."""
    n = 4
    V, X, G = random_v(rng, (2, d, k), dtype), randn(rng, (2, d, n), dtype), randn(rng, (2, d, n), dtype)
    out = fasth.apply(xp(V), xp(X), transpose, strategy=strategy, block=3)
    assert_close(xp.numpy(out), ref_apply(V, X, transpose), dtype, k)
    dV, dX = fasth.apply_backward(xp(V), out, xp(G), transpose, strategy=strategy, block=3)
    rdV, rdX = ref_apply_grad(V, X, G, transpose)
    assert_close(xp.numpy(dV), rdV, dtype, k + n)
    assert_close(xp.numpy(dX), rdX, dtype, k)
    for thin in (False, True):
        U = fasth.matrix(xp(V), thin)
        assert xp.numpy(U).shape == (2, d, d)
        assert_close(xp.numpy(U), ref_matrix(V, thin), dtype, k)
        Gm = randn(rng, (2, d, d), dtype)
        assert_close(xp.numpy(fasth.matrix_backward(xp(V), U, xp(Gm), thin)),
                     ref_matrix_grad(V, Gm, thin), dtype, 2 * k)


SCALES = {"float32": [1e-30, 1e-20, 1e-10, 1e20, 1e30], "float64": [1e-300, 1e-200, 1e200, 1e300]}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("op", ["apply", "matrix"])
def test_any_finite_scale_is_its_reflector(xp, rng, dtype, strategy, op):
    """A reflector depends on its vector's direction alone: columns scaled by tiny or huge
    factors (whose squared norms under- or overflow) give the unit columns' values, and
    gradients scaled by 1 / scale. Only an exactly zero column is the identity."""
    d, k, n = 7, 5, 4
    unit = random_v(rng, (d, k), "float64")
    unit /= np.linalg.norm(unit, axis=0)
    X, G = randn(rng, (d, n), dtype), randn(rng, (d, n if op == "apply" else d), dtype)
    for scale in SCALES[dtype]:
        V = (unit * scale).astype(dtype)
        ref_v = unit.astype(dtype).astype(np.float64)
        if op == "apply":
            out = fasth.apply(xp(V), xp(X), strategy=strategy)
            assert_close(xp.numpy(out), ref_apply(ref_v, X), dtype, d)
            dV, _ = fasth.apply_backward(xp(V), out, xp(G), strategy=strategy)
            want = ref_apply_grad(ref_v, X, G)[0]
        else:
            U = fasth.matrix(xp(V))
            assert_close(xp.numpy(U), ref_matrix(ref_v), dtype, d)
            dV = fasth.matrix_backward(xp(V), U, xp(G))
            want = ref_matrix_grad(ref_v, G)
        got = xp.numpy(dV).astype(np.float64) * scale
        assert np.isfinite(got).all(), scale
        assert_close(got.astype(dtype), want, dtype, 2 * d + n)


# ---------------------------------------------------------------------------------------
# Householder vectors of a given matrix, and the call counter.

@pytest.mark.parametrize("shape", [(5, 5), (9, 4), (70, 40), (2, 40, 40)])
def test_householder_vectors_reproduce_q(rng, shape):
    A = randn(rng, shape)
    V = fasth.householder_vectors(A)
    Q, R = np.linalg.qr(A)
    Q = Q * np.sign(np.diagonal(R, axis1=-2, axis2=-1))[..., None, :]  # diag(R) >= 0
    assert_close(fasth.matrix(V, thin=True), Q, "float64", 4 * shape[-2])
    assert_close(fasth.matrix(fasth.householder_vectors(Q), thin=True), Q, "float64", shape[-2])


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


@pytest.mark.parametrize("vshape,cols,scale", [
    ((300, 256), 256, 1.0), ((2, 260, 256), 256, 1.0),  # k = 256, a V per entry
    ((300, 256), 200, 1.0),  # a view of 200 columns, rows 256 apart
    ((270, 256), 256, 1e30),  # norms too large to square: V normalised instead
])
def test_rows_far_apart_as_they_are(xp, rng, vshape, cols, scale):
    """V row-major with its rows a multiple of 256 elements apart, used as it is (numpy,
    torch): the forward reads a padded copy of it; values and gradients match the reference,
    from the tape and from the output."""
    V = np.ascontiguousarray(random_v(rng, vshape))[..., :cols] * scale
    X, G = randn(rng, (*vshape[:-2], vshape[-2], 7)), randn(rng, (*vshape[:-2], vshape[-2], 7))
    for transpose in (False, True):
        out = fasth.apply(xp(V), xp(X), transpose)
        assert_close(xp.numpy(out), ref_apply(V, X, transpose), "float64", vshape[-2])
        dV, dX = fasth.apply_backward(xp(V), out, xp(G), transpose)
        rdV, rdX = ref_apply_grad(V, X, G, transpose)
        assert_close(xp.numpy(dV) * scale, rdV * scale, "float64", vshape[-2])
        assert_close(xp.numpy(dX), rdX, "float64", vshape[-2])
    c = fasth._engine.resolve(Spec(APPLY, HOUSEHOLDER), "numpy", (V, None, X))
    out, f, tape = fasth._engine.forward(c, V, None, X, tape=True)
    dVt, _, dXt = fasth._engine.backward(c, V, f, None, G, tape=tape)
    rdV, rdX = ref_apply_grad(V, X, G, False)
    assert_close(dVt * scale, rdV * scale, "float64", vshape[-2])
    assert_close(dXt, rdX, "float64", vshape[-2])
    assert_close(fasth.matrix(V), ref_matrix(V), "float64", vshape[-2])


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


@pytest.mark.parametrize("vshape,xshape,transpose,zeros", [
    ((300, 300), (300, 16), False, ()),
    ((300, 300), (2, 300, 16), True, (3, 100)),  # V shared by a batch, zero columns
    ((2, 200, 120), (2, 200, 9), False, ()),  # a V per entry: leaves merged, no solve
    ((33, 40), (33, 4), True, ()),  # more reflectors than rows
    ((260, 256), None, False, (7,)),  # U
    ((260, 256), None, True, ()),  # U's first k columns
])
@pytest.mark.parametrize("tape", [True, False])
def test_cuda_plans_on_the_cpu_backend(rng, vshape, xshape, transpose, zeros, tape):
    """What only CUDA's plans do, checked on any machine by running them on the CPU backend:
    one block with the full T where the work is small, its T from one triangular solve."""
    V = random_v(rng, vshape, zero_cols=zeros)
    apply = xshape is not None
    X = randn(rng, xshape) if apply else None
    p = plans.plan("apply" if apply else "matrix", vshape, xshape or (),
                   transpose=transpose and apply, thin=transpose and not apply)
    if len(vshape) == 2:
        assert p.block == vshape[-1]
    G = randn(rng, p.out[0])
    out, dV, dX, _, _ = plans.run(p, V, X, G, tape)
    d = vshape[-2]
    if apply:
        assert_close(out, ref_apply(V, X, transpose), "float64", d)
        rdV, rdX = ref_apply_grad(V, X, G, transpose)
        assert_close(dV, rdV, "float64", d)
        assert_close(dX, rdX, "float64", d)
    else:
        assert_close(out, ref_matrix(V, transpose), "float64", d)
        assert_close(dV, ref_matrix_grad(V, G, transpose), "float64", d)
    assert np.all(dV[..., list(zeros)] == 0)


def test_gpu_launches_where_the_work_is_small(rng):
    """Backend calls are launches on the GPU: CUDA's plan at d = 1024, n = 256 makes at most 12
    in a forward and 40 in a forward + backward (one block, T by a solve); blocks of 128
    make over three times as many."""
    d, n = 1024, 256
    V, X, G = (randn(rng, s, "float32") for s in ((d, d), (d, n), (d, n)))
    out, dV, dX, fwd, bwd = plans.run(plans.plan("apply", (d, d), (d, n)), V, X, G)
    assert fwd <= 12 and fwd + bwd <= 40, (fwd, bwd)
    assert_close(out, ref_apply(V, X), "float32", d)  # one block of 1024 reflectors
    rdV, rdX = ref_apply_grad(V, X, G)
    assert_close(dV, rdV, "float32", d + n)
    assert_close(dX, rdX, "float32", d)
    *_, fwd128, bwd128 = plans.run(plans.plan("apply", (d, d), (d, n), block=128), V, X, G)
    assert fwd128 + bwd128 > 3 * (fwd + bwd)
