"""The build backend: scikit-build-core, asking also for cuBLAS where the CUDA module can be built.

An isolated build (`pip install .`, `pip wheel .`, an sdist) has only what it asks for. The CUDA
module needs nvcc, which no package provides, and cuBLAS, which the `nvidia-cublas` wheel does:
so cuBLAS is asked for exactly where nvcc is found (as CMake finds it: $CUDACXX, else PATH) and
FASTH_CUDA is not OFF. A CPU-only machine downloads nothing more.
"""

from __future__ import annotations

import os
import shutil
import sys

from scikit_build_core import build as _skbuild
from scikit_build_core.build import *  # noqa: F403  (the PEP 517 hooks not changed here)

CUBLAS = "nvidia-cublas>=13"


def _cuda_requires() -> list[str]:
    if os.environ.get("FASTH_CUDA", "AUTO").upper() == "OFF" or not sys.platform.startswith("linux"):
        return []
    nvcc = os.environ.get("CUDACXX") or shutil.which("nvcc")
    return [CUBLAS] if nvcc and os.path.exists(nvcc) else []


def get_requires_for_build_wheel(config_settings=None) -> list[str]:
    return [*_skbuild.get_requires_for_build_wheel(config_settings), *_cuda_requires()]


def get_requires_for_build_editable(config_settings=None) -> list[str]:
    return [*_skbuild.get_requires_for_build_editable(config_settings), *_cuda_requires()]
