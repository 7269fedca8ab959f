#!/usr/bin/env bash
# Does a sweep scale over the GPUs of one node (issue 4: 2 GPUs in <= 0.6x the 1-GPU time)?
#
# RUNS (default "all one") lists the runs, in order: a name starting with "one" runs `mdnctl sweep SWEEP --gpus 0`,
# any other name `--gpus 0,1,...` (all GPUs, or GPUS_MULTI); each writes $R/<name>/results.jsonl (started afresh;
# a name starting with "fill" instead continues $R/fill/results.jsonl with --resume: it only fills caches) and
# $R/<name>.log, and appends "name gpus seconds rows planned complete caches" to $R/times.tsv. The ratio printed
# at the end is that of the last complete all-GPU run to the last complete 1-GPU run in times.tsv, so the runs may
# be spread over several device calls that share $R and the caches (the device machine keeps ignored folders
# between calls while it is held), e.g. three calls:
#   RUNS=cold RESULTS_DIR=results/sweep_scaling ...   # all GPUs, empty caches: fills the compile caches
#   RUNS=one  RESULTS_DIR=results/sweep_scaling ...   # 1 GPU, warm caches
#   RUNS=all  RESULTS_DIR=results/sweep_scaling ...   # all GPUs, warm caches: the ratio all / one, equally warm
# With the default RUNS="all one" in one call the all-GPU run is cold and the 1-GPU run warm, so the ratio is an
# upper bound. The caches (Triton, TorchInductor) live under CACHE_ROOT (default /tmp/sweep_scaling_cache) unless
# TRITON_CACHE_DIR / TORCHINDUCTOR_CACHE_DIR are given; each run says whether they were empty when it started.
#
# Autotune results: fla's kernels autotune on their first call per shape in a process with an empty cache (KDA about
# 4 minutes per head shape, GDN's backward over 2 minutes on a fresh H200), which no 10-minute call got past. With
# AUTOTUNE_IN=FILE.tgz (Triton's *.autotune.json files of the same kernels, Triton version and GPU) they are unpacked
# into TRITON_CACHE_DIR first (the runs then say "caches autotune-seeded" while nothing is compiled yet); at the end
# every *.autotune.json of TRITON_CACHE_DIR is packed into $OUT/autotune.tgz (AUTOTUNE_OUT=0: not), so the next
# call or session can carry them.
#
# Time: HARD_S (default 540 s, under the device call's 600 s) bounds this call. A run that is not the last of
# RUNS may use FIRST_PCT percent (default 45) of what is left when it starts, the last one all that is left.
# Each run gets `--max-time` = its budget - GRACE_S (default 60 s: points in flight may finish) and is stopped
# (SIGTERM, then SIGKILL 10 s later) at its budget; MAX_TIME (a Go duration), if set, caps --max-time further.
#
# Results: RESULTS_DIR (default: $OUT when set, the device tool's folder that comes back even if the call is cut
# off; else results/sweep_scaling). With a RESULTS_DIR other than $OUT, summary.txt and times.tsv are copied to
# $OUT at the end. The official MDN kernel is left out unless MDN_OFFICIAL_PATH is set (its first-call
# autotuning takes minutes per shape); its points are then `unavailable` rows.
#
#   bash scripts/gpu_sweep_scaling.sh                                  # sweeps/baselines.toml, "all one"
#   HARD_S=1100 bash scripts/gpu_sweep_scaling.sh sweeps/chunk_sizes.toml
set -uo pipefail
cd "$(dirname "$0")/.."
T0=$(date +%s)
SWEEP=${1:-sweeps/baselines.toml}
if [ -n "${RESULTS_DIR:-}" ]; then R=$RESULTS_DIR
elif [ -n "${OUT:-}" ]; then R=$OUT
else R=$PWD/results/sweep_scaling; fi
RUNS=${RUNS:-all one}
HARD_S=${HARD_S:-540}
FIRST_PCT=${FIRST_PCT:-45}
GRACE_S=${GRACE_S:-60}
MAX_TIME=${MAX_TIME:-}
CACHE_ROOT=${CACHE_ROOT:-/tmp/sweep_scaling_cache}
PY=${MDN_PYTHON:-$PWD/.venv/bin/python}
[ -x "$PY" ] || PY=$(command -v python3)
export MDN_PYTHON=$PY
mkdir -p "$R"
SUMMARY=$R/summary.txt
TIMES=$R/times.tsv
say() { echo "$*" | tee -a "$SUMMARY"; }
left() { echo $((HARD_S - ($(date +%s) - T0))); }
copy_out() {
  if [ -n "${OUT:-}" ] && [ "$(cd "$R" && pwd)" != "$(cd "$OUT" && pwd)" ]; then cp "$SUMMARY" "$TIMES" "$OUT"/ 2>/dev/null; fi
  if [ -n "${OUT:-}" ] && [ "${AUTOTUNE_OUT:-1}" = 1 ] && [ -d "${TRITON_CACHE_DIR:-}" ]; then
    (cd "$TRITON_CACHE_DIR" && find . -name '*.autotune.json' | tar czf "$OUT/autotune.tgz" -T -)
  fi
}
trap copy_out EXIT

[ -x bin/mdnctl ] || go build -o bin/mdnctl ./cmd/mdnctl || { say "gpu_sweep_scaling: build failed"; exit 2; }
NGPU=$(nvidia-smi -L 2>/dev/null | wc -l)
[ "$NGPU" -ge 2 ] || { say "gpu_sweep_scaling: needs 2+ GPUs, found $NGPU"; exit 2; }
# GPUS_MULTI: the GPUs of the multi-GPU runs (default all; e.g. 0,1 on a 4-GPU node, whose other GPUs may do
# other work meanwhile, although that shares the CPU cores with the sweep). The 1-GPU runs use the first of them.
ALL=${GPUS_MULTI:-$(seq -s, 0 $((NGPU - 1)))}
ONE=${ALL%%,*}
[ "$ONE" != "$ALL" ] || { say "gpu_sweep_scaling: GPUS_MULTI=$ALL names one GPU; the multi-GPU runs need 2+"; exit 2; }
planned=$(bin/mdnctl sweep --plan --json "$SWEEP" | "$PY" -c 'import json,sys; print(len(json.load(sys.stdin)))') \
  || { say "gpu_sweep_scaling: cannot plan $SWEEP"; exit 2; }
export TRITON_CACHE_DIR=${TRITON_CACHE_DIR:-$CACHE_ROOT/triton}
export TORCHINDUCTOR_CACHE_DIR=${TORCHINDUCTOR_CACHE_DIR:-$CACHE_ROOT/inductor}
mkdir -p "$TRITON_CACHE_DIR" "$TORCHINDUCTOR_CACHE_DIR"
if [ -n "${AUTOTUNE_IN:-}" ]; then
  tar xzf "$AUTOTUNE_IN" -C "$TRITON_CACHE_DIR" || { say "gpu_sweep_scaling: cannot unpack AUTOTUNE_IN=$AUTOTUNE_IN"; exit 2; }
fi
say "gpu_sweep_scaling $(date -u +%FT%TZ): $SWEEP, $planned points, $NGPU GPUs ($(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)), RUNS='$RUNS', HARD_S=$HARD_S, rows in $R"

rows() { if [ -f "$1" ]; then wc -l < "$1"; else echo 0; fi; }
set -- $RUNS
while [ $# -gt 0 ]; do
  run=$1; shift
  gpus=$ALL; case $run in one*) gpus=$ONE ;; esac
  l=$(left)
  budget=$l
  [ $# -gt 0 ] && budget=$((l * FIRST_PCT / 100))
  if [ "$budget" -le $((GRACE_S + 10)) ]; then
    say "$run ($gpus): skipped: ${budget}s of budget left (HARD_S=$HARD_S, GRACE_S=$GRACE_S)"
    break
  fi
  maxt=$((budget - GRACE_S))s
  [ -n "$MAX_TIME" ] && maxt=$MAX_TIME
  caches=warm
  if [ -z "$(ls -A "$TORCHINDUCTOR_CACHE_DIR")" ]; then
    if [ -z "$(ls -A "$TRITON_CACHE_DIR")" ]; then caches=cold
    elif [ -z "$(find "$TRITON_CACHE_DIR" -type f ! -name '*.autotune.json' | head -1)" ]; then caches=autotune-seeded; fi
  fi
  # a run named fill* only fills the caches: it continues the rows of $R/fill (--resume) instead of starting afresh
  dir=$R/$run resume=()
  case $run in fill*) dir=$R/fill resume=(--resume) ;; *) rm -rf "${dir:?}" ;; esac
  t0=$(date +%s.%N)
  timeout -k 10 "$budget" bin/mdnctl sweep "$SWEEP" --gpus "$gpus" --out "$dir" "${resume[@]}" --max-time "$maxt" --quiet > "$R/$run.log" 2>&1
  rc=$?
  secs=$("$PY" -c "import sys; print(round(float(sys.argv[1]) - float(sys.argv[2]), 1))" "$(date +%s.%N)" "$t0")
  n=$(rows "$dir/results.jsonl")
  how="rc $rc"
  { [ $rc -eq 124 ] || [ $rc -eq 137 ]; } && how="stopped at its ${budget}s budget (rc $rc)"
  complete=0
  [ $rc -eq 0 ] && [ "$n" -ge "$planned" ] && complete=1
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$run" "$gpus" "$secs" "$n" "$planned" "$complete" "$caches" >> "$TIMES"
  say "$run ($gpus, caches $caches): $how, $secs s (budget ${budget}s, --max-time $maxt), $n of $planned rows"
  tail -4 "$R/$run.log" | tee -a "$SUMMARY"
done
# The ratio: last complete all-GPU run over last complete 1-GPU run (times.tsv may span calls).
"$PY" - "$TIMES" "$planned" <<'PYEOF' | tee -a "$SUMMARY"
import sys
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1]) if l.strip()]
done = [r for r in rows if r[5] == "1" and r[4] == sys.argv[2]]
one = [r for r in done if "," not in r[1]]
multi = [r for r in done if "," in r[1]]
if not one or not multi:
    print(f"not comparable yet: complete runs {[(r[0], r[1]) for r in done]} of {len(rows)} recorded")
else:
    a, o = multi[-1], one[-1]
    print(f"{a[0]} (GPUs {a[1]}, caches {a[6]}) / {o[0]} (GPU {o[1]}, caches {o[6]}) wall time: "
          f"{float(a[2]) / float(o[2]):.3f} ({a[2]} s / {o[2]} s, {sys.argv[2]} points each)")
PYEOF
