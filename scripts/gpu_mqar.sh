#!/usr/bin/env bash
# MQAR accuracy grid on the GPUs of one node within one device call (default: sweeps/mqar-budget.toml, on one H100).
#
# The grid is the Zoology Figure-2 grid of sweeps/mqar.toml: vocabulary 8192; (length, pairs) in (128, 8),
# (256, 16), (512, 64); widths 64, 128, 256; 2 layers; every run also tested on (1024, 256); models MDN (trig,
# clamp, none), GDN and the Transformer. sweeps/mqar-budget.toml trains each point for a fixed number of optimizer
# steps (early stop at 0.99), 2 learning rates instead of 4, 1,000 test examples, and lists the most informative
# points first (width 128: MDN trig, GDN, Transformer on all three splits): say so next to any number it gives.
#
# `mdnctl sweep` runs one worker per GPU, and these models are far too small to fill an H100, so the points are
# dealt into WORKERS shards and each shard runs in its own `mdnctl run-shard --sweep-file` on the same GPU: the
# rows are exactly those of `mdnctl sweep` (launcher, warm worker, probe, failure rows). Shard i holds blocks
# i, i+WORKERS, ... of the plan (a block: the learning rates of one cell), so the workers go through the sweep
# file roughly in its order and a time-limited call finishes its first points.
#
# Usage:   scripts/gpu_mqar.sh [SWEEP_FILE]
#          RESUME=1 HARD_S=540 bash scripts/gpu_mqar.sh sweeps/mqar-budget.toml   # continue in the next call
#          SWEEP=sweeps/mqar.toml HARD_S=36000 scripts/gpu_mqar.sh                  # the full grid (hours)
# Env:     SWEEP (the first argument, else sweeps/mqar-budget.toml), OUT (results/<sweep name>), WORKERS (9:
#          the first 9 points of mqar-budget.toml, one per worker, in the first round; in all, over every GPU),
#          GPUS (the GPU ids to deal the workers over, round-robin; default all that nvidia-smi lists),
#          HARD_S (540: the script's wall-time limit; the workers are stopped 20 s before it; unfinished points
#          have no row and the summary counts them), RESUME (1: keep OUT's rows and run only points without an ok row: a grid over several
#          calls), MDN_CUDA_MEMORY_FRACTION (0.95 / WORKERS: each worker's cap on the GPU's memory),
#          MDN_CHUNK_COMPILE (0: the MDN op's intra-chunk part runs eager; torch.compile of it costs about a minute
#          per worker, shape and grad mode, which a budget of ~1 minute per point cannot pay),
#          TRITON_CACHE_AUTOTUNING (1: autotune results go to the shared Triton cache, so fla's kernels are tuned
#          once per shape, not once per worker), OMP_NUM_THREADS (1 per worker),
#          BLOCK (0: shards deal whole learning-rate blocks, which share a warm worker's data; 1: single points,
#          so the last points of a grid spread over every worker instead of queueing behind their block),
#          PLAN_SLICE ("a:b": only points a..b-1 of the plan, e.g. two calls on disjoint GPUs; default all),
#          MDN_FLA_BYPASS_HOPPER_GUARD (1: let fla's GDN backward run on Hopper with Triton < 3.7.1; its rows
#          then carry the dk caveat; 0: GDN fails there), MDNCTL (bin/mdnctl), MDN_PYTHON (.venv/bin/python)
# Needs:   bin/mdnctl (make build; carry it if the GPU machine has no Go), the mdn package, and fla for GDN
#          (GDN points are "unavailable" without it).
# Output:  $OUT/rows-*.jsonl (one row per point), $OUT/results.jsonl (merged, for `mdnctl report`),
#          $OUT/summary.md (best accuracy over learning rates per model, split and width; also on stdout).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
T0=$(date +%s)

SWEEP=${1:-${SWEEP:-sweeps/mqar-budget.toml}}
[ -f "$SWEEP" ] || { echo "gpu_mqar: no sweep file $SWEEP" >&2; exit 2; }
NAME=$(sed -n 's/^name *= *"\(.*\)".*/\1/p' "$SWEEP" | head -1)
OUT=${OUT:-results/${NAME:-mqar}}
WORKERS=${WORKERS:-9}
HARD_S=${HARD_S:-540}
export MDN_FLA_BYPASS_HOPPER_GUARD=${MDN_FLA_BYPASS_HOPPER_GUARD:-1}
export MDN_CHUNK_COMPILE=${MDN_CHUNK_COMPILE:-0}
export TRITON_CACHE_AUTOTUNING=${TRITON_CACHE_AUTOTUNING:-1}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
PY=${MDN_PYTHON:-$ROOT/.venv/bin/python}
[ -x "$PY" ] || PY=$(command -v python3)
export MDN_PYTHON=$PY
MDNCTL=${MDNCTL:-$ROOT/bin/mdnctl}
if [ ! -x "$MDNCTL" ]; then
  command -v go >/dev/null || { echo "gpu_mqar: no $MDNCTL and no Go toolchain: run 'make build' and carry bin/mdnctl" >&2; exit 2; }
  go build -o "$ROOT/bin/mdnctl" ./cmd/mdnctl
  MDNCTL=$ROOT/bin/mdnctl
fi


mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null | sed 's/^/gpu: /' || true
"$MDNCTL" sweep --plan "$SWEEP" --json >"$OUT/plan.json"
if [ -n "${PLAN_SLICE:-}" ]; then
  # only points [a, b) of the plan (python slice syntax "a:b"), so two calls on disjoint GPUs never run one point twice
  "$PY" - "$OUT/plan.json" "$PLAN_SLICE" <<'PYEOF'
import json, sys
path, spec = sys.argv[1], sys.argv[2]
a, _, b = spec.partition(":")
try:
    part = slice(int(a) if a else None, int(b) if b else None)
except ValueError:
    sys.exit(f"gpu_mqar: PLAN_SLICE={spec!r}: expected 'a:b' with integers a, b (either may be empty)")
points = json.load(open(path))
json.dump(points[part], open(path, "w"))
print(f"gpu_mqar: PLAN_SLICE={spec}: {len(points[part])} of {len(points)} points")
PYEOF
fi
resume=(); [ "${RESUME:-0}" = 1 ] && resume=(--resume)
(cd triton && "$PY" -m mdn.tasks.mqar_grid shards "$OUT/plan.json" --out "$OUT" --shards "$WORKERS" --block "${BLOCK:-0}" "${resume[@]}")

# The GPUs: GPUS (comma-separated ids; default every GPU nvidia-smi lists, else 0). Shard i runs on GPU
# GPUS[i % len(GPUS)], so WORKERS shards are dealt round-robin over the GPUs (on a 4-GPU node, WORKERS=24 runs six
# per GPU).
if [ -z "${GPUS:-}" ]; then
  n=$(nvidia-smi -L 2>/dev/null | wc -l)
  GPUS=$(seq -s, 0 $(( (n > 0 ? n : 1) - 1 )))
fi
IFS=, read -r -a gpu_ids <<<"$GPUS"
per_gpu=$(( (WORKERS + ${#gpu_ids[@]} - 1) / ${#gpu_ids[@]} ))
echo "gpu_mqar: $WORKERS workers over GPUs $GPUS ($per_gpu per GPU at most)"
# Each worker may cache at most its share of its GPU's memory (mdn.runner: MDN_CUDA_MEMORY_FRACTION); without a
# cap, 8 workers' cached blocks ran the 80 GB card out of memory (4 of 89 points, 2026-11-27).
export MDN_CUDA_MEMORY_FRACTION=${MDN_CUDA_MEMORY_FRACTION:-$(awk -v w="$per_gpu" 'BEGIN { printf "%.3f", 0.95 / w }')}
# One Triton cache for all workers, so a kernel compiled by one is loaded by the others.
export TRITON_CACHE_DIR=${TRITON_CACHE_DIR:-$OUT/triton-cache}
# HARD_S bounds the whole script: the workers get what is left of it after the set-up, less 20 s for the kill
# grace and the summary.
left=$(( HARD_S - ($(date +%s) - T0) - 20 ))
[ "$left" -gt 30 ] || { echo "gpu_mqar: HARD_S=${HARD_S}s leaves ${left}s for the workers" >&2; exit 2; }
pids=()
for shard in "$OUT"/shard-*.jsonl; do
  i=${shard##*/shard-}; i=${i%.jsonl}
  CUDA_VISIBLE_DEVICES=${gpu_ids[$(( 10#$i % ${#gpu_ids[@]} ))]} \
  timeout -s TERM -k 10 "$left" "$MDNCTL" run-shard --sweep-file "$SWEEP" --shard-file "$shard" \
    --out "$OUT/rows-$i.jsonl" --gpus slurm >"$OUT/worker-$i.log" 2>&1 &
  pids+=($!)
done
fail=0
for p in "${pids[@]}"; do wait "$p" || fail=$((fail + 1)); done
[ "$fail" -gt 0 ] && echo "gpu_mqar: $fail worker(s) exited non-zero or hit their ${left}s limit (see $OUT/worker-*.log)" >&2

(cd triton && "$PY" -m mdn.tasks.mqar_grid summary "$OUT") | tee "$OUT/summary.md"
echo "gpu_mqar: $(( $(date +%s) - T0 ))s wall; rows in $OUT/results.jsonl"
