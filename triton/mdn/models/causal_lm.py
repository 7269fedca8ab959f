"""A causal language model: embedding -> pre-norm blocks (mixer + SwiGLU MLP) -> RMSNorm -> LM head.

Plain ``nn.Module`` core; ``model(input_ids) -> logits [B, T, vocab]``. Decoding keeps a per-layer state cache
(recurrent state + conv state for linear mixers, K/V for attention): ``model(ids, cache=model.new_cache())``.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.utils.checkpoint

from ..layers.attention import Attention
from ..layers.conv import ShortConvolution
from ..layers.fla_mixers import FlaMixer
from ..layers.gated_deltanet import GatedDeltaNet
from ..layers.mlp import SwiGLU
from ..layers.momentum_deltanet import MomentumDeltaNet
from ..layers.norm import RMSNorm
from .config import ModelConfig


class Cache:
    """Per-layer decoding state: ``layers[i]`` is the dict layer i reads and updates in place."""

    def __init__(self, num_layers: int):
        self.layers: list[dict] = [{} for _ in range(num_layers)]
        self.seen_tokens = 0


def make_mixer(cfg: ModelConfig, i: int) -> nn.Module:
    d = cfg.hidden_size
    if cfg.is_attention_layer(i):
        return Attention(d, cfg.attn_num_heads, cfg.attn_num_kv_heads, rope_theta=cfg.rope_theta, layer_idx=i)
    common = dict(hidden_size=d, num_heads=cfg.num_heads, head_dim=cfg.head_dim, expand_v=cfg.expand_v,
                  conv_size=cfg.conv_size, use_short_conv=cfg.use_short_conv, use_output_gate=cfg.use_output_gate,
                  output_gate_act=cfg.gate_act(), norm_eps=cfg.norm_eps, layer_idx=i)
    if cfg.arch == "mdn":
        return MomentumDeltaNet(**common, gate_mode=cfg.gate_mode, min_log_mu=cfg.min_log_mu,
                                tau_factor=cfg.tau_factor, use_output_correction=cfg.use_output_correction,
                                use_p_times_alpha=cfg.use_p_times_alpha, chunk_size=cfg.chunk_size,
                                mixer_impl=cfg.mixer_impl)
    if cfg.arch == "gdn":
        if cfg.mixer_impl == "fla_layer":  # fla's whole GatedDeltaNet layer (its fused conv/gate paths)
            return FlaMixer("gdn_fla", hidden_size=d, num_heads=cfg.num_heads, head_dim=cfg.head_dim,
                            expand_v=cfg.expand_v, conv_size=cfg.conv_size, use_short_conv=cfg.use_short_conv,
                            use_gate=cfg.use_output_gate, norm_eps=cfg.norm_eps, layer_idx=i)
        return GatedDeltaNet(**common, mixer_impl=cfg.mixer_impl)
    if cfg.arch == "kda":
        return FlaMixer("kda", hidden_size=d, num_heads=cfg.num_heads, head_dim=cfg.head_dim,
                        expand_v=cfg.expand_v, conv_size=cfg.conv_size, use_short_conv=cfg.use_short_conv,
                        norm_eps=cfg.norm_eps, layer_idx=i)
    if cfg.arch == "mamba2":
        return FlaMixer("mamba2", hidden_size=d, head_dim=cfg.head_dim, state_size=cfg.state_size,
                        expand=cfg.mamba_expand, n_groups=cfg.n_groups, conv_kernel=cfg.conv_size,
                        chunk_size=cfg.mamba_chunk_size, norm_eps=cfg.norm_eps, layer_idx=i)
    raise ValueError(f"model.arch = {cfg.arch!r}: no mixer for layer {i}")


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, i: int):
        super().__init__()
        self.mixer_norm = RMSNorm(cfg.hidden_size, cfg.norm_eps)
        self.mixer = make_mixer(cfg, i)
        if cfg.mlp:
            self.mlp_norm = RMSNorm(cfg.hidden_size, cfg.norm_eps)
            self.mlp = SwiGLU(cfg.hidden_size, cfg.ffn_size)

    def forward(self, x: torch.Tensor, state: dict | None = None) -> torch.Tensor:
        x = x + self.mixer(self.mixer_norm(x), state)
        if hasattr(self, "mlp"):
            x = x + self.mlp(self.mlp_norm(x))
        return x


class CausalLM(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.config = cfg
        self.embeddings = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(Block(cfg, i) for i in range(cfg.num_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.norm_eps)
        self.lm_head = None if cfg.tie_embeddings else nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        self.activation_checkpointing = False  # recompute each block in the backward (set by the trainer)

    # ---------------------------------------------------------------------------------------------- init
    @torch.no_grad()
    def init_weights(self) -> None:
        """Initialise every parameter explicitly (uses the global RNG; seed before calling).

        Linear/conv weights and embeddings ~ N(0, initializer_range), biases 0, norm weights 1, the mixers'
        per-head scalars by their own ``reset_parameters`` (spec §5.1), and the residual output projections
        (o_proj, out_proj, down_proj) scaled by 1/sqrt(residuals per block * num_layers) (GPT-2 style).
        """
        cfg = self.config
        std = cfg.initializer_range
        for mod in self.modules():
            if isinstance(mod, (nn.Linear, nn.Conv1d)):
                nn.init.normal_(mod.weight, 0.0, std)
                if mod.bias is not None:
                    nn.init.zeros_(mod.bias)
            elif isinstance(mod, nn.Embedding):
                nn.init.normal_(mod.weight, 0.0, std)
            elif isinstance(mod, ShortConvolution):
                mod.reset_parameters(std=std)
            elif mod is not self and type(mod).__module__.startswith("mdn.") and hasattr(mod, "reset_parameters"):
                mod.reset_parameters()
        if cfg.rescale_residual:
            per_block = 2 if cfg.mlp else 1
            scale = 1.0 / math.sqrt(per_block * cfg.num_layers)
            for name, p in self.named_parameters():
                if name.endswith(("o_proj.weight", "out_proj.weight", "down_proj.weight")):
                    p.mul_(scale)

    # ---------------------------------------------------------------------------------------------- forward
    def new_cache(self) -> Cache:
        return Cache(len(self.layers))

    def hidden_states(self, input_ids: torch.Tensor, cache: Cache | None = None) -> torch.Tensor:
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be [B, T], got shape {tuple(input_ids.shape)}")
        x = self.embeddings(input_ids)  # [B, T, d]
        ckpt = self.activation_checkpointing and cache is None and torch.is_grad_enabled()
        for i, block in enumerate(self.layers):
            if ckpt:
                x = torch.utils.checkpoint.checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x, None if cache is None else cache.layers[i])
        if cache is not None:
            cache.seen_tokens += input_ids.shape[1]
        return self.norm(x)

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        w = self.embeddings.weight if self.lm_head is None else self.lm_head.weight
        return nn.functional.linear(h, w)

    def forward(self, input_ids: torch.Tensor, cache: Cache | None = None) -> torch.Tensor:
        """logits [B, T, vocab]; with ``cache`` the states are read and advanced in place (decoding)."""
        return self.logits(self.hidden_states(input_ids, cache))

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, max_new_tokens: int, temperature: float = 0.0,
                 top_k: int | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
        """Prefill once, then decode token by token through the state cache. Greedy when temperature == 0."""
        cache = self.new_cache()
        logits = self(input_ids, cache)[:, -1]
        out = [input_ids]
        for _ in range(max_new_tokens):
            if temperature <= 0:
                nxt = logits.argmax(-1, keepdim=True)
            else:
                lg = logits.float() / temperature
                if top_k is not None:
                    kth = lg.topk(min(top_k, lg.shape[-1]), dim=-1).values[..., -1:]
                    lg = lg.masked_fill(lg < kth, float("-inf"))
                nxt = torch.multinomial(lg.softmax(-1), 1, generator=generator)
            out.append(nxt)
            logits = self(nxt, cache)[:, -1]
        return torch.cat(out, dim=1)
