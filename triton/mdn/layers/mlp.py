"""SwiGLU feed-forward block: down(silu(gate(x)) * up(x))."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def swiglu_intermediate_size(hidden_size: int, multiple_of: int = 256) -> int:
    """(8/3)·d rounded up to a multiple of 256 (spec §6.1: 2816 for d = 1024, 5632 for d = 2048)."""
    n = int(hidden_size * 8 / 3)
    return multiple_of * ((n + multiple_of - 1) // multiple_of)


class SwiGLU(nn.Module):
    def __init__(self, hidden_size: int, intermediate_size: int):
        super().__init__()
        self.gate_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.up_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.down_proj = nn.Linear(intermediate_size, hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))
