#!/usr/bin/env bash
# The GPU check: on a machine with an NVIDIA GPU, CUDA 13's nvcc, torch, cupy, JAX, nanobind,
# scikit-build-core, cmake and ninja already installed, and no internet, build fasth from this
# checkout, run the whole test suite (CUDA cases included) and the GPU benchmarks.
# Logs go under $OUT (default ./gpu-check-out): nvidia-smi.txt, build.log, tests.log,
# bench.log, suite.log (+ suite/), glow.log, glow-per-step.log, spectral.log (+ spectral/).
# About 8 minutes on an H100; exits non-zero if the build, a test or the GPU benchmark fails.
#
#   bash scripts/gpu_check.sh            # from the repository root
#   CUDA_ARCH=90 PYTHON=python3 OUT=/tmp/out bash scripts/gpu_check.sh
#   TESTS="tests/test_cuda.py -k cuda" bash scripts/gpu_check.sh   # a subset of the tests
set -u -o pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu-check-out}
PY=${PYTHON:-python3}
ARCH=${CUDA_ARCH:-90}  # one architecture (Hopper) keeps the build short; the default is all
export PYTHONUNBUFFERED=1
mkdir -p "$OUT"

{ nvidia-smi; nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
  nvcc --version; "$PY" -c "import sys, torch; print(sys.version); print('torch', torch.__version__,
torch.version.cuda, torch.cuda.get_device_name(0))"; } >"$OUT/nvidia-smi.txt" 2>&1

# No build isolation (no internet): the installed nanobind and scikit-build-core build it.
# FASTH_CUDA=ON makes a missing nvcc or cuBLAS an error instead of a CPU-only build.
start=$SECONDS
timeout 300 "$PY" -m pip install --no-build-isolation --no-deps -v . \
  -Cbuild-dir=/tmp/fasth-gpu-build \
  -Ccmake.define.FASTH_CUDA=ON -Ccmake.define.CMAKE_CUDA_ARCHITECTURES="$ARCH" \
  >"$OUT/build.log" 2>&1
rc=$?
echo "build: exit $rc in $((SECONDS - start)) s" | tee -a "$OUT/build.log"
[ $rc -eq 0 ] || { tail -40 "$OUT/build.log"; exit $rc; }
"$PY" -c "import fasth._api as a; m = a.cuda_module(); print('fasth._cuda OK:', m.__file__)" \
  2>&1 | tee -a "$OUT/build.log" || exit 1

# Everything, CUDA cases included; -rs lists why anything skipped (a CUDA skip here is a bug).
start=$SECONDS
par=$("$PY" -c "import xdist" 2>/dev/null && echo "-n 8")
# shellcheck disable=SC2086
timeout "${TEST_TIMEOUT:-240}" "$PY" -m pytest ${TESTS:-tests} -q -rs --maxfail=20 $par \
  -p no:cacheprovider 2>&1 | tee "$OUT/tests.log"
trc=$?
echo "tests: exit $trc in $((SECONDS - start)) s" | tee -a "$OUT/tests.log"

start=$SECONDS
timeout "${BENCH_TIMEOUT:-150}" "$PY" benchmarks/gpu_bench.py 2>&1 | tee "$OUT/bench.log"
brc=$?
echo "bench: exit $brc in $((SECONDS - start)) s" | tee -a "$OUT/bench.log"

# The benchmark suite, the Glow table and the spectral demo on the GPU (issues 5, 6, 7);
# SUITE=0, GLOW=0 or SPECTRAL=0 leaves one out.
stage() {  # name, timeout, command...
  local name=$1 limit=$2 start=$SECONDS
  shift 2
  timeout "$limit" "$@" 2>&1 | tee "$OUT/$name.log"
  echo "$name: exit $? in $((SECONDS - start)) s" | tee -a "$OUT/$name.log"
}
[ "${SUITE:-1}" = 1 ] && stage suite "${SUITE_TIMEOUT:-150}" \
  "$PY" -m fasth bench --device cuda --quick --no-progress --out "$OUT/suite"
[ "${GLOW:-1}" = 1 ] && stage glow "${GLOW_TIMEOUT:-150}" "$PY" -m fasth glow --bench --device cuda
[ "${GLOW:-1}" = 1 ] && stage glow-per-step "${GLOW_TIMEOUT:-150}" \
  "$PY" -m fasth glow --bench --device cuda --per-step
[ "${SPECTRAL:-1}" = 1 ] && stage spectral "${SPECTRAL_TIMEOUT:-150}" \
  "$PY" -m fasth spectral --device cuda --no-progress --out "$OUT/spectral"
exit $(( trc != 0 ? trc : brc ))
