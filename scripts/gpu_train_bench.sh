#!/usr/bin/env bash
# Training throughput of the 1.3B models side by side on this GPU node: MDN (configs/mdn-1.3b.toml), GDN
# (gdn-1.3b, fla's op) and the Transformer (transformer-1.3b, SDPA), each `mdnctl train` for a few steps on
# synthetic tokens. Prints tokens/s (total and per GPU), peak memory and MFU per model, and keeps each run's
# result.json / metrics.jsonl / train.log under $OUT.
#
#   scripts/gpu_train_bench.sh                       # all visible GPUs (1 GPU: one process; 2+: FSDP2)
#   STEPS=20 BS=4 SEQ=4096 scripts/gpu_train_bench.sh
#   MODELS="1.3b gdn-1.3b" EXTRA="--set compile=true" scripts/gpu_train_bench.sh
#
# GDN needs fla: when `fla.ops.gated_delta_rule` is not importable, the wheels in .whl/ (fla_core, einops) are
# installed with --no-deps --no-index. fla refuses its gated backward on Hopper with Triton < 3.7.1 (a Triton
# codegen bug corrupts dk, fla issue 640); MDN_FLA_BYPASS_HOPPER_GUARD=1 lifts the guard so the *speed* can be
# measured -- GDN's gradients in this run are not to be trusted, its loss curve is not a reference.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PY=${MDN_PYTHON:-$ROOT/.venv/bin/python}
STEPS=${STEPS:-12}
BS=${BS:-2}
SEQ=${SEQ:-4096}
GA=${GA:-1}
MODELS=${MODELS:-"1.3b gdn-1.3b transformer-1.3b"}
OUT=${OUT:-$ROOT/results/train_bench}
EXTRA=${EXTRA:-}

[ -x "$PY" ] || { echo "gpu_train_bench: no Python at $PY (run make setup or set MDN_PYTHON)" >&2; exit 1; }
"$PY" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' ||
  { echo "gpu_train_bench: torch sees no CUDA device" >&2; exit 1; }
if ! "$PY" -c 'import fla.ops.gated_delta_rule' 2>/dev/null; then
  if ls .whl/fla_core-*.whl .whl/einops-*.whl >/dev/null 2>&1; then
    echo "gpu_train_bench: installing fla from .whl/ (no network needed)"
    "$PY" -m pip install -q --no-deps --no-index .whl/einops-*.whl .whl/fla_core-*.whl
  else
    echo "gpu_train_bench: fla is not installed and .whl/ has no fla_core wheel: gdn-1.3b will report unavailable" >&2
  fi
fi
export MDN_FLA_BYPASS_HOPPER_GUARD=1
export MDN_PYTHON=$PY
if command -v go >/dev/null 2>&1; then
  if [ ! -x bin/mdnctl ] || [ -n "$(find cmd train launcher stability -newer bin/mdnctl -name '*.go' 2>/dev/null | head -1)" ]; then
    go build -o bin/mdnctl ./cmd/mdnctl
  fi
fi
[ -x bin/mdnctl ] || { echo "gpu_train_bench: no bin/mdnctl and no Go to build it (make build, then carry bin/)" >&2; exit 1; }
nvidia-smi --query-gpu=index,name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true
"$PY" -c 'import torch, triton; print(f"torch {torch.__version__}, triton {triton.__version__}")'
mkdir -p "$OUT"

# A model named twice (e.g. MODELS="1.3b gdn-1.3b 1.3b", runs bracketing each other) gets run dirs 1.3b, 1.3b.2, ...
RUNS=()
for m in $MODELS; do
  run=$m
  n=1
  while printf '%s\n' "${RUNS[@]}" | grep -qxF "$run"; do n=$((n + 1)); run="$m.$n"; done
  RUNS+=("$run")
  dir="$OUT/$run"
  rm -rf "$dir"
  echo "=== $m: $STEPS steps, batch $BS x seq $SEQ x grad_accum $GA per GPU, synthetic data"
  # shellcheck disable=SC2086
  if ! bin/mdnctl train "$m" --out "$dir" --set steps="$STEPS" --set batch_size="$BS" --set seq_len="$SEQ" \
      --set grad_accum="$GA" --set data.source=synthetic --set log_every=1 --set warmup_steps=2 \
      --set save_checkpoints=false $EXTRA; then
    echo "=== $m FAILED (see $dir/train.log)"
  fi
done

"$PY" - "$OUT" "${RUNS[@]}" <<'EOF'
import json, os, re, sys
out, models = sys.argv[1], sys.argv[2:]
rows = []
for m in models:
    p = os.path.join(out, m, "result.json")
    if not os.path.exists(p):
        rows.append((m, "failed", "", "", "", "", "", ""))
        continue
    r = json.load(open(p))
    f = lambda k, fmt: (fmt.format(r[k]) if isinstance(r.get(k), (int, float)) else "-")  # noqa: E731
    rows.append((m, f("tokens_per_s", "{:,.0f}"), f("tokens_per_s_per_gpu", "{:,.0f}"), f("peak_mem_gb", "{:.1f}"),
                 (f"{100 * r['mfu']:.1f}%" if isinstance(r.get("mfu"), float) else "-"),
                 f"{r.get('world_size')} x {r.get('device')}", r.get("strategy", ""), json.dumps(r.get("mixer_impl", {}))))
head = ("model", "tokens/s", "tokens/s/GPU", "peak GB", "MFU", "GPUs", "strategy", "mixer impl")
w = [max(len(str(x[i])) for x in rows + [head]) for i in range(len(head))]
for row in [head] + rows:
    print("  ".join(str(v).ljust(w[i]) for i, v in enumerate(row)))
by = {m: json.load(open(os.path.join(out, m, "result.json"))) for m in models
      if os.path.exists(os.path.join(out, m, "result.json"))}
# every MDN run against the GDN run nearest to it in run order (runs on one GPU drift; neighbours are the fair pair)
base = lambda m: re.sub(r"\.\d+$", "", m)  # noqa: E731  (run dir -> model)
gdn = [i for i, m in enumerate(models) if base(m) == "gdn-1.3b" and m in by and by[m].get("tokens_per_s")]
for i, m in enumerate(models):
    if base(m) == "1.3b" and m in by and by[m].get("tokens_per_s") and gdn:
        g = models[min(gdn, key=lambda j: (abs(j - i), j))]
        print(f"MDN / GDN tokens/s ({m} / {g}): {by[m]['tokens_per_s'] / by[g]['tokens_per_s']:.3f} (goal >= 0.9)")
print("tokens/s: mean over the steps after the first two (autotuning); MFU: docs/TRAINING.md")
EOF
