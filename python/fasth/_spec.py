"""What a fasth call is, and every rule the three front ends (``fasth.apply`` on numpy and
DLPack arrays, ``fasth.torch``, ``fasth.jax``) share, so that they accept and refuse the same
things with the same messages: the op and kind codes, the arguments' names, the options'
checks, the dtype and half-precision rules, the right-sided ``ormqr``, the message for the
derivative fasth does not have, and what a ``Reflectors`` keeps its factors under.

Framework-neutral: it imports neither the extension nor an array library."""

from __future__ import annotations

import functools
import numbers
from typing import Any, Literal, NamedTuple

# The core's Op and Kind values (fasth::Op, fasth::Kind; a test checks they agree).
APPLY, MATRIX = 0, 1
HOUSEHOLDER, LAPACK = 0, 1
# Strategy names, each at the index of the core's fasth::Strategy value.
STRATEGIES = ("auto", "blockwise", "materialize")
StrategyName = Literal["auto", "blockwise", "materialize"]
_OP_NAMES = {(APPLY, HOUSEHOLDER): "apply", (MATRIX, HOUSEHOLDER): "matrix",
             (APPLY, LAPACK): "ormqr", (MATRIX, LAPACK): "householder_product"}

FRONT_ENDS = ("numpy", "torch", "jax")
FLOAT_DTYPES = ("float32", "float64")
# Complex reflectors, H = I - tau v v^H (LAPACK's complex conventions), on every front end.
COMPLEX_DTYPES = ("complex64", "complex128")
CORE_DTYPES = FLOAT_DTYPES + COMPLEX_DTYPES  # what the core computes in
# Computed in float32 and returned in their own dtype (as matmul accumulates) by the front
# ends whose libraries have them (torch, JAX); the numpy front end takes CORE_DTYPES only.
HALF_DTYPES = ("float16", "bfloat16")


def accepted_dtypes(front: str) -> tuple[str, ...]:
    # fasth.jax: real only so far (its reverse mode transposes the tangent pass, which has no
    # complex form yet).
    if front == "jax":
        return FLOAT_DTYPES + HALF_DTYPES
    return CORE_DTYPES if front == "numpy" else CORE_DTYPES + HALF_DTYPES


def is_complex(dtype: str) -> bool:
    """Whether the core runs this dtype (by name) with complex reflectors (its plans lay
    complex arrays out differently)."""
    return dtype in COMPLEX_DTYPES


def function_name(front: str, name: str) -> str:
    """How errors name a public function: fasth.apply, fasth.torch.apply, ..."""
    return f"fasth.{name}" if front == "numpy" else f"fasth.{front}.{name}"


class Spec(NamedTuple):
    """A call besides its arrays (hashable; torch's custom ops and JAX's custom calls take its
    fields): op and kind as the core's ints, options checked (see ``spec``)."""

    op: int
    kind: int
    transpose: bool = False
    thin: bool = False
    block: int = 0  # 0: the plan chooses
    strategy: str = "auto"
    tf32: bool = False

    def name(self, front: str) -> str:
        return function_name(front, _OP_NAMES[self.op, self.kind])

    def arg_names(self) -> tuple[str, str, str]:
        """The names errors give (V, tau, X): LAPACK's drop-ins call them A, tau, C."""
        return ("A", "tau", "C") if self.kind == LAPACK else ("V", "tau", "X")

    def present(self) -> tuple[bool, bool, bool]:
        """Which of (V, tau, X) the op takes."""
        return True, self.kind == LAPACK, self.op == APPLY

    def strategy_code(self) -> int:
        return STRATEGIES.index(self.strategy)

    def saved(self, X: Any, out: Any) -> Any:
        """What the op's backward reads besides the factors: the output (householder apply or
        matrix), the input X (LAPACK apply), or nothing (None: LAPACK's matrix)."""
        if self.kind == HOUSEHOLDER:
            return out
        return X if self.op == APPLY else None


# ---------------------------------------------------------------------------------------
# Options: one check each, called by every front end.

def check_bool(fn: str, name: str, value: Any) -> bool:
    """A flag must be a bool: ``transpose='no'`` is truthy and would compute U^T X."""
    if isinstance(value, bool) or (type(value).__module__ == "numpy"
                                   and type(value).__name__ in ("bool", "bool_")):  # numpy's
        return bool(value)
    raise TypeError(f"{fn}: {name} must be a bool, got {type(value).__name__} {value!r}")


def check_block(fn: str, block: Any) -> int:
    """None (the plan chooses: 0) or a positive integer."""
    if block is None:
        return 0
    if isinstance(block, bool) or not isinstance(block, numbers.Integral):
        raise TypeError(f"{fn}: block must be a positive integer or None, got "
                        f"{type(block).__name__} {block!r}")
    if block < 1:
        raise ValueError(f"{fn}: block must be a positive integer, got {block}")
    return int(block)


def check_strategy(fn: str, strategy: Any) -> str:
    if strategy not in STRATEGIES:
        raise ValueError(f"{fn}: strategy must be one of {list(STRATEGIES)}, got {strategy!r}")
    return strategy


def _checked_spec(front, op, kind, transpose, thin, block, strategy, tf32, fn) -> Spec:
    fn = fn or function_name(front, _OP_NAMES[op, kind])
    return Spec(op, kind, check_bool(fn, "transpose", transpose), check_bool(fn, "thin", thin),
                check_block(fn, block), check_strategy(fn, strategy), check_bool(fn, "tf32", tf32))


# Checked options by their values and types (typed: 1 is not True), so that a layer's next
# call skips the checks, a fixed cost of every call; what raises is never cached.
_cached_spec = functools.lru_cache(maxsize=512, typed=True)(_checked_spec)


def spec(front: str, op: int, kind: int, *, transpose: Any = False, thin: Any = False,
         block: Any = None, strategy: Any = "auto", tf32: Any = False,
         fn: str | None = None) -> Spec:
    """The call's Spec, its options checked, errors naming the function (the op's unless
    `fn`) and the option."""
    args = (front, op, kind, transpose, thin, block, strategy, tf32, fn)
    try:
        return _cached_spec(*args)
    except TypeError:  # an unhashable option, or one the checks refuse: say which
        return _checked_spec(*args)


def ormqr_spec(front: str, left: Any, transpose: Any) -> tuple[Spec, bool]:
    """The LAPACK apply that computes ormqr, and whether C and the result are conjugate-
    transposed around it: ``C op(Q) = (op(Q)^H C^H)^H``, the right side through the left
    (``op(Q) = Q^H`` with ``transpose`` for complex, ``Q^T`` for real, where ``^H`` is
    ``^T``)."""
    fn = function_name(front, "ormqr")
    left, transpose = check_bool(fn, "left", left), check_bool(fn, "transpose", transpose)
    return Spec(APPLY, LAPACK, transpose if left else not transpose), not left


# ---------------------------------------------------------------------------------------
# Arrays

def not_an_array(fn: str, name: str, a: Any, expected: str) -> TypeError:
    return TypeError(f"{fn}: {name} must be {expected}, got {type(a).__name__}")


def check_dtypes(fn: str, dtypes: dict[str, str], accept: tuple[str, ...]) -> str:
    """Each array's dtype (by name) accepted, all one: that dtype."""
    for name, dt in dtypes.items():
        if dt not in accept:
            listed = ", ".join(accept[:-1]) + f" or {accept[-1]}" if len(accept) > 1 else accept[0]
            raise TypeError(f"{fn}: {name} has dtype {dt}; expected {listed}")
    if len(set(dtypes.values())) > 1:
        desc = ", ".join(f"{n} is {d}" for n, d in dtypes.items())
        raise TypeError(f"{fn}: arrays must share one dtype ({desc})")
    return next(iter(dtypes.values()))


# ---------------------------------------------------------------------------------------
# The derivative fasth does not have

def second_order_message(fn: str) -> str:
    return (f"{fn}: the gradient of V cannot be differentiated again (fasth has no second "
            "derivative for it); gradients of the input gradient (gradient penalties) are "
            "supported")


# ---------------------------------------------------------------------------------------
# Reflectors

def factors_key(spec: Spec, x_shape: tuple, dtype: Any, device: Any = None) -> tuple:
    """What a Reflectors keeps one set of V's factors per: the factors' layout follows the
    plan's block and strategy, which follow d, k and n (X's columns) and the call's options,
    dtype and device, not X's batch."""
    return (spec, int(x_shape[-1]), dtype, device)
