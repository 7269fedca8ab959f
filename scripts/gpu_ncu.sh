#!/usr/bin/env bash
# Nsight Compute on the chunk op's largest kernels: one fwd+bwd (mdn/bench/profile_once.py, after warm-up calls)
# with hardware counters, the clocks left alone (--clock-control none, as the device notes ask). Writes to $OUT
# (or results/ncu): <name>.ncu-rep, <name>_details.csv (every section of every profiled kernel) and
# <name>_source.csv.gz (per-SASS-instruction samples: where the warps stall).
#   OUT=... NAME=h6_t8192 KERNELS='state_gemms|bwd_kernel_scan_pqk' SET=full \
#     bash scripts/gpu_ncu.sh --shape h6k256v512 --T 8192
# Only the Python process is profiled, and inductor compiles in it (no worker pool): with ncu following the compile
# workers too, the run ended in a segmentation fault (H200, ncu 2025.3.1, twenty-first session).
set -uo pipefail
cd "$(dirname "$0")/../triton"
O=${OUT:-$PWD/../results/ncu}
mkdir -p "$O"
NAME=${NAME:-op}
KERNELS=${KERNELS:-bwd_kernel_scan_pqk|state_gemms|fwd_kernel_scan_pqk|output_pqk}
NCU=${NCU:-$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | tail -1)}
[ -n "$NCU" ] || { echo "gpu_ncu: ncu not found (set NCU=/path/to/ncu)"; exit 2; }
"$NCU" --version | tail -1
TORCHINDUCTOR_COMPILE_THREADS=1 timeout -k 10 "${T_NCU:-400}" "$NCU" --clock-control none \
  --target-processes application-only --profile-from-start off --set "${SET:-full}" --import-source no \
  -k "regex:$KERNELS" -f -o "$O/$NAME" python3 mdn/bench/profile_once.py "$@"
rc=$?
echo "gpu_ncu: ncu rc $rc"
[ -f "$O/$NAME.ncu-rep" ] || exit "$rc"
"$NCU" --import "$O/$NAME.ncu-rep" --page details --csv > "$O/${NAME}_details.csv" 2> "$O/${NAME}_details.err"
"$NCU" --import "$O/$NAME.ncu-rep" --page source --csv --print-source sass 2> "$O/${NAME}_source.err" \
  | gzip > "$O/${NAME}_source.csv.gz" || echo "gpu_ncu: no source page"
ls -la "$O"
exit "$rc"
