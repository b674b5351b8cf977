"""fasth's plans on torch tensors: the BLAS inside libtorch for CPU calls, torch.compile's
cache tagged with fasth's build, and the bound plan of a call looked up by the tensors'
own key (a layer's every call after its first)."""

from __future__ import annotations

import ctypes
import functools
import os
from typing import Optional

import torch
import torch.autograd.forward_ad as _forward_ad
from torch import Tensor

from .. import _engine, _native
from .._spec import Spec


@functools.cache
def torch_blas(gemm_batch: bool = True) -> int | None:
    """Registers the BLAS inside libtorch (MKL, or OpenBLAS, 32-bit integers in the official
    builds) for fasth's CPU calls on torch tensors: it shares torch's threads, where SciPy's
    OpenBLAS, with threads of its own, fights torch's OpenMP threads. Builds that do not
    export the Fortran symbols keep SciPy's BLAS. With MKL, small products run on one thread
    (``MKL_Set_Num_Threads_Local``) and a batch of products goes to ``?gemm_batch``. Returns
    the table's id, or None where libtorch has no BLAS to register."""
    path = os.path.join(os.path.dirname(torch.__file__), "lib", "libtorch_cpu.so")
    if not os.path.exists(path) or "BLAS_INFO=" not in torch.__config__.show():
        return None
    try:
        lib = ctypes.CDLL(path)
        getattr(lib, "sgemm_"), getattr(lib, "dgemm_")
    except (OSError, AttributeError):
        return None

    def address(name: str) -> int:  # 0 where absent
        f = getattr(lib, name, None)
        return ctypes.cast(f, ctypes.c_void_p).value if f else 0

    return _native.register_blas(
        address("sgemm_"), address("dgemm_"), address("ssyrk_"), address("dsyrk_"),
        address("strmm_"), address("dtrmm_"),
        set_threads_local=address("MKL_Set_Num_Threads_Local"),
        sgemm_batch=address("sgemm_batch_") if gemm_batch else 0,
        dgemm_batch=address("dgemm_batch_") if gemm_batch else 0,
        strsm=address("strsm_"), dtrsm=address("dtrsm_"),
        cgemm=address("cgemm_"), zgemm=address("zgemm_"), ctrmm=address("ctrmm_"),
        ztrmm=address("ztrmm_"), ctrsm=address("ctrsm_"), ztrsm=address("ztrsm_"),
        cgemm_batch=address("cgemm_batch_") if gemm_batch else 0,
        zgemm_batch=address("zgemm_batch_") if gemm_batch else 0)


_engine.use_blas_for("torch", torch_blas)  # registered by the first CPU call on tensors


def _tag_compile_caches() -> None:
    """torch.compile's caches are not keyed on a custom op's implementation
    (pytorch/pytorch#144344), so a graph compiled with one build of fasth would expect its
    factor sizes from another. fasth adds its build (its version and its extension's size and
    time) to torch's cache key tag."""
    from .. import __version__

    tag = f"fasth-{__version__}-{_native.build_id()}"
    cfg = torch.compiler.config
    if tag not in cfg.cache_key_tag:
        cfg.cache_key_tag = f"{cfg.cache_key_tag}+{tag}" if cfg.cache_key_tag else tag


_tag_compile_caches()


def _key(t: Optional[Tensor]) -> Optional[tuple]:
    return None if t is None else (t.shape, t.stride(), t.dtype, t.device)


def bound(s: Spec, V: Tensor, tau: Optional[Tensor], X: Optional[Tensor]) -> _engine.BoundPlan:
    try:  # the cache's key, built for tensors
        key = ("torch", s, _key(V), _key(tau), _key(X))
        c = _engine.cached(key)
    except (AttributeError, TypeError):  # not tensors, or symbolic sizes: resolve's way
        key, c = None, None
    if c is not None:
        return c
    return _engine.resolve(s, "torch", (V, tau, X), key=key)


def empty(like: Tensor) -> Tensor:
    return like.new_empty((0,))


def plain(t: Optional[Tensor]) -> Optional[Tensor]:
    """`t` with torch's lazy conjugate and negative bits applied (a complex view such as
    `C.mH` shares memory with its conjugate: the core reads memory as it is)."""
    if t is None or not t.is_complex():
        return t
    return t.resolve_conj().resolve_neg()


def forward(s: Spec, V, tau, X, taped: bool) -> tuple[Tensor, Tensor, Tensor]:
    """(out, factors, tape): the tape empty unless `taped` and the plan keeps one."""
    c = bound(s, V, tau, X)
    if taped:
        out, f, t = _engine.forward(c, V, tau, X, tape=True)
    else:
        (out, f), t = _engine.forward(c, V, tau, X), None
    return out, f, empty(V) if t is None else t


def backward(s: Spec, V, tau, saved, factors, grad, want_dx: bool,
             tape: Optional[Tensor]) -> tuple[Tensor, Tensor, Tensor]:
    """(dV, dtau, dX), empty tensors for those the op has not; from the tape where it is not
    empty, else from `saved`."""
    c = bound(s, V, tau, saved)
    tape = tape if tape is not None and tape.numel() else None
    dV, dtau, dX = _engine.backward(c, V, factors, saved, grad, want_dx, tape)
    return dV, empty(V) if dtau is None else dtau, empty(V) if dX is None else dX


def transforming() -> bool:
    """Whether torch.func transforms are active: the backward then runs through the custom
    ops, whose vmap rules batch it (eagerly it calls the plan directly)."""
    return torch._C._are_functorch_transforms_active()


def recorded(V: Tensor, tau: Optional[Tensor], X: Optional[Tensor]) -> bool:
    """Whether autograd records this call (grad mode on and an input that requires grad)."""
    return torch.is_grad_enabled() and (
        V.requires_grad or (X is not None and X.requires_grad)
        or (tau is not None and tau.requires_grad))


def forward_mode() -> bool:
    """Whether torch.autograd.forward_ad is on (a dual level entered): a call then records its
    Function, whose jvp gives the tangent, even where no input requires grad."""
    return _forward_ad._current_level >= 0
