"""The C++ library on its own: configure, build and install it with CMake, then build and run
examples/cpp, a separate project that uses it through find_package(fasth)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(a) for a in args], cwd=cwd, capture_output=True, text=True,
                          timeout=600)


def _check(p: subprocess.CompletedProcess) -> None:
    assert p.returncode == 0, f"{' '.join(p.args)} failed:\n{p.stdout}\n{p.stderr}"


@pytest.mark.slow
def test_cpp_consumer(tmp_path):
    cmake = shutil.which("cmake")
    if cmake is None:
        pytest.skip("cmake is not installed")
    gen = ["-G", "Ninja"] if shutil.which("ninja") else []
    lib, prefix, ex = tmp_path / "lib", tmp_path / "prefix", tmp_path / "example"

    _check(_run(cmake, "-S", ROOT, "-B", lib, *gen, "-DFASTH_CUDA=OFF",
                "-DCMAKE_BUILD_TYPE=Release", cwd=tmp_path))
    _check(_run(cmake, "--build", lib, "-j", "2", cwd=tmp_path))
    _check(_run(cmake, "--install", lib, "--prefix", prefix, cwd=tmp_path))

    p = _run(cmake, "-S", ROOT / "examples" / "cpp", "-B", ex, *gen,
             f"-DCMAKE_PREFIX_PATH={prefix}", "-DCMAKE_BUILD_TYPE=Release", cwd=tmp_path)
    if p.returncode != 0 and "Could NOT find BLAS" in p.stdout + p.stderr:
        pytest.skip("no BLAS for CMake's FindBLAS (apt-get install libopenblas-dev)")
    _check(p)
    _check(_run(cmake, "--build", ex, "-j", "2", cwd=tmp_path))

    exe = ex / "fasth_example"
    p = _run(exe, cwd=tmp_path)
    assert p.returncode == 0, f"fasth_example failed (exit {p.returncode}):\n{p.stdout}\n{p.stderr}"
    assert "max|U^T U - I|" in p.stdout
