"""CUDA-only cases on top of the device-parametrised core tests: larger sizes on torch CUDA
tensors, the caller's (non-default) stream, a second GPU, cupy arrays, CUDA-graph capture of a
training step, and the error when there is no GPU. Skips cleanly without a GPU."""

from __future__ import annotations

import numpy as np
import pytest

import fasth
import fasth._native
from conftest import cuda_skip_reason
from reference import ref_apply, ref_apply_grad, ref_matrix, ref_matrix_grad
from test_core import assert_close, randn, random_v

needs_cuda = pytest.mark.skipif(cuda_skip_reason() is not None,
                                reason=str(cuda_skip_reason()))
DTYPES = ["float32", "float64"]


@pytest.fixture
def torch():
    import torch

    old = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False  # full float32: the tolerances assume it
    yield torch
    torch.backends.cuda.matmul.allow_tf32 = old


def cuda(torch, a, device="cuda"):
    return torch.from_numpy(np.ascontiguousarray(a)).to(device)


def host(t) -> np.ndarray:
    return t.detach().cpu().numpy()


# ---------------------------------------------------------------------------------------
# Without a GPU: a clear error, never a crash.

def test_cuda_module_unavailable_without_gpu():
    try:
        import torch

        if torch.cuda.is_available():
            pytest.skip("a CUDA device is present")
    except ImportError:
        pass
    with pytest.raises(RuntimeError, match="unavailable"):
        fasth._native.cuda()


def test_cuda_module_imports_anywhere():
    """Importing fasth._cuda touches no driver and finds cuBLAS (fasth[cuda13]) where it was
    built: a module that is there but fails to load fails here, not only on a GPU."""
    import importlib.util

    if importlib.util.find_spec("fasth._cuda") is None:
        pytest.skip("this build of fasth has no CUDA module")
    from fasth import _cuda

    assert isinstance(_cuda.unavailable_reason(), str)


# ---------------------------------------------------------------------------------------
# Sizes past the core tests': several blocks of the GPU block size, a short last block,
# the small-d regime and batches.

SIZES = [(96, 96, 7), (130, 100, 33), (256, 200, 300), (48, 48, 48)]


@needs_cuda
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("d,k,n", SIZES)
@pytest.mark.parametrize("transpose", [False, True])
@pytest.mark.parametrize("strategy", ["blockwise", "materialize"])
def test_apply_and_backward(torch, rng, dtype, d, k, n, transpose, strategy):
    V, X, G = random_v(rng, (d, k), dtype), randn(rng, (d, n), dtype), randn(rng, (d, n), dtype)
    out = fasth.apply(cuda(torch, V), cuda(torch, X), transpose, strategy=strategy)
    assert out.is_cuda
    assert_close(host(out), ref_apply(V, X, transpose), dtype, d)
    dV, dX = fasth.apply_backward(cuda(torch, V), out, cuda(torch, G), transpose,
                                  strategy=strategy)
    rdV, rdX = ref_apply_grad(V, X, G, transpose)
    assert_close(host(dV), rdV, dtype, d + n)
    assert_close(host(dX), rdX, dtype, d)


def check_matrix(torch, V, G, thin, dtype):
    """matrix and matrix_backward on the GPU against the float64 reference."""
    d = V.shape[-2]
    U = fasth.matrix(cuda(torch, V), thin)
    assert_close(host(U), ref_matrix(V, thin), dtype, d)
    dV = fasth.matrix_backward(cuda(torch, V), U, cuda(torch, G), thin)
    assert_close(host(dV), ref_matrix_grad(V, G, thin), dtype, 2 * d)


@needs_cuda
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("d,k", [(48, 48), (128, 64), (200, 200)])
@pytest.mark.parametrize("thin", [False, True])
def test_matrix_and_backward(torch, rng, dtype, d, k, thin):
    V = random_v(rng, (3, d, k), dtype)
    G = randn(rng, (3, d, k if thin else d), dtype)
    check_matrix(torch, V, G, thin, dtype)


@needs_cuda
@pytest.mark.parametrize("dtype", DTYPES)
def test_autograd_batched_shared_v(torch, rng, dtype):
    import fasth.torch

    d, k, n = 100, 70, 20
    V, X, G = random_v(rng, (d, k), dtype), randn(rng, (4, d, n), dtype), randn(rng, (4, d, n), dtype)
    Vt, Xt = cuda(torch, V).requires_grad_(), cuda(torch, X).requires_grad_()
    out = fasth.torch.apply(Vt, Xt)
    out.backward(cuda(torch, G))
    rdV, rdX = ref_apply_grad(V, X, G)
    assert_close(host(out), ref_apply(V, X), dtype, d)
    assert_close(host(Vt.grad), rdV, dtype, 4 * (d + n))
    assert_close(host(Xt.grad), rdX, dtype, d)


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
    from reference import finite_difference

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


@needs_cuda
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("d", SMALL_D)
@pytest.mark.parametrize("thin", [False, True])
@pytest.mark.parametrize("batch", [(), (3,)])
def test_small_d_matrix(torch, rng, dtype, d, thin, batch):
    """matrix and matrix_backward at small d, a zero reflector included (tau = 0); where the
    device's shared memory is too small (double at d = 128) the blockwise path answers."""
    k = max(1, 3 * d // 4)
    V = random_v(rng, (*batch, d, k), dtype, zero_cols=(k // 2,) if k > 1 else ())
    G = randn(rng, (*batch, d, k if thin else d), dtype)
    check_matrix(torch, V, G, thin, dtype)


@needs_cuda
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("d", SMALL_D)
@pytest.mark.parametrize("transpose", [False, True])
def test_small_d_materialize_shared_v(torch, rng, dtype, d, transpose):
    """apply with the materialize strategy (U by the small path, then one GEMM) and a V
    shared by a batch: its backward sums the batch into dV before the small backward."""
    k, n = d, 5
    V = random_v(rng, (d, k), dtype)
    X, G = randn(rng, (4, d, n), dtype), randn(rng, (4, d, n), dtype)
    Vt = cuda(torch, V)
    out = fasth.apply(Vt, cuda(torch, X), transpose, strategy="materialize")
    assert_close(host(out), ref_apply(V, X, transpose), dtype, d)
    dV, dX = fasth.apply_backward(Vt, out, cuda(torch, G), transpose, strategy="materialize")
    rdV, rdX = ref_apply_grad(V, X, G, transpose)
    assert_close(host(dV), rdV, dtype, 4 * (d + n))
    assert_close(host(dX), rdX, dtype, d)


@needs_cuda
def test_small_d_launches(torch, rng):
    """fasth.torch.matrix forward + backward at d = 48 in at most 3 kernel launches (all of
    them, torch's included), counted by the profiler: the small path's U (with its
    normalisation), its factors' zeroed T blocks, and its backward."""
    import fasth.torch
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    d = 48
    V, G = random_v(rng, (d, d), "float32"), randn(rng, (d, d), "float32")
    Vt, Gt = cuda(torch, V).requires_grad_(), cuda(torch, G)

    def step():
        return torch.autograd.grad(fasth.torch.matrix(Vt), Vt, Gt)[0]

    step()  # warm up
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        dV = step()
        torch.cuda.synchronize()
    ops = [e.name for e in prof.events() if e.device_type == DeviceType.CUDA]
    assert len(ops) <= 3, ops
    assert_close(host(dV), ref_matrix_grad(V, G), "float32", 2 * d)


# ---------------------------------------------------------------------------------------
# Streams and devices.

@needs_cuda
@pytest.mark.parametrize("strategy", ["blockwise", "materialize"])
def test_runs_on_the_current_torch_stream_without_syncing(torch, rng, strategy):
    d, k, n = 256, 128, 64
    V, X = random_v(rng, (d, k), "float32"), randn(rng, (d, n), "float32")
    Vt, Xt = cuda(torch, V), cuda(torch, X)
    Xs = torch.zeros_like(Xt)
    fasth.apply(Vt, Xt, strategy=strategy)  # warm up: cuBLAS handle, kernels loaded
    torch.cuda.synchronize()
    s = torch.cuda.Stream()
    with torch.cuda.stream(s):
        torch.cuda._sleep(200_000_000)  # keeps s busy for a while (~0.1 s)
        Xs.copy_(Xt)  # written on s after the sleep: a call on another stream reads zeros
        out = fasth.apply(Vt, Xs, strategy=strategy)
        assert not s.query(), "fasth waited for the stream (or the device) to finish"
        got = host(out)  # read on s
    assert_close(got, ref_apply(V, X), "float32", d)


@needs_cuda
def test_second_gpu(torch, rng):
    if torch.cuda.device_count() < 2:
        pytest.skip("needs two CUDA devices")
    d, k, n = 96, 80, 40
    V, X, G = random_v(rng, (d, k)), randn(rng, (d, n)), randn(rng, (d, n))
    torch.cuda.set_device(0)
    Vt, Xt = cuda(torch, V, "cuda:1"), cuda(torch, X, "cuda:1")
    # Device 0 stays current: fasth must follow the arrays (and device 1's current stream).
    out = fasth.apply(Vt, Xt)
    dV, dX = fasth.apply_backward(Vt, out, cuda(torch, G, "cuda:1"))
    U = fasth.matrix(Vt)
    assert out.device == dV.device == U.device == torch.device("cuda:1")
    assert torch.cuda.current_device() == 0
    got = [host(t) for t in (out, dV, dX, U)]
    rdV, rdX = ref_apply_grad(V, X, G)
    assert_close(got[0], ref_apply(V, X), "float64", d)
    assert_close(got[1], rdV, "float64", d + n)
    assert_close(got[2], rdX, "float64", d)
    assert_close(got[3], ref_matrix(V), "float64", d)


@needs_cuda
@pytest.mark.parametrize("dtype", DTYPES)
def test_cupy_round_trip(rng, dtype):
    cp = pytest.importorskip("cupy")
    d, k, n = 130, 90, 17
    V, X, G = random_v(rng, (2, d, k), dtype), randn(rng, (2, d, n), dtype), randn(rng, (2, d, n), dtype)
    with cp.cuda.Stream(non_blocking=True):
        out = fasth.apply(cp.asarray(V), cp.asarray(X), True)
        dV, dX = fasth.apply_backward(cp.asarray(V), out, cp.asarray(G), True)
        U = fasth.matrix(cp.asarray(V), thin=True)
        assert all(isinstance(a, cp.ndarray) for a in (out, dV, dX, U))
        got = [cp.asnumpy(a) for a in (out, dV, dX, U)]
    rdV, rdX = ref_apply_grad(V, X, G, True)
    assert_close(got[0], ref_apply(V, X, True), dtype, d)
    assert_close(got[1], rdV, dtype, d + n)
    assert_close(got[2], rdX, dtype, d)
    assert_close(got[3], ref_matrix(V, True), dtype, d)


# ---------------------------------------------------------------------------------------
# CUDA graphs: a training step (forward and backward through fasth.torch) captured once and
# replayed on new data.

@needs_cuda
@pytest.mark.parametrize("strategy", ["blockwise", "materialize"])
def test_cuda_graph_training_step(torch, rng, strategy):
    import fasth.torch

    d, k, n, dm = 128, 96, 64, 48
    V = cuda(torch, random_v(rng, (d, k))).requires_grad_()
    W = cuda(torch, random_v(rng, (dm, dm))).requires_grad_()
    X, G = cuda(torch, randn(rng, (d, n))), cuda(torch, randn(rng, (d, n)))
    GU = cuda(torch, randn(rng, (dm, dm)))

    def step():
        loss = (fasth.torch.apply(V, X, strategy=strategy) * G).sum() + \
               (fasth.torch.matrix(W) * GU).sum()
        loss.backward()

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm up outside the capture, as torch asks
        for _ in range(2):
            V.grad = W.grad = None
            step()
    torch.cuda.current_stream().wait_stream(side)
    V.grad = W.grad = None
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()
    for _ in range(2):  # replay on fresh data in the captured tensors
        Vn, Wn, Xn, Gn, GUn = (random_v(rng, (d, k)), random_v(rng, (dm, dm)),
                               randn(rng, (d, n)), randn(rng, (d, n)), randn(rng, (dm, dm)))
        with torch.no_grad():
            for t, a in ((V, Vn), (W, Wn), (X, Xn), (G, Gn), (GU, GUn)):
                t.copy_(torch.from_numpy(a))
        graph.replay()
        torch.cuda.synchronize()
        assert_close(host(V.grad), ref_apply_grad(Vn, Xn, Gn)[0], "float64", d + n)
        assert_close(host(W.grad), ref_matrix_grad(Wn, GUn), "float64", 2 * dm)
