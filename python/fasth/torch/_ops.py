"""fasth's operations as torch custom ops: ``torch.library.custom_op`` with a fake kernel
(the same allocation code run without computing) and autograd whose backward is itself a
custom op. Clean under ``torch.library.opcheck`` and ``torch.compile(fullgraph=True)``.

Only the output is saved for the backward (the input is recovered through orthogonality),
with the T factors that the forward built."""

from __future__ import annotations

import ctypes
import os

import torch
from torch import Tensor

from .. import _api, _core


def _use_torch_blas(gemm_batch: bool = True) -> None:
    """fasth's CPU products through the BLAS inside libtorch (MKL, or OpenBLAS, 32-bit
    integers in the official builds), which shares torch's threads. SciPy's OpenBLAS, with
    threads of its own, fought torch's OpenMP threads: in a torch process on 2 cores,
    fasth.apply at d = 1024, n = 64 took 19x a GEMM instead of 3x. Builds that do not export
    the Fortran symbols keep SciPy's BLAS. With MKL, small products run on one thread
    (``MKL_Set_Num_Threads_Local``): waking MKL's threads cost more than they gave below
    about a 64^3 product, and a batch of products goes to MKL's ``?gemm_batch`` in one call."""
    path = os.path.join(os.path.dirname(torch.__file__), "lib", "libtorch_cpu.so")
    if not os.path.exists(path) or "BLAS_INFO=" not in torch.__config__.show():
        return
    try:
        lib = ctypes.CDLL(path)
        sgemm, dgemm = (ctypes.cast(getattr(lib, f), ctypes.c_void_p).value for f in ("sgemm_", "dgemm_"))
    except (OSError, AttributeError):
        return

    def address(name: str) -> int:  # 0 where absent
        f = getattr(lib, name, None)
        return ctypes.cast(f, ctypes.c_void_p).value if f else 0

    _core.use_blas(sgemm, dgemm,
                   set_threads_local=address("MKL_Set_Num_Threads_Local"),  # by value (lowercase: Fortran)
                   sgemm_batch=address("sgemm_batch_") if gemm_batch else 0,
                   dgemm_batch=address("dgemm_batch_") if gemm_batch else 0)


_use_torch_blas()


def _tf32(t: Tensor) -> bool:
    return t.device.type == "cuda" and torch.backends.cuda.matmul.allow_tf32


def _block(block: int) -> int | None:
    return block if block > 0 else None


# apply ----------------------------------------------------------------------------------

def _apply_impl(V: Tensor, X: Tensor, transpose: bool, block: int, strategy: str) -> tuple[Tensor, Tensor]:
    return _api.apply_with_factors(V, X, transpose, block=_block(block), strategy=strategy, tf32=_tf32(V))


_apply = torch.library.custom_op("fasth::apply", _apply_impl, mutates_args=())


@_apply.register_fake
def _(V, X, transpose, block, strategy):
    return _api.apply_with_factors(V, X, transpose, block=_block(block), strategy=strategy, dry_run=True)


def _apply_backward_impl(V: Tensor, factors: Tensor, out: Tensor, grad: Tensor, transpose: bool,
                         block: int, strategy: str) -> tuple[Tensor, Tensor]:
    return _api.apply_backward(V, out, grad, transpose, factors=factors, block=_block(block),
                               strategy=strategy, tf32=_tf32(V))


_apply_backward = torch.library.custom_op("fasth::apply_backward", _apply_backward_impl,
                                          mutates_args=())


@_apply_backward.register_fake
def _(V, factors, out, grad, transpose, block, strategy):
    return _api.apply_backward(V, out, grad, transpose, block=_block(block), strategy=strategy,
                               dry_run=True)


def _apply_setup(ctx, inputs, output):
    V, _, transpose, block, strategy = inputs
    out, factors = output
    ctx.save_for_backward(V, factors, out)
    ctx.args = (transpose, block, strategy)
    ctx.set_materialize_grads(False)  # no zero-filled gradient for the factors output


def _apply_grad(ctx, grad_out, _grad_factors=None, backward=_apply_backward):
    if grad_out is None:
        return None, None, None, None, None
    V, factors, out = ctx.saved_tensors
    if torch.is_grad_enabled():  # create_graph=True: a gradient of this gradient follows
        transpose, block, strategy = ctx.args
        need_V, need_X = ctx.needs_input_grad[:2]
        dX = apply(V, grad_out, not transpose, block=_block(block), strategy=strategy) if need_X else None
        dV = _ApplyGradV.apply(lambda *a: backward(*a)[0], V, factors, out, grad_out,
                               *ctx.args) if need_V else None
        return dV, dX, None, None, None
    dV, dX = backward(V, factors, out, grad_out, *ctx.args)
    return dV, dX, None, None, None


def _first_order_only(fn: str) -> type[torch.autograd.Function]:
    """A Function that returns a gradient of V computed by a backward op and says so if that
    gradient is differentiated again: fasth has no second derivative in V (Hessian-vector
    products in V), while gradients of the input gradient (gradient penalties) are supported.
    In setup_context form with a generated vmap rule, so that it also works under torch.func."""
    def forward(backward, *args):
        return backward(*args)
    def setup_context(ctx, inputs, output):
        pass
    def backward(ctx, *_):
        raise RuntimeError(
            f"{fn}: the gradient of V cannot be differentiated again (fasth has no second "
            "derivative for it); gradients of the input gradient (gradient penalties) are supported")
    return type("_FirstOrderOnly", (torch.autograd.Function,), {
        "generate_vmap_rule": True, "forward": staticmethod(forward),
        "setup_context": staticmethod(setup_context), "backward": staticmethod(backward)})


_ApplyGradV = _first_order_only("fasth.apply")
_MatrixGradV = _first_order_only("fasth.matrix")


_apply.register_autograd(_apply_grad, setup_context=_apply_setup)


# matrix ---------------------------------------------------------------------------------

def _matrix_impl(V: Tensor, thin: bool, block: int) -> tuple[Tensor, Tensor]:
    return _api.matrix_with_factors(V, thin, block=_block(block), tf32=_tf32(V))


_matrix = torch.library.custom_op("fasth::matrix", _matrix_impl, mutates_args=())


@_matrix.register_fake
def _(V, thin, block):
    return _api.matrix_with_factors(V, thin, block=_block(block), dry_run=True)


def _matrix_backward_impl(V: Tensor, factors: Tensor, U: Tensor, grad: Tensor, thin: bool,
                          block: int) -> Tensor:
    return _api.matrix_backward(V, U, grad, thin, factors=factors, block=_block(block), tf32=_tf32(V))


_matrix_backward = torch.library.custom_op("fasth::matrix_backward", _matrix_backward_impl,
                                           mutates_args=())


@_matrix_backward.register_fake
def _(V, factors, U, grad, thin, block):
    return _api.matrix_backward(V, U, grad, thin, block=_block(block), dry_run=True)


def _matrix_setup(ctx, inputs, output):
    V, thin, block = inputs
    U, factors = output
    ctx.save_for_backward(V, factors, U)
    ctx.args = (thin, block)
    ctx.set_materialize_grads(False)


def _matrix_grad(ctx, grad_U, _grad_factors=None, backward=_matrix_backward):
    if grad_U is None:
        return None, None, None
    V, factors, U = ctx.saved_tensors
    if torch.is_grad_enabled():  # create_graph=True: the gradient of dV raises
        return _MatrixGradV.apply(backward, V, factors, U, grad_U, *ctx.args), None, None
    return backward(V, factors, U, grad_U, *ctx.args), None, None


_matrix.register_autograd(_matrix_grad, setup_context=_matrix_setup)


# torch.func ------------------------------------------------------------------------------
# vmap rules, for the custom ops and the eager Functions alike: the vmapped dimension becomes
# a leading batch dimension of the same op, which runs a batch in one call. An unbatched V
# under a batched X stays shared in the forward; in the backward vmap wants a dV per
# example, so V (and its factors) are expanded instead of letting the op sum dV over the
# batch.

def _front(a: Tensor, dim: int | None, size: int) -> Tensor:
    return a.expand(size, *a.shape) if dim is None else a.movedim(dim, 0)


def _per_entry(factors: Tensor, dim: int | None, size: int) -> Tensor:
    """Factors of a batch of V, one row each, as the op's flat layout."""
    return _front(factors, dim, size).reshape(-1)


def _vmap_apply(op):
    def rule(info, in_dims, V, X, transpose, block, strategy):
        B, (vd, xd) = info.batch_size, in_dims[:2]
        if vd is None and V.ndim == 2:  # one V for every example: the op's shared V
            out, factors = op(V, _front(X, xd, B), transpose, block, strategy)
            return (out, factors), (0, None)
        out, factors = op(_front(V, vd, B), _front(X, xd, B), transpose, block, strategy)
        return (out, factors.reshape(B, -1)), (0, 0)
    return rule


def _vmap_apply_backward(info, in_dims, V, factors, out, grad, transpose, block, strategy):
    B, (vd, fd, od, gd) = info.batch_size, in_dims[:4]
    return _apply_backward(_front(V, vd, B), _per_entry(factors, fd, B), _front(out, od, B),
                           _front(grad, gd, B), transpose, block, strategy), (0, 0)


def _vmap_matrix(op):
    def rule(info, in_dims, V, thin, block):
        B = info.batch_size
        U, factors = op(_front(V, in_dims[0], B), thin, block)
        return (U, factors.reshape(B, -1)), (0, 0)
    return rule


def _vmap_matrix_backward(info, in_dims, V, factors, U, grad, thin, block):
    B, (vd, fd, ud, gd) = info.batch_size, in_dims[:4]
    return _matrix_backward(_front(V, vd, B), _per_entry(factors, fd, B), _front(U, ud, B),
                            _front(grad, gd, B), thin, block), 0


_apply.register_vmap(_vmap_apply(_apply))
_apply_backward.register_vmap(_vmap_apply_backward)
_matrix.register_vmap(_vmap_matrix(_matrix))
_matrix_backward.register_vmap(_vmap_matrix_backward)


# eager mode -----------------------------------------------------------------------------
# The same implementations and autograd wiring without the dispatcher: a custom op's
# Python dispatch cost about 0.5 ms per forward + backward on an H200 (d = 48 matrix:
# 761 us through the op, 242 us functional), which dominated small layers such as Glow's
# 1x1 convolutions. torch.compile traces the custom ops instead.

class _ApplyEager(torch.autograd.Function):
    @staticmethod
    def forward(ctx, V, X, transpose, block, strategy):
        out, factors = _apply_impl(V, X, transpose, block, strategy)
        _apply_setup(ctx, (V, X, transpose, block, strategy), (out, factors))
        return out

    @staticmethod
    def backward(ctx, grad_out):  # differentiable in dX under create_graph (_ApplyGradV)
        return _apply_grad(ctx, grad_out, backward=_apply_backward_impl)


class _MatrixEager(torch.autograd.Function):
    @staticmethod
    def forward(ctx, V, thin, block):
        U, factors = _matrix_impl(V, thin, block)
        _matrix_setup(ctx, (V, thin, block), (U, factors))
        return U

    @staticmethod
    def backward(ctx, grad_U):  # differentiating dV again raises (_MatrixGradV)
        return _matrix_grad(ctx, grad_U, backward=_matrix_backward_impl)


# Under torch.func transforms: the same wiring in setup_context form with vmap rules (custom
# ops with register_autograd do not support the transforms yet, pytorch/pytorch#168393), the
# backward through the backward custom op, which vmap can batch. Not the eager default: the
# setup_context form cost about 60 us more per forward + backward.

def _functorch() -> bool:
    return torch._C._are_functorch_transforms_active()


def _transformable(name: str, impl, setup, grad, vmap_rule) -> type[torch.autograd.Function]:
    """An autograd.Function for one op: forward `impl`, `setup` as setup_context, backward
    `grad` through the backward custom op, and the op's vmap rule over this Function."""
    def backward(ctx, grad_out, _grad_factors=None):
        return grad(ctx, grad_out)

    cls = type(name, (torch.autograd.Function,), {
        "forward": staticmethod(impl), "setup_context": staticmethod(setup),
        "backward": staticmethod(backward)})
    cls.vmap = staticmethod(vmap_rule(cls.apply))
    return cls


_ApplyFunction = _transformable("_ApplyFunction", _apply_impl, _apply_setup, _apply_grad, _vmap_apply)
_MatrixFunction = _transformable("_MatrixFunction", _matrix_impl, _matrix_setup, _matrix_grad,
                                 _vmap_matrix)


# autocast -------------------------------------------------------------------------------
# Under torch.autocast fasth runs in float32, as torch's float32-list ops (linalg among them)
# do: float16 and bfloat16 inputs are cast up, float64 is left alone, and the result is
# float32. The custom ops carry the same rule for callers of torch.ops.fasth.* directly.

def _autocast(*tensors: Tensor) -> tuple[Tensor, ...]:
    dev = tensors[0].device.type
    if not (torch.amp.is_autocast_available(dev) and torch.is_autocast_enabled(dev)):
        return tensors
    return tuple(t.float() if t.dtype in (torch.float16, torch.bfloat16) else t for t in tensors)


for _op in (_apply, _apply_backward, _matrix, _matrix_backward):
    for _dev in ("cpu", "cuda"):
        _op.register_autocast(_dev, torch.float32)


# public functions -----------------------------------------------------------------------

def apply(V: Tensor, X: Tensor, transpose: bool = False, *, block: int | None = None,
          strategy: _api.StrategyName = "auto") -> Tensor:
    """``U X`` (``U^T X`` with ``transpose``), differentiable in ``V`` and ``X``.

    ``V``: ``(..., d, k)``, Householder vectors in columns; ``X``: ``(..., d, n)``; ``V``
    unbatched is shared by a batch of ``X``. ``strategy``: ``"blockwise"``, ``"materialize"``
    (build ``U`` once, then one GEMM) or ``"auto"`` (by flop count). Under ``torch.autocast``
    float16/bfloat16 inputs are computed in float32."""
    args = (*_autocast(V, X), transpose, block or 0, strategy)
    if torch.compiler.is_compiling():
        return _apply(*args)[0]
    if _functorch():
        return _ApplyFunction.apply(*args)[0]
    return _ApplyEager.apply(*args)


def matrix(V: Tensor, thin: bool = False, *, block: int | None = None) -> Tensor:
    """``U`` (``d x d``), or with ``thin`` its first ``k`` columns, differentiable in ``V``."""
    args = (*_autocast(V), thin, block or 0)
    if torch.compiler.is_compiling():
        return _matrix(*args)[0]
    if _functorch():
        return _MatrixFunction.apply(*args)[0]
    return _MatrixEager.apply(*args)
