"""Results on disk as they are measured: each row is appended to ``rows.jsonl`` (one JSON
object a line, flushed) the moment it exists, so an error, Ctrl-C or a killed process keeps
every row measured before it. The benchmarks and the demos write through it."""

from __future__ import annotations

import contextlib
import json
import signal
from pathlib import Path
from typing import Iterator

ROWS = "rows.jsonl"


class Record:
    """Appends ``{"table": ..., "row": ...}`` lines to ``<out>/rows.jsonl``: started afresh, or
    with ``append`` (a resumed run) after the lines already there."""

    def __init__(self, out: Path | str, *, append: bool = False, **header: object) -> None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        self.path = out / ROWS
        self._file = self.path.open("a" if append else "w")
        self._written: dict[str, list[str]] = {}
        if header:
            self.row("header", header)

    def row(self, table: str, row: dict) -> str:
        line = json.dumps({"table": table, "row": row}, default=str)
        self._file.write(line + "\n")
        self._file.flush()
        return line

    def new_rows(self, table: str, rows: list[dict]) -> None:
        """The rows of ``rows`` (a list that only grows) not written yet, or changed since (a
        row that gains a field later is written again, whole: its last line counts)."""
        written = self._written.setdefault(table, [])
        for i, r in enumerate(rows):
            line = json.dumps({"table": table, "row": r}, default=str)
            if i >= len(written):
                written.append(self.row(table, r))
            elif written[i] != line:
                written[i] = self.row(table, r)

    def close(self) -> None:
        self._file.close()


def read(path: Path | str) -> dict[str, list[dict]]:
    """``rows.jsonl`` back as ``{table: [row, ...]}``, every line in order (a row written again
    after it changed appears twice)."""
    tables: dict[str, list[dict]] = {}
    for line in Path(path).read_text().splitlines():
        entry = json.loads(line)
        tables.setdefault(entry["table"], []).append(entry["row"])
    return tables


@contextlib.contextmanager
def interruptible() -> Iterator[None]:
    """SIGTERM raises KeyboardInterrupt inside the block, as Ctrl-C does, so a killed run
    still leaves through its ``finally`` blocks (and writes what it measured)."""
    def stop(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    try:
        before = signal.signal(signal.SIGTERM, stop)
    except ValueError:  # not the main thread: signals stay as they are
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, before)
