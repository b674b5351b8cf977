"""``fasth.profile()``: the core's backend calls (each one BLAS call or one kernel launch on a
batch) counted while the block runs, on the CPU and CUDA alike, so call counts are measured
on any machine and carry to the GPU as launches."""

from __future__ import annotations

import contextlib
import sys
from typing import Iterator

from . import _core


class Profile:
    """What a ``with fasth.profile() as p:`` block did: ``p.calls`` (int) and ``p.by_op``
    ({operation: calls}, e.g. ``{"gemm": 9, "trmm": 4}``)."""

    def __init__(self) -> None:
        self.by_op: dict[str, int] = {}

    @property
    def calls(self) -> int:
        return sum(self.by_op.values())

    def __repr__(self) -> str:
        return f"Profile(calls={self.calls}, by_op={self.by_op})"


def _modules() -> list:
    cuda = sys.modules.get("fasth._cuda")  # counted where it is loaded
    return [_core] + ([cuda] if cuda is not None else [])


@contextlib.contextmanager
def profile() -> Iterator[Profile]:
    """Counts the backend calls fasth makes inside the block (process-wide, every thread).
    Under JAX, wait for the results inside it (``block_until_ready``): XLA may run the calls
    later. Not reentrant."""
    p = Profile()
    for m in _modules():
        m.reset_call_counts()
        m.count_calls(True)
    try:
        yield p
    finally:
        for m in _modules():
            m.count_calls(False)
            for op, n in m.call_counts().items():
                p.by_op[op] = p.by_op.get(op, 0) + n
