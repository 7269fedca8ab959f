"""Output allocation for the kernels.

``empty`` is ``torch.empty``, except when the environment variable MDN_POISON_OUTPUTS=1 is set (the test suite
sets it): then every buffer a kernel is meant to overwrite starts as NaN, so an element the kernel forgets to
write shows up as a non-finite output instead of stale memory that happens to look right.
"""
from __future__ import annotations

import os

import torch


def poisoning() -> bool:
    return os.environ.get("MDN_POISON_OUTPUTS", "0") == "1"


def empty(*shape, dtype: torch.dtype, device) -> torch.Tensor:
    if poisoning():
        return torch.full(shape, float("nan"), dtype=dtype, device=device)
    return torch.empty(shape, dtype=dtype, device=device)
