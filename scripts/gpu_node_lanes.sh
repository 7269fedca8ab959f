#!/usr/bin/env bash
# Several device jobs side by side on one 4-GPU node, in lanes of GPUs, so a 30-minute device budget buys four
# GPUs' worth of work. Made for two calls on one held machine (PHASE=1, then PHASE=2 within its idle window); what
# a lane keeps between calls lives in ignored folders of the tree (results/...), which the device machine keeps
# while it is held.
#
# Lanes (GPU ids are those of the node; the defaults of each PHASE in brackets):
#   sweepone GPU 0, sweepall GPUs SWEEP_ALL_GPUS (1,2)  [PHASE 1 and 3, on a FRESH machine] issue 4: the 1-GPU and
#                                 the 2-GPU run of sweeps/baselines.toml side by side, each from its own empty
#                                 compile caches (Triton, inductor) with the same autotune results seeded from
#                                 AUTOTUNE_IN: equally cold, so the ratio includes the compile work a new machine
#                                 does. They share the CPU cores. Once both are done, GPUs 1 and 2 time the official
#                                 kernel next to ours (bench_ops.py --impls official,mdn --T 4096) and profile ours
#                                 (bench_op.py --phases --profile) with what is left.
#   tiles  GPU TILES_GPU (3)      [PHASE 1] issue 5: the scan tiles (MDN_SCAN_CONFIG pairs, TILE_CFGS) and
#                                 MDN_SAVE_STATES=1 at the training step's shape (8192 tokens per op call),
#                                 results/tiles/tiles.jsonl, then MDN_SAVE_STATES=1 at 32768 tokens (both shapes).
#   train  GPU TRAIN_GPU (2)      [PHASE 2] issue 5: scripts/gpu_train_bench.sh (MDN, GDN, Transformer 1.3B on one
#                                 GPU), then MDN again with the tiles lane's fastest fwd+bwd knobs.
#   tests  GPU TESTS_GPU (3)      [PHASE 2] scripts/gpu_tests.sh (pytest -m gpu over xdist workers) minus the tests
#                                 listed in results/gpu_tests/passed.txt (which it appends to).
#   mqar   GPUs MQAR_GPUS         [PHASE 2: 0,1; PHASE 3: 3] issue 6: scripts/gpu_mqar.sh sweeps/mqar-budget.toml,
#                                 RESUME=1; on a fresh machine the rows in docs/data/mqar_budget_*.jsonl count as done.
#   sweep  GPUs SWEEP_GPUS (0,1)  [LANES=sweep] the warm-cache variant of the ratio: PHASE 1 "fill" (then "one" if
#                                 the fill completed), PHASE 2 "fill2"/"one" unless complete, then "all".
#   op     GPU OP_GPU (2)         [LANES=op] PHASE 1: bench_ops.py (ours, fla GDN, the official kernel) at T = 2048,
#                                 4096, 8192 and the Triton intra part (bench_op.py --intra triton --check); PHASE 2:
#                                 the training benchmark, MDN with MDN_INTRA=triton, then the GPU tests not yet passed.
# The sweep lanes' timings are wall times of whole sweeps: the other lanes share the node's CPU cores with them
# (64 on the 4-GPU kinds), so say so next to the ratio; kernel timings (do_bench) are not affected.
#
# Every lane stops by HARD_S (default 560 s) after the start. $OUT gets one <lane>.tgz per lane (the device tool
# returns at most 8 files) and lanes.txt (each lane's exit status and seconds).
#
#   PHASE=1 bash scripts/gpu_node_lanes.sh        # first call, fresh machine
#   PHASE=2 bash scripts/gpu_node_lanes.sh        # second call, same machine (within its idle window)
#   PHASE=3 bash scripts/gpu_node_lanes.sh        # the cold sweep pair and MQAR only
# On a 2-GPU node the cold pair cannot run side by side, so it runs one after the other:
#   PHASE=4 bash scripts/gpu_node_lanes.sh        # fresh machine: the 1-GPU run on GPU 0 while GPU 1 runs the
#                                                 # 1-GPU training benchmark (GPU-bound, one process), then the
#                                                 # 2-GPU run on both from its own empty caches
#   PHASE=5 bash scripts/gpu_node_lanes.sh        # same machine: mdn-1.3b on both GPUs (FSDP2), then the GPU
#                                                 # tests on GPU 1 beside the op work (official kernel, profile)
#   PHASE=6 bash scripts/gpu_node_lanes.sh        # 2 GPUs: training A/B on GPU 0 (MDN, GDN, Transformer, then MDN
#                                                 # with each of TRAIN_AB's knobs), MQAR on GPU 1
#   PHASE=7 bash scripts/gpu_node_lanes.sh        # 2 GPUs: the official kernel's fwd+bwd next to ours and GDN on
#                                                 # GPU 0 (a whole call for its first-call autotuning), tests on GPU 1
#   PHASE=8 bash scripts/gpu_node_lanes.sh        # 4 GPUs: phases 6 and 7 at once: training A/B on GPU 0, the
#                                                 # official kernel on GPU 1, tests then the op A/B on GPU 2, MQAR
#                                                 # on GPU 3 (MQAR_GPUS)
#   PHASE=9 bash scripts/gpu_node_lanes.sh        # 4 GPUs, code A/B against a baseline package BASE_PY (default
#                                                 # .ext/base/triton: e.g. `git archive REV triton/mdn | tar x -C
#                                                 # .ext/base`), all on GPU 0, one after the other: the op (base,
#                                                 # then this tree's, profiled), training MDN and GDN 1.3B, the scan
#                                                 # tiles at the training step's 8192 tokens; MQAR on GPUs 1-3
#                                                 # (eager steps with MQAR_EAGER=1). LANES="... trainab" on a 5th
#                                                 # lane: MDN (new), GDN, MDN (base), MDN with TRAIN_TILES.
# Env: PHASE, HARD_S, LANES (a subset or other lanes), SWEEP_GPUS, SWEEP_ONE_GPUS (0,3: the 1-GPU run uses the
# first), SWEEP_ALL_GPUS, OP_GPU, TILES_GPU, TILE_CFGS, TILES_S (250), SAVE_S (120), TRAIN_GPU, TESTS_GPU, TEST_JOBS (8),
# MQAR_GPUS, MQAR_WORKERS (7 per GPU), MQAR_GRAPH_CHECK (1), MQAR_EAGER (0), BASE_PY, TRAIN_TILES, AUTOTUNE_IN (.cache/autotune_cache.tgz), AUTOTUNE_OP_IN
# (.cache/autotune_<h100|h200>.tgz of this card, else AUTOTUNE_IN), MDN_PYTHON.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
T0=$(date +%s)
PHASE=${PHASE:-1}
HARD_S=${HARD_S:-560}
SWEEP_GPUS=${SWEEP_GPUS:-0,1}
OP_GPU=${OP_GPU:-2}
TESTS_GPU=${TESTS_GPU:-3}
SWEEP_ONE_GPUS=${SWEEP_ONE_GPUS:-0,3}  # phase 3: the 1-GPU run uses the first of these (the script wants two)
TILES_GPU=${TILES_GPU:-3}
TRAIN_GPU=${TRAIN_GPU:-2}
SWEEP_ALL_GPUS=${SWEEP_ALL_GPUS:-1,2}
case ${PHASE:-1} in
  1) LANES=${LANES:-"sweepone sweepall tiles"} ;;
  2) LANES=${LANES:-"train tests mqar"}; MQAR_GPUS=${MQAR_GPUS:-0,1} ;;
  3) LANES=${LANES:-"sweepone sweepall mqar"} ;;
  4) LANES=${LANES:-"sweepone train sweepall"}; SWEEP_ONE_GPUS=0,1; TRAIN_GPU=1; SWEEP_ALL_GPUS=0,1
     SWEEP_ALL_AFTER=${SWEEP_ALL_AFTER:-"sweepone train"}; TRAIN_S=${TRAIN_S:-290} ;;
  5) LANES=${LANES:-"pair"} ;;
  6) LANES=${LANES:-"train mqar"}; TRAIN_GPU=${TRAIN_GPU_6:-0}; MQAR_GPUS=${MQAR_GPUS:-1}
     TRAIN_AB=${TRAIN_AB-"MDN_BWD_GEMM=stacked MDN_SAVE_STATES=1"} ;;
  7) LANES=${LANES:-"official tests"}; OP_GPU=0; TESTS_GPU=1 ;;
  8) LANES=${LANES:-"train official tests mqar"}; TRAIN_GPU=0; OP_GPU=1; TESTS_GPU=2; MQAR_GPUS=${MQAR_GPUS:-3}
     TRAIN_AB=${TRAIN_AB-"MDN_BWD_GEMM=stacked MDN_SAVE_STATES=1"} ;;
  9) LANES=${LANES:-"codeab mqar"}; OP_GPU=0; TRAIN_GPU=${TRAIN_GPU_9:-1}; MQAR_GPUS=${MQAR_GPUS:-1,2,3} ;;
esac
BASE_PY=${BASE_PY:-$ROOT/.ext/base/triton}
TRAIN_AB=${TRAIN_AB:-}
SWEEP_ALL_AFTER=${SWEEP_ALL_AFTER:-}
MQAR_GPUS=${MQAR_GPUS:-3}
AUTOTUNE_IN=${AUTOTUNE_IN:-$ROOT/.cache/autotune_cache.tgz}
# Op timings next to fla and the official kernel seed only autotune results tuned on this card type (the sweep
# lanes take AUTOTUNE_IN, the most complete set, whatever card tuned it: equal for both runs of the ratio).
case $(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1) in
  *H100*) card=h100 ;; *H200*) card=h200 ;; *) card=other ;;
esac
AUTOTUNE_OP_IN=${AUTOTUNE_OP_IN:-$ROOT/.cache/autotune_$card.tgz}
[ -f "$AUTOTUNE_OP_IN" ] || AUTOTUNE_OP_IN=$AUTOTUNE_IN
O=${OUT:-$ROOT/results/node_lanes}
mkdir -p "$O"
rm -f "$O/.sweepone_done"
export MDN_PYTHON=${MDN_PYTHON:-$(command -v python3)}
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
left() { echo $((HARD_S - ($(date +%s) - T0))); }
case $PHASE in 1|2|3|4|5|6|7|8|9) ;; *) echo "gpu_node_lanes: PHASE=$PHASE: expected 1 to 9" >&2; exit 2 ;; esac
rm -f "$O"/.*_done
nvidia-smi --query-gpu=index,name --format=csv,noheader | tee "$O/lanes.txt"
[ -x bin/mdnctl ] || go build -o bin/mdnctl ./cmd/mdnctl || { echo "gpu_node_lanes: no bin/mdnctl" | tee -a "$O/lanes.txt"; exit 2; }

complete() {  # RUN: has results/sweep_scaling/times.tsv a complete run of that name?
  # (fill2, fill3, ... continue the rows of fill: any of them complete means the fill is)
  awk -F'\t' -v r="$1" 'index($1, r) == 1 && $6 == 1 { ok = 1 } END { exit !ok }' results/sweep_scaling/times.tsv 2>/dev/null
}

sweep_runs() {  # RUNS D: one gpu_sweep_scaling.sh call with what is left of this phase
  local seed=(); [ -f "$AUTOTUNE_IN" ] && [ "$1" = fill ] && seed=(AUTOTUNE_IN="$AUTOTUNE_IN")
  env "${seed[@]}" RUNS="$1" GPUS_MULTI="$SWEEP_GPUS" HARD_S=$(( $(left) - 15 )) FIRST_PCT=50 GRACE_S=40 \
    RESULTS_DIR=results/sweep_scaling CACHE_ROOT=$ROOT/results/sweep_scaling_cache OUT="$2" \
    bash scripts/gpu_sweep_scaling.sh sweeps/baselines.toml >> "$2/lane.log" 2>&1
  local rc=$?
  for r in $1; do
    local rd=$r; case $r in fill*) rd=fill ;; esac
    cp "results/sweep_scaling/$rd/results.jsonl" "$2/${r}_results.jsonl" 2>/dev/null
    cp "results/sweep_scaling/$r.log" "$2/$r.log" 2>/dev/null
  done
  return $rc
}

sweep_lane() {
  local d=$O/sweep rc=0; mkdir -p "$d"
  if [ "$PHASE" = 1 ]; then
    sweep_runs fill "$d"; rc=$?
    # the caches are full: the warm 1-GPU run now, if it fits (phase 2 runs it otherwise)
    if complete fill && [ "$(left)" -gt 200 ]; then sweep_runs one "$d"; rc=$?; fi
  else
    local runs=""
    # phase 1's fill did not get through every point (fla's cold autotuning): finish filling the caches first
    complete fill || runs="fill2"
    complete one || runs="$runs one"
    sweep_runs "$runs all" "$d"; rc=$?
  fi
  return $rc
}

intra_triton() {  # DOT_PRECISION TIMEOUT_S
  MDN_INTRA_DOT=$1 timeout -k 10 "$2" "$MDN_PYTHON" triton/mdn/bench/bench_op.py --T 4096 --intra triton --check \
    --out "$d/op_intra_triton.jsonl" > "$d/op_intra_triton_$1.txt" 2>&1
  echo "intra triton $1 rc $? at $(( $(date +%s) - T0 )) s" >> "$d/steps.txt"
}

run_gpu_tests() {  # D: scripts/gpu_tests.sh with what is left, minus the tests passed in an earlier phase
  local d=$1 t=$(( $(left) - 20 ))
  [ "$t" -gt 60 ] || return 0
  local deselect=()
  if [ -f results/gpu_tests/passed.txt ]; then
    while read -r id; do deselect+=(--deselect "$id"); done < results/gpu_tests/passed.txt
  fi
  mkdir -p results/gpu_tests
  OUT=$d JOBS=${TEST_JOBS:-8} T_ALL=$t bash scripts/gpu_tests.sh "${deselect[@]}" > /dev/null 2>&1
  echo "tests rc $? at $(( $(date +%s) - T0 )) s" >> "$d/steps.txt"
  "$MDN_PYTHON" - "$d/gpu_tests.xml" >> results/gpu_tests/passed.txt <<'PYEOF'
import sys, xml.etree.ElementTree as ET
try:
    root = ET.parse(sys.argv[1]).getroot()
except Exception:
    sys.exit(0)
for tc in root.iter("testcase"):
    if not any(c.tag in ("failure", "error", "skipped") for c in tc):
        mod = tc.get("classname", "").replace(".", "/")
        print(f"{mod}.py::{tc.get('name')}")
PYEOF
}

tests_lane() {  # the whole GPU test set on its own GPU; PHASE 7, 8: then the op's knobs A/B with what is left
  local d=$O/tests opab=0; mkdir -p "$d"
  export CUDA_VISIBLE_DEVICES=$TESTS_GPU TRITON_CACHE_DIR=$ROOT/results/tests_triton_cache
  mkdir -p "$TRITON_CACHE_DIR"
  case $PHASE in 7|8) opab=1 ;; esac
  [ "$opab" = 1 ] && HARD_S=$(( HARD_S - ${OPAB_S:-170} ))  # keep time for the A/B below
  run_gpu_tests "$d"
  [ "$opab" = 1 ] || return 0
  HARD_S=$(( HARD_S + ${OPAB_S:-170} ))
  # the same op, same GPU, one after the other: default, then each knob of OP_AB (H16 K128 V128 first: the
  # triangular solves are 12 % of its fwd+bwd)
  local kv
  for kv in default ${OP_AB:-MDN_BWD_GEMM=stacked MDN_SAVE_STATES=1}; do
    [ "$(left)" -gt 45 ] || break
    (cd triton && env ${kv#default} timeout -k 10 $(( $(left) - 20 )) "$MDN_PYTHON" mdn/bench/bench_op.py \
      --shapes h16k128v128,h6k256v512 --T 4096 --phases --out "$d/opab.jsonl") >> "$d/opab.txt" 2>&1
    echo "op A/B $kv rc $? at $(( $(date +%s) - T0 )) s" >> "$d/steps.txt"
  done
}

op_lane() {
  local d=$O/op; mkdir -p "$d"
  export CUDA_VISIBLE_DEVICES=$OP_GPU TRITON_CACHE_DIR=$ROOT/results/op_triton_cache
  mkdir -p "$TRITON_CACHE_DIR"
  [ -f "$AUTOTUNE_OP_IN" ] && tar xzf "$AUTOTUNE_OP_IN" -C "$TRITON_CACHE_DIR"
  if [ "$PHASE" = 1 ]; then
    local impls=gdn,mdn; [ -d .ext/official/fla ] && impls=gdn,mdn,official
    MDN_OFFICIAL_PATH=$ROOT/.ext/official timeout -k 10 330 "$MDN_PYTHON" scripts/bench_ops.py \
      --impls "$impls" --T 2048,4096,8192 --out "$d/ops.jsonl" > "$d/ops.txt" 2>&1
    echo "ops rc $? at $(( $(date +%s) - T0 )) s" >> "$d/steps.txt"
    # the fused Triton intra part (MDN_INTRA=triton: forward and backward in the pqk form) against the default
    # (compiled torch intra, timed by bench_ops above), fp32 [C, C] dots; phase 2 tries 3xTF32 dots
    intra_triton ieee 150
  else
    OUT=$d/train timeout -k 10 300 bash scripts/gpu_train_bench.sh > "$d/train.txt" 2>&1
    echo "train rc $? at $(( $(date +%s) - T0 )) s" >> "$d/steps.txt"
    # MDN again with the Triton intra part (forward and backward), same harness and settings
    MDN_INTRA=triton MODELS=1.3b OUT=$d/train_intra_triton timeout -k 10 110 bash scripts/gpu_train_bench.sh \
      > "$d/train_intra_triton.txt" 2>&1
    echo "train intra triton rc $? at $(( $(date +%s) - T0 )) s" >> "$d/steps.txt"
    rm -rf "$d"/train/*/checkpoints "$d"/train_intra_triton/*/checkpoints
  fi
  # phase 2: the GPU tests that phase 1's tests lane did not pass
  [ "$PHASE" = 2 ] && run_gpu_tests "$d"
  (cd "$TRITON_CACHE_DIR" && find . -name '*.autotune.json' | tar czf "$d/autotune_op.tgz" -T -)
}

sweep_cold_lane() {  # RUN GPUS: one run of the sweep from empty compile caches (autotune results seeded)
  local d=$O/sweep$1; mkdir -p "$d"
  RUNS=$1 GPUS_MULTI=$2 AUTOTUNE_IN="$AUTOTUNE_IN" HARD_S=$(( $(left) - 15 )) GRACE_S=40 \
    RESULTS_DIR=results/sweep_cold/$1 CACHE_ROOT=$ROOT/results/sweep_cold_cache/$1 OUT="$d" \
    bash scripts/gpu_sweep_scaling.sh sweeps/baselines.toml > "$d/lane.log" 2>&1
  local rc=$?
  cp "results/sweep_cold/$1/$1/results.jsonl" "$d/results.jsonl" 2>/dev/null
  cp "results/sweep_cold/$1/$1.log" "$d/$1.log" 2>/dev/null
  return $rc
}
sweepone_lane() { sweep_cold_lane one "$SWEEP_ONE_GPUS"; local rc=$?; touch "$O/.sweepone_done"; return $rc; }

sweepall_lane() {
  # PHASE 4: the 2-GPU run needs the GPUs of the lanes before it
  local w; for w in $SWEEP_ALL_AFTER; do
    while [ ! -f "$O/.${w}_done" ] && [ "$(left)" -gt 60 ]; do sleep 2; done
  done
  [ -n "$SWEEP_ALL_AFTER" ] && echo "2-GPU run starts at $(( $(date +%s) - T0 )) s" >> "$O/lanes.txt"
  sweep_cold_lane all "$SWEEP_ALL_GPUS"
  local rc=$?
  # once the 1-GPU run is done too (extra load before then would slow it and flatter the ratio), the two GPUs of
  # this lane do op work with what is left: the official kernel next to ours, and a kernel profile of ours
  [ -n "$SWEEP_ALL_AFTER" ] && return $rc
  case " $LANES " in *" sweepone "*)
    while [ ! -f "$O/.sweepone_done" ] && [ "$(left)" -gt 60 ]; do sleep 2; done ;;
  esac
  local t=$(( $(left) - 20 )) g1=${SWEEP_ALL_GPUS%%,*} g2=${SWEEP_ALL_GPUS##*,} d=$O/sweepall
  [ "$t" -gt 60 ] || return $rc
  echo "op work after the sweeps from $(( $(date +%s) - T0 )) s, ${t} s" >> "$d/steps.txt"
  local oc=$ROOT/results/op_after_sweep_cache
  mkdir -p "$oc"
  [ -f "$AUTOTUNE_OP_IN" ] && tar xzf "$AUTOTUNE_OP_IN" -C "$oc"
  if [ -d .ext/official/fla ]; then
    CUDA_VISIBLE_DEVICES=$g1 TRITON_CACHE_DIR=$oc \
      MDN_OFFICIAL_PATH=$ROOT/.ext/official timeout -k 10 "$t" "$MDN_PYTHON" scripts/bench_ops.py \
      --impls official,mdn --T 4096 --out "$d/official.jsonl" > "$d/official.txt" 2>&1 &
  fi
  (cd triton && CUDA_VISIBLE_DEVICES=$g2 TRITON_CACHE_DIR=$oc \
    timeout -k 10 "$t" "$MDN_PYTHON" mdn/bench/bench_op.py --T 4096 --phases --profile \
    --out "$d/profile.jsonl") > "$d/profile.txt" 2>&1
  wait
  echo "op work rc done at $(( $(date +%s) - T0 )) s" >> "$d/steps.txt"
  return $rc
}

tiles_lane() {  # the scan tiles at the training step's shape, then the official kernel next to ours
  local d=$O/tiles; mkdir -p "$d" results/tiles
  export CUDA_VISIBLE_DEVICES=$TILES_GPU TRITON_CACHE_DIR=$ROOT/results/tiles_triton_cache
  mkdir -p "$TRITON_CACHE_DIR"
  [ -f "$AUTOTUNE_OP_IN" ] && tar xzf "$AUTOTUNE_OP_IN" -C "$TRITON_CACHE_DIR"
  # gpu_train_bench.sh runs BS=2 x SEQ=4096: each layer's op call sees 8192 tokens, a quarter of the benchmark's
  # 32768, so the scans' grids (B x H x V/BV programs) are a quarter as large and the tiles tuned at 32768 tokens
  # may leave SMs idle. "fwd;bwd" pairs of (BV, num_warps); the train lane runs the fastest fwd+bwd.
  (cd triton && timeout -k 10 "${TILES_S:-250}" "$MDN_PYTHON" mdn/bench/bench_op.py --shapes h6k256v512 --T 4096 \
    --tokens 8192 --phases --scan-configs "${TILE_CFGS:-default 32,4;32,4 16,4;32,4 32,4;16,4 16,4;16,4}" \
    --out "$ROOT/results/tiles/tiles.jsonl") > "$d/tiles.txt" 2>&1
  echo "tiles rc $? at $(( $(date +%s) - T0 )) s" >> "$d/steps.txt"
  # the forward storing the chunk-start states for the backward (no state recompute), default tiles: at the
  # training step's shape, then at the benchmark's 32768 tokens
  (cd triton && MDN_SAVE_STATES=1 timeout -k 10 "${SAVE_S:-120}" "$MDN_PYTHON" mdn/bench/bench_op.py \
    --shapes h6k256v512 --T 4096 --tokens 8192 --out "$ROOT/results/tiles/tiles.jsonl" &&
   MDN_SAVE_STATES=1 timeout -k 10 $(( $(left) - 25 )) "$MDN_PYTHON" mdn/bench/bench_op.py --T 4096 \
    --out "$ROOT/results/tiles/save_states_32k.jsonl") > "$d/save_states.txt" 2>&1
  echo "save states rc $? at $(( $(date +%s) - T0 )) s" >> "$d/steps.txt"
  cp results/tiles/tiles.jsonl results/tiles/save_states_32k.jsonl "$d/" 2>/dev/null
  (cd "$TRITON_CACHE_DIR" && find . -name '*.autotune.json' | tar czf "$d/autotune_tiles.tgz" -T -)
}

best_env() {  # the knobs of the fastest fwd+bwd in results/tiles/tiles.jsonl as VAR=value words ("" if none)
  "$MDN_PYTHON" - results/tiles/tiles.jsonl <<'PYEOF'
import json, sys
try:
    rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
except OSError:
    rows = []
rows = [r for r in rows if "fwd_bwd" in r]
if rows:
    best = min(rows, key=lambda r: r["fwd_bwd"]["ms"])
    env = []
    if best.get("scan_config", "default") != "default":
        env.append(f"MDN_SCAN_CONFIG={best['scan_config']}")
    if best.get("save_states", "0") == "1":
        env.append("MDN_SAVE_STATES=1")
    if best.get("tril_inv", "auto") not in ("auto", "solve"):
        env.append(f"MDN_TRIL_INV={best['tril_inv']}")
    print(" ".join(env))
PYEOF
}

train_lane() {  # issue 5: MDN, GDN, Transformer 1.3B on one GPU; MDN again with the best tiles of the tiles lane
  local d=$O/train; mkdir -p "$d"
  # fla autotunes GDN's kernels on the first training step of a fresh machine (over 4 minutes on the sixth
  # session's 2 x H200, which cut its GDN run): seed them like the op lanes do
  export CUDA_VISIBLE_DEVICES=$TRAIN_GPU TRITON_CACHE_DIR=$ROOT/results/train_triton_cache
  mkdir -p "$TRITON_CACHE_DIR"; [ -f "$AUTOTUNE_OP_IN" ] && tar xzf "$AUTOTUNE_OP_IN" -C "$TRITON_CACHE_DIR"
  OUT=$d/runs timeout -k 10 "${TRAIN_S:-330}" bash scripts/gpu_train_bench.sh > "$d/train.txt" 2>&1
  echo "train rc $? at $(( $(date +%s) - T0 )) s" >> "$d/steps.txt"
  # PHASE 6: MDN again with each knob of TRAIN_AB (VAR=value words), same harness, next to the default run above
  local kv
  for kv in $TRAIN_AB; do
    [ "$(left)" -gt 90 ] || break
    env "$kv" MODELS=1.3b OUT=$d/runs_${kv%%=*} timeout -k 10 $(( $(left) - 15 )) \
      bash scripts/gpu_train_bench.sh > "$d/train_${kv%%=*}.txt" 2>&1
    echo "train $kv rc $? at $(( $(date +%s) - T0 )) s" >> "$d/steps.txt"
  done
  local best; best=$(best_env)
  echo "fastest op knobs at the training shape: ${best:-the defaults}" >> "$d/steps.txt"
  if [ -n "$best" ] && [ "$(left)" -gt 100 ]; then
    env $best MODELS=1.3b OUT=$d/runs_tiles timeout -k 10 $(( $(left) - 15 )) \
      bash scripts/gpu_train_bench.sh > "$d/train_tiles.txt" 2>&1
    echo "train tiles rc $? at $(( $(date +%s) - T0 )) s" >> "$d/steps.txt"
  fi
  rm -rf "$d"/runs*/*/checkpoints
  (cd "$TRITON_CACHE_DIR" && find . -name '*.autotune.json' | tar czf "$d/autotune_train.tgz" -T -)
}

pair_lane() {  # PHASE 5 on a 2-GPU node: the 1.3B model over both GPUs, then tests beside op work
  local d=$O/pair; mkdir -p "$d"
  CUDA_VISIBLE_DEVICES=0,1 MODELS=1.3b OUT=$d/train2 timeout -k 10 "${TRAIN2_S:-200}" bash scripts/gpu_train_bench.sh \
    > "$d/train2.txt" 2>&1
  echo "train 2 GPUs rc $? at $(( $(date +%s) - T0 )) s" >> "$d/steps.txt"
  rm -rf "$d"/train2/*/checkpoints
  (export CUDA_VISIBLE_DEVICES=1 TRITON_CACHE_DIR=$ROOT/results/tests_triton_cache
   mkdir -p "$TRITON_CACHE_DIR"; run_gpu_tests "$d") &
  local t=$(( $(left) - 20 )) oc=$ROOT/results/op_after_sweep_cache
  mkdir -p "$oc"; [ -f "$AUTOTUNE_OP_IN" ] && tar xzf "$AUTOTUNE_OP_IN" -C "$oc"
  if [ "$t" -gt 60 ]; then
    (cd triton && CUDA_VISIBLE_DEVICES=0 TRITON_CACHE_DIR=$oc timeout -k 10 "${PROFILE_S:-120}" "$MDN_PYTHON" \
      mdn/bench/bench_op.py --T 4096 --phases --profile --out "$d/profile.jsonl") > "$d/profile.txt" 2>&1
    echo "profile rc $? at $(( $(date +%s) - T0 )) s" >> "$d/steps.txt"
    t=$(( $(left) - 20 ))
    if [ -d .ext/official/fla ] && [ "$t" -gt 60 ]; then
      CUDA_VISIBLE_DEVICES=0 TRITON_CACHE_DIR=$oc MDN_OFFICIAL_PATH=$ROOT/.ext/official timeout -k 10 "$t" \
        "$MDN_PYTHON" scripts/bench_ops.py --impls official,mdn --T 4096 --out "$d/official.jsonl" > "$d/official.txt" 2>&1
      echo "official rc $? at $(( $(date +%s) - T0 )) s" >> "$d/steps.txt"
    fi
  fi
  wait
  (cd "$oc" && find . -name '*.autotune.json' | tar czf "$d/autotune_op.tgz" -T -)
}

official_lane() {  # PHASE 7: the official kernel's fwd+bwd (minutes of first-call autotuning) next to ours and GDN;
  # ours and GDN first (a minute or two), the official kernel with the rest of the call
  local d=$O/official; mkdir -p "$d"
  export CUDA_VISIBLE_DEVICES=$OP_GPU TRITON_CACHE_DIR=$ROOT/results/official_triton_cache
  mkdir -p "$TRITON_CACHE_DIR"; [ -f "$AUTOTUNE_OP_IN" ] && tar xzf "$AUTOTUNE_OP_IN" -C "$TRITON_CACHE_DIR"
  [ -d .ext/official/fla ] || { echo "no .ext/official/fla: carry it" >> "$d/steps.txt"; return 2; }
  MDN_OFFICIAL_PATH=$ROOT/.ext/official timeout -k 10 $(( $(left) - 20 )) "$MDN_PYTHON" scripts/bench_ops.py \
    --impls mdn,gdn,official --T 4096 --out "$d/ops.jsonl" > "$d/ops.txt" 2>&1
  echo "ops rc $? at $(( $(date +%s) - T0 )) s" >> "$d/steps.txt"
  (cd "$TRITON_CACHE_DIR" && find . -name '*.autotune.json' | tar czf "$d/autotune_official.tgz" -T -)
}

codeab_lane() {  # PHASE 9: the op, base package then this tree's, one after the other on one GPU; then the scan
  # tiles at the training step's shape (8192 tokens per op call: 2 x 4096, as gpu_train_bench.sh)
  local d=$O/codeab; mkdir -p "$d"
  export CUDA_VISIBLE_DEVICES=$OP_GPU TRITON_CACHE_DIR=$ROOT/results/codeab_triton_cache
  mkdir -p "$TRITON_CACHE_DIR"
  local site=${PYTHONPATH%%:*}
  if [ -d "$BASE_PY/mdn" ]; then
    (cd "$BASE_PY" && PYTHONPATH=$site:$BASE_PY timeout -k 10 150 "$MDN_PYTHON" mdn/bench/bench_op.py \
      --shapes h16k128v128,h6k256v512 --T 4096 --phases --out "$d/opab_base.jsonl") > "$d/opab_base.txt" 2>&1
    echo "op base rc $? at $(( $(date +%s) - T0 )) s" >> "$d/steps.txt"
  fi
  (cd triton && timeout -k 10 200 "$MDN_PYTHON" mdn/bench/bench_op.py --shapes h16k128v128,h6k256v512 --T 4096 \
    --phases --profile --out "$d/opab_new.jsonl") > "$d/opab_new.txt" 2>&1
  echo "op new rc $? at $(( $(date +%s) - T0 )) s" >> "$d/steps.txt"
  # the training step next to GDN's on the same GPU (fla's autotune results seeded)
  [ -f "$AUTOTUNE_OP_IN" ] && tar xzf "$AUTOTUNE_OP_IN" -C "$TRITON_CACHE_DIR"
  MODELS="1.3b gdn-1.3b" OUT=$d/runs timeout -k 10 "${TRAIN_S:-240}" bash scripts/gpu_train_bench.sh > "$d/train.txt" 2>&1
  echo "train rc $? at $(( $(date +%s) - T0 )) s" >> "$d/steps.txt"
  rm -rf "$d"/runs/*/checkpoints
  (cd triton && timeout -k 10 $(( $(left) - 20 )) "$MDN_PYTHON" mdn/bench/bench_op.py --shapes h6k256v512 --T 4096 \
    --tokens 8192 --phases --scan-configs "${TILE_CFGS:-default 16,4;16,4 32,4;16,4 16,4;32,4 16,8;16,8}" \
    --out "$d/tiles_8192.jsonl") > "$d/tiles_8192.txt" 2>&1
  echo "tiles 8192 rc $? at $(( $(date +%s) - T0 )) s" >> "$d/steps.txt"
}

trainab_lane() {  # PHASE 9: MDN (this tree), GDN, MDN (base package), MDN with each of TRAIN_TILES (fwd;bwd tiles)
  local d=$O/trainab; mkdir -p "$d"
  export CUDA_VISIBLE_DEVICES=$TRAIN_GPU TRITON_CACHE_DIR=$ROOT/results/train_triton_cache
  mkdir -p "$TRITON_CACHE_DIR"; [ -f "$AUTOTUNE_OP_IN" ] && tar xzf "$AUTOTUNE_OP_IN" -C "$TRITON_CACHE_DIR"
  MODELS="1.3b gdn-1.3b" OUT=$d/runs timeout -k 10 240 bash scripts/gpu_train_bench.sh > "$d/train.txt" 2>&1
  echo "train rc $? at $(( $(date +%s) - T0 )) s" >> "$d/steps.txt"
  local site=${PYTHONPATH%%:*}
  if [ -d "$BASE_PY/mdn" ] && [ "$(left)" -gt 90 ]; then
    PYTHONPATH=$site:$BASE_PY MODELS=1.3b OUT=$d/runs_base timeout -k 10 $(( $(left) - 15 )) \
      bash scripts/gpu_train_bench.sh > "$d/train_base.txt" 2>&1
    echo "train base rc $? at $(( $(date +%s) - T0 )) s" >> "$d/steps.txt"
  fi
  local cfg i=0
  for cfg in ${TRAIN_TILES:-"16,4;16,4"}; do
    i=$((i + 1)); [ "$(left)" -gt 90 ] || break
    MDN_SCAN_CONFIG=$cfg MODELS=1.3b OUT=$d/runs_tiles$i timeout -k 10 $(( $(left) - 15 )) \
      bash scripts/gpu_train_bench.sh > "$d/train_tiles$i.txt" 2>&1
    echo "train MDN_SCAN_CONFIG=$cfg rc $? at $(( $(date +%s) - T0 )) s" >> "$d/steps.txt"
  done
  rm -rf "$d"/runs*/*/checkpoints
}

mqar_lane() {
  local d=$O/mqar; mkdir -p "$d" results/mqar-budget
  # a fresh machine: the rows of earlier sessions (docs/data) count as done, so RESUME=1 runs only the rest
  if ! ls results/mqar-budget/rows-*.jsonl >/dev/null 2>&1; then
    for f in docs/data/mqar_budget_*.jsonl; do [ -f "$f" ] && cp "$f" "results/mqar-budget/rows-prev-$(basename "$f")"; done
  fi
  local n sweep=sweeps/mqar-budget.toml; n=$(echo "$MQAR_GPUS" | tr , '\n' | wc -l)
  # the sweep file replays each training step as a CUDA graph (cuda_graph = "auto"): check graphed against
  # eager steps on this GPU first (tests/tasks, -m gpu); if that fails, the points run eagerly
  if [ "${MQAR_GRAPH_CHECK:-1}" = 1 ]; then
    # fla's kernels from seeded autotune results (the seventh session's check ran out of its 180 s while fla
    # compiled and autotuned GDN's bf16 case from an empty cache)
    local gc=$ROOT/results/mqar_check_triton_cache; mkdir -p "$gc"
    [ -f "$AUTOTUNE_OP_IN" ] && tar xzf "$AUTOTUNE_OP_IN" -C "$gc"
    (cd triton && CUDA_VISIBLE_DEVICES=${MQAR_GPUS%%,*} MDN_CHUNK_COMPILE=0 MDN_FLA_BYPASS_HOPPER_GUARD=1 \
      TRITON_CACHE_DIR=$gc FLA_CACHE_RESULTS=1 \
      timeout -k 10 "${MQAR_GRAPH_CHECK_S:-300}" "$MDN_PYTHON" -m pytest -v -p no:cacheprovider \
      tests/tasks/test_train_mqar.py -m gpu -k cuda_graph) > "$d/graph_check.txt" 2>&1
    local grc=$?
    echo "cuda graph check rc $grc at $(( $(date +%s) - T0 )) s" >> "$d/steps.txt"
    if [ "$grc" -ne 0 ]; then MQAR_EAGER=1; fi
  fi
  if [ "${MQAR_EAGER:-0}" = 1 ]; then  # eager steps (the point ids do not depend on cuda_graph)
    sed 's/^cuda_graph = "auto"/cuda_graph = "off"/' sweeps/mqar-budget.toml > results/mqar-budget/sweep-eager.toml
    sweep=results/mqar-budget/sweep-eager.toml
  fi
  RESUME=1 GPUS=$MQAR_GPUS WORKERS=${MQAR_WORKERS:-$(( 7 * n ))} HARD_S=$(( $(left) - 15 )) OUT=results/mqar-budget \
    bash scripts/gpu_mqar.sh "$sweep" > "$d/lane.log" 2>&1
  local rc=$?
  cp results/mqar-budget/results.jsonl results/mqar-budget/summary.md "$d"/ 2>/dev/null
  return $rc
}

declare -A pid t_start
for lane in $LANES; do
  case $lane in sweep|op|mqar|tests|sweepone|sweepall|tiles|train|pair|official|codeab|trainab) ;; *) echo "gpu_node_lanes: unknown lane $lane" | tee -a "$O/lanes.txt"; continue ;; esac
  t_start[$lane]=$(date +%s)
  ( ${lane}_lane; rc=$?; touch "$O/.${lane}_done"; exit $rc ) & pid[$lane]=$!
done
for lane in "${!pid[@]}"; do
  wait "${pid[$lane]}"; rc=$?
  echo "lane $lane (phase $PHASE): rc $rc, $(( $(date +%s) - t_start[$lane] )) s" | tee -a "$O/lanes.txt"
done
if [ -f "$O/sweepone/times.tsv" ] && [ -f "$O/sweepall/times.tsv" ]; then
  "$MDN_PYTHON" - "$O/sweepone/times.tsv" "$O/sweepall/times.tsv" <<'PYEOF' | tee -a "$O/lanes.txt"
import sys
one, multi = ([l.rstrip("\n").split("\t") for l in open(p) if l.strip()][-1] for p in sys.argv[1:3])
if one[5] == "1" and multi[5] == "1":
    print(f"sweep ratio, equally cold, side by side: GPUs {multi[1]} {multi[2]} s / GPU {one[1]} {one[2]} s = "
          f"{float(multi[2]) / float(one[2]):.3f} ({one[4]} points each)")
else:
    print(f"sweep ratio: not comparable (complete: 1-GPU {one[5]}, {one[3]} rows; multi-GPU {multi[5]}, {multi[3]} rows)")
PYEOF
fi
for lane in "${!pid[@]}"; do
  [ -d "$O/$lane" ] && tar czf "$O/$lane.tgz" -C "$O" "$lane" && rm -rf "${O:?}/$lane"
done
rm -f "$O"/.*_done
cat "$O/lanes.txt"
