"""The documentation site builds with warnings as errors (mkdocs.yml: strict), from the
docstrings and the README sections it includes, so a broken reference fails the tests."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_docs_build_strict(tmp_path):
    pytest.importorskip("mkdocstrings")
    p = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-d", str(tmp_path)],
                       cwd=ROOT, capture_output=True, text=True, timeout=300,
                       env=dict(os.environ, NO_MKDOCS_2_WARNING="1"))
    assert p.returncode == 0, p.stdout + p.stderr
    assert "fasth.torch.SVDLinear" in (tmp_path / "api" / "index.html").read_text()
    assert "U_reflectors" in (tmp_path / "layers" / "index.html").read_text()


LAYER_EXAMPLES = re.findall(r"```python\n(.*?)```", (ROOT / "docs" / "layers.md").read_text(), re.S)


def test_every_layer_has_an_example():
    text = (ROOT / "docs" / "layers.md").read_text()
    for name in ("Orthogonal", "SVDLinear", "orthogonal", "SpectralLinear", "SVDDense", "SpectralDense"):
        assert f"`{name}`" in text
    assert len(LAYER_EXAMPLES) >= 7


@pytest.mark.parametrize("code", LAYER_EXAMPLES, ids=[f"example{i}" for i in range(len(LAYER_EXAMPLES))])
def test_layer_example_runs(code):
    if "flax" in code:
        pytest.importorskip("flax")
    exec(compile(code, "docs/layers.md", "exec"), {})
