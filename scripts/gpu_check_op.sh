#!/usr/bin/env bash
# One device call that checks the chunk op on a GPU: the ops test set (not slow) including the GPU-only tests
# (T = 1000/4096 bf16 for K in {32, 64, 100, 128, 256}, K=256/V=512 grads, T = 65536 finite + accurate, fp32 at
# 1e-5, every shipped scan tile config), the inductor fullgraph compile test, then (with --bench) bench_op.py.
#
#   bash scripts/gpu_check_op.sh            # tests only
#   bash scripts/gpu_check_op.sh --bench    # tests, then the op benchmark with the phase breakdown
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
PY=${MDN_PYTHON:-$ROOT/.venv/bin/python}
[ -x "$PY" ] || PY=python3
cd "$ROOT/triton"
"$PY" -c 'import torch, triton; assert torch.cuda.is_available(), "no CUDA device"; print("device:", torch.cuda.get_device_name(), "| torch", torch.__version__, "| triton", triton.__version__)'
unset TRITON_INTERPRET
export MDN_POISON_OUTPUTS=1
status=0
"$PY" -m pytest tests/ops/test_chunk.py tests/ops/test_compile.py -q -m "not slow" -rs --durations=15 || status=1
MDN_SLOW=1 "$PY" -m pytest tests/ops/test_compile.py -q -k inductor || status=1
if [ "${1:-}" = "--bench" ]; then
    unset MDN_POISON_OUTPUTS
    mkdir -p "$ROOT/results"
    "$PY" mdn/bench/bench_op.py --phases --out "$ROOT/results/bench_op.jsonl" || status=1
fi
exit $status
