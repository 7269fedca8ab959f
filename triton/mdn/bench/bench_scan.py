#!/usr/bin/env python3
"""Time the three scan kernels of the chunk op one by one, over many variants, in one GPU call.

    python triton/mdn/bench/bench_scan.py                                  # 1.3B shape, shipped configs
    python triton/mdn/bench/bench_scan.py --configs "32,4 64,4 16,4" --loads ptr,tma --ablate 0,1,2,4,8
    python triton/mdn/bench/bench_scan.py --jobs 8 ...                     # compile the variants in 8 processes first

For one shape (default H6 K256 V512, B*T = 32768, T = 4096, bf16, layer-like gates) it runs the intra part once and
then times, for every (tile config, load) variant: the forward scan (`fwd`), the backward's state recompute
(`rec`, STORE_STATES) and the reverse scan (`rev`), the latter also with ABLATE bits (timing only, WRONG
gradients: 1 = no <dS', S> partial sums, 2 = no lo planes of dhc, 4 = no dhc stores, 8 = no dvo stores), so that
each part's cost shows as a difference. Also the backward's torch GEMM tail once (`gemm_tail`).
With --jobs N the variants are first compiled at a tiny size in N child processes (Triton's cache is shared on
disk; a compiled kernel depends on the constexprs, not on B or T), which on a fresh machine saves most of the
call. Prints JSON lines (--out appends them) and a table.
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from bench_op import SHAPES, bench, make_inputs  # noqa: E402


def variants(args):
    configs = [tuple(int(x) for x in c.split(",")) for c in args.configs.split()]
    loads = [x for x in args.loads.split(",") if x]
    ablates = [int(x) for x in args.ablate.split(",") if x]
    return [(cfg, load, ablates) for cfg, load in itertools.product(configs, loads)]


def setup(shape, T, tokens, C):
    import torch
    from mdn.ops.momentum_delta_rule.chunk import _run_intra
    H, K, V = SHAPES[shape]
    B = max(1, tokens // T)
    xs = make_inputs(B, T, H, K, V, torch.bfloat16, "cuda", requires_grad=False)
    NT = -(-T // C)
    off = torch.arange(B + 1, device="cuda", dtype=torch.int32) * NT
    with torch.no_grad():
        intra = _run_intra(*xs, None, B * NT, C, K ** -0.5, True, True, torch.bfloat16, True)
    return intra, off, (B, T, H, K, V)


def run_variant(intra, off, cfg, load, ablates, time_it=True):
    import torch
    from mdn.ops.momentum_delta_rule import chunk_scan as cs
    os.environ["MDN_SCAN_LOAD"] = load
    bv, nw = cfg
    u, y, z, qa, qb, aqk, ks, km, g = intra
    rows = []
    with torch.no_grad():
        o, vt, ht, _ = cs.scan_fwd_triton(*intra, None, off, block_v=bv, num_warps=nw)
        dO = torch.randn_like(o)
        _, _, _, hc = cs.scan_fwd_triton(*intra, None, off, vt=vt, store_states=True, block_v=bv, num_warps=nw)
        fns = {"fwd": lambda: cs.scan_fwd_triton(*intra, None, off, block_v=bv, num_warps=nw),
               "rec": lambda: cs.scan_fwd_triton(*intra, None, off, vt=vt, store_states=True, block_v=bv,
                                                 num_warps=nw)}
        for a in ablates:
            fns[f"rev_ablate{a}"] = (lambda a=a: cs.scan_bwd_triton(y, z, qa, qb, aqk, ks, km, g, dO, None, hc, off,
                                                                     block_v=bv, num_warps=nw, ablate=a))
        for name, fn in fns.items():
            fn()  # compile
            if time_it:
                rows.append({"part": name, **bench(fn)})
    return rows, (vt, dO, hc)


def gemm_tail(intra, vt, dO, hc, off):
    """The torch part of scan_bwd after the kernels (GEMMs against the states), as in chunk_scan.scan_bwd."""
    import torch
    from mdn.ops.momentum_delta_rule import chunk_scan as cs
    u, y, z, qa, qb, aqk, ks, km, g = intra
    NC, H, C, V = vt.shape
    K = y.shape[-1]
    dvo, dhc, _, _ = cs.scan_bwd_triton(y, z, qa, qb, aqk, ks, km, g, dO, None, hc, off)
    t = lambda x: x.transpose(-1, -2)  # noqa: E731

    def tail():
        hct = t(hc.view(NC, H, 2 * K, V))
        x = dvo[0] @ hct, dvo[1] @ hct
        r = vt @ t(dhc.view(NC, H, dhc.shape[2] * K, V))
        return x, r, (dvo[1] @ t(vt)).tril()
    with torch.no_grad():
        return bench(tail)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shape", default="h6k256v512", choices=list(SHAPES))
    p.add_argument("--T", type=int, default=4096)
    p.add_argument("--tokens", type=int, default=32768)
    p.add_argument("--chunk-size", type=int, default=64)
    p.add_argument("--configs", default="32,4 64,4", help='space-separated "BV,num_warps"')
    p.add_argument("--loads", default="ptr,tma")
    p.add_argument("--ablate", default="0", help="comma-separated ABLATE values for the reverse scan")
    p.add_argument("--jobs", type=int, default=0, help="compile variants in this many child processes first")
    p.add_argument("--compile-only", default="", help="(child) compile variant indices i,j,... at a tiny size")
    p.add_argument("--out", default="")
    args = p.parse_args(argv)
    import torch
    import triton
    vs = variants(args)
    if args.compile_only:
        intra, off, _ = setup(args.shape, 2 * args.chunk_size, 2 * args.chunk_size, args.chunk_size)
        for i in (int(x) for x in args.compile_only.split(",")):
            cfg, load, ablates = vs[i]
            try:
                run_variant(intra, off, cfg, load, ablates, time_it=False)
            except Exception as e:  # noqa: BLE001  (reported by the timing pass)
                print(f"compile {cfg} {load}: {type(e).__name__}: {str(e)[:200]}", file=sys.stderr)
        torch.cuda.synchronize()
        return 0
    if args.jobs:
        t0 = time.time()
        child = ["--shape", args.shape, "--chunk-size", str(args.chunk_size), "--configs", args.configs,
                 "--loads", args.loads, "--ablate", args.ablate]
        procs = [subprocess.Popen([sys.executable, os.path.abspath(__file__), *child,
                                   "--compile-only", ",".join(str(i) for i in range(j, len(vs), args.jobs))])
                 for j in range(min(args.jobs, len(vs)))]
        for pr in procs:
            pr.wait()
        print(f"# compiled {len(vs)} variants in {len(procs)} processes: {time.time() - t0:.1f} s", flush=True)
    intra, off, (B, T, H, K, V) = setup(args.shape, args.T, args.tokens, args.chunk_size)
    meta = {"shape": args.shape, "B": B, "T": T, "H": H, "K": K, "V": V, "dtype": "bfloat16",
            "chunk_size": args.chunk_size, "device": torch.cuda.get_device_name(), "torch": torch.__version__,
            "triton": triton.__version__, "date": time.strftime("%Y-%m-%d")}
    out = open(args.out, "a") if args.out else None
    table = []
    tail_done = False
    for cfg, load, ablates in vs:
        try:
            rows, (vt, dO, hc) = run_variant(intra, off, cfg, load, ablates)
        except Exception as e:  # noqa: BLE001
            rows = [{"part": "error", "error": f"{type(e).__name__}: {str(e)[:300]}"}]
            vt = None
        if not tail_done and vt is not None:
            rows.append({"part": "gemm_tail", **gemm_tail(intra, vt, dO, hc, off)})
            tail_done = True
        for r in rows:
            r = {**meta, "bench": "scan", "BV": cfg[0], "num_warps": cfg[1], "scan_load": load, **r}
            print(json.dumps(r), flush=True)
            if out:
                out.write(json.dumps(r) + "\n")
                out.flush()
            table.append(r)
    print(f"\n| BV,nw | load | part | ms (p20-p80) |\n|---|---|---|---|")
    for r in table:
        ms = f"{r['ms']:.3f} ({r['p20']:.3f}-{r['p80']:.3f})" if "ms" in r else r.get("error", "")
        print(f"| {r['BV']},{r['num_warps']} | {r['scan_load']} | {r['part']} | {ms} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
