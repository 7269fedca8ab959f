#!/usr/bin/env python3
"""Time the intra part's triangular inverse A = (I + N)^-1 and its backward dN = -tril(A^T dA A^T, -1), every
kernel variant side by side in one process, with the error of each against float64.

    python triton/mdn/bench/bench_tril_inverse.py                       # 8192 and 3072 matrices, C = 64
    python triton/mdn/bench/bench_tril_inverse.py --batch 8192 --C 64,32 --out rows.jsonl

8192 and 3072 are the matrices of one op call at 32768 tokens with H16 and H6 heads (C = 64). N is strictly lower
triangular with N(0, 0.3^2) entries. Forward variants: "levels" (merge levels written out and read back) and
"blocks" (every block in registers) at several num_warps; backward: "gemm" (two batched cuBLAS GEMMs + tril) and
"kernel" (one Triton kernel, 3xTF32 dots). Timing: triton.testing.do_bench median, ms.
Prints JSON lines (--out appends them) and a table.
"""
from __future__ import annotations

import argparse
import sys

import torch
import triton

from mdn.bench.check import rel_rms
from mdn.bench.timing import emit_rows
from mdn.ops.momentum_delta_rule import tril_inverse as ti

FWD = [("levels", 4), ("blocks", 1), ("blocks", 2), ("blocks", 4), ("blocks", 8)]
BWD = [("gemm", 0), ("kernel", 1), ("kernel", 2), ("kernel", 4), ("kernel", 8)]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", default="8192,3072")
    p.add_argument("--C", default="64")
    p.add_argument("--out", default="")
    a = p.parse_args()
    if not torch.cuda.is_available():
        print("bench_tril_inverse.py: needs a CUDA GPU", file=sys.stderr)
        return 2
    rows = []
    dev = torch.device("cuda")
    for C in (int(c) for c in a.C.split(",")):
        for nb in (int(b) for b in a.batch.split(",")):
            g = torch.Generator(device=dev).manual_seed(nb + C)
            n = (torch.randn(nb, C, C, device=dev, generator=g) * 0.3).tril(-1)
            da = torch.randn(nb, C, C, device=dev, generator=g)
            eye = torch.eye(C, device=dev, dtype=torch.float64)
            ref = torch.linalg.solve_triangular(n.double() + eye, eye.expand(nb, C, C), upper=False)
            ref_g = -(ref.transpose(-1, -2) @ da.double() @ ref.transpose(-1, -2)).tril(-1)
            a32 = ref.float()
            for name, warps in FWD:
                fn = lambda: ti.tril_inverse_triton(n, variant=name, num_warps=warps)  # noqa: E731
                err = rel_rms(ref, fn())
                ms = triton.testing.do_bench(fn, quantiles=[0.5])
                rows.append({"part": "fwd", "variant": name, "num_warps": warps, "C": C, "batch": nb, "ms": ms,
                             "rel_err": err})
            for name, warps in BWD:
                fn = lambda: ti.tril_inverse_grad(a32, da, variant=name, num_warps=warps or None)  # noqa: E731
                err = rel_rms(ref_g, fn())
                ms = triton.testing.do_bench(fn, quantiles=[0.5])
                rows.append({"part": "bwd", "variant": name, "num_warps": warps, "C": C, "batch": nb, "ms": ms,
                             "rel_err": err})
    emit_rows(rows, a.out)
    print("\n| part | variant | warps | C | matrices | ms | rel. error vs fp64 |\n|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['part']} | {r['variant']} | {r['num_warps'] or '-'} | {r['C']} | {r['batch']} | {r['ms']:.4f} "
              f"| {r['rel_err']:.1e} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
