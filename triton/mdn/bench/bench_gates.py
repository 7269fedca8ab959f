#!/usr/bin/env python3
"""Time the intra part's gate-coefficient kernels (intra_gates.py, forward and backward) alone at several num_warps,
side by side in one process, each output checked against float64 autograd of the same formulas.

    python triton/mdn/bench/bench_gates.py                               # 8192 and 3072 (chunk, head) rows, C = 64
    python triton/mdn/bench/bench_gates.py --rows 8192 --warps 2,4,8 --out rows.jsonl
    python triton/mdn/bench/bench_gates.py --segsum cumsum --warps 2,4    # one segment-sum form (MDN_GATES_SEGSUM)

8192 and 3072 are the rows of one op call at 32768 tokens with H16 and H6 heads (C = 64); gates as the layer draws
them at initialisation (mdn.bench.gates, "layer_init"), upstream gradients N(0, 1). TF32 products, as the op runs
them for 16-bit inputs. Timing: triton.testing.do_bench median, ms. Prints JSON lines (--out appends them) and a
table; the shipped warps (intra_gates.GATE_WARPS) and segment-sum form (intra_gates.segsum_dot) are marked.
"""
from __future__ import annotations

import argparse
import sys

import torch
import triton

from mdn.bench.check import rel_rms
from mdn.bench.gates import make_gates
from mdn.bench.timing import emit_rows
from mdn.ops.momentum_delta_rule import intra_gates as ig
from mdn.ops.momentum_delta_rule.chunk_intra import gate_coefficients


def inputs(rows: int, C: int, dev):
    g = make_gates("layer_init", 1, rows * C, 1, seed=rows + C, device=dev)
    la, be, lm = (g[n].reshape(rows, C).contiguous() for n in ("log_alpha", "beta", "log_mu"))
    gen = torch.Generator(device=dev).manual_seed(rows)
    grads = [torch.randn(rows, C, device=dev, generator=gen) for _ in range(4)]
    grads.append(torch.randn(rows, C, C, device=dev, generator=gen))
    return la, be, lm, grads


def reference(la, be, lm, grads):
    """float64 outputs (a, m, b, L_m[C-1], Gamma) and gate gradients, by autograd of the torch formulas."""
    xs = [t.double().requires_grad_() for t in (la, be, lm)]
    outs = gate_coefficients(*xs, "torch")
    loss = sum((o * g.double()).sum() for o, g in zip(outs, grads))
    return [o.detach() for o in outs], torch.autograd.grad(loss, xs)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", default="8192,3072")
    p.add_argument("--C", type=int, default=64)
    p.add_argument("--warps", default="2,4,8")
    p.add_argument("--segsum", default="cumsum,dot", help="segment-sum forms to time: cumsum, dot or both (a,b)")
    p.add_argument("--out", default="")
    a = p.parse_args()
    bad = [f for f in a.segsum.split(",") if f not in ("cumsum", "dot")]
    if bad:
        print(f"bench_gates.py: --segsum {bad[0]!r}; expected cumsum or dot", file=sys.stderr)
        return 2
    if not torch.cuda.is_available():
        print("bench_gates.py: needs a CUDA GPU", file=sys.stderr)
        return 2
    dev = torch.device("cuda")
    C, rows_out = a.C, []
    for rows in (int(r) for r in a.rows.split(",")):
        la, be, lm, grads = inputs(rows, C, dev)
        ref_out, ref_grad = reference(la, be, lm, grads)
        for form, nw in ((f, int(w)) for f in a.segsum.split(",") for w in a.warps.split(",")):
            dot = form == "dot"
            outs = [torch.full((rows, C), float("nan"), device=dev) for _ in range(4)]
            outs.append(torch.full((rows, C, C), float("nan"), device=dev))
            gout = [torch.full((rows, C), float("nan"), device=dev) for _ in range(3)]
            fwd = lambda: ig.momentum_delta_rule_fwd_kernel_intra_gates[(rows,)](  # noqa: E731
                la, be, lm, *outs, C=C, PREC="tf32", SEGSUM_DOT=dot, num_warps=nw)
            bwd = lambda: ig.momentum_delta_rule_bwd_kernel_intra_gates[(rows,)](  # noqa: E731
                la, be, lm, *grads[:4], grads[4], *gout, C=C, PREC="tf32", SEGSUM_DOT=dot, num_warps=nw)
            for part, fn, got, ref in (("fwd", fwd, outs, ref_out), ("bwd", bwd, gout, ref_grad)):
                fn()
                errs = [rel_rms(r, x) for r, x in zip(ref, got)]  # NaN (an unwritten output) stays NaN
                err = float("nan") if any(e != e for e in errs) else max(errs)
                ms = triton.testing.do_bench(fn, quantiles=[0.5])
                shipped = ig.GATE_WARPS[part] == nw and dot == ig.segsum_dot(part)
                rows_out.append({"part": part, "segsum": form, "num_warps": nw, "shipped": shipped, "C": C,
                                 "rows": rows, "ms": ms, "max_rel_err": err})
    emit_rows(rows_out, a.out)
    print("\n| part | segsum | warps | C | rows | ms | max rel. error vs fp64 |\n|---|---|---|---|---|---|---|")
    for r in rows_out:
        mark = " (shipped)" if r["shipped"] else ""
        print(f"| {r['part']} | {r['segsum']} | {r['num_warps']}{mark} | {r['C']} | {r['rows']} | {r['ms']:.4f} | "
              f"{r['max_rel_err']:.1e} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
