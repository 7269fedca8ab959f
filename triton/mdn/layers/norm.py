"""RMSNorm and the gated per-head output norm (RMSNorm(o) * act(g))."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def upcast(x: torch.Tensor) -> torch.Tensor:
    """At least fp32 (fp64 stays fp64, so float64 tests keep their precision)."""
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


def rms_norm(x: torch.Tensor, weight: torch.Tensor | None, eps: float) -> torch.Tensor:
    """RMSNorm over the last dimension, computed in (at least) fp32, returned in x's dtype."""
    xf = upcast(x)
    y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    if weight is not None:
        y = y * upcast(weight)
    return y.to(x.dtype)


class RMSNorm(nn.Module):
    def __init__(self, hidden_size: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.empty(hidden_size))

    def reset_parameters(self) -> None:
        nn.init.ones_(self.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x, self.weight, self.eps)


_GATE_ACTS = {"sigmoid": torch.sigmoid, "swish": F.silu, "silu": F.silu}


class GatedRMSNorm(nn.Module):
    """Per-head output norm: RMSNorm over the head's value dim (shared weight [D]) times act(g)."""

    def __init__(self, head_dim: int, eps: float = 1e-6, activation: str = "sigmoid"):
        super().__init__()
        if activation not in _GATE_ACTS:
            raise ValueError(f"output gate activation={activation!r}: expected one of {sorted(_GATE_ACTS)}")
        self.eps = eps
        self.activation = activation
        self.weight = nn.Parameter(torch.empty(head_dim))

    def reset_parameters(self) -> None:
        nn.init.ones_(self.weight)

    def forward(self, o: torch.Tensor, g: torch.Tensor | None = None) -> torch.Tensor:
        # o, g: [B, T, H, D]
        y = rms_norm(o, self.weight, self.eps)
        if g is not None:
            y = (upcast(y) * _GATE_ACTS[self.activation](upcast(g))).to(o.dtype)
        return y
