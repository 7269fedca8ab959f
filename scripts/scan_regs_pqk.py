#!/usr/bin/env python
"""Registers, spills and shared memory of the pqk-form scan kernels (chunk_scan_pqk.py), next to the six-form
ones (chunk_scan.py), compiled for sm_90 on the CPU (no GPU needed; ptxas from the Triton wheel). As
scripts/scan_regs.py, with a --form flag:

    cd triton && ../.venv/bin/python ../scripts/scan_regs_pqk.py                     # K 256, V 512, bf16, shipped tiles
    ../.venv/bin/python ../scripts/scan_regs_pqk.py --K 128,256 --configs "16,4 32,4 64,4" --form six,pqk --load ptr,tma

Modes: fwd (forward scan), rec (the backward's state recompute), bwd (reverse scan).
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "triton", "tests", "ops"))

from mdn.ops.momentum_delta_rule import chunk_scan as cs  # noqa: E402
from mdn.ops.momentum_delta_rule import chunk_scan_pqk as sp  # noqa: E402
from test_scan_resources import HOPPER_SHARED_LIMIT, compile_scan, ptxas_path  # noqa: E402

RUNS = {  # mode: (kernel, constexpr flags)
    "fwd": (sp.momentum_delta_rule_fwd_kernel_scan_pqk, dict(USE_H0=True, RECOMPUTE=False, STORE_STATES=False)),
    "rec": (sp.momentum_delta_rule_fwd_kernel_scan_pqk, dict(USE_H0=True, RECOMPUTE=True, STORE_STATES=True)),
    "bwd": (sp.momentum_delta_rule_bwd_kernel_scan_pqk, dict(USE_DHT=True)),
}
SIX_RUNS = {
    "fwd": (cs.momentum_delta_rule_fwd_kernel_scan, dict(USE_H0=True, RECOMPUTE=False, STORE_STATES=False)),
    "rec": (cs.momentum_delta_rule_fwd_kernel_scan, dict(USE_H0=True, RECOMPUTE=True, STORE_STATES=True)),
    "bwd": (cs.momentum_delta_rule_bwd_kernel_scan, dict(USE_DHT=True)),
}


def compile_scan_pqk(kernel, dtype: str, K: int, V: int, C: int, BV: int, num_warps: int, load: str = "ptr",
                     **flags) -> dict:
    """Compile one pqk scan kernel for sm_90; returns shared, regs, stack, spill_st, spill_ld (ptxas -v, sm_90a)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    ptr = "*" + dtype
    if kernel is sp.momentum_delta_rule_fwd_kernel_scan_pqk:
        names = ["u", "p", "q", "kw", "a", "aqk", "r", "g", "h0", "o", "vt", "ht", "hc"]
        fp32_ptrs = {"r", "g", "h0", "ht"}
    else:
        names = ["p", "q", "kw", "a", "aqk", "r", "g", "do", "dht", "dh0", "dvo", "dhc", "hc", "dgp"]
        fp32_ptrs = {"r", "g", "dht", "dh0", "dgp"}
    sig = {n: ("*fp32" if n in fp32_ptrs else ptr) for n in names}
    sig.update(chunk_offsets="*i32", H="i32")
    consts = dict(K=K, V=V, C=C, BK=cs._sub_k(K), BV=BV, DOT_MODE=0 if dtype == "fp32" else 1,
                  LOAD_TMA=load == "tma", **flags)
    sig.update({n: "constexpr" for n in consts})
    attrs = {(i,): [["tt.divisibility", 16]] for i, n in enumerate(kernel.arg_names)
             if sig.get(n, "").startswith("*")}
    src = ASTSource(fn=kernel, signature=sig, constexprs=consts, attrs=attrs)
    k = triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": num_warps, "num_stages": 1})
    res = {"shared": k.metadata.shared}
    with tempfile.TemporaryDirectory() as d:
        ptx = os.path.join(d, "k.ptx")
        with open(ptx, "w") as f:
            f.write(k.asm["ptx"])
        r = subprocess.run([ptxas_path(), "-v", "--gpu-name", "sm_90a", ptx, "-o", os.path.join(d, "k.cubin")],
                           capture_output=True, text=True, check=True)
    info = r.stderr

    def num(pattern: str) -> int:
        m = re.search(pattern, info)
        if m is None:
            raise RuntimeError(f"ptxas -v output without {pattern!r}:\n{info}")
        return int(m.group(1))

    res.update(regs=num(r"Used (\d+) registers"), stack=num(r"(\d+) bytes stack frame"),
               spill_st=num(r"(\d+) bytes spill stores"), spill_ld=num(r"(\d+) bytes spill loads"))
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--K", default="256", help="comma-separated head dims K (default 256)")
    ap.add_argument("--V", type=int, default=512, help="value dim V (default 512; only masks depend on it)")
    ap.add_argument("--C", type=int, default=64, help="chunk size (default 64)")
    ap.add_argument("--dtype", default="bf16", choices=["bf16", "fp16", "fp32"])
    ap.add_argument("--modes", default="fwd,rec,bwd", help="comma-separated subset of fwd,rec,bwd")
    ap.add_argument("--configs", default="", help='space-separated "BV,num_warps" list (default: shipped)')
    ap.add_argument("--form", default="pqk", help="comma-separated subset of six,pqk (default pqk)")
    ap.add_argument("--load", default="ptr", help="comma-separated subset of ptr,tma (default ptr)")
    args = ap.parse_args()

    os.environ.pop("TRITON_INTERPRET", None)
    modes = [m for m in args.modes.split(",") if m]
    if not modes or any(m not in RUNS for m in modes):
        ap.error(f"--modes: {args.modes!r}; expected a subset of fwd,rec,bwd")
    forms = [x for x in args.form.split(",") if x]
    if not forms or any(x not in ("six", "pqk") for x in forms):
        ap.error(f"--form: {args.form!r}; expected a subset of six,pqk")
    loads = [x for x in args.load.split(",") if x]
    if not loads or any(x not in cs.SCAN_LOADS for x in loads):
        ap.error(f"--load: {args.load!r}; expected a subset of ptr,tma")
    configs = []
    for c in args.configs.split():
        try:
            bv, nw = (int(x) for x in c.split(","))
        except ValueError:
            ap.error(f"--configs: {c!r} is not 'BV,num_warps'")
        configs.append((bv, nw))

    print(f"{'form':4} {'mode':4} {'load':4} {'K':>4} {'V':>4} {'dtype':5} {'BV':>4} {'nw':>3} {'regs':>5} "
          f"{'stack':>6} {'spill st/ld (B)':>16} {'shared (B)':>11}")
    for K in (int(k) for k in args.K.split(",")):
        for mode in modes:
            phase = "fwd" if mode == "fwd" else "bwd"
            cfgs = configs or [cs.SCAN_CONFIGS[(cs._block_k(K), args.dtype == "fp32", phase)]]
            for bv, nw in cfgs:
                for form in forms:
                    for load in loads:
                        if form == "pqk":
                            kernel, flags = RUNS[mode]
                            r = compile_scan_pqk(kernel, args.dtype, K, args.V, args.C, bv, nw, load=load, **flags)
                        else:
                            kernel, flags = SIX_RUNS[mode]
                            if "ABLATE" in kernel.arg_names:  # timing-only switch of the six-form reverse scan
                                flags = dict(flags, ABLATE=0)
                            r = compile_scan(kernel, args.dtype, K, args.V, args.C, bv, nw, load=load, **flags)
                        spill = f"{r['spill_st']}/{r['spill_ld']}"
                        flag = " OVER" if r["shared"] > HOPPER_SHARED_LIMIT else ""
                        print(f"{form:4} {mode:4} {load:4} {K:>4} {args.V:>4} {args.dtype:5} {bv:>4} {nw:>3} "
                              f"{r['regs']:>5} {r['stack']:>6} {spill:>16} {r['shared']:>11}{flag}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
