"""Depthwise causal short convolution (kernel W, no bias by default) with a decoding cache.

The cache holds the last W-1 inputs of each channel, [B, C, W-1], so a prefill of any length followed by
single-token steps gives the same outputs as one pass over the whole sequence.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


class ShortConvolution(nn.Module):
    def __init__(self, channels: int, kernel_size: int = 4, bias: bool = False, activation: str | None = "silu"):
        super().__init__()
        if kernel_size < 1:
            raise ValueError(f"conv_size={kernel_size}: expected >= 1")
        if activation not in ("silu", None):
            raise ValueError(f"short conv activation={activation!r}: expected 'silu' or None")
        self.channels = channels
        self.kernel_size = kernel_size
        self.activation = activation
        self.weight = nn.Parameter(torch.empty(channels, 1, kernel_size))  # nn.Conv1d layout, depthwise
        self.bias = nn.Parameter(torch.empty(channels)) if bias else None

    def reset_parameters(self, std: float | None = None) -> None:
        if std is None:  # PyTorch's Conv1d default (kaiming uniform with a = sqrt(5)) for fan_in = kernel_size
            bound = 1.0 / math.sqrt(self.kernel_size)
            nn.init.uniform_(self.weight, -bound, bound)
        else:
            nn.init.normal_(self.weight, 0.0, std)
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def forward(self, x: torch.Tensor, cache: torch.Tensor | None = None, output_final_state: bool = False):
        """x: [B, T, C]; cache: [B, C, W-1] or None. Returns (y [B, T, C], new cache or None)."""
        B, T, C = x.shape
        W = self.kernel_size
        xt = x.transpose(1, 2)  # [B, C, T]
        if cache is None:
            xp = F.pad(xt, (W - 1, 0))
        else:
            xp = torch.cat([cache.to(xt.dtype), xt], dim=-1)  # [B, C, W-1+T]
        y = F.conv1d(xp, self.weight.to(xt.dtype), None if self.bias is None else self.bias.to(xt.dtype),
                     groups=C)  # [B, C, T]
        new_cache = xp[..., xp.shape[-1] - (W - 1):].detach() if output_final_state and W > 1 else None
        if output_final_state and W == 1:
            new_cache = xt.new_zeros(B, C, 0)
        y = y.transpose(1, 2)
        if self.activation == "silu":
            y = F.silu(y)
        return y, new_cache
