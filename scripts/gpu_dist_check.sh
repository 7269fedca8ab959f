#!/usr/bin/env bash
# All-reduce across N local processes along the path a Slurm training rank takes:
# torchrun -> mdnctl run-shard -> launcher -> python -m mdn.runner, job dist_check (nccl on GPUs, gloo on the CPU).
#   scripts/gpu_dist_check.sh [NPROC]     default: the number of GPUs, or 2 processes on the CPU
# Prints each rank's result row; exits non-zero if any rank failed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${MDN_PYTHON:-$PWD/.venv/bin/python}
[ -x bin/mdnctl ] || go build -o bin/mdnctl ./cmd/mdnctl
N=${1:-$("$PY" -c 'import torch; print(torch.cuda.device_count() or 2)')}
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
echo '{"point":"dist","spec":{"v":1,"id":"dist","kind":"dist_check","params":{"backend":"auto","numel":16777216,"steps":5}}}' > "$out/job.jsonl"
MDN_PYTHON=$PY "$PY" -m torch.distributed.run --standalone --nproc_per_node="$N" --no-python "$PWD/bin/mdnctl" \
  run-shard --shard-file "$out/job.jsonl" --out "$out/result.rank{rank}.jsonl" --gpus cpu --fail-exit
cat "$out"/result.rank*.jsonl
