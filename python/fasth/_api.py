"""The functional API on numpy, torch, cupy or any DLPack array (no autograd: the torch and
JAX adapters add it). Validates arguments with messages that name them, allocates outputs,
factors and workspace in the caller's array library, and calls the core on the array's
device and stream."""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any, Literal

from . import _arrays
from . import _core

_core.load_scipy_blas()

StrategyName = Literal["auto", "blockwise", "materialize"]
_STRATEGIES = {
    "auto": _core.Strategy.automatic,
    "blockwise": _core.Strategy.blockwise,
    "materialize": _core.Strategy.materialize,
}


@functools.cache
def cuda_module() -> Any:
    """fasth._cuda, imported on first use; a clear error when it cannot work here."""
    try:
        from . import _cuda  # type: ignore[attr-defined]
    except ImportError as e:
        raise RuntimeError(
            "fasth: the CUDA backend is unavailable: this build of fasth has no CUDA module "
            f"or it failed to load ({e}). Rebuild with nvcc and `pip install nvidia-cublas`."
        ) from None
    reason = _cuda.unavailable_reason()
    if reason:
        raise RuntimeError(f"fasth: the CUDA backend is unavailable: {reason}")
    return _cuda


def _module(device: tuple[str, int]) -> Any:
    if device[0] == "cpu":
        return _core
    if device[0] == "cuda":
        return cuda_module()
    raise ValueError(f"fasth: arrays on device '{device[0]}' are not supported (cpu or cuda)")


@dataclass(slots=True)
class Call:
    """One validated call: the arrays' library, dtype, device and the core's Shape."""

    fn: str
    xp: _arrays.Namespace
    dtype: str
    device: tuple[str, int]
    arrays: dict[str, Any]
    shape: Any = None
    batch: tuple[int, ...] = ()
    tf32: bool = False
    like: Any = None  # the caller's first array, whose library results are handed back in
    first: Any = field(init=False)  # the first array as the library sees it: outputs go there

    def __post_init__(self) -> None:
        self.first = next(iter(self.arrays.values()))

    @property
    def module(self) -> Any:
        return _module(self.device)

    def run(self, op: str, *args: Any) -> None:
        """The device module's `op` on `args` (the Shape, flags and arrays), on the arrays'
        stream."""
        arg = self.xp.arg
        getattr(self.module, op)(*[arg(a) for a in args], stream=self.xp.stream(self.first),
                                 tf32=self.tf32)

    def fail(self, cls: type[Exception], msg: str) -> Exception:
        return cls(f"{self.fn}: {msg}")

    def to3(self, a: Any, rows: int, cols: int) -> Any:
        """(..., rows, cols) as a (batch, rows, cols) view BLAS can address (else a copy)."""
        xp = self.xp
        if a.ndim != 3:
            a = xp.reshape(a, (_arrays.prod(tuple(a.shape[:-2])), rows, cols))
        st = xp.strides(a)
        if not _core.addressable(rows, cols, st[1], st[2]):
            a = xp.contiguous(a)
        return a

    def alloc(self, batch: int, rows: int, cols: int, like: Any | None = None) -> Any:
        """A new (batch, rows, cols) array, column-major when `like` is (so features-last
        activations keep their layout)."""
        xp = self.xp
        if like is not None and rows > 1 and cols > 1:
            st = xp.strides(like)
            if st[-2] == 1 and st[-1] != 1:
                return xp.transpose_last(xp.empty((batch, cols, rows), self.dtype, self.first))
        return xp.empty((batch, rows, cols), self.dtype, self.first)

    def buffer(self, size: int) -> Any:
        return self.xp.empty((max(int(size), 1),), self.dtype, self.first)

    def out(self, a: Any, shape: tuple[int, ...] | None = None) -> Any:
        """A result in the caller's library, with its batch dimensions restored."""
        if shape is not None and tuple(a.shape) != shape:
            a = self.xp.reshape(a, shape)
        return self.xp.unwrap(a, self.like)


def validate(fn: str, tf32: bool = False, **arrays: Any) -> Call:
    """Same library, float dtype, device; at least two dimensions each."""
    xp = first_name = None
    wrapped = {}
    for name, a in arrays.items():
        try:
            space = _arrays.namespace(a)
        except TypeError as e:
            raise TypeError(f"{fn}: {name}: {e}") from None
        if xp is None:
            xp, first_name = space, name
        elif space is not xp:
            raise TypeError(
                f"{fn}: {name} is a {space.name} array but {first_name} is a {xp.name} array"
            )
        wrapped[name] = xp.wrap(a)
    dtype = check_dtypes(fn, xp, wrapped)
    devices = [xp.device(a) for a in wrapped.values()]
    if any(d != devices[0] for d in devices):
        desc = ", ".join(f"{n} is on {d[0]}:{d[1]}" for n, d in zip(wrapped, devices))
        raise ValueError(f"{fn}: arrays must be on one device ({desc})")
    return Call(fn, xp, dtype, devices[0], wrapped, tf32=tf32, like=arrays[first_name])


def check_dtypes(fn: str, xp: _arrays.Namespace, arrays: dict[str, Any]) -> str:
    """Each array float32 or float64 with at least two dimensions, all of one dtype: that
    dtype (fasth.jax checks its arrays here too)."""
    dtypes = {}
    for name, a in arrays.items():
        dt = xp.dtype(a)
        if dt not in _arrays.FLOAT_DTYPES:
            raise TypeError(f"{fn}: {name} has dtype {dt}; expected float32 or float64")
        dtypes[name] = dt
        if a.ndim < 2:
            raise ValueError(
                f"{fn}: {name} must have at least 2 dimensions, got shape {tuple(a.shape)}"
            )
    if len(set(dtypes.values())) > 1:
        desc = ", ".join(f"{n} is {d}" for n, d in dtypes.items())
        raise TypeError(f"{fn}: arrays must share one dtype ({desc})")
    return next(iter(dtypes.values()))


def _shape(c: Call, batch: int, shared: bool, d: int, k: int, n: int, block: int | None,
           strategy: StrategyName) -> Any:
    if k > d:
        raise c.fail(ValueError, f"V has k = {k} columns but only d = {d} rows (need k <= d)")
    if block is not None and int(block) < 1:
        raise c.fail(ValueError, f"block must be a positive integer, got {block}")
    if strategy not in _STRATEGIES:
        raise c.fail(ValueError, f"strategy must be one of {list(_STRATEGIES)}, got {strategy!r}")
    # int()/bool() also specialise symbolic sizes (torch.compile with dynamic shapes): the
    # block size and the factors' size depend on them.
    return _resolved(int(batch), bool(shared), int(d), int(k), int(n), int(block or 0), strategy,
                     c.device[0] == "cuda")


@functools.lru_cache(maxsize=1024)
def _resolved(batch: int, shared: bool, d: int, k: int, n: int, block: int, strategy: str,
              cuda: bool) -> Any:
    """The core's resolved Shape (block size and strategy chosen), once per distinct call:
    layers call with the same sizes step after step. Callers only read it."""
    s = _core.Shape()
    s.batch, s.shared_v, s.d, s.k, s.n, s.block = batch, shared, d, k, n, block
    s.strategy = _STRATEGIES[strategy]
    return _core.resolve(s, _core.Device.cuda if cuda else _core.Device.cpu)


def _prepare_apply(c: Call, X_name: str, block, strategy) -> tuple[Any, Any]:
    V, X = c.arrays["V"], c.arrays[X_name]
    d, k = V.shape[-2:]
    if X.shape[-2] != d:
        raise c.fail(
            ValueError, f"{X_name} has {X.shape[-2]} rows (shape {tuple(X.shape)}) but V has d = {d}"
        )
    bv, bx = tuple(V.shape[:-2]), tuple(X.shape[:-2])
    if bv != bx and _arrays.prod(bv) != 1:
        raise c.fail(
            ValueError,
            f"batch dimensions of V {bv} and {X_name} {bx} must match, or V must have none",
        )
    B = _arrays.prod(bx)
    shared = bv != bx or B == 1
    c.batch = bx
    c.shape = _shape(c, B, shared, d, k, X.shape[-1], block, strategy)
    V3 = c.to3(c.xp.reshape(V, (1, d, k)) if shared and bv != bx else V, d, k)
    return V3, c.shape


def _factors(c: Call, V3: Any, ws: Any) -> Any:
    """The T factors of V; `ws` is the op's workspace, which serves factors() too."""
    f = c.buffer(_core.factors_size(c.shape))
    c.run("factors", c.shape, V3, f, ws)
    return f


def apply_with_factors(V, X, transpose: bool = False, *, block: int | None = None,
                       strategy: StrategyName = "auto", tf32: bool = False,
                       dry_run: bool = False) -> tuple[Any, Any]:
    """U X (or U^T X) and the T factors of V, kept for the backward. With ``dry_run`` only
    the outputs are allocated (what a torch fake/meta kernel needs)."""
    c = validate("fasth.apply", tf32, V=V, X=X)
    V3, s = _prepare_apply(c, "X", block, strategy)
    out = c.alloc(s.batch, s.d, s.n, like=c.arrays["X"])
    if dry_run:
        return c.out(out, (*c.batch, s.d, s.n)), c.buffer(_core.factors_size(s))
    X3 = c.to3(c.arrays["X"], s.d, s.n)
    ws = c.buffer(_core.workspace_size(_core.Op.apply, s))
    f = _factors(c, V3, ws)
    c.run("apply", s, bool(transpose), V3, f, X3, out, ws)
    return c.out(out, (*c.batch, s.d, s.n)), c.out(f)


def apply(V, X, transpose: bool = False, *, block: int | None = None,
          strategy: StrategyName = "auto", tf32: bool = False) -> Any:
    """``U X`` (``U^T X`` with ``transpose``) for ``U = H_1 ... H_k`` built from the columns of
    ``V`` (shape ``(..., d, k)``), ``X`` of shape ``(..., d, n)``. ``V`` may be unbatched
    and shared by a batch of ``X``."""
    return apply_with_factors(V, X, transpose, block=block, strategy=strategy, tf32=tf32)[0]


def apply_backward(V, out, grad, transpose: bool = False, *, factors: Any = None,
                   block: int | None = None, strategy: StrategyName = "auto",
                   tf32: bool = False, dry_run: bool = False) -> tuple[Any, Any]:
    """Gradients ``(dV, dX)`` of ``out = apply(V, X, transpose)`` from ``out`` and
    ``grad = dL/dout`` alone (the input is recovered through orthogonality)."""
    c = validate("fasth.apply_backward", tf32, V=V, out=out, grad=grad)
    if tuple(c.arrays["grad"].shape) != tuple(c.arrays["out"].shape):
        raise c.fail(ValueError, f"grad has shape {tuple(c.arrays['grad'].shape)} but out has "
                                 f"shape {tuple(c.arrays['out'].shape)}")
    V3, s = _prepare_apply(c, "out", block, strategy)
    Vb = c.arrays["V"]
    dV = c.alloc(V3.shape[0], s.d, s.k, like=Vb)  # shared: one matrix, the batch summed in
    dX = c.alloc(s.batch, s.d, s.n, like=c.arrays["out"])
    if dry_run:
        return c.out(dV, tuple(Vb.shape)), c.out(dX, (*c.batch, s.d, s.n))
    ws = c.buffer(_core.workspace_size(_core.Op.apply_backward, s))
    f = _factors(c, V3, ws) if factors is None else c.xp.wrap(factors)
    c.run("apply_backward", s, bool(transpose), V3, f, c.to3(c.arrays["out"], s.d, s.n),
          c.to3(c.arrays["grad"], s.d, s.n), dX, dV, ws)
    return c.out(dV, tuple(Vb.shape)), c.out(dX, (*c.batch, s.d, s.n))


def _prepare_matrix(c: Call, thin: bool, block) -> tuple[Any, Any]:
    V = c.arrays["V"]
    d, k = V.shape[-2:]
    c.batch = tuple(V.shape[:-2])
    B = _arrays.prod(c.batch)
    # matrix() materialises U: a backend with a small-d kernel then needs no T factors.
    c.shape = _shape(c, B, B == 1, d, k, k if thin else d, block, "materialize")
    return c.to3(V, d, k), c.shape


def matrix_with_factors(V, thin: bool = False, *, block: int | None = None,
                        tf32: bool = False, dry_run: bool = False) -> tuple[Any, Any]:
    c = validate("fasth.matrix", tf32, V=V)
    V3, s = _prepare_matrix(c, thin, block)
    out = c.alloc(s.batch, s.d, s.n)
    if dry_run:
        return c.out(out, (*c.batch, s.d, s.n)), c.buffer(_core.factors_size(s))
    ws = c.buffer(_core.workspace_size(_core.Op.matrix, s))
    f = _factors(c, V3, ws)
    c.run("matrix", s, V3, f, out, ws)
    return c.out(out, (*c.batch, s.d, s.n)), c.out(f)


def matrix(V, thin: bool = False, *, block: int | None = None, tf32: bool = False) -> Any:
    """``U = H_1 ... H_k`` (``d x d``), or with ``thin`` its first ``k`` columns (LAPACK's
    orgqr semantics), for ``V`` of shape ``(..., d, k)``."""
    return matrix_with_factors(V, thin, block=block, tf32=tf32)[0]


def matrix_backward(V, U, grad, thin: bool = False, *, factors: Any = None,
                    block: int | None = None, tf32: bool = False, dry_run: bool = False) -> Any:
    """``dV`` for ``U = matrix(V, thin)`` from ``U`` and ``grad = dL/dU``."""
    c = validate("fasth.matrix_backward", tf32, V=V, U=U, grad=grad)
    V3, s = _prepare_matrix(c, thin, block)
    want = (*c.batch, s.d, s.n)
    for name in ("U", "grad"):
        if tuple(c.arrays[name].shape) != want:
            raise c.fail(ValueError, f"{name} has shape {tuple(c.arrays[name].shape)}, expected {want}")
    dV = c.alloc(s.batch, s.d, s.k, like=c.arrays["V"])
    if dry_run:
        return c.out(dV, (*c.batch, s.d, s.k))
    ws = c.buffer(_core.workspace_size(_core.Op.matrix_backward, s))
    f = _factors(c, V3, ws) if factors is None else c.xp.wrap(factors)
    c.run("matrix_backward", s, V3, f, c.to3(c.arrays["U"], s.d, s.n),
          c.to3(c.arrays["grad"], s.d, s.n), dV, ws)
    return c.out(dV, (*c.batch, s.d, s.k))
