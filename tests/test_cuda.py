"""CUDA-only checks (the device-parametrised tests run every other body on CUDA too): the CUDA
module's import and its error without a GPU, the small-d path's launch count, the caller's
(non-default) stream, a second GPU, cupy arrays, CUDA-graph capture of a training step, and
CUDA's plans run on the CPU backend (what only they do, checked on any machine). Skips
cleanly without a GPU."""

from __future__ import annotations

import numpy as np
import pytest

import fasth
import fasth._native
from fasth.bench import plans

from conftest import cuda_skip_reason
from helpers import DTYPES, assert_close, randn, random_v
from reference import ref_apply, ref_apply_grad, ref_matrix, ref_matrix_grad

needs_cuda = pytest.mark.skipif(cuda_skip_reason() is not None,
                                reason=str(cuda_skip_reason()))


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


# ---------------------------------------------------------------------------------------
# CUDA's plans, checked on any machine on the CPU backend.

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
