"""The functional API's values (no autograd) against the float64 reference: apply and matrix
at many sizes, blocks and batches, empty sizes, more reflectors than rows, any scale of a
reflector, orthogonality, non-finite input, householder_vectors. Runs on every device of the
`device` fixture."""

from __future__ import annotations

import math

import numpy as np
import pytest

import fasth

from helpers import DTYPES, STRATEGIES, assert_close, randn, random_v, wide
from reference import ref_apply, ref_apply_grad, ref_matrix, ref_matrix_grad


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
# Properties.

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("d,k", [(1, 1), (8, 3), (33, 33), (64, 40)])
def test_properties(xp, rng, dtype, d, k):
    eps = np.finfo(dtype).eps
    V, X = random_v(rng, (d, k), dtype), randn(rng, (d, 5), dtype)
    U = wide(xp.numpy(fasth.matrix(xp(V))))
    assert np.abs(U.conj().T @ U - np.eye(d)).max() <= 8 * eps * math.sqrt(d)  # unitary
    thin = xp.numpy(fasth.matrix(xp(V), thin=True))
    assert_close(thin, U[:, :k], dtype, d)
    back = fasth.apply(xp(V), fasth.apply(xp(V), xp(X)), transpose=True)
    assert_close(xp.numpy(back), wide(X), dtype, d)
    assert_close(xp.numpy(fasth.apply(xp(V), xp(X))), U @ X, dtype, d)
    assert_close(xp.numpy(fasth.apply(xp(V), xp(X), True)), U.conj().T @ X, dtype, d)


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
    unit = wide(random_v(rng, (d, k), dtype))
    unit /= np.linalg.norm(unit, axis=0)
    X, G = randn(rng, (d, n), dtype), randn(rng, (d, n if op == "apply" else d), dtype)
    for scale in SCALES[np.finfo(dtype).dtype.name]:
        V = (unit * scale).astype(dtype)
        ref_v = wide(unit.astype(dtype))
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
        got = wide(xp.numpy(dV)) * scale
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
