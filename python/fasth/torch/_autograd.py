"""Autograd for fasth's torch ops, without the dispatcher: eagerly, an
``autograd.Function`` that calls the plan directly, one crossing into the extension each
way; under ``torch.func``, the same in the setup_context form with a vmap rule, its backward
through the custom op (which vmap batches); under ``torch.compile``, the custom ops.

Eagerly, the householder apply keeps the plan's tape for the backward (each block's input
and products), where the plan keeps one; otherwise its output (its input is recovered
through orthogonality) and its input: if the caller modifies the output in place, the
backward recomputes it from the input, so outputs behave as ordinary tensors. Under
``create_graph``, the input gradient is ``apply`` again (differentiable: gradient
penalties), while the gradient of V raises if it is differentiated again. Forward mode
(``forward_ad``, ``torch.func.jvp``, ``jacfwd``) is each Function's jvp: the core's tangent
pass, through the ``fasth::tangent`` custom op under torch.func (whose vmap rule batches
it)."""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from .. import _engine
from .._spec import APPLY, HOUSEHOLDER, LAPACK, Spec, second_order_message
from . import _plans
from ._custom_ops import backward_op, batch_front, forward_op, shares_v, tangent_op
from ._plans import plain

# gradcheck's batched checks vmap with torch's legacy batching, which the custom ops' own
# vmap rules do not see: a legacy-batched tensor goes through the custom op (looped).
_legacy_batched = torch._C._functorch.is_legacy_batchedtensor


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
        raise RuntimeError(second_order_message(ctx.fn.name))

    @staticmethod
    def jvp(ctx, *_):  # forward over reverse (jacfwd of a gradient, hessian): the same
        raise RuntimeError(second_order_message(ctx.fn.name))


class _Grads:
    """(dV, dtau) of a backward, for _FirstOrderOnly (named in its error)."""

    def __init__(self, name, run):
        self.name, self.run = name, run

    def __call__(self, *tensors):
        return self.run(*tensors)


def _setup(ctx, V, tau, X, s: Spec, c: _engine.BoundPlan, out: Tensor, f: Tensor, transforming: bool,
           tape: Optional[Tensor] = None):
    ctx.spec, ctx.call = s, c
    if transforming or _plans.forward_mode():  # what a jvp reads (forward mode)
        ctx.save_for_forward(V, tau, X, f)
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
    # A torch.func.vmap over this backward alone (per-sample gradients of an eager graph,
    # is_grads_batched) hands it a batched gradient, which has no storage for the plan: it
    # goes through the custom op, whose vmap rule batches it, without the tape (laid out for
    # one gradient).
    vmapped = not transforming and _plans.transforming()
    transforming = transforming or vmapped or _legacy_batched(grad_out)
    grad_out = plain(grad_out)
    V, tau, X, f, out = ctx.saved_tensors
    s, c = ctx.spec, ctx.call
    need_v, need_tau, need_x = ctx.needs_input_grad[:3]
    apply, tape = s.op == APPLY, None if vmapped else ctx.tape
    saved = None
    if s.kind == LAPACK:
        saved = X if apply else None
    elif out is not None:  # under transforms
        saved = out
    elif ctx.out is not None:
        saved = ctx.out
        if saved._version != ctx.version:  # changed in place: computed again
            saved = _engine.forward_with(c, V, f, X)
    elif c.reads_out and tape is None:  # a tape kept instead, unread by vmap's gradient
        saved = _engine.forward_with(c, V, f, X)

    def grads(want_dx, V, tau, f, saved, g):
        if transforming:  # through the custom op, whose vmap rule batches it
            if tape is not None:  # (gradcheck's batched grad_out): X gives the plan's shapes
                return backward_op(V, tau, X if saved is None else saved, f, g, *s, want_dx, tape)
            return backward_op(V, tau, saved, f, g, *s, want_dx)
        return _engine.backward(c, V, f, saved, g, want_dx, tape)

    if torch.is_grad_enabled():  # create_graph: a gradient of this gradient follows
        dX = None
        if apply and need_x:  # U^T g is apply again (P^T g for LAPACK's too)
            dX = run(s._replace(transpose=not s.transpose), V, tau, grad_out)
        dV = dtau = None
        if need_v or need_tau:
            # X as an input too (unread): a tangent of it (forward_ad over this gradient)
            # reaches jvp, which raises, where `saved` (detached, or the tape) would drop it.
            dV, dtau = _FirstOrderOnly.apply(
                _Grads(s.name("torch"), lambda *t: grads(False, *t[:5])[:2]), V, tau, f, saved,
                grad_out, X)
        return dV, dtau if s.kind == LAPACK else None, dX, None
    dV, dtau, dX = grads(apply and need_x, V, tau, f, saved, grad_out)
    return (dV if need_v else None, dtau if need_tau and s.kind == LAPACK else None,
            dX if apply and need_x else None, None)


def _jvp(ctx, dV, dtau, dX, transforming: bool) -> Optional[Tensor]:
    """Forward mode: the tangent of the output in the direction (dV, dtau, dX) (None: zero),
    one pass of the core (about three forwards)."""
    V, tau, X, f = ctx.saved_tensors
    s = ctx.spec
    dtau = dtau if s.kind == LAPACK else None
    dX = dX if s.op == APPLY else None
    if dV is None and dtau is None and dX is None:
        return None
    if transforming or any(t is not None and _legacy_batched(t) for t in (dV, dtau, dX)):
        return tangent_op(V, tau, X, f, dV, dtau, dX, *s)
    return _engine.tangent(ctx.call, V, tau, X, f, dV, dtau, dX)


class Eager(torch.autograd.Function):
    """Eager mode: the plan called directly, one crossing each way. The classic form
    (forward with ctx): torch binds a setup_context form's arguments through
    inspect.signature on every call, about 25 us here."""

    @staticmethod
    def forward(ctx, V, tau, X, s, keep=None):
        c = _plans.bound(s, V, tau, X)
        out, f, tape = _engine.forward(c, V, tau, X, pack=True, tape=True)
        if keep is not None:  # the factors, for the caller (Reflectors); one output is cheaper
            keep.append(f)
        _setup(ctx, V, tau, X, s, c, out, f, False, tape)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        return *_grad(ctx, grad_out, False), None

    @staticmethod
    def jvp(ctx, dV, dtau, dX, _s, _keep=None):
        return _jvp(ctx, dV, dtau, dX, False)


class EagerWith(torch.autograd.Function):
    """Eager mode with factors an earlier forward built from the same V (Reflectors): the
    plan's forward_with, and the same backward as Eager's."""

    @staticmethod
    def forward(ctx, V, tau, X, f, s):  # (V, tau, X) first, as _grad reads them
        c = _plans.bound(s, V, tau, X)
        out, tape = _engine.forward_with(c, V, f, X, tape=True)
        _setup(ctx, V, tau, X, s, c, out, f, False, tape)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        dV, dtau, dX, _ = _grad(ctx, grad_out, False)
        return dV, dtau, dX, None, None

    @staticmethod
    def jvp(ctx, dV, dtau, dX, _f, _s):
        return _jvp(ctx, dV, dtau, dX, False)


class Transformable(torch.autograd.Function):
    """Under torch.func transforms: the setup_context form they need, with a vmap rule."""

    @staticmethod
    def forward(V, tau, X, s):
        c = _plans.bound(s, V, tau, X)
        out, f = _engine.forward(c, V, tau, X)
        return out, f, c

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.mark_non_differentiable(output[1])
        _setup(ctx, *inputs, output[2], output[0], output[1], True)

    @staticmethod
    def backward(ctx, grad_out, _gf=None, _gc=None):
        return _grad(ctx, grad_out, True)

    @staticmethod
    def jvp(ctx, dV, dtau, dX, _s):
        return _jvp(ctx, dV, dtau, dX, True), None, None

    @staticmethod
    def vmap(info, in_dims, V, tau, X, s):
        B = info.batch_size
        vd, td, xd = in_dims[:3]
        if shares_v(s.op, V, vd, td):
            out, f, c = Transformable.apply(V, tau, batch_front(X, xd, B), s)
            return (out, f, c), (0, None, None)
        out, f, c = Transformable.apply(batch_front(V, vd, B), batch_front(tau, td, B), batch_front(X, xd, B), s)
        return (out, f.reshape(B, -1), c), (0, 0, None)


def run(s: Spec, V: Tensor, tau: Optional[Tensor], X: Optional[Tensor]) -> Tensor:
    if torch.compiler.is_compiling():
        if _plans.forward_mode():  # the custom ops have no forward-mode rule: never drop a tangent
            raise NotImplementedError(
                f"{s.name('torch')}: forward-mode AD under torch.compile is not supported; "
                "use it outside torch.compile (torch.func.jvp, torch.autograd.forward_ad)")
        return forward_op(V, tau, X, *s, _plans.recorded(V, tau, X))[0]
    if _plans.transforming():
        return Transformable.apply(V, tau, X, s)[0]
    if not _plans.recorded(V, tau, X) and not _plans.forward_mode():  # nothing to differentiate
        return _engine.forward(_plans.bound(s, V, tau, X), V, tau, X, pack=True)[0]
    return Eager.apply(V, tau, X, s)
