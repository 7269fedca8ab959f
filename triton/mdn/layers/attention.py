"""Causal softmax attention (torch SDPA) with rotary position embeddings and a KV cache.

Used by the Transformer baseline and by the attention layers of the hybrids (spec §6.1: no qkv bias,
RoPE theta = 1e4, kv heads = heads unless set).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def rope_cos_sin(positions: torch.Tensor, head_dim: int, theta: float, dtype: torch.dtype):
    """cos, sin [T, head_dim] for integer positions [T] (the non-interleaved "rotate half" convention)."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, device=positions.device, dtype=torch.float32)
                                / head_dim))
    freqs = positions.float()[:, None] * inv_freq[None, :]  # [T, D/2]
    emb = torch.cat((freqs, freqs), dim=-1)  # [T, D]
    return emb.cos().to(dtype), emb.sin().to(dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    # x [B, T, H, D]; cos/sin [T, D]
    return x * cos[None, :, None, :] + rotate_half(x) * sin[None, :, None, :]


class Attention(nn.Module):
    def __init__(self, hidden_size: int, num_heads: int, num_kv_heads: int | None = None,
                 head_dim: int | None = None, rope_theta: float = 10000.0, qkv_bias: bool = False,
                 layer_idx: int | None = None):
        super().__init__()
        num_kv_heads = num_kv_heads or num_heads
        if head_dim is None:
            if hidden_size % num_heads:
                raise ValueError(f"hidden_size={hidden_size} is not divisible by attn num_heads={num_heads}")
            head_dim = hidden_size // num_heads
        if num_heads % num_kv_heads != 0:
            raise ValueError(f"attn num_heads={num_heads} is not a multiple of num_kv_heads={num_kv_heads}")
        if head_dim % 2:
            raise ValueError(f"attention head_dim={head_dim} must be even for RoPE")
        self.num_heads = num_heads
        self.num_kv_heads = num_kv_heads
        self.head_dim = head_dim
        self.rope_theta = rope_theta
        self.layer_idx = layer_idx
        self.q_proj = nn.Linear(hidden_size, num_heads * head_dim, bias=qkv_bias)
        self.k_proj = nn.Linear(hidden_size, num_kv_heads * head_dim, bias=qkv_bias)
        self.v_proj = nn.Linear(hidden_size, num_kv_heads * head_dim, bias=qkv_bias)
        self.o_proj = nn.Linear(num_heads * head_dim, hidden_size, bias=False)

    def forward(self, x: torch.Tensor, state: dict | None = None) -> torch.Tensor:
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.num_heads, self.head_dim)  # [B, T, H, D]
        k = self.k_proj(x).view(B, T, self.num_kv_heads, self.head_dim)
        v = self.v_proj(x).view(B, T, self.num_kv_heads, self.head_dim)
        offset = 0
        if state is not None and "k" in state:
            offset = state["k"].shape[1]
        pos = torch.arange(offset, offset + T, device=x.device)
        cos, sin = rope_cos_sin(pos, self.head_dim, self.rope_theta, q.dtype)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if state is not None:
            if "k" in state:
                k = torch.cat([state["k"], k], dim=1)
                v = torch.cat([state["v"], v], dim=1)
            state["k"], state["v"] = k, v
        S = k.shape[1]
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # [B, H, T, D]
        if self.num_kv_heads != self.num_heads:
            rep = self.num_heads // self.num_kv_heads
            k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
        if S == T:
            o = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:  # queries are the last T of S positions: query i sees keys 0 .. S-T+i
            mask = torch.ones(T, S, dtype=torch.bool, device=x.device).tril(diagonal=S - T)
            o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.o_proj(o.transpose(1, 2).reshape(B, T, self.num_heads * self.head_dim))
