"""fasth's XLA FFI custom calls, ``fasth_forward``, ``fasth_backward``,
``fasth_forward_with`` and ``fasth_tangent`` (CPU and CUDA, from the same C++ handlers,
bindings/jax_ffi.hpp), each a run of the core's plan on row-major arrays of any rank, the
first three with a batching rule (custom_vmap; the tangent's primitive has its own).

The forward call also returns the T factors, saved for the backward, and the workspace: XLA
allocates both with the call's other buffers (the handlers allocate nothing, run on XLA's
stream and may be captured in CUDA graphs). Their sizes are those of the largest device's
plan, so one lowering serves any device. A householder apply's taped forward also returns
the plan's tape (each block's input and products), which its backward reads instead of
recovering them from the output; under ``vmap`` the tape is empty and the backward
recovers them.

``vmap`` makes the mapped axis a leading batch dimension of the same call, not a loop. An
unbatched 2-d ``V`` stays shared in the forward (no copy); in the backward JAX asks for
per-example gradients of it, so ``V`` and its factors are broadcast there and JAX sums."""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.custom_batching import custom_vmap
from jax.interpreters import ad

from .. import _engine, _native
from .._spec import APPLY, LAPACK, Spec


def _register_cpu() -> None:
    targets = _native.jax_targets("cpu")
    if not targets:
        raise ImportError("fasth.jax: this build of fasth has no XLA FFI handlers (jax was not "
                          "found when it was built); reinstall fasth with jax installed")
    for name, capsule in targets.items():
        jax.ffi.register_ffi_target(name, capsule, platform="cpu")


_register_cpu()


@functools.cache
def register_cuda() -> None:
    """The CUDA handlers, registered on first use where JAX has a GPU: fasth._cuda is imported
    only then (a clear error if it cannot be)."""
    try:
        has_gpu = bool(jax.devices("gpu"))
    except RuntimeError:
        return
    if has_gpu:
        for name, capsule in _native.jax_targets("cuda").items():
            jax.ffi.register_ffi_target(name, capsule, platform="CUDA")


class Sizes(NamedTuple):
    out: tuple[int, ...]
    dV: tuple[int, ...]
    dtau: tuple[int, ...]
    dX: tuple[int, ...]
    factors: int
    forward_ws: int
    backward_ws: int
    tape: int  # 0: no device's plan keeps one
    tangent_ws: int


@functools.cache
def sizes(s: Spec, v: tuple, tau: tuple, x: tuple) -> Sizes:
    """Output shapes and buffer sizes of the call on row-major arrays of these shapes: the
    largest over the devices (raises ValueError, naming the argument, for bad shapes)."""
    dense = _engine.dense_strides
    plans = [_engine.plan(s, s.name("jax"), (v, dense(v)), (tau, dense(tau)), (x, dense(x)), dev,
                          direct_y=False) for dev in ("cpu", "cuda")]
    p = plans[0]
    return Sizes(tuple(p.out[0]), tuple(p.dV[0]), tuple(p.dtau[0]), tuple(p.dX[0]),
                 max(q.factors_size for q in plans), max(q.forward_workspace for q in plans),
                 max(q.backward_workspace for q in plans), max(q.tape_size for q in plans),
                 max(q.tangent_workspace for q in plans))


def _attrs(s: Spec) -> dict[str, Any]:
    return {"op": np.int64(s.op), "kind": np.int64(s.kind), "block": np.int64(s.block),
            "strategy": np.int64(s.strategy_code()), "transpose": bool(s.transpose),
            "thin": bool(s.thin), "tf32": bool(s.tf32)}


def _sds(shape, dtype) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct(tuple(shape), dtype)


def shapes(s: Spec, arrays) -> tuple:
    """(V, tau, X) shapes of the op's arrays ((): absent)."""
    it = iter(arrays)
    v = next(it).shape
    tau = next(it).shape if s.kind == LAPACK else ()
    x = next(it).shape if s.op == APPLY else ()
    return tuple(v), tuple(tau), tuple(x)


# shard_map: the custom calls drop the varying-axes type of their operands.

def _vma(*likes: Any) -> frozenset:
    """The shard_map axes the arrays (or a transpose's undefined primals) vary over."""
    out: frozenset = frozenset()
    for a in likes:
        t = a.aval if ad.is_undefined_primal(a) else jax.typeof(a)
        mat = getattr(t, "manual_axis_type", None)  # jax >= 0.10; `vma` before
        out |= mat.varying if mat is not None else getattr(t, "vma", frozenset())
    return out


def varying(x: Any, *likes: Any) -> Any:
    """x typed as varying over the shard_map axes its inputs `likes` vary over, and summed
    over axes they do not (the cotangent of an invariant input)."""
    want, have = _vma(*likes), _vma(x)
    if have - want:
        x = jax.lax.psum(x, tuple(sorted(have - want)))
    if want - have:
        x = jax.lax.pcast(x, tuple(sorted(want - have)), to="varying")
    return x


def tangent(s: Spec, arrays: tuple, f: Any, dirs: tuple) -> Any:
    """fasth_tangent: the tangent of the op's output at arrays = (V, [tau], [X]), from their
    factors f, in the directions dirs = (dV, [dtau], [dX]) shaped as their primals."""
    z = sizes(s, *shapes(s, arrays))
    dt = arrays[0].dtype
    rets = (_sds(z.out, dt), _sds((z.tangent_ws,), dt))
    return jax.ffi.ffi_call("fasth_tangent", rets)(*arrays, f, *dirs, **_attrs(s))[0]


def _front(x: Any, batched: bool, B: int) -> Any:
    """x with the mapped axis (size B) in front, broadcast when it was not mapped."""
    return x if batched else jnp.broadcast_to(x, (B, *x.shape))


# ---------------------------------------------------------------------------------------------
# The custom calls, each with a batching rule.

class CustomCalls(NamedTuple):
    """The custom calls of one Spec, each with its batching rule."""

    forward: Any  # arrays -> (out, factors)
    backward: Any  # (arrays, factors, grad) -> (dV, [dtau], [dX])
    forward_with: Any  # (V, factors, X) -> out
    forward_taped: Any  # arrays -> (out, factors, tape): the forward that keeps a tape
    backward_taped: Any  # (arrays, factors, grad, tape) -> backward's


@functools.cache
def custom_calls(s: Spec) -> CustomCalls:
    attrs = _attrs(s)

    def ffi_forward(arrays, taped: bool):
        z = sizes(s, *shapes(s, arrays))
        dt = arrays[0].dtype
        rets = (_sds(z.out, dt), _sds((z.factors,), dt), _sds((z.forward_ws,), dt))
        if taped:
            rets += (_sds((z.tape,), dt),)
        r = jax.ffi.ffi_call("fasth_forward", rets)(*arrays, **attrs)
        return (r[0], r[1], r[3]) if taped else (r[0], r[1])

    @custom_vmap
    def forward(*arrays):
        return ffi_forward(arrays, False)

    @forward.def_vmap
    def _(B, batched, *arrays):
        if s.op == APPLY and not any(batched[:-1]) and arrays[0].ndim == 2:  # one shared V
            out, f = forward(*arrays[:-1], _front(arrays[-1], batched[-1], B))
            return (out, f), (True, False)
        out, f = forward(*(_front(a, b, B) for a, b in zip(arrays, batched)))
        return (out, jnp.reshape(f, (B, -1))), (True, True)

    # A forward that keeps its tape; under vmap, the plain forward and an empty tape (the
    # tape is laid out by block, not by example), which the backward then does without.
    @custom_vmap
    def taped(*arrays):
        return ffi_forward(arrays, True)

    @taped.def_vmap
    def _(B, batched, *arrays):
        (out, f), (ob, fb) = forward.vmap_rule(B, batched, *arrays)
        return (out, f, jnp.zeros((B, 0), arrays[0].dtype)), (ob, fb, True)

    def ffi_backward(arrays, tape=()):
        ins = arrays[:-2]
        z = sizes(s, *shapes(s, ins))
        dt = arrays[0].dtype
        rets = [_sds(z.dV, dt)]
        if s.kind == LAPACK:
            rets.append(_sds(z.dtau, dt))
        if s.op == APPLY:
            rets.append(_sds(z.dX, dt))
        rets.append(_sds((z.backward_ws,), dt))
        return tuple(jax.ffi.ffi_call("fasth_backward", tuple(rets))(*arrays, *tape, **attrs)[:-1])

    @custom_vmap
    def backward(*arrays):
        """arrays: V, [tau], [S], factors, grad -> (dV, [dtau], [dX])."""
        return ffi_backward(arrays)

    @custom_vmap
    def backward_taped(*arrays):
        """arrays: V, [tau], [S], factors, grad, tape -> (dV, [dtau], [dX])."""
        return ffi_backward(arrays[:-1], arrays[-1:])

    @backward_taped.def_vmap
    def _(B, batched, *arrays):  # the tape under vmap is empty: the backward from S
        return backward.vmap_rule(B, batched[:-1], *arrays[:-1])

    @backward.def_vmap
    def _(B, batched, *arrays):
        # Per-example gradients: V (and its factors) broadcast where not mapped.
        f = arrays[-2] if batched[-2] else jnp.broadcast_to(arrays[-2], (B, *arrays[-2].shape))
        out = backward(*(_front(a, b, B) for a, b in zip(arrays[:-2], batched[:-2])),
                       jnp.reshape(f, (-1,)), _front(arrays[-1], batched[-1], B))
        return out, tuple(True for _ in out)

    @custom_vmap
    def forward_with(V, f, X):
        """A householder apply with the factors an earlier forward of V returned."""
        z = sizes(s, tuple(V.shape), (), tuple(X.shape))
        rets = (_sds(z.out, V.dtype), _sds((z.forward_ws,), V.dtype))
        return jax.ffi.ffi_call("fasth_forward_with", rets)(V, f, X, **attrs)[0]

    @forward_with.def_vmap
    def _(B, batched, V, f, X):
        if not batched[0] and V.ndim == 2:  # one shared V, and its factors
            return forward_with(V, f, _front(X, batched[2], B)), True
        fb = f if batched[1] else jnp.broadcast_to(f, (B, *f.shape))
        return forward_with(_front(V, batched[0], B), jnp.reshape(fb, (-1,)), _front(X, batched[2], B)), True

    return CustomCalls(forward, backward, forward_with, taped, backward_taped)
