#!/usr/bin/env python
"""Registers, spills and shared memory of the momentum delta rule scan kernels, compiled for sm_90 on the CPU.

No GPU needed: each kernel is compiled with triton.compile for GPUTarget("cuda", 90, 32) and its PTX is fed to the
ptxas bundled with Triton (`ptxas -v --gpu-name sm_90a`). About 5 s per kernel.

    cd triton && ../.venv/bin/python ../scripts/scan_regs.py                       # shipped configs, K 64/128/256
    ../.venv/bin/python ../scripts/scan_regs.py --K 256 --V 512 --configs "32,4 64,8 32,8" --modes fwd,bwd
    ../.venv/bin/python ../scripts/scan_regs.py --K 128,256 --configs "16,4 32,4 64,4 16,8 32,8 64,8" --load ptr,tma
    ../.venv/bin/python ../scripts/scan_regs.py --K 256 --form six,pqk      # both scan forms side by side

Modes: fwd (forward scan), rec (the backward's state recompute, STORE_STATES), bwd (reverse scan). Without
--configs each (K, dtype, mode) uses its shipped SCAN_CONFIGS entry (fwd: the "fwd" phase; rec, bwd: "bwd").
--load: how the [C, K] operands are loaded (MDN_SCAN_LOAD): ptr (pointer loads, the default) and/or tma (tensor
descriptors; compiled as such whatever the dtype, although the launcher runs fp32 and rows that are not a multiple
of 16 bytes through the pointer path).
"""
from __future__ import annotations

import argparse
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "triton", "tests", "ops"))
sys.path.insert(0, os.path.join(HERE, "..", "triton", "tests"))  # conftest: the sm_90 compile helpers

from mdn.ops.momentum_delta_rule import chunk_scan as cs  # noqa: E402
from test_scan_resources import HOPPER_SHARED_LIMIT, compile_scan, scan_runs  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--K", default="64,128,256", help="comma-separated head dims K (default 64,128,256)")
    ap.add_argument("--V", type=int, default=512, help="value dim V (default 512; only masks depend on it)")
    ap.add_argument("--C", type=int, default=64, help="chunk size (default 64)")
    ap.add_argument("--dtype", default="bf16", choices=["bf16", "fp16", "fp32"])
    ap.add_argument("--modes", default="fwd,rec,bwd", help="comma-separated subset of fwd,rec,bwd")
    ap.add_argument("--configs", default="", help='space-separated "BV,num_warps" list (default: shipped)')
    ap.add_argument("--load", default="ptr", help="comma-separated subset of ptr,tma (default ptr)")
    ap.add_argument("--form", default="pqk", help="comma-separated subset of six,pqk: the scan form (MDN_SCAN_FORM; "
                                                  "default pqk)")
    args = ap.parse_args()

    os.environ.pop("TRITON_INTERPRET", None)
    modes = [m for m in args.modes.split(",") if m]
    bad = [m for m in modes if m not in ("fwd", "rec", "bwd")]
    if bad:
        ap.error(f"--modes: unknown mode(s) {bad}; expected fwd, rec, bwd")
    loads = [x for x in args.load.split(",") if x]
    bad = [x for x in loads if x not in cs.SCAN_LOADS]
    if bad or not loads:
        ap.error(f"--load: unknown value(s) {bad or loads}; expected ptr, tma")
    forms = [x for x in args.form.split(",") if x]
    if not forms or any(x not in ("six", "pqk") for x in forms):
        ap.error(f"--form: {args.form!r}; expected a subset of six,pqk")
    runs = {(form, name): (kernel, flags) for form in forms for phase in ("fwd", "bwd")
            for name, kernel, flags in scan_runs(phase, form)}
    configs = []
    for c in args.configs.split():
        try:
            bv, nw = (int(x) for x in c.split(","))
        except ValueError:
            ap.error(f"--configs: {c!r} is not 'BV,num_warps'")
        configs.append((bv, nw))

    print(f"{'form':4} {'mode':4} {'load':4} {'K':>4} {'V':>4} {'dtype':5} {'BV':>4} {'nw':>3} {'regs':>5} {'stack':>6} "
          f"{'spill st/ld (B)':>16} {'shared (B)':>11}")
    for K in (int(k) for k in args.K.split(",")):
        for mode in modes:
            phase = "fwd" if mode == "fwd" else "bwd"
            cfgs = configs or [cs.SCAN_CONFIGS[(cs._block_k(K), args.dtype == "fp32", phase)]]
            for bv, nw in cfgs:
                for form in forms:
                    kernel, flags = runs[(form, mode)]
                    for load in loads:
                        r = compile_scan(kernel, args.dtype, K, args.V, args.C, bv, nw, load=load, **flags)
                        spill = f"{r['spill_st']}/{r['spill_ld']}"
                        flag = " OVER" if r["shared"] > HOPPER_SHARED_LIMIT else ""
                        print(f"{form:4} {mode:4} {load:4} {K:>4} {args.V:>4} {args.dtype:5} {bv:>4} {nw:>3} "
                              f"{r['regs']:>5} {r['stack']:>6} {spill:>16} {r['shared']:>11}{flag}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
