#!/usr/bin/env bash
# MQAR accuracy grid on one GPU within ~8 minutes (default: sweeps/mqar-h100.toml, 180 points, on one H100).
#
# The grid is the Zoology Figure-2 grid of sweeps/mqar.toml: vocabulary 8192; (length, pairs) in (128, 8),
# (256, 16), (512, 64); widths 64, 128, 256; 2 layers; 4 learning rates; every run also tested on (1024, 256);
# models MDN (trig, clamp, none), GDN and the Transformer. sweeps/mqar-h100.toml cuts the training length to
# 12 s per point (cosine fitted to the time, early stop at 0.99) and the test sets to 1,000 examples: say so next
# to any number this produces.
#
# `mdnctl sweep` runs one worker per GPU, and these models are far too small to fill an H100, so the points are
# dealt into WORKERS shards and each shard runs in its own `mdnctl run-shard --sweep-file` on the same GPU: the
# rows are exactly those of `mdnctl sweep` (launcher, warm worker, probe, failure rows).
#
# Usage:   scripts/gpu_mqar.sh
#          SWEEP=sweeps/mqar.toml WORKERS=8 HARD_S=36000 scripts/gpu_mqar.sh     # the full grid (hours)
# Env:     SWEEP (sweeps/mqar-h100.toml), OUT (results/<sweep name>), WORKERS (8), HARD_S (450: stop every
#          worker after this many seconds; unfinished points have no row and the summary counts them),
#          RESUME (1: keep OUT's rows and run only points without an ok row: a grid over several calls),
#          MDN_CUDA_MEMORY_FRACTION (0.95 / WORKERS: each worker's cap on the GPU's memory),
#          MDN_FLA_BYPASS_HOPPER_GUARD (1: let fla's GDN backward run on Hopper with Triton < 3.7.1; its rows
#          then carry the dk caveat; 0: GDN fails there), MDNCTL (bin/mdnctl), MDN_PYTHON (.venv/bin/python)
# Needs:   bin/mdnctl (make build; carry it if the GPU machine has no Go), the mdn package, and fla for GDN
#          (GDN points are "unavailable" without it).
# Output:  $OUT/rows-*.jsonl (one row per point), $OUT/results.jsonl (merged, for `mdnctl report`),
#          $OUT/summary.md (best accuracy over learning rates per model, split and width; also on stdout).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

SWEEP=${SWEEP:-sweeps/mqar-h100.toml}
NAME=$(sed -n 's/^name *= *"\(.*\)".*/\1/p' "$SWEEP" | head -1)
OUT=${OUT:-results/${NAME:-mqar}}
WORKERS=${WORKERS:-8}
HARD_S=${HARD_S:-450}
export MDN_FLA_BYPASS_HOPPER_GUARD=${MDN_FLA_BYPASS_HOPPER_GUARD:-1}
PY=${MDN_PYTHON:-$ROOT/.venv/bin/python}
[ -x "$PY" ] || PY=$(command -v python3)
export MDN_PYTHON=$PY
MDNCTL=${MDNCTL:-$ROOT/bin/mdnctl}
if [ ! -x "$MDNCTL" ]; then
  command -v go >/dev/null || { echo "gpu_mqar: no $MDNCTL and no Go toolchain: run 'make build' and carry bin/mdnctl" >&2; exit 2; }
  go build -o "$ROOT/bin/mdnctl" ./cmd/mdnctl
  MDNCTL=$ROOT/bin/mdnctl
fi

T0=$(date +%s)
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null | sed 's/^/gpu: /' || true
"$MDNCTL" sweep --plan "$SWEEP" --json >"$OUT/plan.json"
resume=(); [ "${RESUME:-0}" = 1 ] && resume=(--resume)
(cd triton && "$PY" -m mdn.tasks.mqar_grid shards "$OUT/plan.json" --out "$OUT" --shards "$WORKERS" "${resume[@]}")

# Each worker may cache at most its share of the GPU's memory (mdn.runner: MDN_CUDA_MEMORY_FRACTION); without a cap,
# 8 workers' cached blocks ran the 80 GB card out of memory (4 of 89 points, 2026-11-27).
export MDN_CUDA_MEMORY_FRACTION=${MDN_CUDA_MEMORY_FRACTION:-$(awk -v w="$WORKERS" 'BEGIN { printf "%.3f", 0.95 / w }')}
# One Triton cache for all workers, so a kernel compiled by one is loaded by the others.
export TRITON_CACHE_DIR=${TRITON_CACHE_DIR:-$OUT/triton-cache}
export CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES-0}
pids=()
for shard in "$OUT"/shard-*.jsonl; do
  i=${shard##*/shard-}; i=${i%.jsonl}
  timeout -s TERM -k 15 "$HARD_S" "$MDNCTL" run-shard --sweep-file "$SWEEP" --shard-file "$shard" \
    --out "$OUT/rows-$i.jsonl" --gpus slurm >"$OUT/worker-$i.log" 2>&1 &
  pids+=($!)
done
fail=0
for p in "${pids[@]}"; do wait "$p" || fail=$((fail + 1)); done
[ "$fail" -gt 0 ] && echo "gpu_mqar: $fail worker(s) exited non-zero or hit HARD_S=${HARD_S}s (see $OUT/worker-*.log)" >&2

(cd triton && "$PY" -m mdn.tasks.mqar_grid summary "$OUT") | tee "$OUT/summary.md"
echo "gpu_mqar: $(( $(date +%s) - T0 ))s wall; rows in $OUT/results.jsonl"
