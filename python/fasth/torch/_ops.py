"""fasth's operations for torch, with autograd: ``apply``, ``matrix``, and LAPACK's (A, tau)
form as drop-ins for ``torch.linalg.householder_product`` and ``torch.ormqr``.

Every op is one forward and one backward of the core's plan (``fasth._api``), reached two
ways:

* eagerly: an ``autograd.Function`` that calls the plan directly, one crossing into the
  extension each way; under ``torch.func``, the same in the setup_context form with a vmap
  rule, its backward through the custom op (which vmap batches);
* under ``torch.compile``: two custom ops, ``fasth::forward`` and ``fasth::backward``, with
  fake kernels (the plan's output shapes), ``register_autograd`` and vmap rules; clean under
  ``torch.library.opcheck``.

Eagerly, the householder apply keeps the plan's tape for the backward (each block's input
and products), where the plan keeps one; otherwise its output (its input is recovered
through orthogonality) and its input: if the caller modifies the output in place, the
backward recomputes it from the input, so outputs behave as ordinary tensors. Under
``create_graph``, the input gradient is ``apply`` again (differentiable: gradient
penalties), while the gradient of V raises if it is differentiated again."""

from __future__ import annotations

import ctypes
import functools
import os
from typing import Optional

import torch
from torch import Tensor

from .. import _api, _arrays, _core

APPLY, MATRIX = int(_api.APPLY.value), int(_api.MATRIX.value)
HOUSEHOLDER, LAPACK = int(_api.HOUSEHOLDER.value), int(_api.LAPACK.value)
_OPS = {APPLY: _api.APPLY, MATRIX: _api.MATRIX}
_KINDS = {HOUSEHOLDER: _api.HOUSEHOLDER, LAPACK: _api.LAPACK}


@functools.cache
def torch_blas(gemm_batch: bool = True) -> int | None:
    """Registers the BLAS inside libtorch (MKL, or OpenBLAS, 32-bit integers in the official
    builds) for fasth's CPU calls on torch tensors: it shares torch's threads. SciPy's
    OpenBLAS, with threads of its own, fought torch's OpenMP threads: in a torch process on 2
    cores, fasth.apply at d = 1024, n = 64 took 19x a GEMM instead of 3x. Builds that do not
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

    blas = _core.register_blas(
        address("sgemm_"), address("dgemm_"), address("ssyrk_"), address("dsyrk_"),
        address("strmm_"), address("dtrmm_"),
        set_threads_local=address("MKL_Set_Num_Threads_Local"),
        sgemm_batch=address("sgemm_batch_") if gemm_batch else 0,
        dgemm_batch=address("dgemm_batch_") if gemm_batch else 0,
        strsm=address("strsm_"), dtrsm=address("dtrsm_"))
    return blas


if torch_blas() is not None:
    _api.use_blas_for("torch", torch_blas())


def _tag_compile_caches() -> None:
    """torch.compile's caches are not keyed on a custom op's implementation
    (pytorch/pytorch#144344), so a graph compiled with one build of fasth would expect its
    factor sizes from another. fasth adds its build (its version and its extension's size and
    time) to torch's cache key tag."""
    from .. import __version__

    st = os.stat(_core.__file__)
    tag = f"fasth-{__version__}-{st.st_size}-{st.st_mtime_ns}"
    cfg = torch.compiler.config
    if tag not in cfg.cache_key_tag:
        cfg.cache_key_tag = f"{cfg.cache_key_tag}+{tag}" if cfg.cache_key_tag else tag


_tag_compile_caches()


Spec = _api.Spec


def _key(t: Optional[Tensor]) -> Optional[tuple]:
    return None if t is None else (t.shape, t.stride(), t.dtype, t.device)


def _call(s: Spec, V: Tensor, tau: Optional[Tensor], X: Optional[Tensor]) -> _api.Call:
    try:  # the cache's key, built for tensors (a layer's every call after its first)
        key = ("torch", s, _key(V), _key(tau), _key(X))
        c = _api.cached(key)
    except (AttributeError, TypeError):  # not tensors, or symbolic sizes: resolve's way
        key, c = None, None
    if c is not None:
        return c
    names = ("A" if s.kind == LAPACK else "V", "tau", "C" if s.kind == LAPACK else "X")
    return _api.resolve(s.name("torch"), _OPS[s.op], _KINDS[s.kind], names, (V, tau, X),
                        transpose=s.transpose, thin=s.thin, block=s.block or None,
                        strategy=s.strategy, tf32=s.tf32, key=key)


def _empty(like: Tensor) -> Tensor:
    return like.new_empty((0,))


def _forward(s: Spec, V, tau, X, taped: bool) -> tuple[Tensor, Tensor, Tensor]:
    """(out, factors, tape): the tape empty unless `taped` and the plan keeps one."""
    c = _call(s, V, tau, X)
    out, f, t = _api.forward(c, V, tau, X, tape=True) if taped else (*_api.forward(c, V, tau, X), None)
    return out, f, _empty(V) if t is None else t


def _backward(s: Spec, V, tau, saved, factors, grad, want_dx: bool,
              tape: Optional[Tensor]) -> tuple[Tensor, Tensor, Tensor]:
    """(dV, dtau, dX), empty tensors for those the op has not; from the tape where it is not
    empty, else from `saved`."""
    c = _call(s, V, tau, saved)
    tape = tape if tape is not None and tape.numel() else None
    dV, dtau, dX = _api.backward(c, V, factors, saved, grad, want_dx, tape)
    return dV, _empty(V) if dtau is None else dtau, _empty(V) if dX is None else dX


# ---------------------------------------------------------------------------------------
# Custom ops (torch.compile)

# The forward returns a tape where `taped` (a graph that differentiates it) and the plan keeps
# one; the backward reads it instead of recovering each block's input from the output.
@torch.library.custom_op("fasth::forward", mutates_args=())
def _forward_op(V: Tensor, tau: Optional[Tensor], X: Optional[Tensor], op: int, kind: int,
                transpose: bool, thin: bool, block: int, strategy: str,
                tf32: bool, taped: bool = False) -> tuple[Tensor, Tensor, Tensor]:
    return _forward(Spec(op, kind, transpose, thin, block, strategy, tf32), V, tau, X, taped)


@_forward_op.register_fake
def _(V, tau, X, op, kind, transpose, thin, block, strategy, tf32, taped=False):
    c = _call(Spec(op, kind, transpose, thin, block, strategy, tf32), V, tau, X)
    p = c.plan
    return (V.new_empty_strided(*p.out), V.new_empty((p.factors_size,)),
            V.new_empty((c.tsize if taped else 0,)))


@torch.library.custom_op("fasth::backward", mutates_args=())
def _backward_op(V: Tensor, tau: Optional[Tensor], saved: Optional[Tensor], factors: Tensor,
                 grad: Tensor, op: int, kind: int, transpose: bool, thin: bool, block: int,
                 strategy: str, tf32: bool, want_dx: bool,
                 tape: Optional[Tensor] = None) -> tuple[Tensor, Tensor, Tensor]:
    return _backward(Spec(op, kind, transpose, thin, block, strategy, tf32), V, tau, saved,
                     factors, grad, want_dx, tape)


@_backward_op.register_fake
def _(V, tau, saved, factors, grad, op, kind, transpose, thin, block, strategy, tf32, want_dx,
      tape=None):
    c = _call(Spec(op, kind, transpose, thin, block, strategy, tf32), V, tau, saved)
    p = c.plan
    return (V.new_empty_strided(*p.dV),
            V.new_empty_strided(*p.dtau) if c.lapack else V.new_empty((0,)),
            V.new_empty_strided(*p.dX) if c.apply and want_dx else V.new_empty((0,)))


def _op_setup(ctx, inputs, output):
    V, tau, X, *spec = inputs
    s = Spec(*spec[:len(Spec._fields)])
    out, factors, tape = output
    ctx.save_for_backward(V, tau, s.saved(X, out), factors, tape)
    ctx.spec = s
    ctx.set_materialize_grads(False)


def _op_grad(ctx, grad_out, _grad_factors, _grad_tape):
    if grad_out is None:
        return (None,) * 11
    V, tau, saved, factors, tape = ctx.saved_tensors
    s = ctx.spec
    dV, dtau, dX = _backward_op(V, tau, saved, factors, grad_out, *s, ctx.needs_input_grad[2], tape)
    return (dV, dtau if s.kind == LAPACK else None, dX if s.op == APPLY else None) + (None,) * 8


_forward_op.register_autograd(_op_grad, setup_context=_op_setup)
for _op in (_forward_op, _backward_op):
    for _dev in ("cpu", "cuda"):  # under torch.autocast: float32, as torch's linalg ops
        _op.register_autocast(_dev, torch.float32)


# ---------------------------------------------------------------------------------------
# vmap: the mapped dimension becomes a leading batch dimension of the same op, one call.
# An unbatched V under a batched X stays shared in the forward; the backward gives a dV
# per example, so V and its factors are expanded there (a view, and a copy of the factors).

def _front(a: Optional[Tensor], dim: Optional[int], size: int) -> Optional[Tensor]:
    if a is None:
        return None
    return a.expand(size, *a.shape) if dim is None else a.movedim(dim, 0)


# A tape is laid out for the whole batch, not per example: under vmap the forward keeps none
# (an empty tape, not mapped) and the backward recovers the blocks' inputs from the output.
def _vmap_forward(fn):
    def rule(info, in_dims, V, tau, X, *spec):
        B = info.batch_size
        vd, td, xd = in_dims[:3]
        spec = spec[:len(Spec._fields)]
        if vd is None and td is None and Spec(*spec).op == APPLY:  # one V for every example
            out, f, t = fn(V, tau, _front(X, xd, B), *spec, False)
            return (out, f, t), (0, None, None)
        out, f, t = fn(_front(V, vd, B), _front(tau, td, B), _front(X, xd, B), *spec, False)
        return (out, f.reshape(B, -1), t), (0, 0, None)
    return rule


def _vmap_backward(info, in_dims, V, tau, saved, factors, grad, *rest):
    B = info.batch_size
    vd, td, sd, fd, gd = in_dims[:5]
    f = factors.expand(B, *factors.shape) if fd is None else factors.movedim(fd, 0)
    spec, want_dx = rest[:len(Spec._fields)], rest[len(Spec._fields)]
    out = _backward_op(_front(V, vd, B), _front(tau, td, B), _front(saved, sd, B),
                       f.reshape(-1), _front(grad, gd, B), *spec, want_dx, None)
    return out, (0, 0 if spec[1] == LAPACK else None, 0 if spec[0] == APPLY and want_dx else None)


_forward_op.register_vmap(_vmap_forward(_forward_op))
_backward_op.register_vmap(_vmap_backward)


# ---------------------------------------------------------------------------------------
# Eager and torch.func: autograd.Functions over the same plan, without the dispatcher.

class _FirstOrderOnly(torch.autograd.Function):
    """The gradient of V (and tau), computed by the backward; differentiating it again
    raises: fasth has no second derivative in V."""

    generate_vmap_rule = True

    @staticmethod
    def forward(fn, *args):
        return fn(*args)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.fn = inputs[0]

    @staticmethod
    def backward(ctx, *_):
        raise RuntimeError(
            f"{ctx.fn.name}: the gradient of V cannot be differentiated again (fasth has no "
            "second derivative for it); gradients of the input gradient (gradient penalties) "
            "are supported")


class _Grads:
    """(dV, dtau) of a backward, for _FirstOrderOnly (named in its error)."""

    def __init__(self, name, run):
        self.name, self.run = name, run

    def __call__(self, *tensors):
        return self.run(*tensors)


def _transforming() -> bool:
    """Whether torch.func transforms are active: the backward then runs through the custom
    ops, whose vmap rules batch it (eagerly it calls the plan directly)."""
    return torch._C._are_functorch_transforms_active()


def _setup(ctx, V, tau, X, s: Spec, c: _api.Call, out: Tensor, f: Tensor, transforming: bool,
           tape: Optional[Tensor] = None):
    ctx.spec, ctx.call = s, c
    ctx.set_materialize_grads(False)
    ctx.out, ctx.tape = None, tape
    if transforming and s.kind == HOUSEHOLDER:  # the backward op's own plan decides
        ctx.save_for_backward(V, tau, X, f, out)
        return
    if c.reads_out and tape is None:
        # The output as it is now, by a detached alias that shares its version counter (no
        # reference cycle): if the caller changes it in place, the backward recomputes it.
        ctx.out, ctx.version = out.detach(), out._version
    ctx.save_for_backward(V, tau, X, f, None)


def _grad(ctx, grad_out, transforming: bool):
    """(dV, dtau, dX, None) for the Functions' backward."""
    if grad_out is None:
        return None, None, None, None
    V, tau, X, f, out = ctx.saved_tensors
    s, c = ctx.spec, ctx.call
    need_v, need_tau, need_x = ctx.needs_input_grad[:3]
    apply, tape = s.op == APPLY, ctx.tape
    saved = None
    if s.kind == LAPACK:
        saved = X if apply else None
    elif out is not None:  # under transforms
        saved = out
    elif ctx.out is not None:
        saved = ctx.out
        if saved._version != ctx.version:  # changed in place: computed again
            saved = _api.forward_with(c, V, f, X)

    def grads(want_dx, V, tau, f, saved, g):
        if transforming:  # through the custom op, whose vmap rule batches it
            return _backward_op(V, tau, saved, f, g, *s, want_dx)
        return _api.backward(c, V, f, saved, g, want_dx, tape)

    if torch.is_grad_enabled():  # create_graph: a gradient of this gradient follows
        dX = None
        if apply and need_x:  # U^T g is apply again (P^T g for LAPACK's too)
            dX = _run(s._replace(transpose=not s.transpose), V, tau, grad_out)
        dV = dtau = None
        if need_v or need_tau:
            dV, dtau = _FirstOrderOnly.apply(
                _Grads(s.name("torch"), lambda *t: grads(False, *t)[:2]), V, tau, f, saved,
                grad_out)
        return dV, dtau if s.kind == LAPACK else None, dX, None
    dV, dtau, dX = grads(apply and need_x, V, tau, f, saved, grad_out)
    return (dV if need_v else None, dtau if need_tau and s.kind == LAPACK else None,
            dX if apply and need_x else None, None)


class _Eager(torch.autograd.Function):
    """Eager mode: the plan called directly, one crossing each way. The classic form
    (forward with ctx): torch binds a setup_context form's arguments through
    inspect.signature on every call, about 25 us here."""

    @staticmethod
    def forward(ctx, V, tau, X, s, keep=None):
        c = _call(s, V, tau, X)
        out, f, tape = _api.forward(c, V, tau, X, pack=True, tape=True)
        if keep is not None:  # the factors, for the caller (Reflectors); one output is cheaper
            keep.append(f)
        _setup(ctx, V, tau, X, s, c, out, f, False, tape)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        return *_grad(ctx, grad_out, False), None


class _EagerWith(torch.autograd.Function):
    """Eager mode with factors an earlier forward built from the same V (Reflectors): the
    plan's forward_with, and the same backward as _Eager's."""

    @staticmethod
    def forward(ctx, V, tau, X, f, s):  # (V, tau, X) first, as _grad reads them
        c = _call(s, V, tau, X)
        out, tape = _api.forward_with(c, V, f, X, tape=True)
        _setup(ctx, V, tau, X, s, c, out, f, False, tape)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        dV, dtau, dX, _ = _grad(ctx, grad_out, False)
        return dV, dtau, dX, None, None


class _Transformable(torch.autograd.Function):
    """Under torch.func transforms: the setup_context form they need, with a vmap rule."""

    @staticmethod
    def forward(V, tau, X, s):
        c = _call(s, V, tau, X)
        out, f = _api.forward(c, V, tau, X)
        return out, f, c

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.mark_non_differentiable(output[1])
        _setup(ctx, *inputs, output[2], output[0], output[1], True)

    @staticmethod
    def backward(ctx, grad_out, _gf=None, _gc=None):
        return _grad(ctx, grad_out, True)

    @staticmethod
    def vmap(info, in_dims, V, tau, X, s):
        B = info.batch_size
        vd, td, xd = in_dims[:3]
        if vd is None and td is None and s.op == APPLY:
            out, f, c = _Transformable.apply(V, tau, _front(X, xd, B), s)
            return (out, f, c), (0, None, None)
        out, f, c = _Transformable.apply(_front(V, vd, B), _front(tau, td, B), _front(X, xd, B), s)
        return (out, f.reshape(B, -1), c), (0, 0, None)


def _recorded(V: Tensor, tau: Optional[Tensor], X: Optional[Tensor]) -> bool:
    """Whether autograd records this call (grad mode on and an input that requires grad)."""
    return torch.is_grad_enabled() and (
        V.requires_grad or (X is not None and X.requires_grad)
        or (tau is not None and tau.requires_grad))


def _run(s: Spec, V: Tensor, tau: Optional[Tensor], X: Optional[Tensor]) -> Tensor:
    if torch.compiler.is_compiling():
        return _forward_op(V, tau, X, *s, _recorded(V, tau, X))[0]
    if _transforming():
        return _Transformable.apply(V, tau, X, s)[0]
    if not _recorded(V, tau, X):  # nothing to differentiate: the plan alone, no graph node
        return _api.forward(_call(s, V, tau, X), V, tau, X, pack=True)[0]
    return _Eager.apply(V, tau, X, s)


# ---------------------------------------------------------------------------------------
# dtypes: under torch.autocast fasth runs in float32, as torch's float32-list ops (linalg
# among them) do (float16 and bfloat16 cast up, float64 left alone, a float32 result).
# Outside it, float16 and bfloat16 are computed in float32 and returned in their own dtype,
# as torch.matmul does (float32 accumulation).

_HALF = (torch.float16, torch.bfloat16)


def _prepare(s: Spec, *tensors: Optional[Tensor]):
    """(tensors to compute with, the dtype to return or None)."""
    if not any(t is not None and t.dtype in _HALF for t in tensors):
        return tensors, None  # autocast or not: computed as they are
    t0 = tensors[0]
    dev = t0.device.type
    if torch.amp.is_autocast_available(dev) and torch.is_autocast_enabled(dev):
        return tuple(t.float() if t is not None and t.dtype in _HALF else t for t in tensors), None
    names = ("A" if s.kind == LAPACK else "V", "tau", "C" if s.kind == LAPACK else "X")
    named = {n: t for n, t in zip(names, tensors) if t is not None}
    _api.check_dtypes(s.name("torch"), _arrays.namespace(t0), named,
                      _arrays.FLOAT_DTYPES + _api.HALF_DTYPES)
    return tuple(None if t is None else t.float() for t in tensors), t0.dtype


def _public(s: Spec, V, tau, X, run=_run) -> Tensor:
    (V, tau, X), back = _prepare(s, V, tau, X)
    if V.is_cuda and torch.backends.cuda.matmul.allow_tf32:
        s = s._replace(tf32=True)
    out = run(s, V, tau, X)
    return out if back is None else out.to(back)


# ---------------------------------------------------------------------------------------
# Public functions

def apply(V: Tensor, X: Tensor, transpose: bool = False, *, block: int | None = None,
          strategy: _api.StrategyName = "auto") -> Tensor:
    """``U X`` (``U^T X`` with ``transpose``), differentiable in ``V`` and ``X``.

    ``V``: ``(..., d, k)``, Householder vectors in columns (any ``k``); ``X``: ``(..., d, n)``;
    ``V`` unbatched is shared by a batch of ``X``. ``strategy``: ``"blockwise"``,
    ``"materialize"`` (build ``U`` once, then one GEMM) or ``"auto"`` (by cost)."""
    return _public(Spec(APPLY, HOUSEHOLDER, bool(transpose), False, block or 0, strategy),
                   V, None, X)


class Reflectors:
    """``U = H_1 ... H_k`` of ``V``'s columns, for applying the same ``U`` many times (an RNN's
    recurrent weight at every timestep): ``R = Reflectors(V)``, then ``R.apply(X)`` as
    ``apply(V, X)``, differentiable in ``V`` and ``X``, the gradients of every use summed.

    Eagerly, the compact-WY factors of ``V`` (its T factors) are built by the first apply of
    each shape and reused by the later ones, which then cost the products with ``X`` alone
    (about half of a forward at d = 256 to 1024 on the CPU). A change to ``V`` in place (an
    optimizer step) is seen through its version counter, and the factors are built again; as
    for autograd's saved tensors, a write through ``V.data`` is not seen. Under
    ``torch.compile`` and ``torch.func`` each apply is ``apply``'s."""

    def __init__(self, V: Tensor, *, block: int | None = None,
                 strategy: _api.StrategyName = "auto") -> None:
        self.V, self.block, self.strategy = V, block or 0, strategy
        self._factors: dict[_api.Call, Tensor] = {}  # per resolved call (shape, dtype, device)
        self._version = V._version

    def apply(self, X: Tensor, transpose: bool = False) -> Tensor:
        """``U X`` (``U^T X`` with ``transpose``)."""
        s = Spec(APPLY, HOUSEHOLDER, bool(transpose), False, self.block, self.strategy)
        return _public(s, self.V, None, X, run=self._run)

    def _run(self, s: Spec, V: Tensor, tau: None, X: Tensor) -> Tensor:
        if torch.compiler.is_compiling() or _transforming():
            return _run(s, V, tau, X)
        if self.V._version != self._version:  # V changed in place: its factors are stale
            self._factors.clear()
            self._version = self.V._version
        c = _call(s, V, tau, X)
        f = self._factors.get(c)
        if f is None:
            keep: list[Tensor] = []
            out = _Eager.apply(V, tau, X, s, keep)
            self._factors[c] = keep[0]
            return out
        return _EagerWith.apply(V, tau, X, f, s)


def matrix(V: Tensor, thin: bool = False, *, block: int | None = None) -> Tensor:
    """``U`` (``d x d``), or with ``thin`` its first ``min(k, d)`` columns, differentiable in
    ``V``."""
    return _public(Spec(MATRIX, HOUSEHOLDER, False, bool(thin), block or 0), V, None, None)


class DropInError(ValueError, RuntimeError):
    """Bad input to a drop-in for a torch function: a ValueError naming the argument, and a
    RuntimeError, as torch's own error for it is."""


def _drop_in(s: Spec, A, tau, C) -> Tensor:
    try:
        return _public(s, A, tau, C)
    except ValueError as e:
        if isinstance(e, DropInError):
            raise
        raise DropInError(str(e)) from None


def householder_product(A: Tensor, tau: Tensor) -> Tensor:
    """``torch.linalg.householder_product``: the first ``n`` columns of ``H_1 ... H_k``,
    ``H_i = I - tau_i v_i v_i^T`` with ``v_i`` the unit lower part of column ``i`` of ``A``
    (``(..., m, n)``, ``m >= n >= k``), for any ``tau`` (``(..., k)``). Differentiable in
    ``A`` and ``tau``."""
    return _drop_in(Spec(MATRIX, LAPACK), A, tau, None)


def ormqr(A: Tensor, tau: Tensor, C: Tensor, left: bool = True, transpose: bool = False) -> Tensor:
    """``torch.ormqr``: ``op(Q) C`` (``left``) or ``C op(Q)``, ``Q = H_1 ... H_k`` from
    ``(A, tau)`` as ``householder_product`` takes them, ``op(Q) = Q^T`` with ``transpose``.
    Differentiable in ``A``, ``tau`` and ``C``."""
    if left:
        return _drop_in(Spec(APPLY, LAPACK, bool(transpose)), A, tau, C)
    # C op(Q) = (op(Q)^T C^T)^T
    return _drop_in(Spec(APPLY, LAPACK, not transpose), A, tau, C.mT).mT
