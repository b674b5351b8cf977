"""fasth's custom ops: ``fasth::forward`` and ``fasth::backward`` (torch.compile, and the
backward under torch.func), and ``fasth::tangent`` (forward mode under torch.func), with fake
kernels (the plan's output shapes), ``register_autograd``, autocast and vmap rules; clean
under ``torch.library.opcheck``."""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from .. import _engine
from .._spec import APPLY, LAPACK, Spec
from . import _plans
from ._plans import plain

# The forward returns a tape where `taped` (a graph that differentiates it) and the plan keeps
# one; the backward reads it instead of recovering each block's input from the output.
@torch.library.custom_op("fasth::forward", mutates_args=())
def forward_op(V: Tensor, tau: Optional[Tensor], X: Optional[Tensor], op: int, kind: int,
                transpose: bool, thin: bool, block: int, strategy: str,
                tf32: bool, taped: bool = False) -> tuple[Tensor, Tensor, Tensor]:
    return _plans.forward(Spec(op, kind, transpose, thin, block, strategy, tf32), V, tau, X, taped)


@forward_op.register_fake
def _(V, tau, X, op, kind, transpose, thin, block, strategy, tf32, taped=False):
    c = _plans.bound(Spec(op, kind, transpose, thin, block, strategy, tf32), V, tau, X)
    p = c.plan
    return (V.new_empty_strided(*p.out), V.new_empty((p.factors_size,)),
            V.new_empty((c.tape_size if taped else 0,)))


@torch.library.custom_op("fasth::backward", mutates_args=())
def backward_op(V: Tensor, tau: Optional[Tensor], saved: Optional[Tensor], factors: Tensor,
                 grad: Tensor, op: int, kind: int, transpose: bool, thin: bool, block: int,
                 strategy: str, tf32: bool, want_dx: bool,
                 tape: Optional[Tensor] = None) -> tuple[Tensor, Tensor, Tensor]:
    return _plans.backward(Spec(op, kind, transpose, thin, block, strategy, tf32), V, tau, saved,
                     factors, grad, want_dx, tape)


@backward_op.register_fake
def _(V, tau, saved, factors, grad, op, kind, transpose, thin, block, strategy, tf32, want_dx,
      tape=None):
    c = _plans.bound(Spec(op, kind, transpose, thin, block, strategy, tf32), V, tau, saved)
    p = c.plan
    return (V.new_empty_strided(*p.dV),
            V.new_empty_strided(*p.dtau) if c.is_lapack else V.new_empty((0,)),
            V.new_empty_strided(*p.dX) if c.is_apply and want_dx else V.new_empty((0,)))


@torch.library.custom_op("fasth::tangent", mutates_args=())
def tangent_op(V: Tensor, tau: Optional[Tensor], X: Optional[Tensor], factors: Tensor,
               dV: Optional[Tensor], dtau: Optional[Tensor], dX: Optional[Tensor], op: int,
               kind: int, transpose: bool, thin: bool, block: int, strategy: str,
               tf32: bool) -> Tensor:
    s = Spec(op, kind, transpose, thin, block, strategy, tf32)
    return _engine.tangent(_plans.bound(s, V, tau, X), V, tau, X, factors, dV, dtau, dX)


@tangent_op.register_fake
def _(V, tau, X, factors, dV, dtau, dX, op, kind, transpose, thin, block, strategy, tf32):
    c = _plans.bound(Spec(op, kind, transpose, thin, block, strategy, tf32), V, tau, X)
    return V.new_empty_strided(*c.plan.out)


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
    grad_out = plain(grad_out)
    V, tau, saved, factors, tape = ctx.saved_tensors
    s = ctx.spec
    dV, dtau, dX = backward_op(V, tau, saved, factors, grad_out, *s, ctx.needs_input_grad[2], tape)
    return (dV, dtau if s.kind == LAPACK else None, dX if s.op == APPLY else None) + (None,) * 8


forward_op.register_autograd(_op_grad, setup_context=_op_setup)
for _op in (forward_op, backward_op):
    for _dev in ("cpu", "cuda"):  # under torch.autocast: float32, as torch's linalg ops
        _op.register_autocast(_dev, torch.float32)


# vmap: the mapped dimension becomes a leading batch dimension of the same op, one call.
# An unbatched V under a batched X stays shared in the forward; the backward gives a dV
# per example, so V and its factors are expanded there (a view, and a copy of the factors).

def batch_front(a: Optional[Tensor], dim: Optional[int], size: int) -> Optional[Tensor]:
    if a is None:
        return None
    return a.expand(size, *a.shape) if dim is None else a.movedim(dim, 0)


def shares_v(op: int, V: Tensor, v_dim: Optional[int], tau_dim: Optional[int]) -> bool:
    """Whether a vmapped apply keeps one V for every example: V (and tau) unmapped and V
    without batch dimensions of its own, the only V a plan shares; one with them is repeated
    for each example (the plan takes V's batch equal to X's)."""
    return op == APPLY and v_dim is None and tau_dim is None and V.dim() == 2


# A tape is laid out for the whole batch, not per example: under vmap the forward keeps none
# (an empty tape, not mapped) and the backward recovers the blocks' inputs from the output.
def _vmap_forward(fn):
    def rule(info, in_dims, V, tau, X, *spec):
        B = info.batch_size
        vd, td, xd = in_dims[:3]
        spec = spec[:len(Spec._fields)]
        if shares_v(Spec(*spec).op, V, vd, td):
            out, f, t = fn(V, tau, batch_front(X, xd, B), *spec, False)
            return (out, f, t), (0, None, None)
        out, f, t = fn(batch_front(V, vd, B), batch_front(tau, td, B), batch_front(X, xd, B), *spec, False)
        return (out, f.reshape(B, -1), t), (0, 0, None)
    return rule


def _vmap_backward(info, in_dims, V, tau, saved, factors, grad, *rest):
    B = info.batch_size
    vd, td, sd, fd, gd = in_dims[:5]
    f = factors.expand(B, *factors.shape) if fd is None else factors.movedim(fd, 0)
    spec, want_dx = rest[:len(Spec._fields)], rest[len(Spec._fields)]
    out = backward_op(batch_front(V, vd, B), batch_front(tau, td, B), batch_front(saved, sd, B),
                       f.reshape(-1), batch_front(grad, gd, B), *spec, want_dx, None)
    return out, (0, 0 if spec[1] == LAPACK else None, 0 if spec[0] == APPLY and want_dx else None)


def _vmap_tangent(info, in_dims, V, tau, X, factors, dV, dtau, dX, *spec):
    """Directions per example (jacfwd): V, tau, their directions and V's factors broadcast
    where not mapped (and to X's batch, where V was shared by it), unless only X's direction
    is mapped (one shared V)."""
    B = info.batch_size
    vd, td, xd, fd, dvd, dtd, dxd = in_dims[:7]
    if spec[0] == APPLY and V.dim() == 2 and vd is td is dvd is dtd is fd is None:
        return tangent_op(V, tau, batch_front(X, xd, B), factors, dV, dtau,
                          batch_front(dX, dxd, B), *spec), 0
    f = factors.expand(B, *factors.shape) if fd is None else factors.movedim(fd, 0)
    V, dV, X = batch_front(V, vd, B), batch_front(dV, dvd, B), batch_front(X, xd, B)
    if X is not None and X.dim() > V.dim():  # a V shared by X's batch: one per example
        lead = X.shape[:-2]
        V, dV = (None if a is None else a.reshape(B, *[1] * (len(lead) - 1), *a.shape[1:])
                 .expand(*lead, *a.shape[1:]) for a in (V, dV))
        f = f.reshape(B, *[1] * (len(lead) - 1), -1).expand(*lead, f.shape[-1])
    return tangent_op(V, batch_front(tau, td, B), X, f.reshape(-1), dV,
                      batch_front(dtau, dtd, B), batch_front(dX, dxd, B), *spec), 0


forward_op.register_vmap(_vmap_forward(forward_op))
backward_op.register_vmap(_vmap_backward)
tangent_op.register_vmap(_vmap_tangent)
