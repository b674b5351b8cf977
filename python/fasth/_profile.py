"""``fasth.profile()``: the core's backend calls (each one BLAS call or one kernel launch on a
batch) counted while the block runs, on the CPU and CUDA alike, so call counts are measured
on any machine and carry to the GPU as launches."""

from __future__ import annotations

import contextlib
from typing import Iterator

from . import _native


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


@contextlib.contextmanager
def profile() -> Iterator[Profile]:
    """Counts the backend calls fasth makes inside the block (process-wide, every thread).
    Under JAX, wait for the results inside it (``block_until_ready``): XLA may run the calls
    later. Not reentrant."""
    p = Profile()
    counting = _native.start_counting()
    try:
        yield p
    finally:
        p.by_op = _native.stop_counting(counting)
