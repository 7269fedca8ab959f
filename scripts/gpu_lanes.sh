#!/usr/bin/env bash
# Run one shell command per GPU, side by side, each on its own GPU (CUDA_VISIBLE_DEVICES=i for the i-th argument)
# with its own Triton cache seeded with this card type's autotune results (fla's kernels, the official ones), so
# that A/B timings within a lane are on one GPU and lanes do not wait for each other's compiles.
#
#   OUT=/tmp/o HARD_S=540 bash scripts/gpu_lanes.sh \
#     'cd triton && python3 mdn/bench/bench_op.py --shapes h16k128v128 --T 4096 --phases --env-sets "default|MDN_SCAN_STAGES=2"' \
#     'bash scripts/gpu_tests.sh'
#
# Each command runs from the repository root under `timeout HARD_S - 15` with $LANE_OUT (its own folder in OUT)
# and $LANE_LEFT (seconds left for it) exported; its output goes to OUT/laneI/lane.log. At the end OUT/laneI.tgz
# holds the lane's folder (the device tool returns few files), OUT/lanes.txt each lane's exit status and time, and
# OUT/autotune_<card>.tgz every lane's autotune results (also those of a lane its timeout stopped).
# Env: OUT (default results/lanes), HARD_S (default 540), AUTOTUNE_IN (default .cache/autotune_<card>.tgz).
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
T0=$(date +%s)
HARD_S=${HARD_S:-540}
O=${OUT:-$ROOT/results/lanes}
[ $# -ge 1 ] || { echo "gpu_lanes: give one command per GPU" >&2; exit 2; }
n_gpu=$(nvidia-smi --query-gpu=index --format=csv,noheader 2>/dev/null | wc -l)
[ "$#" -le "$n_gpu" ] || { echo "gpu_lanes: $# commands for $n_gpu GPUs" >&2; exit 2; }
case $(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1) in
  *H100*) card=h100 ;; *H200*) card=h200 ;; *) card=other ;;
esac
AUTOTUNE_IN=${AUTOTUNE_IN:-$ROOT/.cache/autotune_$card.tgz}
[ -f "$AUTOTUNE_IN" ] || AUTOTUNE_IN=$ROOT/.cache/autotune_cache.tgz
mkdir -p "$O"
nvidia-smi --query-gpu=index,name --format=csv,noheader | tee "$O/lanes.txt"
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}

i=0
pids=()
for cmd in "$@"; do
  d=$O/lane$i
  mkdir -p "$d" "$ROOT/results/lane_cache/$i"
  [ -f "$AUTOTUNE_IN" ] && tar xzf "$AUTOTUNE_IN" -C "$ROOT/results/lane_cache/$i"
  (
    export CUDA_VISIBLE_DEVICES=$i TRITON_CACHE_DIR=$ROOT/results/lane_cache/$i LANE_OUT=$d
    export LANE_LEFT=$(( HARD_S - 15 - ($(date +%s) - T0) ))
    start=$(date +%s)
    echo "\$ $cmd" > "$d/lane.log"
    timeout -k 10 "$LANE_LEFT" bash -c "$cmd" >> "$d/lane.log" 2>&1
    rc=$?
    echo "lane $i rc $rc in $(( $(date +%s) - start )) s: $cmd" >> "$O/lanes.txt"
  ) &
  pids+=($!)
  i=$((i + 1))
done
wait "${pids[@]}"
for ((j = 0; j < i; j++)); do
  tar czf "$O/lane$j.tgz" -C "$O" "lane$j" && rm -rf "${O:?}/lane$j"
done
# Every lane's autotune results (fla's and the official kernels' *.autotune.json), collected here rather than by the
# lanes' own commands, which a timeout kills first (the thirteenth session lost 186 s of GDN autotuning that way).
# Copy OUT/autotune_<card>.tgz to .cache/ to seed the next call.
at=$(mktemp -d)
for ((j = 0; j < i; j++)); do
  (cd "$ROOT/results/lane_cache/$j" && find . -name "*.autotune.json" -print0 | xargs -0 -r cp --parents -t "$at")
done
(cd "$at" && find . -name "*.autotune.json" | tar czf "$O/autotune_$card.tgz" -T -)
echo "autotune results: $(cd "$at" && find . -name "*.autotune.json" | wc -l) files in $O/autotune_$card.tgz" >> "$O/lanes.txt"
rm -rf "$at"
cat "$O/lanes.txt"
