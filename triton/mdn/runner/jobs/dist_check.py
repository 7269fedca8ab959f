"""`dist_check`: a torch.distributed smoke test for torchrun/Slurm launches.

Every rank joins the process group from torchrun's environment (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT),
all-reduces a tensor holding rank + 1, and checks the sum is world_size * (world_size + 1) / 2.
Params: backend ("gloo" | "nccl" | "auto": nccl when CUDA is available, else gloo), numel (default 1024),
steps (default 3), timeout_s (default 120).
"""
from __future__ import annotations

import datetime
import os
import socket

from ..protocol import JobError


def run(params: dict, ctx) -> dict:
    import torch
    import torch.distributed as dist

    for key in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        if key not in os.environ:
            raise JobError("user", f"dist_check needs {key} in the environment: run it under torchrun")
    backend = params.get("backend", "auto")
    if backend not in ("auto", "gloo", "nccl"):
        raise ValueError(f"backend={backend!r}: expected 'auto', 'gloo' or 'nccl'")
    if backend == "auto":
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    numel = int(params.get("numel", 1024))
    steps = int(params.get("steps", 3))
    if numel < 1 or steps < 1:
        raise ValueError(f"numel={numel}, steps={steps}: expected positive integers")
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device("cpu")
    if backend == "nccl":
        if not torch.cuda.is_available():
            raise JobError("unavailable", "backend nccl needs CUDA")
        device = torch.device("cuda", local_rank % torch.cuda.device_count())
        torch.cuda.set_device(device)
    dist.init_process_group(backend, timeout=datetime.timedelta(seconds=float(params.get("timeout_s", 120))))
    try:
        want = world * (world + 1) / 2
        for step in range(steps):
            x = torch.full((numel,), float(rank + 1), device=device)  # [numel]
            dist.all_reduce(x)
            got = x.double().cpu()
            if not bool((got == want).all()):
                raise JobError("incorrect", f"all_reduce step {step}: got {got[0].item()}, want {want}")
            ctx.progress(step + 1, steps, "all_reduce")
        ctx.metric({"step": steps, "allreduce_sum": want, "rank": rank})
        dist.barrier()
    finally:
        dist.destroy_process_group()
    return {"rank": rank, "world_size": world, "local_rank": local_rank, "backend": backend,
            "host": socket.gethostname(), "allreduce_sum": want, "numel": numel, "steps": steps}
