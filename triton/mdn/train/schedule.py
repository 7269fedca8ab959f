"""Learning-rate schedule: linear warmup from 0, then cosine (or linear) decay to min_lr_ratio * lr.

A pure function of the step, so a resumed run needs no scheduler state.
"""
from __future__ import annotations

import math


def lr_at(step: int, *, lr: float, steps: int, warmup_steps: int, min_lr_ratio: float = 0.1,
          schedule: str = "cosine") -> float:
    """LR used for optimizer step ``step`` (0-based) of ``steps``."""
    if schedule == "constant":
        return lr if step >= warmup_steps else lr * (step + 1) / warmup_steps
    if warmup_steps > 0 and step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    decay_steps = max(1, steps - warmup_steps)
    frac = min(1.0, (step - warmup_steps) / decay_steps)
    if schedule == "cosine":
        shape = 0.5 * (1.0 + math.cos(math.pi * frac))
    elif schedule == "linear":
        shape = 1.0 - frac
    else:
        raise ValueError(f"optim.schedule = {schedule!r}: expected cosine, linear or constant")
    return lr * (min_lr_ratio + (1.0 - min_lr_ratio) * shape)
