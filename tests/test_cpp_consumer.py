"""The C++ library on its own: configure, build and install it with CMake, then build and run
examples/cpp, a separate project that uses it through find_package(fasth): on the CPU, and
with fasth::cuda where nvcc and cuBLAS are here (its GPU run then skips without a GPU)."""

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
@pytest.mark.parametrize("cuda", [False, True])
def test_cpp_consumer(tmp_path, cuda):
    cmake = shutil.which("cmake")
    if cmake is None:
        pytest.skip("cmake is not installed")
    if cuda and shutil.which("nvcc") is None:
        pytest.skip("nvcc is not installed")
    gen = ["-G", "Ninja"] if shutil.which("ninja") else []
    lib, prefix, ex = tmp_path / "lib", tmp_path / "prefix", tmp_path / "example"

    flags = ["-DFASTH_CUDA=ON", "-DCMAKE_CUDA_ARCHITECTURES=80"] if cuda else ["-DFASTH_CUDA=OFF"]
    p = _run(cmake, "-S", ROOT, "-B", lib, *gen, *flags, "-DCMAKE_BUILD_TYPE=Release", cwd=tmp_path)
    if cuda and p.returncode != 0 and "CUDA backend cannot be built" in p.stdout + p.stderr:
        pytest.skip("no cuBLAS (pip install nvidia-cublas)")
    _check(p)
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
    assert "cpu: max|U^T U - I|" in p.stdout
    assert ("cuda:" in p.stdout) == cuda
