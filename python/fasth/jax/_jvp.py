"""The differentiable ops over fasth's JAX custom calls: ``run`` (the op), ``run_taped`` (and
the tape its backward reads) and ``run_with`` (a householder apply with factors an earlier
``run`` of V returned), each a ``custom_jvp`` whose rule is the forward and ``tangent_p``
(_primitives): forward mode, and reverse mode by transposing the tangent, as JAX's own
linear algebra. A gradient (``grad``, ``vjp``) lowers to the forward, keeping its tape where
the plan keeps one, and one backward: the custom calls that a custom VJP made."""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp

from .._spec import APPLY, HOUSEHOLDER, LAPACK, Spec
from . import _ffi
from ._ffi import varying as _varying
from ._primitives import Prim, bind_tangent


def _taped(s: Spec, arrays: tuple) -> bool:
    """Whether the forward keeps a tape for the backward (where a device's plan keeps one)."""
    return s.kind == HOUSEHOLDER and _ffi.sizes(s, *_ffi.shapes(s, arrays)).tape > 0


@functools.partial(jax.custom_jvp, nondiff_argnums=(0,))
def run(s: Spec, *arrays):
    """(out, the factors) of arrays = (V, [tau], [X])."""
    out, f = _ffi.custom_calls(s).forward(*arrays)
    return _varying(out, *arrays), _varying(f, *arrays[:1 + (s.kind == LAPACK)])


@functools.partial(jax.custom_jvp, nondiff_argnums=(0,))
def run_taped(s: Spec, *arrays):
    """``run``'s (out, factors), and the tape that the backward reads."""
    out, f, t = _ffi.custom_calls(s).forward_taped(*arrays)
    return _varying(out, *arrays), _varying(f, arrays[0]), _varying(t, *arrays)


@functools.partial(jax.custom_jvp, nondiff_argnums=(0,))
def run_with(s: Spec, V, f, X):
    """A householder apply's output from factors that ``run`` returned for the same V (and the
    same block and strategy): the forward without its work per V."""
    return _varying(_ffi.custom_calls(s).forward_with(V, f, X), V, X)


def _tangent(s: Spec, primals: tuple, out: Any, f: Any, tape: Any, tangents: tuple) -> Any:
    S = s.saved(primals[-1], out)
    p = Prim(primals[0], primals[1] if s.kind == LAPACK else None,
             primals[-1] if s.op == APPLY else None, f, S, tape)
    return _varying(bind_tangent(s, p, tangents), *primals, *tangents)


# The factors' and the tape's tangents are taken as zero: they are internal, and what reads
# them (tangent_p, cotangent_p) derives through V, X and S itself.

def _run_jvp(s: Spec, primals: tuple, tangents: tuple):
    if _taped(s, primals):  # the tape, for the transpose (a gradient) to read
        out, f, tape = run_taped(s, *primals)
    else:
        (out, f), tape = run(s, *primals), None
    return (out, f), (_tangent(s, primals, out, f, tape, tangents), jnp.zeros_like(f))


def _run_taped_jvp(s: Spec, primals: tuple, tangents: tuple):
    out, f, tape = run_taped(s, *primals)
    dout = _tangent(s, primals, out, f, tape, tangents)
    return (out, f, tape), (dout, jnp.zeros_like(f), jnp.zeros_like(tape))


def _run_with_jvp(s: Spec, primals: tuple, tangents: tuple):
    V, f, X = primals
    out = run_with(s, V, f, X)
    return out, _tangent(s, (V, X), out, f, None, (tangents[0], tangents[2]))


run.defjvp(_run_jvp)
run_taped.defjvp(_run_taped_jvp)
run_with.defjvp(_run_with_jvp)
