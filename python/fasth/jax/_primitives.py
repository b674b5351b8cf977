"""fasth's derivatives in JAX as JAX's own linear-algebra ops have theirs: two primitives,
each linear in its last operands and each the other's transpose, over the custom calls.

* ``tangent_p(*primal, dV, [dtau], [dX]) -> dout``: the tangent of the op's output
  (``fasth_tangent``, linear in the directions);
* ``cotangent_p(*primal, g) -> (dV, [dtau], [dX])``: the backward (``fasth_backward``,
  linear in the cotangent g).

``primal`` is (V, [tau], [X], factors, [S], [tape]): S (the output, or LAPACK's input X) and
the tape are what the backward reads, the tangent reads neither. Transposing one gives the
other, so reverse mode is the transpose of forward mode; their JVP rules differentiate them
again in X, S and the cotangent (hessians and gradient penalties in the input), and a
derivative in V (a second derivative in V) is ``second_p``: a value that raises where it is
evaluated or transposed, so that a transformation which never uses it goes through."""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax._src import core as _jcore  # get_cur_mesh_sharding: an output's mesh, as ffi_call's
from jax.extend.core import Primitive
from jax.interpreters import ad, batching, mlir

from .._spec import APPLY, HOUSEHOLDER, LAPACK, Spec, second_order_message
from . import _ffi
from ._ffi import varying as _varying


class Prim(NamedTuple):
    """The primal operands of tangent_p and cotangent_p (None: absent)."""
    V: Any
    tau: Any
    X: Any
    f: Any
    S: Any
    tape: Any

    def operands(self) -> tuple:
        return tuple(a for a in self if a is not None)


def _arrays(p: Prim) -> list:
    """The op's own arrays, (V, [tau], [X])."""
    return [a for a in (p.V, p.tau, p.X) if a is not None]


def _split(s: Spec, has_s: bool, has_tape: bool, ops: tuple) -> tuple[Prim, tuple]:
    """A primitive's operands as (its primal operands, the rest: directions or cotangent)."""
    it = iter(ops)
    take = lambda cond: next(it) if cond else None  # noqa: E731
    p = Prim(next(it), take(s.kind == LAPACK), take(s.op == APPLY), next(it), take(has_s),
             take(has_tape))
    return p, tuple(it)


def _raise_second(s: Spec):
    raise NotImplementedError(second_order_message(s.name("jax")))


def _zero(t) -> bool:
    return t is None or type(t) is ad.Zero


tangent_p = Primitive("fasth_tangent")
cotangent_p = Primitive("fasth_cotangent")
cotangent_p.multiple_results = True


def _bind(prim: Primitive, *ops, **kw):
    """prim on its operands, each typed as varying over the shard_map axes that any of them
    varies over (an invariant V's cotangent is then summed over them, by pcast's transpose)."""
    return prim.bind(*(_varying(a, *ops) for a in ops), **kw)


def _aval(like, shape, dtype):
    """An output's abstract value, varying as the (equally typed) operands do."""
    return jax.core.ShapedArray(tuple(shape), dtype, sharding=_jcore.get_cur_mesh_sharding(),
                                manual_axis_type=like.manual_axis_type)


def _tangent_impl(*ops, spec, has_s, has_tape):
    p, dirs = _split(spec, has_s, has_tape, ops)
    return _ffi.tangent(spec, _arrays(p), p.f, dirs)


def _tangent_abstract(*ops, spec, has_s, has_tape):
    p, _ = _split(spec, has_s, has_tape, ops)
    z = _ffi.sizes(spec, *_ffi.shapes(spec, _arrays(p)))
    return _aval(p.V, z.out, p.V.dtype)


def _cotangent_impl(*ops, spec, has_s, has_tape):
    p, (ct,) = _split(spec, has_s, has_tape, ops)
    c = _ffi.custom_calls(spec)
    args = (*[a for a in (p.V, p.tau, p.S) if a is not None], p.f, ct)
    if p.tape is not None and p.tape.size:
        return list(c.backward_taped(*args, p.tape))
    return list(c.backward(*args))


def _cotangent_abstract(*ops, spec, has_s, has_tape):
    p, _ = _split(spec, has_s, has_tape, ops)
    z = _ffi.sizes(spec, *_ffi.shapes(spec, _arrays(p)))
    dt = p.V.dtype
    out = [_aval(p.V, z.dV, dt)]
    if spec.kind == LAPACK:
        out.append(_aval(p.V, z.dtau, dt))
    if spec.op == APPLY:
        out.append(_aval(p.V, z.dX, dt))
    return out


for _p, _impl, _abs in ((tangent_p, _tangent_impl, _tangent_abstract),
                        (cotangent_p, _cotangent_impl, _cotangent_abstract)):
    _p.def_impl(_impl)
    _p.def_abstract_eval(_abs)
    mlir.register_lowering(_p, mlir.lower_fun(_impl, multiple_results=_p.multiple_results))


def _undefined(x) -> bool:
    return ad.is_undefined_primal(x)


def _flipped(spec: Spec, p: Prim, X, dirs: list, out=None) -> Any:
    """(d op(U)[dV, dtau])^T X: the tangent of the other direction's apply at X, the same
    factors serving both directions; `out`: that apply's output where known (its S, which
    its own transpose reads), else computed."""
    t = spec._replace(transpose=not spec.transpose)
    if spec.kind == LAPACK:
        S = X
    else:
        S = out if out is not None else _ffi.custom_calls(t).forward(p.V, X)[0]
    q = p._replace(X=X, S=S, tape=None)
    return _bind(tangent_p, *q.operands(), *dirs, jnp.zeros_like(X), spec=t, has_s=True,
                 has_tape=False)


def _tangent_transpose(ct, *ops, spec, has_s, has_tape):
    """In the directions: the backward (cotangent_p). In X (the X' term of _tangent_jvp,
    whose dX is zero): the other direction's tangent at ct. S and the tape are not read."""
    p, dirs = _split(spec, has_s, has_tape, ops)
    res = [None] * len(ops)
    if type(ct) is ad.Zero:
        return res
    if _undefined(p.V) or _undefined(p.tau) or _undefined(p.f):
        _raise_second(spec)
    n = len(p.operands())
    if any(_undefined(d) for d in dirs):
        cts = _bind(cotangent_p, *p.operands(), ct, spec=spec, has_s=has_s, has_tape=has_tape)
        res[n:] = [_varying(c, d) if _undefined(d) else None for c, d in zip(cts, dirs)]
    if p.X is not None and _undefined(p.X):
        res[1 + (spec.kind == LAPACK)] = _varying(_flipped(spec, p, ct, list(dirs[:-1])), p.X)
    return res


def _cotangent_transpose(cts, *ops, spec, has_s, has_tape):
    """In the cotangent: the tangent (tangent_p). In S (the S' term of _cotangent_jvp, dV and
    dtau alone): the other direction's tangent at g, mapped to S (S = op(U) X for fasth's
    reflectors, S = X for LAPACK's). X is not read."""
    p, (g,) = _split(spec, has_s, has_tape, ops)
    res = [None] * len(ops)
    if all(type(c) is ad.Zero for c in cts):
        return res
    if _undefined(p.V) or _undefined(p.tau) or _undefined(p.f):
        _raise_second(spec)
    dirs = [ad.instantiate_zeros(c) for c in cts]
    if _undefined(g):
        t = _bind(tangent_p, *p.operands(), *dirs, spec=spec, has_s=has_s, has_tape=has_tape)
        res[-1] = _varying(t, g)
    if p.S is not None and _undefined(p.S):
        if spec.op != APPLY:
            _raise_second(spec)
        gx = _flipped(spec, p, g, dirs[:-1])
        if spec.kind == HOUSEHOLDER:
            gx = _ffi.custom_calls(spec).forward(p.V, gx)[0]
        res[len(p.operands()) - 1 - (p.tape is not None)] = _varying(gx, p.S)
    return res


ad.primitive_transposes[tangent_p] = _tangent_transpose
ad.primitive_transposes[cotangent_p] = _cotangent_transpose


def _in_v(tp: Prim) -> bool:
    """Whether the primal operands' tangent has a direction in V (or tau). The factors' is not
    read: it is zero unless V's is (see _jvp)."""
    return not (_zero(tp.V) and _zero(tp.tau))


# A second derivative in V, as a tangent: bound on V's direction (so that it is staged with
# the other tangents, linear in it), with a known abstract value (so that a transformation that
# never uses it, as a gradient penalty's dX never uses dV's, goes through); evaluating or
# transposing it raises.
second_p = Primitive("fasth_second_in_v")


def _second_raise(*_, spec, **__):
    _raise_second(spec)


second_p.def_impl(_second_raise)
second_p.def_abstract_eval(lambda t, *, spec, shape, dtype: jax.core.ShapedArray(shape, dtype))
mlir.register_lowering(second_p, mlir.lower_fun(_second_raise, multiple_results=False))
ad.primitive_jvps[second_p] = lambda primals, tangents, **kw: _second_raise(**kw)
ad.primitive_transposes[second_p] = (
    lambda ct, t, **kw: [None] if type(ct) is ad.Zero else _second_raise(**kw))


def _second_batch(args, dims, *, spec, shape, dtype):
    (t,), (d,) = args, dims
    t = jnp.moveaxis(t, d, 0)
    return second_p.bind(t, spec=spec, shape=(t.shape[0], *shape), dtype=dtype), 0


batching.primitive_batchers[second_p] = _second_batch


def _second(spec: Spec, tp: Prim, like) -> Any:
    t = ad.instantiate_zeros(tp.V if not _zero(tp.V) else tp.tau)
    return second_p.bind(t, spec=spec, shape=tuple(like.shape), dtype=like.dtype)


def _tangent_jvp(primals, tangents, *, spec, has_s, has_tape):
    """Linear in the directions; in X, dU X' (with S' as the X' term's S); in V, raises."""
    kw = dict(spec=spec, has_s=has_s, has_tape=has_tape)
    p, dirs = _split(spec, has_s, has_tape, primals)
    tp, tdirs = _split(spec, has_s, has_tape, tangents)
    out = _bind(tangent_p, *primals, **kw)
    if _in_v(tp):  # d^2 U[dV, V'] X: a second derivative in V
        return out, _second(spec, tp, out)
    terms = []
    if not all(_zero(t) for t in tdirs):
        terms.append(_bind(tangent_p, *p.operands(), *(ad.instantiate_zeros(t) for t in tdirs), **kw))
    if p.X is not None and not _zero(tp.X):
        S = None if p.S is None else ad.instantiate_zeros(tp.S)
        q = p._replace(X=ad.instantiate_zeros(tp.X), S=S, tape=None)
        d = list(dirs)
        d[-1] = jnp.zeros_like(d[-1])  # dU X' alone
        terms.append(_bind(tangent_p, *q.operands(), *d, spec=spec, has_s=has_s, has_tape=False))
    if not terms:
        return out, ad.Zero.from_primal_value(out)
    return out, functools.reduce(jnp.add, terms)


def _cotangent_jvp(primals, tangents, *, spec, has_s, has_tape):
    """Linear in the cotangent; bilinear in (S, cotangent) for dV (and dtau); in V, raises."""
    kw = dict(spec=spec, has_s=has_s, has_tape=has_tape)
    p, (g,) = _split(spec, has_s, has_tape, primals)
    tp, (tg,) = _split(spec, has_s, has_tape, tangents)
    out = _bind(cotangent_p, *primals, **kw)
    terms = []
    if _in_v(tp):  # dV's (and dtau's): second derivatives in V; dX = op(U)^T g's: first order
        tv = [ad.instantiate_zeros(t) for t in (tp.V, tp.tau) if t is not None]
        r = [_second(spec, tp, o) for o in out]
        if spec.op == APPLY:
            r[-1] = _flipped(spec, p, g, tv, out[-1])
        terms.append(r)
    if not _zero(tg):
        terms.append(_bind(cotangent_p, *p.operands(), ad.instantiate_zeros(tg), **kw))
    if p.S is not None and not _zero(tp.S):
        X = p.X if p.X is None or _zero(tp.X) else ad.instantiate_zeros(tp.X)
        q = p._replace(X=X if spec.kind == HOUSEHOLDER else ad.instantiate_zeros(tp.S),
                       S=ad.instantiate_zeros(tp.S), tape=None)
        r = _bind(cotangent_p, *q.operands(), g, spec=spec, has_s=has_s, has_tape=False)
        if spec.op == APPLY:  # dX = op(U)^T g does not depend on S
            r = [*r[:-1], jnp.zeros_like(r[-1])]
        terms.append(r)
    if not terms:
        return out, [ad.Zero.from_primal_value(o) for o in out]
    return out, [functools.reduce(jnp.add, ts) for ts in zip(*terms)]


ad.primitive_jvps[tangent_p] = _tangent_jvp
ad.primitive_jvps[cotangent_p] = _cotangent_jvp


def _batched(args, dims, B):
    return [a if d is None else jnp.moveaxis(a, d, 0) for a, d in zip(args, dims)]


def _per_example(spec, p: Prim, pd: Prim, B: int, vdirs=(), vdd=()) -> tuple[Prim, list]:
    """Every operand with the mapped axis in front: V, tau, the factors and the directions of
    V and tau (`vdirs`, mapped as `vdd` says) broadcast where not mapped, and to X's batch
    where V was shared by it; the tape dropped (it is laid out for the whole batch: the
    backward then recovers the blocks' inputs)."""
    fr = lambda a, m: None if a is None else (a if m else jnp.broadcast_to(a, (B, *a.shape)))  # noqa: E731
    V, tau, X, S, f = (fr(a, m) for a, m in ((p.V, pd.V), (p.tau, pd.tau), (p.X, pd.X),
                                             (p.S, pd.S), (p.f, pd.f)))
    vdirs = [fr(a, m) for a, m in zip(vdirs, vdd)]
    lead = X.shape[:-2] if X is not None else V.shape[:-2]
    if len(lead) > V.ndim - 2:  # a V shared by X's batch: one per example

        def widen(a):
            return jnp.broadcast_to(a.reshape(B, *[1] * (len(lead) - 1), *a.shape[1:]),
                                    (*lead, *a.shape[1:]))

        V, f = widen(V), widen(f)
        tau = None if tau is None else widen(tau)
        vdirs = [widen(a) for a in vdirs]
    tape = None if p.tape is None else jnp.zeros((0,), p.V.dtype)
    return Prim(V, tau, X, jnp.reshape(f, (-1,)), S, tape), vdirs


def _tangent_batch(args, dims, *, spec, has_s, has_tape):
    B = next(a.shape[d] for a, d in zip(args, dims) if d is not None)
    args = _batched(args, dims, B)
    mapped = [d is not None for d in dims]
    p, dirs = _split(spec, has_s, has_tape, args)
    pd, dd = _split(spec, has_s, has_tape, mapped)
    kw = dict(spec=spec, has_s=has_s, has_tape=has_tape)
    fr = lambda a, m: a if m else jnp.broadcast_to(a, (B, *a.shape))  # noqa: E731
    nv = 1 + (spec.kind == LAPACK)  # the directions of V (and tau)
    if (spec.op == APPLY and p.V.ndim == 2 and not (pd.V or pd.tau or pd.f)
            and not any(dd[:nv])):  # one shared V (and direction): X's batch
        q = p._replace(X=fr(p.X, pd.X), S=None if p.S is None else fr(p.S, pd.S),
                       tape=None if p.tape is None else jnp.zeros((0,), p.V.dtype))
        return _bind(tangent_p, *q.operands(), *dirs[:-1], fr(dirs[-1], dd[-1]), **kw), 0
    q, vdirs = _per_example(spec, p, pd, B, dirs[:nv], dd[:nv])
    rest = [fr(a, m) for a, m in zip(dirs[nv:], dd[nv:])]
    return _bind(tangent_p, *q.operands(), *vdirs, *rest, **kw), 0


def _cotangent_batch(args, dims, *, spec, has_s, has_tape):
    B = next(a.shape[d] for a, d in zip(args, dims) if d is not None)
    args = _batched(args, dims, B)
    mapped = [d is not None for d in dims]
    p, (g,) = _split(spec, has_s, has_tape, args)
    pd, (gd,) = _split(spec, has_s, has_tape, mapped)
    q, _ = _per_example(spec, p, pd, B)
    g = g if gd else jnp.broadcast_to(g, (B, *g.shape))
    out = _bind(cotangent_p, *q.operands(), g, spec=spec, has_s=has_s, has_tape=has_tape)
    return out, [0] * len(out)


batching.primitive_batchers[tangent_p] = _tangent_batch
batching.primitive_batchers[cotangent_p] = _cotangent_batch


def bind_tangent(s: Spec, p: Prim, directions: tuple) -> Any:
    """The tangent of the op's output at the primal operands p in the directions."""
    return _bind(tangent_p, *p.operands(), *directions, spec=s, has_s=p.S is not None,
                 has_tape=p.tape is not None)
