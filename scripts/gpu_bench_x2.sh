#!/usr/bin/env bash
# One device call on a 2-GPU node that measures, on the same machine:
#   GPU 0: the op (triton/mdn/bench/bench_op.py: fwd, fwd+bwd, phases, accuracy vs fp64 at T=1000, scan tile
#          candidates $CFGS), then the side-by-side scripts/bench_ops.py (mdn vs fla GDN vs SDPA, T=4096);
#   GPU 1, at the same time: 1-GPU training throughput of mdn-1.3b and gdn-1.3b (scripts/gpu_train_bench.sh);
#   then both GPUs: mdn-1.3b with 2 processes (FSDP2), and its tokens/s against the 1-GPU run.
# Every phase has a time limit (T_OP, T_OPS, T_TRAIN1, T_TRAIN2 seconds) so the whole call fits 10 minutes.
# Output (logs, JSON lines, the runs' result.json lines) under $OUT, else results/gpu_bench_x2.
#
#   bash scripts/gpu_bench_x2.sh
#   CFGS="default 16,4;16,4" T_OP=300 bash scripts/gpu_bench_x2.sh
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
R=${OUT:-$ROOT/results/gpu_bench_x2}
mkdir -p "$R"
PY=${MDN_PYTHON:-$ROOT/.venv/bin/python}
[ -x "$PY" ] || PY=$(command -v python3)
export MDN_PYTHON=$PY PYTHONUNBUFFERED=1
CFGS=${CFGS:-default}
nvidia-smi --query-gpu=index,name,memory.total,driver_version --format=csv,noheader > "$R/gpus.txt" 2>&1
date -u >> "$R/gpus.txt"
(
  export CUDA_VISIBLE_DEVICES=0
  (cd triton && timeout "${T_OP:-200}" "$PY" mdn/bench/bench_op.py --T 4096 --phases --check \
      --scan-configs "$CFGS" --out "$R/bench_op.jsonl" > "$R/bench_op.log" 2>&1)
  timeout "${T_OPS:-140}" "$PY" scripts/bench_ops.py --impls mdn,gdn,sdpa --T 4096 --out "$R/bench_ops.jsonl" \
      > "$R/bench_ops.log" 2>&1
) &
gpu0=$!
CUDA_VISIBLE_DEVICES=1 MODELS="1.3b gdn-1.3b" OUT=/tmp/gpu_bench_x2/one timeout "${T_TRAIN1:-300}" \
    bash scripts/gpu_train_bench.sh > "$R/train_1gpu.log" 2>&1
wait $gpu0
MODELS=1.3b OUT=/tmp/gpu_bench_x2/two timeout "${T_TRAIN2:-200}" bash scripts/gpu_train_bench.sh \
    > "$R/train_2gpu.log" 2>&1
for run in one/1.3b one/gdn-1.3b two/1.3b; do
  f=/tmp/gpu_bench_x2/$run/result.json
  [ -f "$f" ] && { printf '{"run": "%s", "result": ' "$run"; tr -d '\n' < "$f"; echo '}'; }
done > "$R/train_results.jsonl"
"$PY" - "$R/train_results.jsonl" <<'PYEOF'
import json, sys
rows = {r["run"]: r["result"] for r in map(json.loads, open(sys.argv[1])) if r}
for run, r in rows.items():
    print(f"{run}: {r.get('world_size')} x {r.get('device')}: {r.get('tokens_per_s')} tokens/s, "
          f"{r.get('peak_mem_gb')} GB peak, strategy {r.get('strategy')}")
one, two, gdn = rows.get("one/1.3b"), rows.get("two/1.3b"), rows.get("one/gdn-1.3b")
if one and two and one.get("tokens_per_s") and two.get("tokens_per_s"):
    print(f"mdn-1.3b 2 GPUs / 1 GPU tokens/s: {two['tokens_per_s'] / one['tokens_per_s']:.3f}")
if one and gdn and one.get("tokens_per_s") and gdn.get("tokens_per_s"):
    print(f"mdn-1.3b / gdn-1.3b tokens/s (1 GPU): {one['tokens_per_s'] / gdn['tokens_per_s']:.3f}")
PYEOF
echo "gpu_bench_x2: done"
