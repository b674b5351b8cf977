"""fasth's operations for JAX: two XLA FFI custom calls, ``fasth_forward`` and
``fasth_backward`` (CPU and CUDA, from the same C++ handlers, bindings/jax_ffi.hpp), each a
run of the core's plan on row-major arrays of any rank, with batching rules (custom_vmap)
and a custom VJP.

The forward call also returns the T factors, saved for the backward, and the workspace: XLA
allocates both with the call's other buffers (the handlers allocate nothing, run on XLA's
stream and may be captured in CUDA graphs). Their sizes are those of the largest device's
plan, so one lowering serves any device. Under differentiation, a householder apply's forward
also returns the plan's tape (each block's input and products), which its backward reads
instead of recovering them from the output (8 d k n flops instead of 12 d k n); under
``vmap`` the tape is empty and the backward recovers them.

``vmap`` makes the mapped axis a leading batch dimension of the same call, not a loop. An
unbatched 2-d ``V`` stays shared in the forward (no copy); in the backward JAX asks for
per-example gradients of it, so ``V`` and its factors are broadcast there and JAX sums.

Second derivatives (gradient penalties differentiate the input gradient): JAX then
differentiates the VJP rules themselves, so they call custom_vjp functions rather than the
custom calls. The input gradient is ``apply`` again with the other ``transpose`` (``P^T g``
for LAPACK's reflectors too), so its derivative is known; the gradient of V has none, and
differentiating it raises instead of returning a wrong zero."""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.custom_batching import custom_vmap
from jax.custom_derivatives import SymbolicZero

from .. import _api, _arrays, _core

APPLY, MATRIX = int(_api.APPLY.value), int(_api.MATRIX.value)
HOUSEHOLDER, LAPACK = int(_api.HOUSEHOLDER.value), int(_api.LAPACK.value)


def _register_cpu() -> None:
    targets = _core.jax_registrations()
    if not targets:
        raise ImportError("fasth.jax: this build of fasth has no XLA FFI handlers (jax was not "
                          "found when it was built); reinstall fasth with jax installed")
    for name, capsule in targets.items():
        jax.ffi.register_ffi_target(name, capsule, platform="cpu")


_register_cpu()


@functools.cache
def _register_cuda() -> None:
    """The CUDA handlers, registered on first use where JAX has a GPU: fasth._cuda is imported
    only then (a clear error if it cannot be)."""
    try:
        has_gpu = bool(jax.devices("gpu"))
    except RuntimeError:
        return
    if has_gpu:
        for name, capsule in _api.cuda_module().jax_registrations().items():
            jax.ffi.register_ffi_target(name, capsule, platform="CUDA")


Spec = _api.Spec
_dense = _api.dense_strides


class Sizes(NamedTuple):
    out: tuple[int, ...]
    dV: tuple[int, ...]
    dtau: tuple[int, ...]
    dX: tuple[int, ...]
    factors: int
    forward_ws: int
    backward_ws: int
    tape: int  # 0: no device's plan keeps one


@functools.cache
def sizes(s: Spec, v: tuple, tau: tuple, x: tuple) -> Sizes:
    """Output shapes and buffer sizes of the call on row-major arrays of these shapes: the
    largest over the devices (raises ValueError, naming the argument, for bad shapes)."""
    plans = []
    for dev in (_core.Device.cpu, _core.Device.cuda):
        try:
            plans.append(_core.Plan(_api.APPLY if s.op == APPLY else _api.MATRIX,
                                    _api.LAPACK if s.kind == LAPACK else _api.HOUSEHOLDER,
                                    v, _dense(v), tau, _dense(tau), x, _dense(x), s.transpose,
                                    s.thin, s.block, _api._STRATEGIES[s.strategy], dev,
                                    direct_y=False))
        except ValueError as e:
            raise ValueError(f"{s.name('jax')}: {str(e).removeprefix('fasth: ')}") from None
    p = plans[0]
    return Sizes(tuple(p.out[0]), tuple(p.dV[0]), tuple(p.dtau[0]), tuple(p.dX[0]),
                 max(q.factors_size for q in plans), max(q.forward_workspace for q in plans),
                 max(q.backward_workspace for q in plans), max(q.tape_size for q in plans))


def _attrs(s: Spec) -> dict[str, Any]:
    return {"op": np.int64(s.op), "kind": np.int64(s.kind), "block": np.int64(s.block),
            "strategy": np.int64(_api._STRATEGIES[s.strategy].value), "transpose": bool(s.transpose),
            "thin": bool(s.thin), "tf32": bool(s.tf32)}


def _sds(shape, dtype) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct(tuple(shape), dtype)


def _shapes(s: Spec, arrays) -> tuple:
    """(V, tau, X) shapes of the op's arrays ((): absent)."""
    it = iter(arrays)
    v = next(it).shape
    tau = next(it).shape if s.kind == LAPACK else ()
    x = next(it).shape if s.op == APPLY else ()
    return tuple(v), tuple(tau), tuple(x)


def _front(x: Any, batched: bool, B: int) -> Any:
    """x with the mapped axis (size B) in front, broadcast when it was not mapped."""
    return x if batched else jnp.broadcast_to(x, (B, *x.shape))


# ---------------------------------------------------------------------------------------------
# The custom calls, each with a batching rule.

class Calls(NamedTuple):
    forward: Any  # arrays -> (out, factors)
    backward: Any  # (arrays, factors, grad) -> (dV, [dtau], [dX])
    forward_with: Any  # (V, factors, X) -> out
    taped: Any  # arrays -> (out, factors, tape): the forward that keeps a tape
    backward_taped: Any  # (arrays, factors, grad, tape) -> backward's


@functools.cache
def _calls(s: Spec) -> Calls:
    attrs = _attrs(s)

    def ffi_forward(arrays, taped: bool):
        z = sizes(s, *_shapes(s, arrays))
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
        z = sizes(s, *_shapes(s, ins))
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

    return Calls(forward, backward, forward_with, taped, backward_taped)


# ---------------------------------------------------------------------------------------------
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
    out, f = _calls(s)[0](*arrays)
    return _varying(out, *arrays), _varying(f, *arrays[:1 + (s.kind == LAPACK)])


def _taped(s: Spec, arrays: tuple) -> bool:
    """Whether the forward keeps a tape for the backward (where a device's plan keeps one)."""
    return s.kind == HOUSEHOLDER and sizes(s, *_shapes(s, arrays)).tape > 0


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
    out, f, t = _calls(s).taped(*arrays)
    return _varying(out, *arrays), _varying(f, arrays[0]), _varying(t, *arrays)


def _run_taped_fwd(s, *arrays):
    out, f, t = run_taped(s, *arrays)
    return (out, f, t), _residuals(s, arrays, out, f, (t,))


run_taped.defvjp(_run_taped_fwd, _run_bwd)  # the factors' and the tape's cotangents: zero


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def run_with(s: Spec, V, f, X):
    """A householder apply's output from factors that ``run`` returned for the same V (and the
    same block and strategy): the forward without its work per V."""
    return _varying(_calls(s)[2](V, f, X), V, X)


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
    return _calls(s)[1](*arrays)


def _grad_fwd(s, *arrays):
    arrays = tuple(a.value for a in arrays)
    out = grad(s, *arrays)
    return out, (arrays, out)


def _grad_bwd(s, res, cts):
    arrays, out = res
    nv = 1 + (s.kind == LAPACK)
    for ct in cts[:nv]:
        if not isinstance(ct, SymbolicZero):
            raise NotImplementedError(
                f"{s.name('jax')}: the gradient of V cannot be differentiated again (fasth has no second "
                "derivative for it); gradients of the input gradient (gradient penalties) are "
                "supported")
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


grad.defvjp(_grad_fwd, _grad_bwd, symbolic_zeros=True)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def grad_taped(s: Spec, *arrays):
    """``grad`` with the forward's tape last: (V, [tau], [S], factors, cotangent, tape)."""
    return _calls(s).backward_taped(*arrays)


def _grad_taped_fwd(s, *arrays):
    arrays = tuple(a.value for a in arrays)
    out = grad_taped(s, *arrays)
    return out, (arrays[:-1], out)


def _grad_taped_bwd(s, res, cts):
    return (*_grad_bwd(s, res, cts), None)  # as grad's; the tape has no cotangent


grad_taped.defvjp(_grad_taped_fwd, _grad_taped_bwd, symbolic_zeros=True)


# ---------------------------------------------------------------------------------------------
# The public functions

def _prepare(fn: str, names: tuple[str, ...], arrays: tuple):
    """Arrays checked (a JAX array each, float32 or float64, one dtype; float16 and bfloat16
    are computed in float32 and returned in their dtype, as matmul accumulates), and the
    dtype to return."""
    for name, a in zip(names, arrays):
        if not hasattr(a, "shape") or not hasattr(a, "dtype"):
            raise TypeError(f"{fn}: {name} must be a JAX array, got {type(a).__name__}")
    arrays = tuple(jnp.asarray(a) for a in arrays)
    dt = _api.check_dtypes(fn, _Namespace(), dict(zip(names, arrays)),
                           _arrays.FLOAT_DTYPES + _api.HALF_DTYPES)
    if dt in _api.HALF_DTYPES:
        return tuple(a.astype(jnp.float32) for a in arrays), arrays[0].dtype
    return arrays, None


class _Namespace(_arrays.Namespace):
    name = "jax"

    def dtype(self, a: Any) -> str:
        return np.dtype(a.dtype).name


def _strategy(fn: str, strategy: str) -> str:
    if strategy not in _api._STRATEGIES:
        raise ValueError(f"{fn}: strategy must be one of {list(_api._STRATEGIES)}, got {strategy!r}")
    return strategy


def _block(fn: str, block: int | None) -> int:
    if block is not None and int(block) < 1:
        raise ValueError(f"{fn}: block must be a positive integer, got {block}")
    return int(block or 0)


def _public(s: Spec, names: tuple[str, ...], *arrays, compute=None) -> jax.Array:
    """The op's output, after the checks; ``compute(*arrays)`` instead of ``run``'s output."""
    _register_cuda()
    arrays, back = _prepare(s.name("jax"), names, arrays)
    sizes(s, *_shapes(s, arrays))  # validates the shapes, naming the argument
    out = run(s, *arrays)[0] if compute is None else compute(*arrays)
    return out if back is None else out.astype(back)


def apply(V, X, transpose: bool = False, *, block: int | None = None,
          strategy: _api.StrategyName = "auto", tf32: bool = False) -> jax.Array:
    """``U X`` (``U^T X`` with ``transpose``) for ``U = H_1 ... H_k`` built from the columns of
    ``V`` (shape ``(..., d, k)``, any ``k``), ``X`` of shape ``(..., d, n)``; ``V`` may be
    unbatched and shared by a batch of ``X``. Differentiable in ``V`` and ``X``; works under
    ``jit``, ``vmap``, ``grad`` and ``checkpoint``."""
    fn = "fasth.jax.apply"
    s = Spec(APPLY, HOUSEHOLDER, bool(transpose), False, _block(fn, block), _strategy(fn, strategy),
             bool(tf32))
    return _public(s, ("V", "X"), V, X)


class Reflectors:
    """``U = H_1 ... H_k`` of ``V``'s columns, for applying the same ``U`` many times (an RNN's
    recurrent weight at every step): ``R = Reflectors(V)``, then ``R.apply(X)`` as
    ``apply(V, X)``, differentiable in ``V`` and ``X``, under ``jit``, ``grad`` and ``vmap``.

    The first apply for each number of columns of ``X`` (and direction and dtype) returns
    the compact-WY factors of ``V`` with its output; later ones reuse them, costing the
    products with ``X`` alone. Make it inside the function you transform (the factors are
    values of that trace), as ``fasth.torch.Reflectors`` is made per step."""

    def __init__(self, V, *, block: int | None = None, strategy: _api.StrategyName = "auto",
                 tf32: bool = False) -> None:
        fn = "fasth.jax.Reflectors"
        self.V, self._block, self._strategy = V, _block(fn, block), _strategy(fn, strategy)
        self._tf32 = bool(tf32)
        self._factors: dict[tuple, Any] = {}

    def apply(self, X, transpose: bool = False) -> jax.Array:
        """``U X`` (``U^T X`` with ``transpose``)."""
        s = Spec(APPLY, HOUSEHOLDER, bool(transpose), False, self._block, self._strategy, self._tf32)

        def compute(V, X):
            # The factors' layout follows the plan's block and strategy, which follow d, k and
            # n (X's columns), not X's batch: one set of factors per n.
            key = (X.shape[-1], s.transpose, X.dtype)
            f = self._factors.get(key)
            if f is None:
                out, self._factors[key] = run(s, V, X)
                return out
            return run_with(s, V, f, X)

        return _public(s, ("V", "X"), self.V, X, compute=compute)


def matrix(V, thin: bool = False, *, block: int | None = None, tf32: bool = False) -> jax.Array:
    """``U = H_1 ... H_k`` (``d x d``), or with ``thin`` its first ``min(k, d)`` columns, for
    ``V`` of shape ``(..., d, k)``. Differentiable in ``V``."""
    s = Spec(MATRIX, HOUSEHOLDER, False, bool(thin), _block("fasth.jax.matrix", block), "auto",
             bool(tf32))
    return _public(s, ("V",), V)


def householder_product(A, taus) -> jax.Array:
    """``jax.lax.linalg.householder_product``: the first ``n`` columns of ``H_1 ... H_k``,
    ``H_i = I - tau_i v_i v_i^T``, ``v_i`` the unit lower part of column ``i`` of ``A``
    (``(..., m, n)``, ``m >= n >= k``), any ``taus`` (``(..., k)``). Differentiable in both."""
    return _public(Spec(MATRIX, LAPACK), ("A", "tau"), A, taus)


def ormqr(A, taus, C, left: bool = True, transpose: bool = False) -> jax.Array:
    """``op(Q) C`` (``left``) or ``C op(Q)`` for ``Q`` from ``(A, taus)`` as
    ``householder_product`` takes them, ``op(Q) = Q^T`` with ``transpose``."""
    if left:
        return _public(Spec(APPLY, LAPACK, bool(transpose)), ("A", "tau", "C"), A, taus, C)
    Ct = jnp.swapaxes(jnp.asarray(C), -1, -2)
    return jnp.swapaxes(_public(Spec(APPLY, LAPACK, not transpose), ("A", "tau", "C"), A, taus, Ct), -1, -2)
