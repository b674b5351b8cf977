"""Differentiation rules for fasth's JAX custom calls: custom VJPs over the custom calls
(``run``, ``run_taped``, ``run_with``) and over their backwards (``grad``, ``grad_taped``).

Second derivatives (gradient penalties differentiate the input gradient): JAX then
differentiates the VJP rules themselves, so they call custom_vjp functions rather than the
custom calls. The input gradient is ``apply`` again with the other ``transpose`` (``P^T g``
for LAPACK's reflectors too), so its derivative is known; the gradient of V has none, and
differentiating it raises instead of returning a wrong zero. Forward mode (``jvp``) has no
rule: JAX refuses it and the public functions say so."""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
from jax.custom_derivatives import SymbolicZero

from .._spec import APPLY, HOUSEHOLDER, LAPACK, Spec, second_order_message
from . import _ffi


# shard_map: the custom calls drop the varying-axes type of their operands.

def _vma(*likes: Any) -> frozenset:
    """The shard_map axes the arrays vary over."""
    out: frozenset = frozenset()
    for a in likes:
        t = jax.typeof(a)
        mat = getattr(t, "manual_axis_type", None)  # jax >= 0.10; `vma` before
        out |= mat.varying if mat is not None else getattr(t, "vma", frozenset())
    return out


def _varying(x: Any, *likes: Any) -> Any:
    """x typed as varying over the shard_map axes its inputs `likes` vary over, and summed
    over axes they do not (the cotangent of an invariant input)."""
    want, have = _vma(*likes), _vma(x)
    if have - want:
        x = jax.lax.psum(x, tuple(sorted(have - want)))
    if want - have:
        x = jax.lax.pcast(x, tuple(sorted(want - have)), to="varying")
    return x


# ---------------------------------------------------------------------------------------------
# Differentiable ops: arrays = (V, [tau], [X]).

def _saved(s: Spec, arrays: tuple, out: Any) -> tuple:
    """Spec.saved as the backward's arguments: () where it reads nothing besides the factors."""
    a = s.saved(arrays[-1], out)
    return () if a is None else (a,)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def run(s: Spec, *arrays):
    """(out, the factors, which the backward reuses)."""
    out, f = _ffi.custom_calls(s).forward(*arrays)
    return _varying(out, *arrays), _varying(f, *arrays[:1 + (s.kind == LAPACK)])


def _taped(s: Spec, arrays: tuple) -> bool:
    """Whether the forward keeps a tape for the backward (where a device's plan keeps one)."""
    return s.kind == HOUSEHOLDER and _ffi.sizes(s, *_ffi.shapes(s, arrays)).tape > 0


def _residuals(s, arrays, out, f, tape):
    x = (jnp.reshape(arrays[-1], (-1,))[:0],) if s.op == APPLY else ()  # X's type, for dX
    return arrays[:1 + (s.kind == LAPACK)], f, _saved(s, arrays, out), x, tape


def _run_fwd(s, *arrays):
    if _taped(s, arrays):  # run_taped's forward, less the tape among the outputs
        (out, f, _), res = _run_taped_fwd(s, *arrays)
        return (out, f), res
    out, f = run(s, *arrays)
    return (out, f), _residuals(s, arrays, out, f, ())


def _run_bwd(s, res, cts):
    v, f, saved, x, tape = res
    # the factors' cotangent is zero
    grads = grad_taped(s, *v, *saved, f, cts[0], *tape) if tape else grad(s, *v, *saved, f, cts[0])
    out = [_varying(grads[0], v[0])]
    if s.kind == LAPACK:
        out.append(_varying(grads[1], v[1]))
    if s.op == APPLY:
        out.append(_varying(grads[-1], x[0]))
    return tuple(out)


run.defvjp(_run_fwd, _run_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def run_taped(s: Spec, *arrays):
    """``run``'s (out, factors), and the tape its backward reads (differentiable as ``run``
    is, for gradients of gradients)."""
    out, f, t = _ffi.custom_calls(s).forward_taped(*arrays)
    return _varying(out, *arrays), _varying(f, arrays[0]), _varying(t, *arrays)


def _run_taped_fwd(s, *arrays):
    out, f, t = run_taped(s, *arrays)
    return (out, f, t), _residuals(s, arrays, out, f, (t,))


run_taped.defvjp(_run_taped_fwd, _run_bwd)  # the factors' and the tape's cotangents: zero


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def run_with(s: Spec, V, f, X):
    """A householder apply's output from factors that ``run`` returned for the same V (and the
    same block and strategy): the forward without its work per V."""
    return _varying(_ffi.custom_calls(s).forward_with(V, f, X), V, X)


def _run_with_fwd(s, V, f, X):
    out = run_with(s, V, f, X)
    return out, (V, f, out, jnp.reshape(X, (-1,))[:0])


def _run_with_bwd(s, res, ct):
    V, f, out, x = res
    dV, dX = grad(s, V, out, f, ct)
    return _varying(dV, V), None, _varying(dX, x)  # the factors' cotangent is zero


run_with.defvjp(_run_with_fwd, _run_with_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def grad(s: Spec, *arrays):
    """(dV, [dtau], [dX]) from arrays = (V, [tau], [S], factors, cotangent)."""
    return _ffi.custom_calls(s).backward(*arrays)


def _backward_fwd(backward, tape: bool):
    """The forward rule of ``grad`` (or with `tape`, ``grad_taped``): its arrays (less the
    tape, which has no cotangent) and its output as residuals."""
    def fwd(s, *arrays):
        arrays = tuple(a.value for a in arrays)
        out = backward(s, *arrays)
        return out, (arrays[:-1] if tape else arrays, out)
    return fwd


def _grad_bwd(s, res, cts):
    arrays, out = res
    nv = 1 + (s.kind == LAPACK)
    for ct in cts[:nv]:
        if not isinstance(ct, SymbolicZero):
            raise NotImplementedError(second_order_message(s.name("jax")))
    none = [None] * len(arrays)
    if s.op != APPLY or isinstance(cts[-1], SymbolicZero):
        return tuple(none)
    # dX = apply(V, g, not transpose); its backward at the cotangent of dX gives the
    # cotangents of V (and tau) and of g.
    v, f, g = arrays[:nv], arrays[-2], arrays[-1]
    t = s._replace(transpose=not s.transpose)  # the same factors serve both directions
    second = grad(t, *v, g if s.kind == LAPACK else out[-1], f, cts[-1])
    res = list(none)
    for i in range(nv):
        res[i] = _varying(second[i], v[i])
    res[-1] = _varying(second[-1], g)
    return tuple(res)


grad.defvjp(_backward_fwd(grad, False), _grad_bwd, symbolic_zeros=True)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def grad_taped(s: Spec, *arrays):
    """``grad`` with the forward's tape last: (V, [tau], [S], factors, cotangent, tape)."""
    return _ffi.custom_calls(s).backward_taped(*arrays)


def _grad_taped_bwd(s, res, cts):
    return (*_grad_bwd(s, res, cts), None)  # as grad's; the tape has no cotangent


grad_taped.defvjp(_backward_fwd(grad_taped, True), _grad_taped_bwd, symbolic_zeros=True)
