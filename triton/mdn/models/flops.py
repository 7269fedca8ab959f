"""Training FLOPs per token, with a mixer term that is right for linear attention (linear in T).

    flops/token = 6 * N_matmul + 3 * sum over layers of F_mixer
      N_matmul  = non-embedding parameters + LM-head parameters (the head is a matmul; the input embedding
                  is a lookup and is not counted). 6 = 2 FLOPs per multiply-add * (forward + 2x backward).
      F_mixer   = forward FLOPs per token of the token-mixing products that are not parameter matmuls
                  (x3 for forward + backward), per layer:
        softmax attention (causal):  2 * H * D * (T + 1)       [QK^T and PV over (T+1)/2 keys on average]
        chunked linear attention with chunk C, per head with key dim K and value dim V:
                                     2 * H * (n_s*K*V + C*(n_k*K + n_v*V))
          MDN    n_s = 6, n_k = 4, n_v = 2   (spec §2.3/2.4: Y S0, Z M0, Q S0, Q M0, K^T(d_s V~), K^T(d_m V~);
                                              P K^T, Q K^T, Y, Z, and A V, the intra output)
          GDN    n_s = 3, n_k = 3, n_v = 2   (fla WY form: W S, K^T V_new, Q S; K K^T, A K, Q K^T; A V, intra)
          KDA    as GDN (per-channel decay changes no matmul shapes)
          Mamba2 n_s = 2, n_k = 1, n_v = 1 with K = state size, V = head dim, C = its chunk (SSD)
      The triangular solves (O(C^2) per token) and elementwise work are not counted.
MFU = flops/token * tokens/s per GPU / peak bf16 dense FLOP/s of the GPU.
"""
from __future__ import annotations

from .config import ModelConfig

# dense bf16 peak FLOP/s by device-name substring (first match wins)
PEAK_BF16 = (
    ("H200", 989.4e12),
    ("H100 PCIe", 756.0e12),
    ("H100", 989.4e12),
    ("GH200", 989.4e12),
    ("B200", 2250e12),
    ("A100", 312e12),
    ("L40S", 362e12),
    ("A10G", 125e12),
)

_LINEAR = {"mdn": (6, 4, 2), "gdn": (3, 3, 2), "kda": (3, 3, 2)}


def peak_flops(device_name: str) -> float | None:
    for key, val in PEAK_BF16:
        if key in device_name:
            return val
    return None


def mixer_forward_flops(cfg: ModelConfig, layer: int, seq_len: int) -> float:
    """Forward FLOPs per token of one layer's non-parameter token mixing (see module docstring)."""
    if cfg.is_attention_layer(layer):
        d_head = cfg.hidden_size // cfg.attn_num_heads
        return 2.0 * cfg.attn_num_heads * d_head * (seq_len + 1)
    if cfg.arch == "mamba2":
        d_inner = cfg.mamba_expand * cfg.hidden_size
        heads = d_inner // cfg.head_dim
        K, V, C = cfg.state_size, cfg.head_dim, cfg.mamba_chunk_size
        return 2.0 * heads * (2 * K * V + C * (K + V))
    n_s, n_k, n_v = _LINEAR[cfg.arch]
    K = cfg.head_dim
    V = int(cfg.head_dim * cfg.expand_v)
    C = min(cfg.chunk_size, seq_len)
    return 2.0 * cfg.num_heads * (n_s * K * V + C * (n_k * K + n_v * V))


def flops_per_token(cfg: ModelConfig, seq_len: int, non_embedding_params: int) -> float:
    head = cfg.hidden_size * cfg.vocab_size  # the LM head matmul (tied or not, it is computed)
    mixer = sum(mixer_forward_flops(cfg, i, seq_len) for i in range(cfg.num_layers))
    return 6.0 * (non_embedding_params + head) + 3.0 * mixer
