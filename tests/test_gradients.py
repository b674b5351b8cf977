"""apply_backward and matrix_backward against the reference's gradients: sizes, blocks,
batches, zero vectors, reusable factors. Runs on every device of the `device` fixture."""

from __future__ import annotations

import math

import numpy as np
import pytest

import fasth
import fasth._functional

from conftest import Arrays
from helpers import DTYPES, STRATEGIES, assert_close, randn, random_v
from reference import finite_difference, ref_apply, ref_apply_grad, ref_matrix, ref_matrix_grad


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

@pytest.fixture
def arrays(device):
    """torch tensors on `device`, in full float32 on CUDA (the tolerances assume it)."""
    torch = pytest.importorskip("torch")
    old = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    yield Arrays("torch", device)
    torch.backends.cuda.matmul.allow_tf32 = old


# ---------------------------------------------------------------------------------------
# Sizes past the ones above, on torch tensors: several blocks of the GPU block size, a short
# last block, the small-d regime and batches.

SIZES = [(96, 96, 7), (130, 100, 33), (256, 200, 300), (48, 48, 48)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("d,k,n", SIZES)
@pytest.mark.parametrize("transpose", [False, True])
@pytest.mark.parametrize("strategy", ["blockwise", "materialize"])
def test_apply_and_backward(arrays, rng, dtype, d, k, n, transpose, strategy):
    V, X, G = random_v(rng, (d, k), dtype), randn(rng, (d, n), dtype), randn(rng, (d, n), dtype)
    out = fasth.apply(arrays(V), arrays(X), transpose, strategy=strategy)
    assert_close(arrays.numpy(out), ref_apply(V, X, transpose), dtype, d)
    dV, dX = fasth.apply_backward(arrays(V), out, arrays(G), transpose,
                                  strategy=strategy)
    rdV, rdX = ref_apply_grad(V, X, G, transpose)
    assert_close(arrays.numpy(dV), rdV, dtype, d + n)
    assert_close(arrays.numpy(dX), rdX, dtype, d)


def check_matrix(arrays, V, G, thin, dtype):
    """matrix and matrix_backward against the float64 reference."""
    d = V.shape[-2]
    U = fasth.matrix(arrays(V), thin)
    assert_close(arrays.numpy(U), ref_matrix(V, thin), dtype, d)
    dV = fasth.matrix_backward(arrays(V), U, arrays(G), thin)
    assert_close(arrays.numpy(dV), ref_matrix_grad(V, G, thin), dtype, 2 * d)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("d,k", [(48, 48), (128, 64), (200, 200)])
@pytest.mark.parametrize("thin", [False, True])
def test_matrix_and_backward(arrays, rng, dtype, d, k, thin):
    V = random_v(rng, (3, d, k), dtype)
    G = randn(rng, (3, d, k if thin else d), dtype)
    check_matrix(arrays, V, G, thin, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_autograd_batched_shared_v(arrays, rng, dtype):
    import fasth.torch

    d, k, n = 100, 70, 20
    V, X, G = random_v(rng, (d, k), dtype), randn(rng, (4, d, n), dtype), randn(rng, (4, d, n), dtype)
    Vt, Xt = arrays(V).requires_grad_(), arrays(X).requires_grad_()
    out = fasth.torch.apply(Vt, Xt)
    out.backward(arrays(G))
    rdV, rdX = ref_apply_grad(V, X, G)
    assert_close(arrays.numpy(out), ref_apply(V, X), dtype, d)
    assert_close(arrays.numpy(Vt.grad), rdV, dtype, 4 * (d + n))
    assert_close(arrays.numpy(Xt.grad), rdX, dtype, d)


# ---------------------------------------------------------------------------------------
# The small-d path (d <= 128): U and its backward in one kernel launch each.

def small_backward(V: np.ndarray, U: np.ndarray, G: np.ndarray) -> np.ndarray:
    """dV as the small-d backward kernel computes it, in float64: from the output U = H_1 ...
    H_k E and G = dL/dU, reflector by reflector in forward order, recovering each input (H_i
    is its own inverse): with tau = 2 / |v|^2 (0 for v = 0), A_in = H_i A, a = A_in^T v
    (= -A^T v), g = G^T v: dv_i = tau^2 (g . a) v - tau (G a + A_in g); G <- H_i G."""
    A, G = U.astype(np.float64), G.astype(np.float64)
    dV = np.zeros(V.shape)
    for i in range(V.shape[1]):
        v = V[:, i].astype(np.float64)
        nn = v @ v
        tau = 0.0 if nn == 0 else 2.0 / nn
        p, g = A.T @ v, G.T @ v
        A = A - tau * np.outer(v, p)
        a = p if tau == 0 else -p
        dV[:, i] = tau**2 * (g @ a) * v - tau * (G @ a + A @ g)
        G = G - tau * np.outer(v, g)
    return dV


@pytest.mark.parametrize("d,k,thin", [(5, 3, False), (5, 3, True), (6, 6, False), (1, 1, True)])
def test_small_path_formula_cpu(rng, d, k, thin):
    """The kernel's sequential formula against finite differences and fasth on the CPU."""
    V = random_v(rng, (d, k), zero_cols=(1,) if k > 2 else ())
    G = randn(rng, (d, k if thin else d))
    U = ref_matrix(V, thin)
    got = small_backward(V, U, G)
    fd = finite_difference(lambda W: ref_matrix(W, thin), V, G)
    if k > 2:
        fd[:, 1] = 0  # no gradient through a zero vector (H is then the constant identity)
    assert_close(got, fd, "float64", 1e6)  # finite differences: about 1e-9
    assert_close(got, fasth.matrix_backward(V, fasth.matrix(V, thin), G, thin), "float64", 2 * d)


SMALL_D = [1, 12, 48, 96, 128]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("d", SMALL_D)
@pytest.mark.parametrize("thin", [False, True])
@pytest.mark.parametrize("batch", [(), (3,)])
def test_small_d_matrix(arrays, rng, dtype, d, thin, batch):
    """matrix and matrix_backward at small d, a zero reflector included (tau = 0); where the
    device's shared memory is too small (double at d = 128) the blockwise path answers."""
    k = max(1, 3 * d // 4)
    V = random_v(rng, (*batch, d, k), dtype, zero_cols=(k // 2,) if k > 1 else ())
    G = randn(rng, (*batch, d, k if thin else d), dtype)
    check_matrix(arrays, V, G, thin, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("d", SMALL_D)
@pytest.mark.parametrize("transpose", [False, True])
def test_small_d_materialize_shared_v(arrays, rng, dtype, d, transpose):
    """apply with the materialize strategy (U by the small path, then one GEMM) and a V
    shared by a batch: its backward sums the batch into dV before the small backward."""
    k, n = d, 5
    V = random_v(rng, (d, k), dtype)
    X, G = randn(rng, (4, d, n), dtype), randn(rng, (4, d, n), dtype)
    Vt = arrays(V)
    out = fasth.apply(Vt, arrays(X), transpose, strategy="materialize")
    assert_close(arrays.numpy(out), ref_apply(V, X, transpose), dtype, d)
    dV, dX = fasth.apply_backward(Vt, out, arrays(G), transpose, strategy="materialize")
    rdV, rdX = ref_apply_grad(V, X, G, transpose)
    assert_close(arrays.numpy(dV), rdV, dtype, 4 * (d + n))
    assert_close(arrays.numpy(dX), rdX, dtype, d)
