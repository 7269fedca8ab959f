#!/usr/bin/env python3
"""Where the op's no-grad forward spends host time (GPU): the host time per call against the time with a final
sync (equal when the host is the bottleneck), then cProfile's top functions over as many calls.

    PYTHONPATH=triton python3 scripts/host_profile_fwd.py                       # H16 K128 V128, B 8, T 4096, bf16
    PYTHONPATH=triton python3 scripts/host_profile_fwd.py --shape 6,256,512 --calls 20
    PYTHONPATH=triton python3 scripts/host_profile_fwd.py --T 2048 --stages --torch-profile

--stages: host time per call of each stage of chunk.py's forward (wrapped module functions, no sync between
them); --torch-profile: torch.profiler's CPU-side table (custom ops, aten ops, launches) of as many calls.
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


def stage_times(fwd, calls: int) -> None:
    """Host time per call in each stage of chunk.py's forward (wrapped module functions), in the bodies of the op's
    torch.library custom ops (their own code and launches, without the dispatcher) and in Triton's launcher per
    kernel. Nested: the custom ops run inside the stages, the launches inside the custom ops."""
    import triton
    from mdn.ops.momentum_delta_rule import chunk as ch, chunk_intra_qk, chunk_scan_pqk, intra_gates, tril_inverse
    acc: dict = {}

    def timed(n, f):
        def w(*args, **kwargs):
            t = time.perf_counter()
            try:
                return f(*args, **kwargs)
            finally:
                acc[n] = acc.get(n, 0.0) + time.perf_counter() - t
        return w

    undo = []
    for n in ["check_inputs", "chunk_table", "_run_intra", "_v_chunks", "chunk_scan_pqk", "_unpack_dense"]:
        undo.append((ch, n, getattr(ch, n)))
        setattr(ch, n, timed("stage " + n, getattr(ch, n)))
    for op in (intra_gates.intra_gates_op, chunk_intra_qk.intra_qk_op, tril_inverse.tril_inverse_op,
               chunk_scan_pqk.scan_pqk_fwd):
        fns = op._backend_fns
        for key in list(fns):
            undo.append((fns, key, fns[key]))
            fns[key] = timed("op body " + op._name, fns[key])
    run = triton.runtime.jit.JITFunction.run

    def run_timed(self, *args, **kwargs):
        t = time.perf_counter()
        try:
            return run(self, *args, **kwargs)
        finally:
            n = "launch " + self.fn.__name__
            acc[n] = acc.get(n, 0.0) + time.perf_counter() - t
    triton.runtime.jit.JITFunction.run = run_timed
    try:
        for _ in range(3):
            fwd()
        acc.clear()
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(calls):
            fwd()
        total = time.perf_counter() - t0
        torch.cuda.synchronize()
    finally:
        triton.runtime.jit.JITFunction.run = run
        for obj, key, val in undo:
            if isinstance(obj, dict):
                obj[key] = val
            else:
                setattr(obj, key, val)
    for n in sorted(acc):
        print(f"{n:60s} {acc[n] / calls * 1e3:7.3f} ms per call")
    stages = sum(v for n, v in acc.items() if n.startswith("stage "))
    print(f"{'stage (rest)':60s} {(total - stages) / calls * 1e3:7.3f} ms per call")
    print(f"{'(total)':60s} {total / calls * 1e3:7.3f} ms per call")


def torch_profile(fwd, calls: int, top: int) -> None:
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(calls):
            fwd()
        torch.cuda.synchronize()
    print(prof.key_averages().table(sort_by="cpu_time_total", row_limit=top, max_name_column_width=60))


def gdn_time(B, T, H, K, V, calls: int) -> None:
    """Host time per call of fla's chunk_gated_delta_rule forward at the same shape (bf16)."""
    import torch.nn.functional as F
    from fla.ops.gated_delta_rule import chunk_gated_delta_rule
    q, k = (torch.randn(B, T, H, K, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    v = torch.randn(B, T, H, V, device="cuda", dtype=torch.bfloat16)
    g = F.logsigmoid(torch.randn(B, T, H, device="cuda"))
    beta = torch.rand(B, T, H, device="cuda", dtype=torch.bfloat16)

    def f():
        return chunk_gated_delta_rule(q, k, v, g, beta, output_final_state=True, use_qk_l2norm_in_kernel=True)
    for _ in range(5):
        f()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(calls):
        f()
    t_host = (time.perf_counter() - t0) / calls
    torch.cuda.synchronize()
    t_all = (time.perf_counter() - t0) / calls
    print(f"GDN B{B} T{T} H{H} K{K} V{V}: host per call {t_host * 1e3:.3f} ms, with sync {t_all * 1e3:.3f} ms")


def launch_time(n: int) -> None:
    """Host time of one launch of a one-program Triton kernel with four pointer and two int arguments."""
    import triton
    import triton.language as tl

    @triton.jit
    def _noop_kernel(a, b, c, d, n, m, BLOCK: tl.constexpr):
        i = tl.arange(0, BLOCK)
        tl.store(a + i, tl.load(b + i, mask=i < n) + m, mask=i < n)

    x = torch.zeros(64, device="cuda")
    for _ in range(10):
        _noop_kernel[(1,)](x, x, x, x, 64, 1, BLOCK=64)
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(n):
        _noop_kernel[(1,)](x, x, x, x, 64, 1, BLOCK=64)
    dt = (time.perf_counter() - t) / n
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(n):
        x.add_(1)
    dt2 = (time.perf_counter() - t) / n
    torch.cuda.synchronize()
    print(f"launch: Triton JIT launch {dt * 1e6:.1f} us host, torch add_ {dt2 * 1e6:.1f} us host")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shape", default="16,128,128", help="H,K,V")
    p.add_argument("--T", type=int, default=4096)
    p.add_argument("--tokens", type=int, default=32768)
    p.add_argument("--calls", type=int, default=50)
    p.add_argument("--top", type=int, default=35)
    p.add_argument("--stages", action="store_true", help="host time of each stage of the forward")
    p.add_argument("--torch-profile", action="store_true", help="torch.profiler CPU table")
    p.add_argument("--gdn", action="store_true", help="also the host time of fla's chunk_gated_delta_rule forward")
    p.add_argument("--launch", action="store_true", help="host time of one launch of a trivial Triton kernel")
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
        if a.stages:
            stage_times(fwd, a.calls)
        if a.torch_profile:
            torch_profile(fwd, a.calls, a.top)
        if a.gdn:
            gdn_time(B, a.T, H, K, V, a.calls)
        if a.launch:
            launch_time(a.calls * 20)
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
