"""The README's Python snippets run as written."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

BLOCKS = re.findall(r"```python\n(.*?)```", (Path(__file__).parents[1] / "README.md").read_text(), re.S)


def test_readme_has_snippets():
    assert len(BLOCKS) >= 3


@pytest.mark.parametrize("code", BLOCKS, ids=[f"block{i}" for i in range(len(BLOCKS))])
def test_readme_snippet_runs(code):
    for lib in re.findall(r"^import (\w+)", code, re.M):
        pytest.importorskip(lib)
    exec(compile(code, "README.md", "exec"), {})
