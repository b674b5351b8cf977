"""The installed package: its version is pyproject.toml's (the one place it is kept), and it
carries what the wheel must (the extension, its stubs, py.typed, the license)."""

from __future__ import annotations

import importlib.metadata
import re
from pathlib import Path

import pytest

import fasth

ROOT = Path(__file__).resolve().parents[1]


def _installed():
    try:
        return importlib.metadata.distribution("fasth")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("fasth is not installed (a source tree on sys.path)")


def test_version_is_pyprojects():
    dist = _installed()
    (declared,) = re.findall(r'^version = "([0-9.]+)"$', (ROOT / "pyproject.toml").read_text(), re.M)
    assert fasth.__version__ == dist.version == declared


def test_wheel_contents():
    dist = _installed()
    files = {str(f) for f in dist.files or ()}
    assert any(re.fullmatch(r"fasth/_core\..*so", f) for f in files), sorted(files)
    assert {"fasth/_core.pyi", "fasth/py.typed"} <= files
    assert any(f.endswith("LICENSE") for f in files)
