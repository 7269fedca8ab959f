#!/usr/bin/env python
"""Benchmark the fused recurrent momentum delta rule on a GPU: decode steps and prefill, fwd and fwd+bwd.

Decode (T = 1 with a state cache) is memory-bound: each call reads and writes S and M
(4 * B*H*K*V fp32 values), so the report gives the effective bandwidth of that traffic next to the time.

    cd triton && ../.venv/bin/python ../scripts/bench_fused_recurrent.py [--json]

Prints one line per case (median of triton.testing.do_bench, in microseconds or milliseconds).
"""
from __future__ import annotations

import argparse
import json

import torch
import torch.nn.functional as F
from triton.testing import do_bench

from mdn.ops import fused_recurrent_momentum_delta_rule


def inputs(B, T, H, K, V, dtype, requires_grad=False):
    dev = "cuda"
    x = dict(
        q=torch.randn(B, T, H, K, device=dev, dtype=dtype),
        k=torch.randn(B, T, H, K, device=dev, dtype=dtype),
        v=torch.randn(B, T, H, V, device=dev, dtype=dtype),
        log_alpha=F.logsigmoid(torch.randn(B, T, H, device=dev) + 2),
        beta=0.1 * torch.rand(B, T, H, device=dev),
        log_mu=F.logsigmoid(torch.randn(B, T, H, device=dev) + 2),
        eta=torch.rand(B, T, H, device=dev),
        initial_state=torch.randn(2, B, H, K, V, device=dev),
    )
    if requires_grad:
        for t in x.values():
            t.requires_grad_(True)
    return x


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    rows = []
    shapes = [(6, 256, 512), (16, 128, 128)]
    for H, K, V in shapes:
        for B in (1, 8, 64):
            x = inputs(B, 1, H, K, V, torch.bfloat16)
            with torch.no_grad():
                fn = lambda: fused_recurrent_momentum_delta_rule(**x, output_final_state=True)  # noqa: E731
                us = do_bench(fn) * 1e3
            gbs = 4 * B * H * K * V * 4 / (us * 1e-6) / 1e9
            rows.append(dict(case="decode", B=B, T=1, H=H, K=K, V=V, us=round(us, 2), state_GBps=round(gbs, 1)))
        for B, T in ((1, 2048), (4, 2048)):
            x = inputs(B, T, H, K, V, torch.bfloat16)
            with torch.no_grad():
                ms_f = do_bench(lambda: fused_recurrent_momentum_delta_rule(**x))
            xg = inputs(B, T, H, K, V, torch.bfloat16, requires_grad=True)

            def fwd_bwd():
                o, _ = fused_recurrent_momentum_delta_rule(**xg)
                o.sum().backward()

            ms_fb = do_bench(fwd_bwd)
            peak = torch.cuda.max_memory_allocated() / 2**20
            rows.append(dict(case="prefill", B=B, T=T, H=H, K=K, V=V, fwd_ms=round(ms_f, 3),
                             fwd_bwd_ms=round(ms_fb, 3), peak_MiB=round(peak)))
            torch.cuda.reset_peak_memory_stats()
    dev = torch.cuda.get_device_name()
    for r in rows:
        r["device"] = dev
        print(json.dumps(r) if args.json else "  ".join(f"{k}={v}" for k, v in r.items()))


if __name__ == "__main__":
    main()
