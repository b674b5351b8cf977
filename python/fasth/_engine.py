"""The one path every front end's call takes into the extension (no autograd: the torch and
JAX adapters add it):

* ``resolve`` turns a call's Spec and arrays into a ``BoundPlan``: the core's Plan (which
  validates the shapes and picks block size and strategy) bound to the dtype, device,
  module and BLAS to run it on. Bound plans are cached by the arrays' shapes, strides,
  dtypes and devices, so that a layer's next step costs a dictionary lookup; a miss
  validates everything, with errors that name the argument.
* ``forward`` and ``backward`` allocate the outputs, factors and workspace in the caller's
  library, on the arrays' device, and run the plan in one call into the extension, on the
  arrays' stream.
"""

from __future__ import annotations

from typing import Any

from . import _arrays, _native
from ._spec import (APPLY, HOUSEHOLDER, LAPACK, MATRIX, Spec, accepted_dtypes, check_dtypes,
                    is_complex)

# The extension's dtype argument, and the bytes of an element.
DTYPE_CODES = {"float32": 0, "float64": 1, "complex64": 2, "complex128": 3}
ITEMSIZE = {"float32": 4, "float64": 8, "complex64": 8, "complex128": 16}


def dense_strides(shape: tuple[int, ...]) -> tuple[int, ...]:
    """The element strides of a C-order array of this shape."""
    strides, s = [], 1
    for n in reversed(shape):
        strides.append(s)
        s *= max(n, 1)
    return tuple(reversed(strides))


def walkable_strides(shape: tuple[int, ...], strides: tuple[int, ...],
                     tail: int) -> tuple[int, ...]:
    """The strides of a copy whose leading dimensions one stride walks (dense over the
    matrices' footprint) and whose matrices (the last `tail` dimensions) keep their strides:
    the plan's layout decisions are the matrices', so a copy's plan reads factors that the
    original's made (a backward under vmap repeats an unmapped V so). C order where those
    strides would address an element twice."""
    span = 1
    for n, st in sorted(((n, st) for n, st in zip(shape[-tail:], strides[-tail:]) if n > 1),
                        key=lambda t: t[1]):
        if st < span:
            return dense_strides(shape)
        span += (n - 1) * st
    out = list(strides[-tail:])
    for n in reversed(shape[:-tail]):
        out.insert(0, span)
        span *= max(n, 1)
    return tuple(out)


def plan(s: Spec, fn: str, v: tuple, tau: tuple, x: tuple, device: str,
         direct_y: bool = True, x_name: str | None = None, complex: bool = False) -> Any:
    """_native.new_plan with its error naming the function ``fn`` (and X as `x_name`, the
    Spec's name for it by default)."""
    try:
        return _native.new_plan(s, v, tau, x, device, x_name or s.arg_names()[2], direct_y,
                                complex)
    except ValueError as e:
        raise ValueError(f"{fn}: {str(e).removeprefix('fasth: ')}") from None


# The CPU backend's BLAS for each array library (a property of the call): SciPy's by
# default; fasth.torch registers the BLAS inside libtorch for torch tensors (they share
# torch's threads there). A value may be a function that registers it on first use.
_library_blas: dict[str, Any] = {}


def use_blas_for(library: str, blas: Any) -> None:
    """Run CPU calls on arrays of `library` ("torch", "numpy", ...) on a registered BLAS (its
    id, or a function returning the id or None (SciPy's), called on first use)."""
    _library_blas[library] = blas
    _bound.clear()


def _blas_for(library: str) -> int:
    blas = _library_blas.get(library)
    if callable(blas):
        blas = _library_blas[library] = blas()
    return _native.scipy_blas() if blas is None else blas


class BoundPlan:
    """A resolved call: the core's plan bound to what allocating and running it needs."""

    __slots__ = ("fn", "plan", "xp", "dtype", "dtype_code", "device", "module", "blas",
                 "tf32", "copied", "is_lapack", "is_apply", "via_numpy", "out", "dV", "dtau",
                 "dX", "factors_size", "forward_ws", "backward_ws", "tangent_ws", "tape_size",
                 "reads_out")

    def fail(self, cls: type[Exception], msg: str) -> Exception:
        return cls(f"{self.fn}: {msg}")


_bound: dict[tuple, BoundPlan] = {}
_MAX_BOUND = 4096


def cached(key: tuple) -> BoundPlan | None:
    """The BoundPlan resolved earlier under an adapter's own key (see resolve), or None."""
    return _bound.get(key)


def resolve(s: Spec, front: str, arrays: tuple, *, names: tuple[str, ...] | None = None,
            fn: str | None = None, key: tuple | None = None) -> BoundPlan:
    """The BoundPlan for these arrays (V, tau, X; None where the op has none), named `names`
    in errors (the Spec's by default) from function `fn` (the op's). An adapter that knows
    its arrays' type may pass its own `key` (everything the plan depends on: the Spec, each
    array's shape, strides, dtype and device) and look it up with ``cached`` first."""
    c = None
    if key is None:
        try:
            xp = _arrays.namespace(arrays[0])
            key = (front, fn, names, s, *(None if a is None else (type(a), xp.key(a))
                                          for a in arrays))
            c = _bound.get(key)
        except (AttributeError, TypeError):  # not arrays of one library: _bind says which
            key = None
    if c is None:
        c = _bind(s, front, arrays, names or s.arg_names(), fn or s.name(front))
        if key is not None:
            if len(_bound) >= _MAX_BOUND:
                _bound.clear()
            _bound[key] = c
    return c


def _bind(s: Spec, front: str, arrays: tuple, names: tuple, fn: str) -> BoundPlan:
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
    dtype = check_dtypes(fn, {n: xp.dtype(a) for n, a in wrapped.items()}, accepted_dtypes(front))
    devices = {n: xp.device(a) for n, a in wrapped.items()}
    dev0 = next(iter(devices.values()))
    if any(d != dev0 for d in devices.values()):
        desc = ", ".join(f"{n} is on {d[0]}:{d[1]}" for n, d in devices.items())
        raise ValueError(f"{fn}: arrays must be on one device ({desc})")
    if dev0[0] not in ("cpu", "cuda"):
        raise ValueError(f"{fn}: arrays on device '{dev0[0]}' are not supported (cpu or cuda)")
    # Leading dimensions that one stride cannot walk: the plan takes a copy (walkable_strides).
    layouts, copied = [], []
    for i, (name, a) in enumerate(zip(names, arrays)):
        if a is None or (i == 2 and s.op == MATRIX):
            layouts.append(((), ()))
            continue
        a = wrapped[name]
        shape, strides = tuple(int(n) for n in a.shape), xp.strides(a)
        tail = 1 if i == 1 else 2
        if len(shape) > tail + 1 and not _native.collapsible(shape, strides, tail):
            strides = walkable_strides(shape, strides, tail)
            copied.append((i, strides))  # its place in (V, tau, X)
        layouts.append((shape, strides))
    p = plan(s, fn, *layouts, dev0[0], x_name=names[2], complex=is_complex(dtype))
    c = BoundPlan()
    c.fn, c.plan, c.xp, c.dtype, c.dtype_code = fn, p, xp, dtype, DTYPE_CODES[dtype]
    c.device, c.module = dev0, _native.module_for(dev0[0])
    c.blas = _blas_for(xp.name)
    c.tf32, c.copied, c.is_lapack, c.is_apply = s.tf32, tuple(copied), s.kind == LAPACK, s.op == APPLY
    c.via_numpy = type(xp).wrap is not _arrays.Namespace.wrap  # arrays viewed through numpy
    # The plan's sizes as Python values, read on every run.
    c.out, c.dV, c.dtau, c.dX = p.out, p.dV, p.dtau, p.dX
    c.factors_size, c.forward_ws, c.backward_ws = p.factors_size, p.forward_workspace, p.backward_workspace
    c.tangent_ws = p.tangent_workspace
    c.tape_size = p.tape_size
    # Whether a backward without the tape reads the forward's output (the householder blocks
    # walked back from it: an apply, or a U made blockwise), or not (a single-block U).
    c.reads_out = s.kind == HOUSEHOLDER and p.reads_saved
    return c


def copies_where_planned(c: BoundPlan, arrays: list) -> list:
    """(V, tau, X) with the copies the plan was made for (leading dimensions that one stride
    cannot walk, made walkable)."""
    for i, strides in c.copied:
        if arrays[i] is not None:
            arrays[i] = c.xp.copy_strided(arrays[i], strides)
    return arrays


# Below this many elements the forward's workspace shares one allocation with the factors
# (for callers that take factors longer than factors_size): one allocation fewer a call.
PACK_WORKSPACE = 1 << 14


def _tape(c: BoundPlan, like: Any) -> Any:
    """A tape for this call's forward to fill (None where its plan keeps none)."""
    return c.xp._empty((c.tape_size,), c.dtype, like) if c.tape_size else None


def forward(c: BoundPlan, V: Any, tau: Any, X: Any, pack: bool = False,
            tape: bool = False) -> tuple[Any, ...]:
    """(out, factors) of the call on these arrays, in the arrays' library; with `tape`,
    (out, factors, tape): what the backward reads instead of recomputing it (None where the
    plan keeps none). With `pack`, a small workspace trails the factors in one buffer (the
    factors returned are longer)."""
    xp = c.xp
    if c.copied:
        V, tau, X = copies_where_planned(c, [V, tau, X])
    if c.via_numpy:
        V, tau, X = (None if a is None else xp.wrap(a) for a in (V, tau, X))
    out = xp.empty(*c.out, c.dtype, V)
    arg = xp.arg
    if pack and c.forward_ws <= PACK_WORKSPACE and xp.addressable:
        # The workspace 64-byte aligned as a buffer of its own is (BLAS results can depend
        # on their operands' alignment: a forward gives the same numbers either way).
        head = -(-c.factors_size // 16) * 16
        f = ws = xp._empty((head + c.forward_ws,), c.dtype, V)
        fp = arg(f)
        wp = fp + head * ITEMSIZE[c.dtype]
    else:
        f, ws = xp._empty((c.factors_size,), c.dtype, V), xp.workspace(c.forward_ws, c.dtype, V)
        fp, wp = arg(f), arg(ws)  # (ws stays referenced: an address alone keeps nothing alive)
    t = _tape(c, V) if tape else None
    c.module.forward(c.plan, c.dtype_code, arg(V), arg(tau), arg(X), arg(out), fp, wp,
                     xp.stream(V), c.device[1], c.tf32, c.blas, arg(t))
    return (out, f, t) if tape else (out, f)


def factors_of(c: BoundPlan, V: Any) -> Any:
    """The factors of V alone (a forward with neither X nor out)."""
    xp = c.xp
    V = copies_where_planned(c, [V, None, None])[0] if c.copied else xp.wrap(V)
    f = xp._empty((c.factors_size,), c.dtype, V)
    ws = xp.workspace(c.forward_ws, c.dtype, V)
    c.module.forward(c.plan, c.dtype_code, xp.arg(V), None, None, None, xp.arg(f), xp.arg(ws),
                     xp.stream(V), c.device[1], c.tf32, c.blas)
    return f


def _walkable(xp: _arrays.Namespace, a: Any, tail: int = 2) -> Any:
    """`a` where one stride walks its batch dimensions (all but the last `tail`), else a
    contiguous copy."""
    if a is not None and len(a.shape) > tail + 1 and not _native.collapsible(a.shape, xp.strides(a), tail):
        return xp.contiguous(a)
    return a


def backward(c: BoundPlan, V: Any, factors: Any, saved: Any, grad: Any,
             want_dx: bool = True, tape: Any = None) -> tuple[Any, Any, Any]:
    """(dV, dtau, dX) from V, the forward's factors, its saved output (householder apply or
    matrix) or input (LAPACK apply), and grad; dtau None unless LAPACK, dX None unless apply
    and wanted. With the forward's tape, `saved` is not read."""
    xp = c.xp
    if c.copied:  # as the forward took them: V, and a LAPACK apply's saved input
        fixed = copies_where_planned(c, [V, None, saved if c.is_lapack else None])
        V, saved = fixed[0], fixed[2] if c.is_lapack else saved
    grad, saved = _walkable(xp, grad), _walkable(xp, saved)
    gshape, gstrides = grad.shape, xp.strides(grad)
    dt, like = c.dtype, factors
    dV = xp.empty(*c.dV, dt, like)
    dtau = xp.empty(*c.dtau, dt, like) if c.is_lapack else None
    dX = xp.empty(*c.dX, dt, like) if c.is_apply and want_dx else None
    ws = xp.workspace(c.backward_ws, dt, like)
    sshape, sstrides = ((), ()) if saved is None else (saved.shape, xp.strides(saved))
    arg = xp.arg
    c.module.backward(c.plan, c.dtype_code, arg(V), arg(factors), arg(saved), sshape, sstrides,
                      arg(grad), gshape, gstrides, arg(dV), arg(dtau), arg(dX), arg(ws),
                      xp.stream(like), c.device[1], c.tf32, c.blas, arg(tape))
    return dV, dtau, dX


def tangent(c: BoundPlan, V: Any, tau: Any, X: Any, factors: Any, dV: Any, dtau: Any,
            dX: Any) -> Any:
    """Forward mode: the tangent of the call's output at (V, tau, X) in the direction
    (dV, dtau, dX), each shaped as its primal (any strides) or None (zero), from the factors
    that the forward of V returned."""
    xp = c.xp
    if c.copied:
        V, tau, X = copies_where_planned(c, [V, tau, X])
    dV, dtau, dX = _walkable(xp, dV), _walkable(xp, dtau, 1), _walkable(xp, dX)
    dout = xp.empty(*c.out, c.dtype, factors)
    ws = xp.workspace(c.tangent_ws, c.dtype, factors)
    arg = xp.arg

    def layout(a):
        return ((), ()) if a is None else (tuple(a.shape), xp.strides(a))

    c.module.tangent(c.plan, c.dtype_code, arg(V), arg(factors), arg(X), arg(dV), *layout(dV),
                     arg(dtau), *layout(dtau), arg(dX), *layout(dX), arg(dout), arg(ws),
                     xp.stream(factors), c.device[1], c.tf32, c.blas)
    return dout


def forward_with(c: BoundPlan, V: Any, factors: Any, X: Any, tape: bool = False) -> Any:
    """The op again with factors an earlier forward of this call built from V: out, or with
    `tape` (out, tape) as forward's."""
    xp = c.xp
    if c.copied:
        V, _, X = copies_where_planned(c, [V, None, X])
    out = xp.empty(*c.out, c.dtype, factors)
    ws = xp.workspace(c.forward_ws, c.dtype, factors)
    arg = xp.arg
    t = _tape(c, factors) if tape else None
    c.module.forward_with(c.plan, c.dtype_code, arg(V), arg(factors), arg(X), arg(out), arg(ws),
                          xp.stream(factors), c.device[1], c.tf32, c.blas, arg(t))
    return (out, t) if tape else out
