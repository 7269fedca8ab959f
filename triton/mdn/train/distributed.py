"""Process-group set-up and model wrapping (none / DDP / FSDP2).

Under torchrun (RANK/WORLD_SIZE/LOCAL_RANK in the environment) every rank joins the default group (NCCL on GPU,
gloo on CPU); otherwise the run is a single process without a group.
"""
from __future__ import annotations

import ctypes
import datetime
import os
import signal
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn as nn


@dataclass
class DistInfo:
    rank: int
    world: int
    local_rank: int
    device: torch.device
    initialized: bool

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _die_with_parent() -> None:
    """Under torchrun, workers run in their own sessions; make sure none outlives a SIGKILLed torchrun."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        PR_SET_PDEATHSIG = 1
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except OSError:
        pass


def setup(device: str) -> DistInfo:
    """device: auto | cpu | cuda."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ImportError("train.device = 'cuda' but no CUDA device is visible")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device == "cuda":
        dev = torch.device("cuda", local_rank % torch.cuda.device_count())
        torch.cuda.set_device(dev)
    else:
        dev = torch.device("cpu")
    initialized = False
    if "RANK" in os.environ and "MASTER_ADDR" in os.environ:
        _die_with_parent()
        if not dist.is_initialized():
            dist.init_process_group("nccl" if device == "cuda" else "gloo",
                                    timeout=datetime.timedelta(minutes=30))
        initialized = True
        world, rank = dist.get_world_size(), dist.get_rank()
    return DistInfo(rank=rank, world=world, local_rank=local_rank, device=dev, initialized=initialized)


def teardown(info: DistInfo) -> None:
    if info.initialized and dist.is_initialized():
        dist.destroy_process_group()


def choose_strategy(strategy: str, world: int, num_params: int, fsdp_min_params: int) -> str:
    if strategy != "auto":
        return strategy
    if world == 1:
        return "none"
    return "fsdp" if num_params >= fsdp_min_params else "ddp"


def wrap(model: nn.Module, strategy: str, info: DistInfo, bf16: bool) -> nn.Module:
    """Apply DDP or FSDP2 (``fully_shard`` per block, then the root; bf16 params with fp32 reduction)."""
    if strategy == "none":
        return model
    if not info.initialized:
        raise ValueError(f"parallel.strategy = {strategy!r} needs a torchrun launch (no process group here)")
    if strategy == "ddp":
        from torch.nn.parallel import DistributedDataParallel as DDP

        ids = [info.device.index] if info.device.type == "cuda" else None
        return DDP(model, device_ids=ids)
    if strategy == "fsdp":
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16 if bf16 else None,
                                  reduce_dtype=torch.float32 if bf16 else None)
        for block in model.layers:
            fully_shard(block, mp_policy=mp)
        fully_shard(model, mp_policy=mp)
        return model
    raise ValueError(f"parallel.strategy = {strategy!r}: expected none, ddp or fsdp")


def all_reduce_mean(x: torch.Tensor, info: DistInfo) -> torch.Tensor:
    if info.initialized and info.world > 1:
        x = x.clone()
        dist.all_reduce(x)
        x /= info.world
    return x


def any_rank(flag: bool, info: DistInfo) -> bool:
    """True on every rank when ``flag`` is true on any rank (so all ranks stop at the same step)."""
    if not (info.initialized and info.world > 1):
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=info.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def barrier(info: DistInfo) -> None:
    if info.initialized and info.world > 1:
        dist.barrier()
