"""Float64 references for the baselines, written from their recurrences (independent of the libraries timed).

All take [B, T, H, *] tensors and return (o [B, T, H, V], final state [B, H, K, V]); they compute in the dtype of
q (the gate uses float64). MDN's reference is ``mdn.ops.naive.naive_recurrent_momentum_delta_rule``.
"""
from __future__ import annotations

import torch

from mdn.ops.naive import l2norm


def gated_delta_rule(q, k, v, g, beta, scale=None, use_qk_l2norm=True):
    """GDN: S_t = exp(g_t) S_{t-1} + beta_t k_t (v_t - (exp(g_t) S_{t-1})^T k_t)^T,  o_t = scale S_t^T q_t."""
    return _delta(q, k, v, g[..., None].expand_as(k), beta, scale, use_qk_l2norm)


def kda(q, k, v, g, beta, scale=None, use_qk_l2norm=True):
    """KDA: the delta rule with a per-channel decay g [B, T, H, K] (diag(exp g_t) applied to S's K rows)."""
    return _delta(q, k, v, g, beta, scale, use_qk_l2norm)


def _delta(q, k, v, g, beta, scale, use_qk_l2norm):
    B, T, H, K = q.shape
    V = v.shape[-1]
    scale = K ** -0.5 if scale is None else scale
    if use_qk_l2norm:
        q, k = l2norm(q), l2norm(k)
    S = q.new_zeros(B, H, K, V)
    outs = []
    for t in range(T):
        S = S * g[:, t].exp()[..., None]  # [B, H, K, V]
        r = v[:, t] - torch.einsum('bhk,bhkv->bhv', k[:, t], S)
        S = S + torch.einsum('bhk,bhv->bhkv', beta[:, t, :, None] * k[:, t], r)
        outs.append(scale * torch.einsum('bhk,bhkv->bhv', q[:, t], S))
    return torch.stack(outs, 1), S


def simple_gla(q, k, v, g, scale=None):
    """SSD / simple GLA: S_t = exp(g_t) S_{t-1} + k_t v_t^T,  o_t = scale S_t^T q_t (no normalisation)."""
    B, T, H, K = q.shape
    V = v.shape[-1]
    scale = K ** -0.5 if scale is None else scale
    S = q.new_zeros(B, H, K, V)
    outs = []
    for t in range(T):
        S = S * g[:, t].exp()[..., None, None] + torch.einsum('bhk,bhv->bhkv', k[:, t], v[:, t])
        outs.append(scale * torch.einsum('bhk,bhkv->bhv', q[:, t], S))
    return torch.stack(outs, 1), S


def causal_attention(q, k, v, scale=None):
    """Softmax attention with a causal mask; [B, T, H, D] in and out; no state."""
    T, D = q.shape[1], q.shape[-1]
    scale = D ** -0.5 if scale is None else scale
    s = torch.einsum('bthd,bshd->bhts', q, k) * scale
    mask = torch.ones(T, T, dtype=torch.bool, device=q.device).tril()
    p = s.masked_fill(~mask, float('-inf')).softmax(-1)
    return torch.einsum('bhts,bshd->bthd', p, v), None
