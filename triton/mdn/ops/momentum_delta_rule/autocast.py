"""Run the public ops with autocast off: their dtypes are chosen explicitly (fp32 coefficients and states, bf16
tensor-core operands for 16-bit inputs). Under an enclosing `torch.autocast` the intra-chunk matmuls would
otherwise come out in bf16 and e.g. the triangular solve fails ("triangular_solve_cuda" has no BFloat16)."""
from __future__ import annotations

import functools

import torch


def no_autocast(fn):
    @functools.wraps(fn)
    def wrapper(q, *args, **kwargs):
        dev = q.device.type if isinstance(q, torch.Tensor) else "cpu"
        if torch.is_autocast_enabled(dev):
            with torch.autocast(device_type=dev, enabled=False):
                return fn(q, *args, **kwargs)
        return fn(q, *args, **kwargs)
    return wrapper
