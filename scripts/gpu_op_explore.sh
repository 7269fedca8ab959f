#!/usr/bin/env bash
# One device call (~9.5 min on a fresh H100) that explores the op's speed: every scan kernel by itself over tile
# configs, load paths and reverse-scan ablations (bench_scan.py, variants compiled in parallel first), the whole op
# with its phase split and accuracy (bench_op.py --phases --check), then the side by side with the official kernel and
# fla GDN (scripts/bench_ops.py; the official autotunes on first use: bring its cache back, see below).
# Results go to $OUT (or results/explore): scan.jsonl, op.jsonl, ops.jsonl, the logs, and autotune_cache.tgz (the
# autotune results fla/official cached under $TRITON_CACHE_DIR with FLA_CACHE_RESULTS=1; unpack it into .cache/ here so
# the next call skips the autotuning).
#   SCAN_CONFIGS="32,4 64,4" SCAN_LOADS=ptr,tma SCAN_ABLATE=0,1,2,4,8,15 OPS_SHAPES=h6k256v512 OPS_T=4096 \
#       bash scripts/gpu_op_explore.sh
set -uo pipefail
cd "$(dirname "$0")/.."
O=${OUT:-$PWD/results/explore}
mkdir -p "$O"
PY=${MDN_PYTHON:-python3}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$O/gpu.txt" 2>&1
t0=$(date +%s)
timeout "${T_SCAN:-260}" "$PY" triton/mdn/bench/bench_scan.py --configs "${SCAN_CONFIGS:-32,4 64,4 32,8 16,4}" \
    --loads "${SCAN_LOADS:-ptr,tma}" --ablate "${SCAN_ABLATE:-0,1,2,4,8,15}" --jobs "${JOBS:-8}" \
    --out "$O/scan.jsonl" > "$O/scan.txt" 2>&1; echo "scan rc $? $(( $(date +%s) - t0 )) s" >> "$O/steps.txt"
timeout "${T_OP:-110}" "$PY" triton/mdn/bench/bench_op.py --phases --check --T "${OP_T:-4096}" \
    --shapes "${OP_SHAPES:-h6k256v512}" --out "$O/op.jsonl" > "$O/op.txt" 2>&1
echo "op rc $? $(( $(date +%s) - t0 )) s" >> "$O/steps.txt"
timeout "${T_OPS:-170}" "$PY" scripts/bench_ops.py --impls "${OPS_IMPLS:-mdn,official,gdn}" \
    --shapes "${OPS_SHAPES:-h6k256v512}" --T "${OPS_T:-4096}" --out "$O/ops.jsonl" > "$O/ops.txt" 2>&1
echo "ops rc $? $(( $(date +%s) - t0 )) s" >> "$O/steps.txt"
[ -n "${TRITON_CACHE_DIR:-}" ] && (cd "$TRITON_CACHE_DIR" && find . -name "*.autotune.json" | tar czf "$O/autotune_cache.tgz" -T -)
exit 0
