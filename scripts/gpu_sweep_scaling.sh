#!/usr/bin/env bash
# Does a sweep scale over the GPUs of one node (issue 4: 2 GPUs in <= 0.6x the 1-GPU time)? One device call:
#   1. `mdnctl sweep SWEEP --gpus 0,1,...` (all GPUs) into $R/all, with empty kernel caches;
#   2. `mdnctl sweep SWEEP --gpus 0` into $R/one, with the caches the first run filled.
# The order favours the 1-GPU run (it compiles and autotunes nothing), so the printed ratio is an upper bound.
# Each run stops starting points after MAX_TIME (default 4m); a run that did not finish is reported as such and
# its ratio is not printed. The official MDN kernel is left out unless MDN_OFFICIAL_PATH is set (its first-call
# autotuning takes minutes per shape); its points are then `unavailable` rows.
#
#   bash scripts/gpu_sweep_scaling.sh                        # sweeps/baselines.toml
#   MAX_TIME=8m bash scripts/gpu_sweep_scaling.sh sweeps/chunk_sizes.toml
set -uo pipefail
cd "$(dirname "$0")/.."
SWEEP=${1:-sweeps/baselines.toml}
R=${OUT:-$PWD/results/sweep_scaling}
MAX_TIME=${MAX_TIME:-4m}
PY=${MDN_PYTHON:-$PWD/.venv/bin/python}
[ -x "$PY" ] || PY=$(command -v python3)
export MDN_PYTHON=$PY
[ -x bin/mdnctl ] || go build -o bin/mdnctl ./cmd/mdnctl
NGPU=$(nvidia-smi -L 2>/dev/null | wc -l)
[ "$NGPU" -ge 2 ] || { echo "gpu_sweep_scaling: needs 2+ GPUs, found $NGPU" >&2; exit 2; }
ALL=$(seq -s, 0 $((NGPU - 1)))
export TRITON_CACHE_DIR=${TRITON_CACHE_DIR:-/tmp/sweep_scaling_triton}
mkdir -p "$R"
declare -A secs
for run in all one; do
  gpus=$ALL; [ $run = one ] && gpus=0
  t0=$(date +%s.%N)
  bin/mdnctl sweep "$SWEEP" --gpus "$gpus" --out "$R/$run" --max-time "$MAX_TIME" --quiet > "$R/$run.log" 2>&1
  rc=$?
  secs[$run]=$("$PY" -c "import sys; print(round(float(sys.argv[1]) - float(sys.argv[2]), 1))" "$(date +%s.%N)" "$t0")
  echo "$run ($gpus): rc $rc, ${secs[$run]} s, $(wc -l < "$R/$run/results.jsonl" 2>/dev/null || echo 0) rows"
  tail -3 "$R/$run.log"
done
planned=$(bin/mdnctl sweep --plan --json "$SWEEP" | "$PY" -c 'import json,sys; print(len(json.load(sys.stdin)))')
done_all=$(wc -l < "$R/all/results.jsonl" 2>/dev/null || echo 0)
done_one=$(wc -l < "$R/one/results.jsonl" 2>/dev/null || echo 0)
if [ "$done_all" -ge "$planned" ] && [ "$done_one" -ge "$planned" ]; then
  echo "$NGPU GPUs / 1 GPU wall time: $("$PY" -c "import sys; print(round(float(sys.argv[1]) / float(sys.argv[2]), 3))" "${secs[all]}" "${secs[one]}") ($planned points each)"
else
  echo "not comparable: $planned points planned, $done_all rows on $NGPU GPUs, $done_one on 1 (MAX_TIME=$MAX_TIME)"
fi
