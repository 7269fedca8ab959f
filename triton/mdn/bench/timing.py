"""Timers: triton.testing.do_bench on CUDA (median, p20, p80 of CUDA-event times, L2 flushed between runs), and a
wall-clock loop on the CPU. Peak memory is the CUDA allocator's high-water mark during one call."""
from __future__ import annotations

import statistics
import time
from typing import Callable


def bench_cuda(fn: Callable[[], None], warmup_ms: int, rep_ms: int, grad_to_none=None) -> dict:
    from triton.testing import do_bench
    med, p20, p80 = do_bench(fn, warmup=warmup_ms, rep=rep_ms, grad_to_none=grad_to_none, quantiles=[0.5, 0.2, 0.8])
    return {"median_ms": float(med), "p20_ms": float(p20), "p80_ms": float(p80), "timer": "do_bench"}


def bench_wall(fn: Callable[[], None], warmup_ms: int, rep_ms: int, min_runs: int = 3, max_runs: int = 1000) -> dict:
    """Wall-clock timing for the CPU: warm up for warmup_ms (one call at least), then time calls until rep_ms
    has passed (min_runs to max_runs calls)."""
    t_end = time.perf_counter() + warmup_ms / 1e3
    fn()
    while time.perf_counter() < t_end:
        fn()
    times = []
    t_end = time.perf_counter() + rep_ms / 1e3
    while len(times) < min_runs or (time.perf_counter() < t_end and len(times) < max_runs):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    q = statistics.quantiles(times, n=10, method="inclusive") if len(times) > 1 else [times[0]] * 9
    return {"median_ms": statistics.median(times), "p20_ms": q[1], "p80_ms": q[7], "timer": "wall_clock",
            "runs": len(times)}


def peak_memory_gib(fn: Callable[[], None]) -> float:
    """Extra CUDA memory at the peak of one call, beyond what was allocated before it (inputs, weights)."""
    import torch
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**30


def emit_rows(rows: list, out: str = "") -> None:
    """Tag each row with the GPU and the torch / Triton versions, print it as a JSON line and append it to ``out``
    (when given): the kernel microbenchmarks' common output."""
    import json

    import torch
    import triton

    info = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__}
    lines = []
    for r in rows:
        r.update(info)
        lines.append(json.dumps(r))
        print(lines[-1])
    if out:
        with open(out, "a") as f:
            f.write("".join(line + "\n" for line in lines))
