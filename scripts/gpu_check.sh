#!/usr/bin/env bash
# The GPU check: on a machine with an NVIDIA GPU, CUDA 13's nvcc, torch, cupy, JAX, nanobind,
# scikit-build-core, cmake and ninja already installed, and no internet, build fasth from this
# checkout, run the test suite (CUDA cases first) and the GPU benchmarks.
#
# Stages run most-owed first and share one deadline (DEADLINE seconds from the start,
# default 540: inside a 600 s device call), each cut to the time left; a stage that would get
# under 20 s is skipped and says so. Logs go under $OUT (default ./gpu-check-out), seven
# files at most (a device call brings back eight): env.txt, build.log, tests.log (the CUDA
# cases, then the rest of the suite), bench.log (benchmarks/gpu_bench.py), demos.log (Glow
# table batched and one step at a time, spectral demo), suite.log (`fasth bench`, then
# `fasth bench --layers`) and artefacts.tar.gz (the demos' and the benchmarks' PNG, JSON and
# markdown).
# Exits non-zero if the build, a test or the GPU benchmark fails.
#
#   bash scripts/gpu_check.sh            # from the repository root
#   CUDA_ARCH=90 PYTHON=python3 OUT=/tmp/out DEADLINE=400 bash scripts/gpu_check.sh
#   TESTS="tests/test_cuda.py" REST=0 GLOW=0 SPECTRAL=0 SUITE=0 LAYERS=0 bash scripts/gpu_check.sh
set -u -o pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu-check-out}
PY=${PYTHON:-python3}
ARCH=${CUDA_ARCH:-90}  # one architecture (Hopper) keeps the build short; the default is all
DEADLINE=${DEADLINE:-540}
ART=$(mktemp -d)  # artefacts, packed into one file after each stage that writes some
trap 'rm -rf "$ART"' EXIT
export PYTHONUNBUFFERED=1
mkdir -p "$OUT"

stage() {  # log, name, limit (s), command...: run it within the deadline, append to $OUT/log
  local log=$1 name=$2 limit=$3 start=$SECONDS rc
  shift 3
  local left=$((DEADLINE - SECONDS))
  ((limit > left)) && limit=$left
  if ((limit < 20)); then
    echo "== $name: skipped, $left s left before the deadline" | tee -a "$OUT/$log"
    return 0
  fi
  echo "== $name (limit $limit s): $*" | tee -a "$OUT/$log"
  timeout "$limit" "$@" 2>&1 | tee -a "$OUT/$log"
  rc=$?
  echo "== $name: exit $rc in $((SECONDS - start)) s" | tee -a "$OUT/$log"
  return $rc
}

pack() { tar -czf "$OUT/artefacts.tar.gz" -C "$ART" . 2>/dev/null; }

{ nvidia-smi; nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
  nvcc --version; "$PY" -c "import sys, torch; print(sys.version); print('torch', torch.__version__,
torch.version.cuda, torch.cuda.get_device_name(0))"; } >"$OUT/env.txt" 2>&1

# No build isolation (no internet): the installed nanobind and scikit-build-core build it.
# FASTH_CUDA=ON makes a missing nvcc or cuBLAS an error instead of a CPU-only build.
stage build.log build 300 "$PY" -m pip install --no-build-isolation --no-deps -v . \
  -Cbuild-dir=/tmp/fasth-gpu-build \
  -Ccmake.define.FASTH_CUDA=ON -Ccmake.define.CMAKE_CUDA_ARCHITECTURES="$ARCH" >/dev/null
rc=$?
[ $rc -eq 0 ] || { tail -40 "$OUT/build.log"; exit $rc; }
stage build.log cuda-module 60 "$PY" -c \
  "import fasth._api as a; m = a.cuda_module(); print('fasth._cuda OK:', m.__file__)" || exit 1

# The CUDA cases first, then (REST=1) the rest of the suite, so that together they are the
# whole suite; -rs lists why anything skipped (a CUDA skip here is a bug).
par=$("$PY" -c "import xdist" 2>/dev/null && echo "-n 8")
# shellcheck disable=SC2086
stage tests.log tests-cuda "${TEST_TIMEOUT:-240}" "$PY" -m pytest \
  ${TESTS:-tests/test_cuda.py tests/test_core.py tests/test_torch.py tests/test_jax.py -k cuda} \
  -q -rs --maxfail=20 $par -p no:cacheprovider
trc=$?

stage bench.log gpu-bench "${BENCH_TIMEOUT:-180}" "$PY" benchmarks/gpu_bench.py
brc=$?

# The Glow table and the spectral demo on the GPU, then the benchmark suite and the layer
# benchmark; GLOW=0, SPECTRAL=0, SUITE=0 or LAYERS=0 leaves one out.
# Glow batched, the spectral demo, then Glow one step at a time (the seed's baseline).
[ "${GLOW:-1}" = 1 ] && stage demos.log glow "${GLOW_TIMEOUT:-120}" \
  "$PY" -m fasth glow --bench --device cuda
if [ "${SPECTRAL:-1}" = 1 ]; then
  stage demos.log spectral "${SPECTRAL_TIMEOUT:-150}" \
    "$PY" -m fasth spectral --device cuda --no-progress --out "$ART/spectral"
  pack
fi
[ "${GLOW:-1}" = 1 ] && stage demos.log glow-per-step "${GLOW_TIMEOUT:-120}" \
  "$PY" -m fasth glow --bench --device cuda --per-step
if [ "${SUITE:-1}" = 1 ]; then
  stage suite.log suite "${SUITE_TIMEOUT:-150}" \
    "$PY" -m fasth bench --device cuda --quick --no-progress --out "$ART/suite"
  pack
fi
if [ "${LAYERS:-1}" = 1 ]; then
  stage suite.log layers "${LAYERS_TIMEOUT:-120}" \
    "$PY" -m fasth bench --layers --device cuda --quick --no-progress --out "$ART/layers"
  pack
fi
if [ "${REST:-1}" = 1 ] && [ -z "${TESTS:-}" ]; then
  # shellcheck disable=SC2086
  stage tests.log tests-rest "${REST_TIMEOUT:-300}" "$PY" -m pytest tests -k "not cuda" \
    -q -rs --maxfail=20 $par -p no:cacheprovider
  rrc=$?
  ((trc == 0)) && trc=$rrc
fi
exit $(( trc != 0 ? trc : brc ))
