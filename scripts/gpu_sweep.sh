#!/usr/bin/env bash
# Run a sweep on the GPU machine in time-limited, resumable steps.
#   scripts/gpu_sweep.sh [SWEEP] [mdnctl sweep flags...]      default SWEEP: sweeps/baselines.toml
# Installs the carried baseline wheels (.whl/: fla-core, flash-linear-attention, einops) when fla is missing,
# points MDN_OFFICIAL_PATH at .ext/official (the official MDN code) unless set, builds bin/mdnctl if absent, then
# runs `mdnctl sweep SWEEP --resume --max-time $MAX_TIME` (default 7m: no point starts after that, so one call
# fits a 10-minute limit). Run it again until it prints "all N points already have rows".
set -euo pipefail
cd "$(dirname "$0")/.."
SWEEP=${1:-sweeps/baselines.toml}
[ $# -gt 0 ] && shift
PY=${MDN_PYTHON:-$PWD/.venv/bin/python}
export MDN_PYTHON=$PY
if ! "$PY" -c 'import fla.ops.gated_delta_rule' >/dev/null 2>&1 && compgen -G '.whl/*.whl' >/dev/null; then
  echo "gpu_sweep: installing the carried wheels: $(ls .whl/*.whl | xargs -n1 basename | tr '\n' ' ')"
  "$PY" -m pip install -q --disable-pip-version-check --no-deps --no-index .whl/*.whl
fi
if [ -z "${MDN_OFFICIAL_PATH:-}" ] && [ -d .ext/official/fla ]; then
  export MDN_OFFICIAL_PATH=$PWD/.ext/official
fi
if [ ! -x bin/mdnctl ]; then
  go build -o bin/mdnctl ./cmd/mdnctl
fi
nvidia-smi -L || true
exec bin/mdnctl sweep "$SWEEP" --resume --max-time "${MAX_TIME:-7m}" "$@"
