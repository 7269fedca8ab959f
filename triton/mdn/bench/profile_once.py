"""One fwd+bwd of the chunk op between cudaProfilerStart / cudaProfilerStop, after warm-up calls, for a profiler
that starts collecting there (Nsight Compute: `ncu --profile-from-start off`; scripts/gpu_ncu.sh). The warm-up calls
compile and autotune everything, so the profiled call runs exactly what a timed one runs.

    python3 mdn/bench/profile_once.py --shape h6k256v512 --T 8192 [--tokens 32768] [--warmup 3] [--fwd-only]
"""
from __future__ import annotations

import argparse
import sys

from mdn.bench.bench_op import SHAPES, make_inputs


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", choices=sorted(SHAPES), default="h6k256v512")
    ap.add_argument("--T", type=int, default=8192)
    ap.add_argument("--tokens", type=int, default=32768)
    ap.add_argument("--dtype", choices=("bf16", "fp16", "fp32"), default="bf16")
    ap.add_argument("--chunk-size", type=int, default=64)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--fwd-only", action="store_true", help="profile the no-grad forward instead")
    ap.add_argument("--device", choices=("cuda", "cpu"), default="cuda",
                    help="cpu: a smoke run of the same steps (no profiler range; tests)")
    a = ap.parse_args(argv)
    import torch
    from mdn.ops.momentum_delta_rule.chunk import chunk_momentum_delta_rule as op
    on_gpu = a.device == "cuda"
    if on_gpu and not torch.cuda.is_available():
        print("profile_once: needs a CUDA GPU", file=sys.stderr)
        return 2
    if a.T < 1 or a.tokens < 1 or a.warmup < 0:
        print(f"profile_once: --T, --tokens must be >= 1 and --warmup >= 0, got {a.T}, {a.tokens}, {a.warmup}",
              file=sys.stderr)
        return 2
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[a.dtype]
    H, K, V = SHAPES[a.shape]
    B = max(1, a.tokens // a.T)
    xs = make_inputs(B, a.T, H, K, V, dtype, a.device, requires_grad=not a.fwd_only)
    do = torch.randn(B, a.T, H, V, device=a.device, dtype=dtype)

    def call():
        if a.fwd_only:
            with torch.no_grad():
                op(*xs, output_final_state=True, chunk_size=a.chunk_size)
            return
        for x in xs:
            x.grad = None
        o, _ = op(*xs, output_final_state=True, chunk_size=a.chunk_size)
        o.backward(do)

    def sync():
        if on_gpu:
            torch.cuda.synchronize()

    for _ in range(a.warmup):
        call()
    sync()
    if on_gpu:
        torch.cuda.cudart().cudaProfilerStart()
    call()
    sync()
    if on_gpu:
        torch.cuda.cudart().cudaProfilerStop()
    print(f"profile_once: {a.shape} B {B} T {a.T} {a.dtype} C {a.chunk_size} "
          f"{'fwd' if a.fwd_only else 'fwd+bwd'} on {torch.cuda.get_device_name() if on_gpu else 'cpu'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
