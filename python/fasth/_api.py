"""The functional API on numpy, torch, cupy or any DLPack array (no autograd: the torch and
JAX adapters add it), and the one path every adapter call takes into the extension:

* ``resolve`` turns a call's arrays into a ``Call``: the core's Plan (which validates the
  shapes and picks block size and strategy) with the dtype, device and module to run on.
  Calls are cached by the arrays' shapes, strides, dtypes and devices, so that a layer's
  next step costs a dictionary lookup; a miss validates everything, with errors that name
  the argument.
* ``forward`` and ``backward`` allocate the outputs, factors and workspace in the caller's
  library, on the arrays' device, and run the plan in one call into the extension, on the
  arrays' stream.
"""

from __future__ import annotations

import functools
from typing import Any, Literal, NamedTuple

from . import _arrays
from . import _core

StrategyName = Literal["auto", "blockwise", "materialize"]
_STRATEGIES = {
    "auto": _core.Strategy.automatic,
    "blockwise": _core.Strategy.blockwise,
    "materialize": _core.Strategy.materialize,
}
_DTYPE_CODES = {"float32": 0, "float64": 1}
APPLY, MATRIX = _core.Op.apply, _core.Op.matrix
HOUSEHOLDER, LAPACK = _core.Kind.householder, _core.Kind.lapack
_OP_NAMES = {(0, 0): "apply", (1, 0): "matrix", (0, 1): "ormqr", (1, 1): "householder_product"}


class Spec(NamedTuple):
    """What an adapter's call is besides its arrays (hashable; torch's custom ops and JAX's
    custom calls take its fields): op and kind as the core's ints."""

    op: int
    kind: int
    transpose: bool = False
    thin: bool = False
    block: int = 0
    strategy: str = "auto"
    tf32: bool = False

    def name(self, adapter: str) -> str:
        return f"fasth.{adapter}.{_OP_NAMES[self.op, self.kind]}"

    def saved(self, X: Any, out: Any) -> Any:
        """What the op's backward reads besides the factors: the output (householder apply or
        matrix), the input X (LAPACK apply), or nothing (None: LAPACK's matrix)."""
        if self.kind == HOUSEHOLDER.value:
            return out
        return X if self.op == APPLY.value else None


def dense_strides(shape: tuple[int, ...]) -> tuple[int, ...]:
    """The element strides of a C-order array of this shape."""
    strides, s = [], 1
    for n in reversed(shape):
        strides.append(s)
        s *= max(n, 1)
    return tuple(reversed(strides))

# The CPU backend's BLAS for each array library (a property of the call): SciPy's by
# default; fasth.torch registers the BLAS inside libtorch for torch tensors (they share
# torch's threads there).
SCIPY_BLAS = _core.scipy_blas()
_library_blas: dict[str, int] = {}


def use_blas_for(library: str, blas: int) -> None:
    """Run CPU calls on arrays of `library` ("torch", "numpy", ...) on a registered BLAS."""
    _library_blas[library] = blas
    _calls.clear()


@functools.cache
def cuda_module() -> Any:
    """fasth._cuda, imported on first use; a clear error when it cannot work here."""
    try:
        from . import _cuda  # type: ignore[attr-defined]
    except ImportError as e:
        raise RuntimeError(
            "fasth: the CUDA backend is unavailable: this build of fasth has no CUDA module "
            f"or it failed to load ({e}). Reinstall fasth with `pip install fasth[cuda13]`."
        ) from None
    reason = _cuda.unavailable_reason()
    if reason:
        raise RuntimeError(f"fasth: the CUDA backend is unavailable: {reason}")
    return _cuda


class Call:
    """A resolved call: the plan, and what allocating and running it needs."""

    __slots__ = ("fn", "plan", "xp", "dtype", "code", "device", "module", "blas", "tf32",
                 "copies", "lapack", "apply", "wraps", "out", "dV", "dtau", "dX", "fsize", "fws",
                 "bws", "tsize", "reads_out")

    def fail(self, cls: type[Exception], msg: str) -> Exception:
        return cls(f"{self.fn}: {msg}")


_calls: dict[tuple, Call] = {}
_MAX_CALLS = 4096


def cached(key: tuple) -> Call | None:
    """The Call resolved earlier under an adapter's own key (see resolve), or None."""
    return _calls.get(key)


def resolve(fn: str, op: Any, kind: Any, names: tuple[str, ...], arrays: tuple, *,
            transpose: bool = False, thin: bool = False, block: int | None = None,
            strategy: str = "auto", tf32: bool = False, key: tuple | None = None) -> Call:
    """The Call for these arrays (V, then tau and X where the op has them; None where not).
    An adapter that knows its arrays' type may pass its own `key` (everything the plan
    depends on: the call's options, each array's shape, strides, dtype and device) and look
    it up with ``cached`` first, without the generic key's cost."""
    c = None
    if key is None:
        try:
            xp = _arrays.namespace(arrays[0])
            key = (fn, transpose, thin, block, strategy, tf32,
                   *(None if a is None else (type(a), xp.key(a)) for a in arrays))
            c = _calls.get(key)
        except (AttributeError, TypeError):  # not arrays of one library: _new_call says which
            key = None
    if c is None:
        c = _new_call(fn, op, kind, names, arrays, transpose, thin, block, strategy, tf32)
        if key is not None:
            if len(_calls) >= _MAX_CALLS:
                _calls.clear()
            _calls[key] = c
    return c


def _new_call(fn, op, kind, names, arrays, transpose, thin, block, strategy, tf32) -> Call:
    present = {n: a for n, a in zip(names, arrays) if a is not None}
    xp, first = None, None
    for name, a in present.items():
        try:
            space = _arrays.namespace(a)
        except TypeError as e:
            raise TypeError(f"{fn}: {name}: {e}") from None
        if xp is None:
            xp, first = space, name
        elif space is not xp:
            raise TypeError(f"{fn}: {name} is a {space.name} array but {first} is a {xp.name} array")
    wrapped = {n: xp.wrap(a) for n, a in present.items()}
    dtype = check_dtypes(fn, xp, wrapped)
    devices = {n: xp.device(a) for n, a in wrapped.items()}
    dev0 = next(iter(devices.values()))
    if any(d != dev0 for d in devices.values()):
        desc = ", ".join(f"{n} is on {d[0]}:{d[1]}" for n, d in devices.items())
        raise ValueError(f"{fn}: arrays must be on one device ({desc})")
    if dev0[0] not in ("cpu", "cuda"):
        raise ValueError(f"{fn}: arrays on device '{dev0[0]}' are not supported (cpu or cuda)")
    if block is not None and int(block) < 1:
        raise ValueError(f"{fn}: block must be a positive integer, got {block}")
    if strategy not in _STRATEGIES:
        raise ValueError(f"{fn}: strategy must be one of {list(_STRATEGIES)}, got {strategy!r}")
    # Leading dimensions that one stride cannot walk: the plan takes a contiguous copy.
    layouts, copies = {}, []
    roles = {n: (0 if i == 0 else 1 if n == "tau" else 2) for i, n in enumerate(names)}
    for name, a in zip(names, arrays):
        if a is None:
            layouts[name] = ((), ())
            continue
        a = wrapped[name]
        shape, strides = tuple(int(s) for s in a.shape), xp.strides(a)
        tail = 1 if name == "tau" else 2
        if len(shape) > tail + 1 and not _core.collapsible(shape, strides, tail):
            strides = dense_strides(shape)
            copies.append(roles[name])  # its place in (V, tau, X)
        layouts[name] = (shape, strides)
    cuda = dev0[0] == "cuda"
    lapack = kind == LAPACK
    v, t, x = layouts[names[0]], layouts.get("tau", ((), ())), layouts.get(names[-1], ((), ()))
    if op == MATRIX:
        x = ((), ())
    try:
        plan = _core.Plan(op, kind, *v, *t, *x, bool(transpose), bool(thin), int(block or 0),
                          _STRATEGIES[strategy], _core.Device.cuda if cuda else _core.Device.cpu,
                          names[-1])
    except ValueError as e:
        raise ValueError(f"{fn}: {str(e).removeprefix('fasth: ')}") from None
    c = Call()
    c.fn, c.plan, c.xp, c.dtype, c.code = fn, plan, xp, dtype, _DTYPE_CODES[dtype]
    c.device, c.module = dev0, cuda_module() if cuda else _core
    c.blas = _library_blas.get(xp.name, SCIPY_BLAS)
    c.tf32, c.copies, c.lapack, c.apply = bool(tf32), tuple(copies), lapack, op == APPLY
    c.wraps = type(xp).wrap is not _arrays.Namespace.wrap  # arrays viewed through numpy
    # The plan's sizes as Python values, read on every run.
    c.out, c.dV, c.dtau, c.dX = plan.out, plan.dV, plan.dtau, plan.dX
    c.fsize, c.fws, c.bws = plan.factors_size, plan.forward_workspace, plan.backward_workspace
    c.tsize = plan.tape_size
    # Whether a backward without the tape reads the forward's output (the householder blocks
    # walked back from it: an apply, or a U made blockwise), or not (a single-block U).
    c.reads_out = kind == HOUSEHOLDER and plan.reads_saved
    return c


HALF_DTYPES = ("float16", "bfloat16")


def check_dtypes(fn: str, xp: _arrays.Namespace, arrays: dict[str, Any],
                 accept: tuple[str, ...] = _arrays.FLOAT_DTYPES) -> str:
    """Each array of an accepted dtype (float32 or float64; the adapters take half precision
    too), all of one dtype: that dtype."""
    dtypes = {}
    for name, a in arrays.items():
        dt = xp.dtype(a)
        if dt not in accept:
            raise TypeError(f"{fn}: {name} has dtype {dt}; expected {' or '.join(accept)}")
        dtypes[name] = dt
    if len(set(dtypes.values())) > 1:
        desc = ", ".join(f"{n} is {d}" for n, d in dtypes.items())
        raise TypeError(f"{fn}: arrays must share one dtype ({desc})")
    return next(iter(dtypes.values()))


def _fix(c: Call, arrays: list) -> list:
    """(V, tau, X) with the copies the plan was made for (leading dimensions that one stride
    cannot walk, made contiguous)."""
    for i in c.copies:
        if arrays[i] is not None:
            arrays[i] = c.xp.contiguous(arrays[i])
    return arrays


# Below this many elements the forward's workspace shares one allocation with the factors
# (for callers that take factors longer than factors_size): one allocation fewer a call.
PACK_WORKSPACE = 1 << 14


def _tape(c: Call, like: Any) -> Any:
    """A tape for this call's forward to fill (None where its plan keeps none)."""
    return c.xp._empty((c.tsize,), c.dtype, like) if c.tsize else None


def forward(c: Call, V: Any, tau: Any, X: Any, pack: bool = False,
            tape: bool = False) -> tuple[Any, ...]:
    """(out, factors) of the call on these arrays, in the arrays' library; with `tape`,
    (out, factors, tape): what the backward reads instead of recomputing it (None where the
    plan keeps none). With `pack`, a small workspace trails the factors in one buffer (the
    factors returned are longer)."""
    xp = c.xp
    if c.copies:
        V, tau, X = _fix(c, [V, tau, X])
    if c.wraps:
        V, tau, X = (None if a is None else xp.wrap(a) for a in (V, tau, X))
    out = xp.empty(*c.out, c.dtype, V)
    arg = xp.arg
    if pack and c.fws <= PACK_WORKSPACE and xp.addressable:
        # The workspace 64-byte aligned as a buffer of its own is (BLAS results can depend
        # on their operands' alignment: a forward gives the same numbers either way).
        head = -(-c.fsize // 16) * 16
        f = ws = xp._empty((head + c.fws,), c.dtype, V)
        fp = arg(f)
        wp = fp + head * (4 if c.code == 0 else 8)
    else:
        f, ws = xp._empty((c.fsize,), c.dtype, V), xp.workspace(c.fws, c.dtype, V)
        fp, wp = arg(f), arg(ws)  # (ws stays referenced: an address alone keeps nothing alive)
    t = _tape(c, V) if tape else None
    c.module.forward(c.plan, c.code, arg(V), arg(tau), arg(X), arg(out), fp, wp, xp.stream(V),
                     c.device[1], c.tf32, c.blas, arg(t))
    return (out, f, t) if tape else (out, f)


def _walkable(xp: _arrays.Namespace, a: Any) -> Any:
    """`a` where one stride walks its batch dimensions, else a contiguous copy."""
    if a is not None and len(a.shape) > 3 and not _core.collapsible(a.shape, xp.strides(a), 2):
        return xp.contiguous(a)
    return a


def backward(c: Call, V: Any, factors: Any, saved: Any, grad: Any,
             want_dx: bool = True, tape: Any = None) -> tuple[Any, Any, Any]:
    """(dV, dtau, dX) from V, the forward's factors, its saved output (householder apply or
    matrix) or input (LAPACK apply), and grad; dtau None unless LAPACK, dX None unless apply
    and wanted. With the forward's tape, `saved` is not read."""
    xp = c.xp
    if c.copies:  # as the forward took them: V, and a LAPACK apply's saved input
        fixed = _fix(c, [V, None, saved if c.lapack else None])
        V, saved = fixed[0], fixed[2] if c.lapack else saved
    grad, saved = _walkable(xp, grad), _walkable(xp, saved)
    gshape, gstrides = grad.shape, xp.strides(grad)
    dt, like = c.dtype, factors
    dV = xp.empty(*c.dV, dt, like)
    dtau = xp.empty(*c.dtau, dt, like) if c.lapack else None
    dX = xp.empty(*c.dX, dt, like) if c.apply and want_dx else None
    ws = xp.workspace(c.bws, dt, like)
    sshape, sstrides = ((), ()) if saved is None else (saved.shape, xp.strides(saved))
    arg = xp.arg
    c.module.backward(c.plan, c.code, arg(V), arg(factors), arg(saved), sshape, sstrides, arg(grad), gshape,
                      gstrides, arg(dV), arg(dtau), arg(dX), arg(ws), xp.stream(like), c.device[1],
                      c.tf32, c.blas, arg(tape))
    return dV, dtau, dX


def forward_with(c: Call, V: Any, factors: Any, X: Any, tape: bool = False) -> Any:
    """The op again with factors an earlier forward of this call built from V: out, or with
    `tape` (out, tape) as forward's."""
    xp = c.xp
    if c.copies:
        V, _, X = _fix(c, [V, None, X])
    out = xp.empty(*c.out, c.dtype, factors)
    ws = xp.workspace(c.fws, c.dtype, factors)
    arg = xp.arg
    t = _tape(c, factors) if tape else None
    c.module.forward_with(c.plan, c.code, arg(V), arg(factors), arg(X), arg(out), arg(ws), xp.stream(factors),
                          c.device[1], c.tf32, c.blas, arg(t))
    return (out, t) if tape else out


# ---------------------------------------------------------------------------------------
# The functional API

def _apply_call(fn, V, X, transpose, block, strategy, tf32) -> Call:
    return resolve(fn, APPLY, HOUSEHOLDER, ("V", "X"), (V, X), transpose=bool(transpose),
                   block=block, strategy=strategy, tf32=tf32)


def _matrix_call(fn, V, thin, block, tf32) -> Call:
    return resolve(fn, MATRIX, HOUSEHOLDER, ("V",), (V,), thin=bool(thin), block=block, tf32=tf32)


def _back(c: Call, a: Any, like: Any) -> Any:
    return c.xp.unwrap(a, like)


def apply_with_factors(V, X, transpose: bool = False, *, block: int | None = None,
                       strategy: StrategyName = "auto", tf32: bool = False) -> tuple[Any, Any]:
    """U X (or U^T X) and the T factors of V, for apply_backward."""
    c = _apply_call("fasth.apply", V, X, transpose, block, strategy, tf32)
    out, f = forward(c, V, None, X)
    return _back(c, out, V), _back(c, f, V)


def apply(V, X, transpose: bool = False, *, block: int | None = None,
          strategy: StrategyName = "auto", tf32: bool = False) -> Any:
    """``U X`` (``U^T X`` with ``transpose``) for ``U = H_1 ... H_k`` built from the columns of
    ``V`` (shape ``(..., d, k)``, any ``k``), ``X`` of shape ``(..., d, n)``. ``V`` may be
    unbatched and shared by a batch of ``X``."""
    c = _apply_call("fasth.apply", V, X, transpose, block, strategy, tf32)
    return _back(c, forward(c, V, None, X)[0], V)


def apply_backward(V, out, grad, transpose: bool = False, *, factors: Any = None,
                   block: int | None = None, strategy: StrategyName = "auto",
                   tf32: bool = False) -> tuple[Any, Any]:
    """Gradients ``(dV, dX)`` of ``out = apply(V, X, transpose)`` from ``out`` and
    ``grad = dL/dout`` alone (the input is recovered through orthogonality)."""
    fn = "fasth.apply_backward"
    c = resolve(fn, APPLY, HOUSEHOLDER, ("V", "out"), (V, out), transpose=bool(transpose),
                block=block, strategy=strategy, tf32=tf32)
    xp = c.xp
    if _arrays.namespace(grad) is not xp:
        raise TypeError(f"{fn}: grad is a {_arrays.namespace(grad).name} array but V is a "
                        f"{xp.name} array")
    g = xp.wrap(grad)
    check_dtypes(fn, xp, {"V": xp.wrap(V), "grad": g})
    if tuple(g.shape) != tuple(out.shape):
        raise c.fail(ValueError, f"grad has shape {tuple(g.shape)} but out has shape {tuple(out.shape)}")
    if xp.device(g) != c.device:
        raise c.fail(ValueError, f"grad is on {xp.device(g)[0]} but V is on {c.device[0]}")
    f = _factors(c, V, factors)
    Vw, _, outw = _fix(c, [V, None, out]) if c.copies else (V, None, out)
    dV, _, dX = backward(c, xp.wrap(Vw), f, xp.wrap(outw), g)
    return _back(c, dV, V), _back(c, dX, V)


def _factors(c: Call, V: Any, factors: Any) -> Any:
    if factors is None:
        return c.xp.wrap(_factors_of(c, V))
    f = c.xp.wrap(factors)
    if int(f.shape[0]) < c.plan.factors_size:
        raise c.fail(ValueError, f"factors holds {int(f.shape[0])} elements, needs {c.plan.factors_size}")
    return f


def _factors_of(c: Call, V: Any) -> Any:
    """The factors of V alone (a forward with neither X nor out)."""
    xp = c.xp
    V = _fix(c, [V, None, None])[0] if c.copies else xp.wrap(V)
    f = xp._empty((c.fsize,), c.dtype, V)
    ws = xp.workspace(c.fws, c.dtype, V)
    c.module.forward(c.plan, c.code, xp.arg(V), None, None, None, xp.arg(f), xp.arg(ws), xp.stream(V),
                     c.device[1], c.tf32, c.blas)
    return f


def matrix_with_factors(V, thin: bool = False, *, block: int | None = None,
                        tf32: bool = False) -> tuple[Any, Any]:
    c = _matrix_call("fasth.matrix", V, thin, block, tf32)
    U, f = forward(c, V, None, None)
    return _back(c, U, V), _back(c, f, V)


def matrix(V, thin: bool = False, *, block: int | None = None, tf32: bool = False) -> Any:
    """``U = H_1 ... H_k`` (``d x d``), or with ``thin`` its first ``min(k, d)`` columns
    (LAPACK's orgqr semantics), for ``V`` of shape ``(..., d, k)``."""
    c = _matrix_call("fasth.matrix", V, thin, block, tf32)
    return _back(c, forward(c, V, None, None)[0], V)


def matrix_backward(V, U, grad, thin: bool = False, *, factors: Any = None,
                    block: int | None = None, tf32: bool = False) -> Any:
    """``dV`` for ``U = matrix(V, thin)`` from ``grad = dL/dU`` (``U`` is checked, not read)."""
    fn = "fasth.matrix_backward"
    c = _matrix_call(fn, V, thin, block, tf32)
    xp = c.xp
    want = tuple(c.plan.out[0])
    for name, a in (("U", U), ("grad", grad)):
        if _arrays.namespace(a) is not xp:
            raise TypeError(f"{fn}: {name} is a {_arrays.namespace(a).name} array but V is a "
                            f"{xp.name} array")
        check_dtypes(fn, xp, {"V": xp.wrap(V), name: xp.wrap(a)})
        if tuple(a.shape) != want:
            raise c.fail(ValueError, f"{name} has shape {tuple(a.shape)}, expected {want}")
    f = _factors(c, V, factors)
    Vw = _fix(c, [V, None, None])[0] if c.copies else V
    return _back(c, backward(c, xp.wrap(Vw), f, xp.wrap(U), xp.wrap(grad))[0], V)
