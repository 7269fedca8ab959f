#!/usr/bin/env bash
# Does a sweep scale over the GPUs of one node (issue 4: 2 GPUs in <= 0.6x the 1-GPU time)? One device call:
#   1. `mdnctl sweep SWEEP --gpus 0,1,...` (all GPUs) into $RESULTS_DIR/all, with empty kernel caches (Triton and
#      TorchInductor caches in fresh folders unless TRITON_CACHE_DIR / TORCHINDUCTOR_CACHE_DIR are given);
#   2. `mdnctl sweep SWEEP --gpus 0` into $RESULTS_DIR/one, with the caches the first run filled.
# The order favours the 1-GPU run: the multi-GPU run is cold (every worker compiles and autotunes its kernels,
# each GPU's worker for the points it gets), the 1-GPU run is warm (its compiles are disk-cache hits). So the
# printed ratio (all / one) is an upper bound of the ratio of two equally cold (or equally warm) runs.
#
# Time: HARD_S (default 540 s, under the device call's 600 s) bounds the whole script, build and plan included.
# The multi-GPU run may use FIRST_PCT percent (default 45) of what is left when it starts, the 1-GPU run all
# that is left then. Each run gets `--max-time` = its budget - GRACE_S (default 60 s: a point in flight may
# finish) and is stopped (SIGTERM, then SIGKILL 10 s later) at its budget; MAX_TIME (a Go duration), if set,
# caps --max-time further. If the multi-GPU run did not complete every point, the 1-GPU run is skipped (it could
# not finish in what is left, and no ratio could be printed); the script says so. The ratio is printed only when
# both runs completed every planned point.
#
# Results are written as the runs go, under RESULTS_DIR (default: $OUT when set, the device tool's folder that
# comes back even if the call is cut off; else results/sweep_scaling): all/results.jsonl, one/results.jsonl (one
# fsynced row per point), all.log, one.log and summary.txt (these lines). The official MDN kernel is left out
# unless MDN_OFFICIAL_PATH is set (its first-call autotuning takes minutes per shape); its points are then
# `unavailable` rows.
#
#   bash scripts/gpu_sweep_scaling.sh                                  # sweeps/baselines.toml
#   HARD_S=1100 bash scripts/gpu_sweep_scaling.sh sweeps/chunk_sizes.toml
set -uo pipefail
cd "$(dirname "$0")/.."
T0=$(date +%s)
SWEEP=${1:-sweeps/baselines.toml}
if [ -n "${RESULTS_DIR:-}" ]; then R=$RESULTS_DIR
elif [ -n "${OUT:-}" ]; then R=$OUT
else R=$PWD/results/sweep_scaling; fi
HARD_S=${HARD_S:-540}
FIRST_PCT=${FIRST_PCT:-45}
GRACE_S=${GRACE_S:-60}
MAX_TIME=${MAX_TIME:-}
PY=${MDN_PYTHON:-$PWD/.venv/bin/python}
[ -x "$PY" ] || PY=$(command -v python3)
export MDN_PYTHON=$PY
mkdir -p "$R"
SUMMARY=$R/summary.txt
: > "$SUMMARY"
say() { echo "$*" | tee -a "$SUMMARY"; }
left() { echo $((HARD_S - ($(date +%s) - T0))); }

[ -x bin/mdnctl ] || go build -o bin/mdnctl ./cmd/mdnctl || { say "gpu_sweep_scaling: build failed"; exit 2; }
NGPU=$(nvidia-smi -L 2>/dev/null | wc -l)
[ "$NGPU" -ge 2 ] || { say "gpu_sweep_scaling: needs 2+ GPUs, found $NGPU"; exit 2; }
ALL=$(seq -s, 0 $((NGPU - 1)))
planned=$(bin/mdnctl sweep --plan --json "$SWEEP" | "$PY" -c 'import json,sys; print(len(json.load(sys.stdin)))') \
  || { say "gpu_sweep_scaling: cannot plan $SWEEP"; exit 2; }
export TRITON_CACHE_DIR=${TRITON_CACHE_DIR:-$(mktemp -d /tmp/sweep_scaling_triton.XXXXXX)}
export TORCHINDUCTOR_CACHE_DIR=${TORCHINDUCTOR_CACHE_DIR:-$(mktemp -d /tmp/sweep_scaling_inductor.XXXXXX)}
say "gpu_sweep_scaling: $SWEEP, $planned points, $NGPU GPUs, HARD_S=$HARD_S (${FIRST_PCT}% of what is left to the $NGPU-GPU run), rows in $R"

declare -A secs complete
rows() { if [ -f "$1" ]; then wc -l < "$1"; else echo 0; fi; }
for run in all one; do
  gpus=$ALL; [ $run = one ] && gpus=0
  complete[$run]=0
  if [ $run = one ] && [ "${complete[all]}" != 1 ]; then
    say "one (0): skipped: the $NGPU-GPU run did not complete, so no ratio can be formed (raise HARD_S or use a smaller sweep)"
    break
  fi
  l=$(left)
  budget=$l
  [ $run = all ] && budget=$((l * FIRST_PCT / 100))
  if [ "$budget" -le $((GRACE_S + 10)) ]; then
    say "$run ($gpus): skipped: ${budget}s of budget left (HARD_S=$HARD_S, GRACE_S=$GRACE_S)"
    break
  fi
  maxt=$((budget - GRACE_S))s
  [ -n "$MAX_TIME" ] && maxt=$MAX_TIME
  t0=$(date +%s.%N)
  timeout -k 10 "$budget" bin/mdnctl sweep "$SWEEP" --gpus "$gpus" --out "$R/$run" --max-time "$maxt" --quiet > "$R/$run.log" 2>&1
  rc=$?
  secs[$run]=$("$PY" -c "import sys; print(round(float(sys.argv[1]) - float(sys.argv[2]), 1))" "$(date +%s.%N)" "$t0")
  n=$(rows "$R/$run/results.jsonl")
  how="rc $rc"
  [ $rc -eq 124 ] || [ $rc -eq 137 ] && how="stopped at its ${budget}s budget (rc $rc)"
  say "$run ($gpus): $how, ${secs[$run]} s (budget ${budget}s, --max-time $maxt), $n of $planned rows"
  tail -3 "$R/$run.log" | tee -a "$SUMMARY"
  [ $rc -eq 0 ] && [ "$n" -ge "$planned" ] && complete[$run]=1
done
if [ "${complete[all]:-0}" = 1 ] && [ "${complete[one]:-0}" = 1 ]; then
  say "$NGPU GPUs / 1 GPU wall time: $("$PY" -c "import sys; print(round(float(sys.argv[1]) / float(sys.argv[2]), 3))" "${secs[all]}" "${secs[one]}") ($planned points each; the 1-GPU run was warm, so this is an upper bound)"
else
  say "not comparable: $planned points planned, $(rows "$R/all/results.jsonl") rows on $NGPU GPUs, $(rows "$R/one/results.jsonl") on 1 (HARD_S=$HARD_S)"
fi
