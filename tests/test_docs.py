"""The documentation site builds with warnings as errors (mkdocs.yml: strict), from the
docstrings and the README sections it includes, so a broken reference fails the tests."""

from __future__ import annotations

import os
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
