#!/usr/bin/env bash
# The tests against the built wheel, not the source tree: scripts/build_wheel.sh, then the wheel
# with its test extras installed from binaries only into a fresh venv (build/venv) with no
# compiler on PATH, `python -m fasth` from it, then pytest from the checkout (tests/ imports
# fasth from the venv, so a file missing from the wheel fails here). Where nvcc is, the wheel
# must carry the CUDA module and it must load with fasth[cuda13]'s cuBLAS (on a machine without
# a GPU it reports why it cannot run).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
bash scripts/build_wheel.sh dist
venv=build/venv
rm -rf "$venv" && "$PY" -m venv "$venv"
whl=$(ls dist/*.whl)
PATH="$PWD/$venv/bin" pip install -q --only-binary=:all: "torch==2.13.0" "$whl[test,cuda13]"
if command -v nvcc >/dev/null; then
  "$venv/bin/python" -c "import fasth._cuda as c; print('fasth._cuda:', c.unavailable_reason() or 'a GPU')"
fi
"$venv/bin/python" -m fasth -d 128 --repeats 1 >/dev/null   # the main job runs from the wheel
"$venv/bin/python" -m pytest -q
