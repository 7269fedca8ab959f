#!/usr/bin/env python3
"""Time the intra part's key/query kernels (chunk_intra_qk.py) alone: the forward op and the backward op (its [C, C]
and [C, K] kernels together), at the benchmark's head shapes, for one or more tile sets (MDN_INTRA_QK_CONFIG) side
by side in one process, each set's outputs checked against the shipped tiles' (they differ in summation order only).

    python triton/mdn/bench/bench_intra_qk.py                                   # H16 K128 and H6 K256, T = 4096
    python triton/mdn/bench/bench_intra_qk.py --configs "default|64,4;64,4;128,8" --out rows.jsonl
    python triton/mdn/bench/bench_intra_qk.py --configs "default|64,4;64,4;32,4,2|64,4;64,4;64,4,2"   # stages

A tile set is "BK,warps;BK,warps;BK,warps[,stages]" (forward; backward [C, C]; backward [C, K], whose K-block loop
can be pipelined) or "default" (the shipped tiles, chunk_intra_qk.shipped_tiles, one stage). Inputs: bf16 q, k
[B, T, H, K] with B = tokens / T, gates as the layer draws them at initialisation (mdn.bench.gates, "layer_init")
packed per chunk (C = 64), upstream gradients N(0, 1) in the dtypes the op passes. Timing: triton.testing.do_bench
median, ms. Prints JSON lines (--out appends them) and a table. Kernels alone can mislead: the forward at (128, 8) was
faster here but slower inside the op's compiled forward (docs/BENCHMARKS.md §1.29); confirm a tile set with
bench_op.py.
"""
from __future__ import annotations

import argparse
import os
import sys
from contextlib import contextmanager

import torch
import triton

from mdn.bench.check import rel_rms
from mdn.bench.gates import make_gates
from mdn.bench.timing import emit_rows
from mdn.ops.momentum_delta_rule import chunk_intra_qk as cq
from mdn.ops.momentum_delta_rule.chunk_intra import gate_coefficients

SHAPES = {"h16k128": (16, 128), "h6k256": (6, 256)}
CONFIG_VAR = "MDN_INTRA_QK_CONFIG"


@contextmanager
def tile_set(config: str):
    """MDN_INTRA_QK_CONFIG set to ``config`` ("default": unset) for the block, restored after."""
    before = os.environ.pop(CONFIG_VAR, None)
    if config != "default":
        os.environ[CONFIG_VAR] = config
    try:
        yield
    finally:
        os.environ.pop(CONFIG_VAR, None)
        if before is not None:
            os.environ[CONFIG_VAR] = before


def check_configs(configs: list, K: int = 128) -> None:
    """ValueError (qk_config's, naming the variable and the form) for a tile set that is not one."""
    for c in configs:
        with tile_set(c):
            for direction in cq.QK_DIRECTIONS:
                cq.qk_config(direction, K)


def inputs(H: int, K: int, B: int, T: int, C: int, dev) -> dict:
    """The forward op's and the backward op's arguments for B sequences of T tokens (T a multiple of C)."""
    if T % C:
        raise ValueError(f"bench_intra_qk: T = {T}; expected a multiple of the chunk size {C}")
    NC = B * T // C
    gen = torch.Generator(device="cpu").manual_seed(H * K + T)
    q, k = (torch.randn(B, T, H, K, generator=gen).to(dev, torch.bfloat16) for _ in range(2))
    gates = make_gates("layer_init", B, T, H, seed=T, device=dev)
    pack = lambda x: x.reshape(B, T // C, C, H).permute(0, 1, 3, 2).reshape(NC, H, C).contiguous()  # noqa: E731
    la, be, lm, eta = (pack(gates[n].float()) for n in ("log_alpha", "beta", "log_mu", "eta"))
    gam = gate_coefficients(la, be, lm, "torch")[4].contiguous()
    grads = {"dp": torch.bfloat16, "dqn": torch.bfloat16, "dkw": torch.bfloat16}
    up = {n: torch.randn(NC, H, C, K, generator=gen).to(dev, dt) for n, dt in grads.items()}
    up["dlmat"] = torch.randn(NC, H, C, C, generator=gen).to(dev)
    up["daqk"] = torch.randn(NC, H, C, C, generator=gen).to(dev, torch.bfloat16)
    return dict(q=q, k=k, la=la, be=be, lm=lm, eta=eta, gam=gam, chunks=cq.chunk_table(B, T, C, dev),
                scale=K ** -0.5, **up)


def forward(x: dict):
    return cq.intra_qk_op(x["q"], x["k"], x["la"], x["be"], x["lm"], x["eta"], x["gam"], x["chunks"], x["scale"],
                          True, True, True)


def backward(x: dict, rstd: torch.Tensor):
    return cq.intra_qk_grad_op(x["q"], x["k"], x["la"], x["be"], x["lm"], x["eta"], x["chunks"], rstd, x["dp"],
                               x["dqn"], x["dkw"], x["dlmat"], x["daqk"], x["scale"], True, True, True)


def max_rel(ref: tuple, got: tuple) -> float:
    """The largest relative RMS difference over the outputs; NaN if any output has a NaN (one left unwritten)."""
    errs = [rel_rms(r.double(), g.double()) for r, g in zip(ref, got)]
    return float("nan") if any(e != e for e in errs) else max(errs)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shapes", default=",".join(SHAPES), help=f"comma-separated subset of {', '.join(SHAPES)}")
    p.add_argument("--T", type=int, default=4096)
    p.add_argument("--tokens", type=int, default=32768)
    p.add_argument("--configs", default="default", help='"|"-separated tile sets, e.g. "default|64,4;64,4;128,8"')
    p.add_argument("--out", default="")
    a = p.parse_args(argv)
    shapes = [s for s in a.shapes.split(",") if s]
    bad = [s for s in shapes if s not in SHAPES]
    if bad or not shapes:
        print(f"bench_intra_qk.py: --shapes {a.shapes!r}; expected a subset of {', '.join(SHAPES)}", file=sys.stderr)
        return 2
    configs = [c.strip() for c in a.configs.split("|")]
    try:
        check_configs(configs)
    except ValueError as e:
        print(f"bench_intra_qk.py: --configs: {e}", file=sys.stderr)
        return 2
    if a.T < 1 or a.tokens % a.T or a.T % 64:
        print(f"bench_intra_qk.py: --T {a.T} with --tokens {a.tokens}; expected T a multiple of 64 dividing the tokens",
              file=sys.stderr)
        return 2
    if not torch.cuda.is_available():
        print("bench_intra_qk.py: needs a CUDA GPU", file=sys.stderr)
        return 2
    dev, rows = torch.device("cuda"), []
    for shape in shapes:
        H, K = SHAPES[shape]
        x = inputs(H, K, a.tokens // a.T, a.T, 64, dev)
        with tile_set("default"):
            ref_f = forward(x)
            ref_b = backward(x, ref_f[5])
        for c in configs:
            with tile_set(c):
                got_f = forward(x)
                got_b = backward(x, got_f[5])
                for part, fn, ref, got in (("fwd", lambda: forward(x), ref_f, got_f),
                                           ("bwd", lambda: backward(x, ref_f[5]), ref_b, got_b)):
                    ms = triton.testing.do_bench(fn, quantiles=[0.5])
                    dirs = ("fwd",) if part == "fwd" else ("bwd_cc", "bwd")
                    tiles = [cq.qk_config(d, K) + ((cq.qk_stages(),) if d == "bwd" else ()) for d in dirs]
                    rows.append({"part": part, "shape": shape, "H": H, "K": K, "T": a.T, "tokens": a.tokens,
                                 "config": c, "tiles": tiles, "ms": ms, "rel_vs_shipped": max_rel(ref, got)})
    emit_rows(rows, a.out)
    print("\n| part | shape | T | config | (BK, warps[, stages]) | ms | rel. diff vs shipped |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        tiles = " ".join(str(tuple(t)) for t in r["tiles"])
        print(f"| {r['part']} | {r['shape']} | {r['T']} | {r['config']} | {tiles} | {r['ms']:.4f} | "
              f"{r['rel_vs_shipped']:.1e} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
