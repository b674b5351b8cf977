"""Shared fixtures: the device every array test runs on (CUDA skips cleanly, with the
reason, where there is none) and helpers that make numpy or torch arrays on that device with
a chosen memory layout, so that the same test bodies run on the CPU and on a GPU."""

from __future__ import annotations

import functools

import os

import numpy as np
import pytest

# JAX takes 75% of a GPU's memory at start-up by default; torch, cupy and parallel test
# workers share the GPU here, so it allocates on demand instead.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "slow: builds C++ with CMake (deselect with -m 'not slow')")


@functools.cache
def cuda_skip_reason() -> str | None:
    """None when fasth can run on CUDA arrays here, otherwise why not."""
    try:
        import torch
    except ImportError:
        return "torch is not installed"
    if not torch.cuda.is_available():
        return "no CUDA device (torch.cuda.is_available() is False)"
    import fasth._native

    try:
        fasth._native.cuda()
    except RuntimeError as e:
        return str(e)
    return None


@pytest.fixture(params=["cpu", "cuda"])
def device(request) -> str:
    if request.param == "cuda" and cuda_skip_reason():
        pytest.skip(cuda_skip_reason())
    return request.param


@pytest.fixture(params=["numpy", "torch"])
def lib(request) -> str:
    return request.param


# Layouts of the last two dimensions. "step" cannot be addressed by BLAS (fasth copies it);
# "slice" and "fslice" are windows of a bigger array with a leading dimension larger than
# the extent (used in place); "batchstep" leaves a gap between batch entries.
LAYOUTS = ("C", "F", "step", "slice", "fslice", "batchstep")


class Arrays:
    """Arrays of one library (numpy or torch; cupy stands in for numpy on CUDA) on one
    device, made from numpy arrays."""

    def __init__(self, lib: str, device: str):
        self.lib, self.device = lib, device
        if lib == "torch":
            import torch

            self.torch = torch
        elif device == "cuda":
            self.cupy = pytest.importorskip("cupy", reason="numpy arrays on CUDA need cupy")

    def _from_numpy(self, a: np.ndarray):
        a = np.ascontiguousarray(a)
        if self.lib == "torch":  # torch's own strides, even for empty arrays (numpy's are 0)
            t = self.torch.from_numpy(a)
            return self.torch.empty(t.shape, dtype=t.dtype, device=self.device).copy_(t)
        if self.device == "cuda":
            return self.cupy.asarray(a)
        return a

    def _swap(self, a):
        return a.transpose(-1, -2) if self.lib == "torch" else a.swapaxes(-1, -2)

    def __call__(self, a, layout: str = "C"):
        """`a` (any array-like, its dtype kept) as an array of this library and device,
        with the given layout of its last two dimensions (see LAYOUTS)."""
        a = np.asarray(a)
        if a.ndim < 2 or layout == "C":
            return self._from_numpy(a)
        r, c = a.shape[-2:]
        lead = a.shape[:-2]
        if layout == "F":
            return self._swap(self._from_numpy(a.swapaxes(-1, -2)))
        if layout == "step":
            big = np.zeros((*lead, r, 2 * c), a.dtype)
            big[..., ::2] = a
            return self._from_numpy(big)[..., ::2]
        if layout == "slice":
            big = np.zeros((*lead, r + 3, c + 2), a.dtype)
            big[..., 2:2 + r, 1:1 + c] = a
            return self._from_numpy(big)[..., 2:2 + r, 1:1 + c]
        if layout == "fslice":
            return self._swap(self(a.swapaxes(-1, -2), "slice"))
        if layout == "batchstep":
            if a.ndim < 3:
                return self._from_numpy(a)
            big = np.zeros((2 * a.shape[0], *a.shape[1:]), a.dtype)
            big[::2] = a
            return self._from_numpy(big)[::2]
        raise ValueError(f"unknown layout {layout!r}")

    def numpy(self, a) -> np.ndarray:
        """Back to numpy, checking that the result stayed in this library and device."""
        if self.lib == "torch":
            assert isinstance(a, self.torch.Tensor), type(a)
            assert a.device.type == self.device, a.device
            return a.detach().cpu().numpy()
        if self.device == "cuda":
            assert isinstance(a, self.cupy.ndarray), type(a)
            return self.cupy.asnumpy(a)
        assert isinstance(a, np.ndarray), type(a)
        return a


@pytest.fixture
def xp(lib: str, device: str) -> Arrays:
    return Arrays(lib, device)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(20200)
