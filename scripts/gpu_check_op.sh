#!/usr/bin/env bash
# One device call that checks the chunk op on a GPU, then (optionally) benchmarks it.
#  1. the ops test set (not slow) with the intra part in eager torch (MDN_CHUNK_COMPILE=0): every kernel and
#     the math, including the GPU-only tests (T = 1000/4096 bf16 for K in {32, 64, 100, 128, 256}, K=256/V=512
#     grads, T = 65536, fp32 at 1e-5 for K up to 256 and chunk 128, every shipped scan tile config);
#  2. the GPU shape tests (T = 1000, fp32) again with the torch.compile'd intra part (MDN_CHUNK_COMPILE=1, the
#     CUDA default), and the inductor fullgraph test;
#  3. with --bench [bench_op.py args]: the op benchmark (default: --phases --T 4096).
# Each phase has its own time limit (GPU_CHECK_T1/T2/T3 seconds, default 420/150/240) so that a slow phase still
# leaves a summary. On a fresh machine Triton compiles every kernel variant first: fp32 K=256 scan kernels take
# ~30-40 s each and a full phase 1 needs several minutes, so run the tests and --bench-only in separate device calls;
# GPU_CHECK_K1 / GPU_CHECK_K2 replace the pytest -k selections of phases 1 and 2 (phase 2 skips if K2 is 'none').
#
#   bash scripts/gpu_check_op.sh                              # tests only
#   bash scripts/gpu_check_op.sh --bench                      # tests, then the benchmark
#   bash scripts/gpu_check_op.sh --bench-only --phases --T 4096,8192
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
PY=${MDN_PYTHON:-$ROOT/.venv/bin/python}
[ -x "$PY" ] || PY=python3
cd "$ROOT/triton"
"$PY" -c 'import torch, triton; assert torch.cuda.is_available(), "no CUDA device"; print("device:", torch.cuda.get_device_name(), "| torch", torch.__version__, "| triton", triton.__version__)' || exit 1
unset TRITON_INTERPRET
mode=${1:-}
[ $# -gt 0 ] && shift
status=0
log=$(mktemp)
run_phase() {  # run_phase SECONDS CMD...: run with a time limit, print the log without warnings, track status
    local limit=$1; shift
    timeout "$limit" "$@" >"$log" 2>&1
    local rc=$?
    grep -v "Warning\|warnings.warn\|^  \|^$" "$log" | tail -n 40
    [ $rc = 124 ] && echo "!! timed out after ${limit}s"
    [ $rc = 0 ] || status=1
}
if [ "$mode" != "--bench-only" ]; then
    export MDN_POISON_OUTPUTS=1
    echo "== 1. ops tests, eager intra (${GPU_CHECK_K1:-all})"
    MDN_CHUNK_COMPILE=0 run_phase "${GPU_CHECK_T1:-420}" "$PY" -m pytest tests/ops/test_chunk.py \
        tests/ops/test_compile.py -q -m "not slow" -rfs --durations=5 -p no:cacheprovider -k "${GPU_CHECK_K1:-}"
    [ "${GPU_CHECK_K2:-}" = none ] || {
    echo "== 2. GPU shape tests + inductor fullgraph, compiled intra"
    MDN_CHUNK_COMPILE=1 MDN_SLOW=1 run_phase "${GPU_CHECK_T2:-150}" "$PY" -m pytest tests/ops/test_chunk.py \
        tests/ops/test_compile.py -q -rf -p no:cacheprovider --durations=5 \
        -k "${GPU_CHECK_K2:-(gpu_bf16_shapes and 1000) or gpu_fp32_shapes or inductor}"; }
    unset MDN_POISON_OUTPUTS
fi
if [ "$mode" = "--bench" ] || [ "$mode" = "--bench-only" ]; then
    echo "== 3. benchmark"
    mkdir -p "$ROOT/results"
    args=("$@")
    [ ${#args[@]} -gt 0 ] || args=(--phases --T 4096)
    run_phase "${GPU_CHECK_T3:-240}" "$PY" mdn/bench/bench_op.py "${args[@]}" --out "$ROOT/results/bench_op.jsonl"
    [ -n "${OUT:-}" ] && cp "$ROOT/results/bench_op.jsonl" "$OUT/" 2>/dev/null
fi
echo "gpu_check_op: status $status"
exit $status
