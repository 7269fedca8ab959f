#!/usr/bin/env python
"""Fingerprint of the compiled scan kernels of both forms (chunk_scan.py "six", chunk_scan_pqk.py "pqk"), for
checking that a source refactor leaves the kernels unchanged. No GPU needed: each kernel is compiled with
triton.compile for GPUTarget("cuda", 90, 32) (as tests/ops/test_scan_resources.py's compile_scan does) and its PTX
goes through the ptxas bundled with Triton (sm_90a).

One line per (form, mode, load, dtype, K, V, BV, num_warps, USE flag): registers, stack, spill st/ld bytes, shared
memory, counts of PTX instructions (wgmma, mma, ld.global, st.global, bar.sync, st.shared, ld.shared, bulk tensor
copies, all instructions), a hash of the PTX instruction stream (comments, .loc/.file lines and debug sections
dropped, so moving source lines does not change it) and one of its lines sorted ("bag": equal when only the order of
some instructions differs). Run it before and after a change and diff the outputs:

    cd triton && ../.venv/bin/python ../scripts/scan_ptx_fingerprint.py > /tmp/before.txt
    ... change ...
    ../.venv/bin/python ../scripts/scan_ptx_fingerprint.py > /tmp/after.txt && diff /tmp/before.txt /tmp/after.txt

Default set: the shipped tile configs (chunk_scan.SCAN_CONFIGS) at bf16 K = 64, 128, 256 and fp32 K = 128, 256,
V = 512, C = 64; modes fwd (forward scan), rec (the backward's state recompute: RECOMPUTE + STORE_STATES) and bwd
(reverse scan; the six form's with ABLATE=0); loads ptr and tma; initial state / dht given (USE=1) and not (USE=0).
"""
from __future__ import annotations

import argparse
import hashlib
import os
import re
import subprocess
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "triton", "tests", "ops"))
sys.path.insert(0, os.path.join(HERE, "..", "triton", "tests"))  # conftest: the sm_90 compile helpers

# pointer arguments that are fp32 whatever the operand dtype, by kernel name
FP32_PTRS = {
    "momentum_delta_rule_fwd_kernel_scan": {"g", "h0", "ht"},
    "momentum_delta_rule_bwd_kernel_scan": {"g", "dht", "dh0", "dgp"},
    "momentum_delta_rule_fwd_kernel_scan_pqk": {"r", "g", "h0", "ht"},
    "momentum_delta_rule_bwd_kernel_scan_pqk": {"r", "g", "dht", "dh0", "dgp"},
}
COUNTS = {  # column: regex on an instruction's opcode
    "wgmma": r"wgmma\.mma_async", "mma": r"mma\.sync", "ld.global": r"ld\.global", "st.global": r"st\.global",
    "bar.sync": r"bar\.sync|barrier\.sync", "st.shared": r"st\.shared", "ld.shared": r"ld\.shared",
    "tma": r"cp\.async\.bulk\.tensor",
}


def _kernel(form: str, mode: str):
    from mdn.ops.momentum_delta_rule import chunk_scan as cs
    from mdn.ops.momentum_delta_rule import chunk_scan_pqk as sp
    if form == "six":
        return cs.momentum_delta_rule_bwd_kernel_scan if mode == "bwd" else cs.momentum_delta_rule_fwd_kernel_scan
    return sp.momentum_delta_rule_bwd_kernel_scan_pqk if mode == "bwd" else sp.momentum_delta_rule_fwd_kernel_scan_pqk


def _flags(form: str, mode: str, use: bool) -> dict:
    if mode == "fwd":
        return dict(USE_H0=use, RECOMPUTE=False, STORE_STATES=False)
    if mode == "rec":
        return dict(USE_H0=use, RECOMPUTE=True, STORE_STATES=True)
    return dict(USE_DHT=use, **({"ABLATE": 0} if form == "six" else {}))


def _instructions(ptx: str) -> list[str]:
    """The PTX instruction lines, without comments, debug info (.loc, .file, debug sections) and blank lines."""
    ptx = ptx.split("\t.section\t.debug")[0]
    out = []
    for line in ptx.splitlines():
        line = line.split("//")[0].strip()
        if not line or line.startswith((".loc", ".file", "$L__tmp", "$L__func")):
            continue
        out.append(line)
    return out


def fingerprint(job: tuple) -> str:
    form, mode, load, dtype, K, V, C, BV, nw, use, dump = job
    os.environ.pop("TRITON_INTERPRET", None)
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from mdn.ops.momentum_delta_rule import chunk_scan as cs
    from test_scan_resources import ptxas_path

    kernel = _kernel(form, mode)
    fp32 = FP32_PTRS[kernel.__name__]
    consts = dict(K=K, V=V, C=C, BK=cs._sub_k(K), BV=BV, DOT_MODE=0 if dtype == "fp32" else 1,
                  LOAD_TMA=load == "tma", **_flags(form, mode, use))
    sig = {}
    for n in kernel.arg_names:
        if n in consts:
            sig[n] = "constexpr"
        elif n == "chunk_offsets":
            sig[n] = "*i32"
        elif n == "H" or n.startswith("s_"):  # s_*: the strides of o / dO
            sig[n] = "i32"
        else:
            sig[n] = "*fp32" if n in fp32 else "*" + dtype
    attrs = {(i,): [["tt.divisibility", 16]] for i, n in enumerate(kernel.arg_names) if sig[n].startswith("*")}
    src = ASTSource(fn=kernel, signature=sig, constexprs=consts, attrs=attrs)
    k = triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": nw, "num_stages": 1})
    ptx = k.asm["ptx"]
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "k.ptx")
        with open(path, "w") as f:
            f.write(ptx)
        info = subprocess.run([ptxas_path(), "-v", "--gpu-name", "sm_90a", path, "-o", os.path.join(d, "k.cubin")],
                              capture_output=True, text=True, check=True).stderr

    def num(pattern: str) -> int:
        m = re.search(pattern, info)
        if m is None:
            raise RuntimeError(f"ptxas -v output without {pattern!r}:\n{info}")
        return int(m.group(1))

    ins = _instructions(ptx)
    ops = [re.sub(r"^@!?%p\d+\s+", "", x) for x in ins]
    counts = " ".join(f"{name}={sum(1 for x in ops if re.match(rx, x))}" for name, rx in COUNTS.items())
    sha = hashlib.sha256("\n".join(ins).encode()).hexdigest()[:16]
    bag = hashlib.sha256("\n".join(sorted(ins)).encode()).hexdigest()[:16]  # the same lines in any order
    if dump:
        os.makedirs(dump, exist_ok=True)
        with open(os.path.join(dump, f"{form}_{mode}_{load}_{dtype}_K{K}_use{int(use)}.ptx"), "w") as f:
            f.write("\n".join(ins) + "\n")
    regs, stack = num(r"Used (\d+) registers"), num(r"(\d+) bytes stack frame")
    spill_st, spill_ld = num(r"(\d+) bytes spill stores"), num(r"(\d+) bytes spill loads")
    return (f"{form} {mode} {load} {dtype} K={K} V={V} C={C} BV={BV} nw={nw} use={int(use)}: "
            f"regs={regs} stack={stack} spill={spill_st}/{spill_ld} "
            f"shared={k.metadata.shared} {counts} lines={len(ins)} ptx={sha} bag={bag}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--forms", default="six,pqk")
    ap.add_argument("--modes", default="fwd,rec,bwd")
    ap.add_argument("--load", default="ptr,tma")
    ap.add_argument("--use", default="1,0", help="initial state / dht given: 1, 0 or both (default 1,0)")
    ap.add_argument("--shapes", default="bf16:64,bf16:128,bf16:256,fp32:128,fp32:256",
                    help="comma-separated dtype:K (default bf16 K 64/128/256, fp32 K 128/256)")
    ap.add_argument("--V", type=int, default=512)
    ap.add_argument("--C", type=int, default=64)
    ap.add_argument("--dump", default="", help="also write each kernel's PTX instruction lines into this folder")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="parallel compiles")
    args = ap.parse_args()

    from mdn.ops.momentum_delta_rule import chunk_scan as cs
    jobs = []
    for shape in args.shapes.split(","):
        dtype, K = shape.split(":")
        K = int(K)
        for form in args.forms.split(","):
            for mode in args.modes.split(","):
                bv, nw = cs.SCAN_CONFIGS[(cs._block_k(K), dtype == "fp32", "fwd" if mode == "fwd" else "bwd")]
                for load in args.load.split(","):
                    for use in args.use.split(","):
                        jobs.append((form, mode, load, dtype, K, args.V, args.C, bv, nw, use == "1", args.dump))
    with ProcessPoolExecutor(max(1, args.jobs)) as ex:
        for line in ex.map(fingerprint, jobs):
            print(line, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
