"""Checkpoints: torch.distributed.checkpoint (DCP) of model + optimizer, one directory per step.

    <out>/checkpoints/step_000015/   .metadata, __*_*.distcp (one file per rank), meta.json
    <out>/checkpoints/latest         "step_000015"

The same code path serves a single process, DDP and FSDP2 (state dicts come from ``get_state_dict``, which
removes wrapper prefixes and gathers FSDP shards' metadata). A checkpoint is written to ``step_N.tmp`` and
renamed once every rank has finished, so a kill mid-write never leaves a half checkpoint behind as "latest".
"""
from __future__ import annotations

import json
import os
import shutil
import warnings


from .distributed import DistInfo, barrier


def ckpt_root(out_dir: str) -> str:
    return os.path.join(out_dir, "checkpoints")


def _name(step: int) -> str:
    return f"step_{step:06d}"


def latest(out_dir: str) -> tuple[str, int] | None:
    """(path, step) of the newest complete checkpoint, or None."""
    root = ckpt_root(out_dir)
    cands = []
    if os.path.isdir(root):
        for d in os.listdir(root):
            p = os.path.join(root, d)
            if d.startswith("step_") and not d.endswith(".tmp") and os.path.exists(os.path.join(p, "meta.json")):
                try:
                    cands.append((int(d[5:]), p))
                except ValueError:
                    continue
    if not cands:
        return None
    step, path = max(cands)
    return path, step


def _state(model, optimizer):
    from torch.distributed.checkpoint.state_dict import get_state_dict

    msd, osd = get_state_dict(model, optimizer)
    return {"model": msd, "optim": osd}


def save(out_dir: str, step: int, model, optimizer, info: DistInfo, meta: dict, keep: int = 2) -> str:
    import torch.distributed.checkpoint as dcp

    root = ckpt_root(out_dir)
    final = os.path.join(root, _name(step))
    tmp = final + ".tmp"
    if info.is_main:
        os.makedirs(root, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
    barrier(info)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*assuming the intent is to.*")
        dcp.save(_state(model, optimizer), checkpoint_id=tmp, no_dist=not info.initialized)
    barrier(info)
    if info.is_main:
        with open(os.path.join(tmp, "meta.json"), "w") as f:
            json.dump(dict(meta, step=step), f, indent=1)
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        with open(os.path.join(root, "latest.tmp"), "w") as f:
            f.write(_name(step) + "\n")
        os.replace(os.path.join(root, "latest.tmp"), os.path.join(root, "latest"))
        _prune(root, keep)
    barrier(info)
    return final


def _prune(root: str, keep: int) -> None:
    steps = sorted(d for d in os.listdir(root) if d.startswith("step_") and not d.endswith(".tmp"))
    for d in steps[:-keep] if keep > 0 else []:
        shutil.rmtree(os.path.join(root, d), ignore_errors=True)


def load(path: str, model, optimizer, info: DistInfo) -> dict:
    """Load model and optimizer state in place; returns meta.json."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import set_state_dict

    state = _state(model, optimizer)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*assuming the intent is to.*")
        dcp.load(state, checkpoint_id=path, no_dist=not info.initialized)
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
    with open(os.path.join(path, "meta.json")) as f:
        return json.load(f)


def peek_meta(path: str) -> dict:
    with open(os.path.join(path, "meta.json")) as f:
        return json.load(f)


__all__ = ["ckpt_root", "latest", "load", "peek_meta", "save"]
