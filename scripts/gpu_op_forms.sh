#!/usr/bin/env bash
# One device call (~8 min) comparing the two scan forms (MDN_SCAN_FORM=six, the default, and pqk) on the whole op,
# with their phase split and accuracy vs fp64, then our op side by side with fla GDN (scripts/bench_ops.py).
# Both forms are first compiled at a tiny size in parallel (Triton and inductor caches are on disk; the dense intra
# part is dynamic in B and T, so the timed shapes hit them). Results in $OUT (or results/op_forms): op.jsonl,
# ops.jsonl and the logs.
# GDN runs before MDN in the side by side (three calls in a row ran out of time before reaching it when it came
# last). TESTS=1 first runs the pqk GPU tests (bf16 shapes vs fp64 at every K, the shipped tiles; T_TESTS seconds).
#   SHAPES=h6k256v512,h16k128v128 T=4096 IMPLS=gdn,mdn TESTS=1 bash scripts/gpu_op_forms.sh
set -uo pipefail
cd "$(dirname "$0")/.."
O=${OUT:-$PWD/results/op_forms}
mkdir -p "$O"
PY=${MDN_PYTHON:-python3}
SHAPES=${SHAPES:-h6k256v512,h16k128v128}
T=${T:-4096}
t0=$(date +%s)
step() { echo "$1 rc $2 $(( $(date +%s) - t0 )) s" | tee -a "$O/steps.txt"; }
if [ "${TESTS:-0}" = 1 ]; then
  (cd triton && MDN_POISON_OUTPUTS=1 timeout "${T_TESTS:-200}" "$PY" -m pytest tests/ops/test_scan_pqk.py -m gpu -q \
      -p no:cacheprovider -rf -k "gpu_pqk_bf16_shapes and 1000" > "$O/tests.txt" 2>&1); step tests $?
fi
for form in six pqk; do
  MDN_SCAN_FORM=$form timeout "${T_WARM:-130}" "$PY" triton/mdn/bench/bench_op.py --T 128 --tokens 256 \
      --shapes "$SHAPES" --phases --check > "$O/warm_$form.txt" 2>&1 &
done
wait; step warm 0
for form in six pqk; do
  MDN_SCAN_FORM=$form timeout "${T_FORM:-110}" "$PY" triton/mdn/bench/bench_op.py --phases --check --T "$T" \
      --shapes "$SHAPES" --out "$O/op.jsonl" > "$O/op_$form.txt" 2>&1; step "op $form" $?
done
timeout "${T_OPS:-120}" "$PY" scripts/bench_ops.py --impls "${IMPLS:-gdn,mdn}" --shapes "$SHAPES" --T "$T" \
    --out "$O/ops.jsonl" > "$O/ops.txt" 2>&1; step ops $?
exit 0
