"""The C++ library on its own: configure, build and install it with CMake, then build and run
two separate projects that use it through find_package(fasth): examples/cpp (on the CPU, and
with fasth::cuda where nvcc and cuBLAS are here; its GPU run then skips without a GPU), and the
C++ test suite tests/cpp under ctest (no Python in it).

Skips only where a tool is missing: cmake (or ctest beside it), nvcc for the CUDA build, or a
BLAS that CMake's FindBLAS finds (apt-get install libopenblas-dev); anything else fails."""

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


def _cmake() -> str:
    cmake = shutil.which("cmake")
    if cmake is None:
        pytest.skip("cmake is not installed")
    return cmake


def _gen() -> list[str]:
    return ["-G", "Ninja"] if shutil.which("ninja") else []


def _install(tmp_path: Path, cmake: str, flags: list[str]) -> subprocess.CompletedProcess | Path:
    """The library configured, built and installed under tmp_path/prefix; the configure's
    result where it failed."""
    lib, prefix = tmp_path / "lib", tmp_path / "prefix"
    p = _run(cmake, "-S", ROOT, "-B", lib, *_gen(), *flags, "-DCMAKE_BUILD_TYPE=Release",
             cwd=tmp_path)
    if p.returncode != 0:
        return p
    _check(_run(cmake, "--build", lib, "-j", "2", cwd=tmp_path))
    _check(_run(cmake, "--install", lib, "--prefix", prefix, cwd=tmp_path))
    return prefix


def _configure_consumer(cmake: str, src: Path, build: Path, prefix: Path) -> None:
    p = _run(cmake, "-S", src, "-B", build, *_gen(), f"-DCMAKE_PREFIX_PATH={prefix}",
             "-DCMAKE_BUILD_TYPE=Release", cwd=build.parent)
    if p.returncode != 0 and "Could NOT find BLAS" in p.stdout + p.stderr:
        pytest.skip("no BLAS for CMake's FindBLAS (apt-get install libopenblas-dev)")
    _check(p)
    _check(_run(cmake, "--build", build, "-j", "2", cwd=build.parent))


@pytest.mark.slow
@pytest.mark.parametrize("cuda", [False, True])
def test_cpp_consumer(tmp_path, cuda):
    cmake = _cmake()
    if cuda and shutil.which("nvcc") is None:
        pytest.skip("nvcc is not installed")
    flags = ["-DFASTH_CUDA=ON", "-DCMAKE_CUDA_ARCHITECTURES=80"] if cuda else ["-DFASTH_CUDA=OFF"]
    prefix = _install(tmp_path, cmake, flags)
    if isinstance(prefix, subprocess.CompletedProcess):
        if cuda and "CUDA backend cannot be built" in prefix.stdout + prefix.stderr:
            pytest.skip("no cuBLAS (pip install nvidia-cublas)")
        _check(prefix)

    ex = tmp_path / "example"
    _configure_consumer(cmake, ROOT / "examples" / "cpp", ex, prefix)
    p = _run(ex / "fasth_example", cwd=tmp_path)
    assert p.returncode == 0, f"fasth_example failed (exit {p.returncode}):\n{p.stdout}\n{p.stderr}"
    assert "cpu: max|U^T U - I|" in p.stdout
    assert ("cuda:" in p.stdout) == cuda


@pytest.mark.slow
def test_cpp_suite(tmp_path):
    """tests/cpp against the installed CPU library, under ctest."""
    cmake = _cmake()
    ctest = Path(cmake).with_name("ctest")
    if not ctest.exists():
        pytest.skip("ctest is not installed beside cmake")
    prefix = _install(tmp_path, cmake, ["-DFASTH_CUDA=OFF"])
    if isinstance(prefix, subprocess.CompletedProcess):
        _check(prefix)
    build = tmp_path / "tests"
    _configure_consumer(cmake, ROOT / "tests" / "cpp", build, prefix)
    p = _run(ctest, "--output-on-failure", "--timeout", "120", cwd=build)
    assert p.returncode == 0, f"ctest failed:\n{p.stdout}\n{p.stderr}"
    assert "100% tests passed" in p.stdout, p.stdout
