#!/usr/bin/env python3
"""Where the op's no-grad forward spends host time (GPU): the host time per call against the time with a final
sync (equal when the host is the bottleneck), then cProfile's top functions over as many calls.

    PYTHONPATH=triton python3 scripts/host_profile_fwd.py                       # H16 K128 V128, B 8, T 4096, bf16
    PYTHONPATH=triton python3 scripts/host_profile_fwd.py --shape 6,256,512 --calls 20
"""
import argparse
import cProfile
import io
import pstats
import sys
import time

import torch

from mdn.bench.bench_op import make_inputs
from mdn.ops.momentum_delta_rule.chunk import chunk_momentum_delta_rule as op


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shape", default="16,128,128", help="H,K,V")
    p.add_argument("--T", type=int, default=4096)
    p.add_argument("--tokens", type=int, default=32768)
    p.add_argument("--calls", type=int, default=50)
    p.add_argument("--top", type=int, default=35)
    a = p.parse_args()
    if not torch.cuda.is_available():
        print("host_profile_fwd.py: needs a CUDA GPU", file=sys.stderr)
        return 2
    H, K, V = (int(x) for x in a.shape.split(","))
    B = max(1, a.tokens // a.T)
    xs = make_inputs(B, a.T, H, K, V, torch.bfloat16, "cuda", requires_grad=False)

    def fwd():
        return op(*xs, output_final_state=True, chunk_size=64)

    with torch.no_grad():
        for _ in range(5):
            fwd()
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(a.calls):
            fwd()
        t_host = (time.perf_counter() - t0) / a.calls
        torch.cuda.synchronize()
        t_all = (time.perf_counter() - t0) / a.calls
        print(f"H{H} K{K} V{V} B{B} T{a.T}: host per call {t_host * 1e3:.3f} ms, with sync {t_all * 1e3:.3f} ms")
        prof = cProfile.Profile()
        prof.enable()
        for _ in range(a.calls):
            fwd()
        prof.disable()
        torch.cuda.synchronize()
    for key in ("tottime", "cumulative"):
        out = io.StringIO()
        pstats.Stats(prof, stream=out).sort_stats(key).print_stats(a.top)
        print(out.getvalue())
    return 0


if __name__ == "__main__":
    sys.exit(main())
