"""The few things fasth needs from an array library: describe an array (shape, element
strides, dtype, device), allocate on its device with given strides, hand its memory to the
extension, and find the caller's stream. numpy and torch arrays stay what they are; cupy
arrays and anything else with ``__dlpack__`` are viewed without a copy."""

from __future__ import annotations

import threading
from typing import Any

import numpy as np


# Workspaces on the CPU up to this many bytes are kept per thread and reused: glibc hands a
# large block it has just unmapped back as fresh pages, and faulting them in cost this VM
# more than the products (2 us a page; 1.3 ms of a 20 ms step at d = 512). The core runs
# synchronously on the CPU, so a thread's workspace is free again when its call returns.
WORKSPACE_CACHE_BYTES = 64 << 20
_local = threading.local()


def empty_cache() -> None:
    """Releases this thread's cached CPU workspaces."""
    _local.__dict__.clear()


class Namespace:
    """numpy-like arrays on the CPU (numpy itself, and DLPack views of other libraries)."""

    name = "numpy"
    addressable = False  # arg() gives the address of the first element

    def wrap(self, a: Any) -> Any:
        return a

    def unwrap(self, a: Any, like: Any) -> Any:
        return a

    def arg(self, a: Any) -> Any:
        """What the extension is handed for array `a`: nanobind reads numpy arrays as they
        are (faster than taking their address in Python)."""
        return a

    def key(self, a: Any) -> tuple:
        """What a plan depends on: shape, strides, dtype, device."""
        return (a.shape, a.strides, a.dtype)

    def dtype(self, a: Any) -> str:
        return np.dtype(a.dtype).name

    def device(self, a: Any) -> tuple[str, int]:
        return ("cpu", 0)

    def stream(self, a: Any) -> int:
        return 0

    def strides(self, a: Any) -> tuple[int, ...]:
        return tuple(s // a.itemsize for s in a.strides)

    def empty(self, shape: tuple[int, ...], strides: tuple[int, ...], dtype: str, like: Any) -> Any:
        """A new array of this shape with these element strides: dense, row- or column-major
        matrices (the layouts a plan asks for)."""
        if len(shape) >= 2 and strides[-2] == 1 and strides[-1] != 1:
            return self.transpose_last(self._empty((*shape[:-2], shape[-1], shape[-2]), dtype, like))
        return self._empty(tuple(shape), dtype, like)

    def _empty(self, shape, dtype, like):
        return np.empty(shape, dtype=dtype)

    def workspace(self, size: int, dtype: str, like: Any) -> Any:
        """Scratch of at least `size` elements for one call: this thread's cached buffer on
        the CPU (see WORKSPACE_CACHE_BYTES), a fresh one elsewhere."""
        if self.device(like)[0] != "cpu" or size * 8 > WORKSPACE_CACHE_BYTES:
            return self._empty((size,), dtype, like)
        key = (self.name, dtype)
        buf = _local.__dict__.get(key)
        if buf is None or buf.shape[0] < size:
            buf = _local.__dict__[key] = self._empty((max(size, 1024),), dtype, like)
        return buf

    def transpose_last(self, a: Any) -> Any:
        return np.swapaxes(a, -1, -2)

    def contiguous(self, a: Any) -> Any:
        return np.ascontiguousarray(a)

    def copy_strided(self, a: Any, strides: tuple[int, ...]) -> Any:
        """A copy of `a` with these element strides (which address each element once)."""
        size = 1 + sum((n - 1) * s for n, s in zip(a.shape, strides)) if all(a.shape) else 1
        buf = self._empty((size,), self.dtype(a), a)
        out = self._as_strided(buf, tuple(a.shape), tuple(s * buf.itemsize for s in strides))
        out[...] = a
        return out

    def _as_strided(self, buf: Any, shape: tuple, byte_strides: tuple) -> Any:
        return np.lib.stride_tricks.as_strided(buf, shape, byte_strides)


class TorchNamespace(Namespace):
    name = "torch"
    addressable = True

    def __init__(self) -> None:
        import torch

        self.torch = torch
        self.dtypes = {"float32": torch.float32, "float64": torch.float64,
                       "complex64": torch.complex64, "complex128": torch.complex128}

    def arg(self, a: Any) -> Any:
        # The tensor's address: its layout is what the plan was made for (a DLPack capsule
        # cost about 1.3 us a tensor, Tensor.__dlpack__ about 7 us). A lazily conjugated
        # view's memory is not its values (fasth.torch resolves them before planning).
        if a is None:
            return None
        if a.is_conj() or a.is_neg():
            raise TypeError("fasth: a lazily conjugated torch tensor (x.conj(), x.mH): call "
                            ".resolve_conj() on it first, or use fasth.torch")
        return a.data_ptr()

    def key(self, a: Any) -> tuple:
        return (a.shape, a.stride(), a.dtype, a.device)

    def dtype(self, a: Any) -> str:
        return str(a.dtype).removeprefix("torch.")

    def device(self, a: Any) -> tuple[str, int]:
        d = a.device
        return (d.type, d.index or 0)

    def stream(self, a: Any) -> int:
        d = a.device
        return 0 if d.type != "cuda" else self.torch.cuda.current_stream(d).cuda_stream

    def strides(self, a: Any) -> tuple[int, ...]:
        return tuple(a.stride())

    def empty(self, shape, strides, dtype, like):
        # Not a view: autograd lets a caller modify an output in place only if it is none.
        return self.torch.empty_strided(shape, strides, dtype=self.dtypes[dtype], device=like.device)

    def _empty(self, shape, dtype, like):
        return self.torch.empty(shape, dtype=self.dtypes[dtype], device=like.device)

    def transpose_last(self, a):
        return a.transpose(-1, -2)

    def contiguous(self, a):
        return a.contiguous()

    def copy_strided(self, a, strides):
        out = self.torch.empty_strided(tuple(a.shape), strides, dtype=a.dtype, device=a.device)
        return out.copy_(a)


class CupyNamespace(Namespace):
    name = "cupy"
    addressable = True

    def __init__(self) -> None:
        import cupy

        self.cp = cupy

    def arg(self, a):
        return a.data.ptr if a is not None else None

    def device(self, a):
        return ("cuda", a.device.id)

    def stream(self, a):
        return self.cp.cuda.get_current_stream().ptr

    def _empty(self, shape, dtype, like):
        with like.device:
            return self.cp.empty(shape, dtype=dtype)

    def transpose_last(self, a):
        return self.cp.swapaxes(a, -1, -2)

    def contiguous(self, a):
        return self.cp.ascontiguousarray(a)

    def _as_strided(self, buf, shape, byte_strides):
        return self.cp.lib.stride_tricks.as_strided(buf, shape, byte_strides)


class DLPackNamespace(Namespace):
    """Any other CPU array with ``__dlpack__`` (a JAX array, say): read through a numpy view,
    results handed back in the input's library where it has ``from_dlpack``."""

    name = "dlpack"

    def wrap(self, a):
        return np.from_dlpack(a)

    def unwrap(self, a, like):
        mod = type(like).__module__.split(".")[0]
        if mod in ("jax", "jaxlib"):
            import jax.numpy as jnp

            return jnp.from_dlpack(np.ascontiguousarray(a))
        return a


_torch_ns: TorchNamespace | None = None
_cupy_ns: CupyNamespace | None = None
_numpy_ns = Namespace()
_dlpack_ns = DLPackNamespace()


def namespace(a: Any) -> Namespace:
    global _torch_ns, _cupy_ns
    if isinstance(a, np.ndarray):
        return _numpy_ns
    mod = type(a).__module__.split(".")[0]
    if mod == "torch":
        _torch_ns = _torch_ns or TorchNamespace()
        return _torch_ns
    if mod == "cupy":
        _cupy_ns = _cupy_ns or CupyNamespace()
        return _cupy_ns
    if hasattr(a, "__dlpack__"):
        return _dlpack_ns
    raise TypeError(
        f"expected a numpy, torch or cupy array, or an object with __dlpack__; got {type(a).__name__}"
    )
