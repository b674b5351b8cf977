"""The doorway to fasth's compiled modules: ``_core`` (the CPU backend, plans and the XLA FFI
handlers), ``_cuda`` (the CUDA backend, imported on first use), their BLAS registrations
and their backend-call counters. Nothing else imports them."""

from __future__ import annotations

import functools
import os
from typing import Any

from . import _core
from ._spec import APPLY, HOUSEHOLDER, LAPACK, MATRIX, STRATEGIES, Spec

core = _core
_counted = [_core]  # the modules whose backend calls profiling counts: _cuda once cuda() loads it
_OPS = {APPLY: _core.Op.apply, MATRIX: _core.Op.matrix}
_KINDS = {HOUSEHOLDER: _core.Kind.householder, LAPACK: _core.Kind.lapack}
_STRATEGIES = tuple(getattr(_core.Strategy, s) for s in ("automatic", "blockwise", "materialize"))
assert len(_STRATEGIES) == len(STRATEGIES)
DEVICES = {"cpu": _core.Device.cpu, "cuda": _core.Device.cuda}


def new_plan(s: Spec, v: tuple, tau: tuple, x: tuple, device: str, x_name: str = "X",
             direct_y: bool = True, complex: bool = False) -> Any:
    """The core's Plan for a call (each of v, tau, x a (shape, strides) pair, ((), ()) where
    the op has no such array; `complex` for complex arrays); raises the core's ValueError,
    naming the argument."""
    return _core.Plan(_OPS[s.op], _KINDS[s.kind], *v, *tau, *x, s.transpose, s.thin, s.block,
                      _STRATEGIES[s.strategy_code()], DEVICES[device], x_name,
                      direct_y=direct_y, complex=complex)


def collapsible(shape: tuple, strides: tuple, tail: int) -> bool:
    """Whether one stride walks the dimensions before the last `tail`."""
    return _core.collapsible(shape, strides, tail)


@functools.cache
def cuda() -> Any:
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
    _counted.append(_cuda)
    return _cuda


def module_for(device: str) -> Any:
    """The module whose forward and backward run plans on this device."""
    return cuda() if device == "cuda" else _core


@functools.cache
def scipy_blas() -> int:
    """SciPy's BLAS, registered on first use: the CPU backend's default."""
    return _core.scipy_blas()


def register_blas(*addresses: int, **named: int) -> int:
    """A BLAS table from function addresses (see _core.register_blas); its id."""
    return _core.register_blas(*addresses, **named)


def jax_targets(platform: str) -> dict[str, Any]:
    """The XLA FFI handlers' capsules by target name, for "cpu" or "cuda"; the CPU handlers
    run on the default BLAS, registered here before them."""
    if platform == "cpu":
        scipy_blas()
        return _core.jax_registrations()
    return cuda().jax_registrations()


def build_id() -> str:
    """Changes with every build of the extension: its size and modification time."""
    st = os.stat(_core.__file__)
    return f"{st.st_size}-{st.st_mtime_ns}"


def start_counting() -> list:
    """Resets and starts the backend-call counters of the loaded modules; returns them."""
    modules = list(_counted)
    for m in modules:
        m.reset_call_counts()
        m.count_calls(True)
    return modules


def stop_counting(modules: list) -> dict[str, int]:
    """Stops the counters start_counting started: calls by operation, summed."""
    by_op: dict[str, int] = {}
    for m in modules:
        m.count_calls(False)
        for op, n in m.call_counts().items():
            by_op[op] = by_op.get(op, 0) + n
    return by_op
