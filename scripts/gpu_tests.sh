#!/usr/bin/env bash
# The GPU test set (pytest -m gpu: every op test that needs CUDA, at the shipped tiles, outputs poisoned with NaN)
# in one device call. Run serially it did not finish in 230 s (session 4: 13 of 131 tests, each new shape waits for
# Triton's compile, fp32 K256 V512 chunk 128 alone over 150 s), so the tests are spread over JOBS pytest-xdist
# workers on the one GPU (compiles run on the CPU cores in parallel) when xdist is installed. The intra part runs
# eagerly (MDN_CHUNK_COMPILE=0) unless INTRA_COMPILE=1: the Triton kernels, where the Hopper codegen traps are, are
# the same either way, and inductor would compile every shape first.
# Each test is stopped after T_TEST seconds (pytest-timeout, when installed), the whole set after T_ALL (default 540 s,
# inside the device's 600 s a call: the set of 188 tests took 392 s at JOBS=6 on one H200, docs/BENCHMARKS.md §1.28).
# Results in $OUT (or results/gpu_tests): gpu_tests.txt (the report) and gpu_tests.xml (JUnit, one entry a test).
#   JOBS=6 T_ALL=540 bash scripts/gpu_tests.sh [extra pytest args, e.g. -k pqk]
set -uo pipefail
cd "$(dirname "$0")/../triton"
O=${OUT:-$PWD/../results/gpu_tests}
mkdir -p "$O"
PY=${MDN_PYTHON:-python3}
args=(tests/ops -m gpu -v -p no:cacheprovider -rfE --durations=15 --junitxml "$O/gpu_tests.xml")
# Workers share the one GPU: the largest test process took 17.6 GB (twelfth session), and 12 workers on an 80 GB
# H100 ran out of memory, so JOBS is capped at one worker per 16 GB of the GPU's memory (H100 4, H200 8), saying so.
# Even 4 workers on an H100 held 10-27 GB each through their caching allocators and 3 of 163 tests hit CUDA out of
# memory (thirteenth session): conftest.py now empties each worker's cache after every test, and expandable
# segments keep fragmentation down.
export PYTORCH_CUDA_ALLOC_CONF=${PYTORCH_CUDA_ALLOC_CONF:-expandable_segments:True}
jobs=${JOBS:-6}
mem_mb=$(nvidia-smi --query-gpu=memory.total --format=csv,noheader,nounits 2>/dev/null | head -1)
if [ -n "$mem_mb" ] && [ "$jobs" -gt $(( mem_mb / 16384 > 0 ? mem_mb / 16384 : 1 )) ]; then
  cap=$(( mem_mb / 16384 > 0 ? mem_mb / 16384 : 1 ))
  echo "gpu_tests: JOBS=$jobs capped to $cap (one worker per 16 GB of the GPU's $mem_mb MiB)"
  jobs=$cap
fi
if "$PY" -c "import xdist" 2>/dev/null; then args+=(-n "$jobs" --dist loadgroup); fi
if "$PY" -c "import pytest_timeout" 2>/dev/null; then args+=(--timeout "${T_TEST:-300}"); fi
[ "${INTRA_COMPILE:-0}" = 1 ] || export MDN_CHUNK_COMPILE=0
export MDN_POISON_OUTPUTS=1
echo "gpu_tests: $(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1), pytest ${args[*]} $*" | tee "$O/gpu_tests.txt"
timeout -k 10 "${T_ALL:-540}" "$PY" -m pytest "${args[@]}" "$@" >> "$O/gpu_tests.txt" 2>&1
rc=$?
echo "gpu_tests: rc $rc" | tee -a "$O/gpu_tests.txt"
tail -25 "$O/gpu_tests.txt"
exit $rc
