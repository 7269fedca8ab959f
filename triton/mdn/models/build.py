"""``build_model(cfg)`` and parameter counting (on the meta device: no memory, so 1.3B counts are instant)."""
from __future__ import annotations

from typing import Any

import torch

from .causal_lm import CausalLM
from .config import ModelConfig


def build_model(cfg: dict[str, Any] | ModelConfig, *, device: str | torch.device | None = None,
                seed: int | None = None, init: bool = True) -> CausalLM:
    """Build a ``CausalLM`` from a model config dict (keys of ``ModelConfig``; unknown keys are an error).

    ``model(input_ids [B, T]) -> logits [B, T, vocab]``. Parameters are created on ``device`` (default: the
    current default device) and initialised explicitly (``init=False`` skips it, e.g. before loading weights).
    ``seed`` reseeds the global RNG first, so the same seed gives the same weights.
    """
    mc = ModelConfig.from_dict(cfg)
    if seed is not None:
        torch.manual_seed(seed)
    if device is None:
        model = CausalLM(mc)
    else:
        with torch.device(device):
            model = CausalLM(mc)
    if init:
        model.init_weights()
    return model


def count_parameters(model: torch.nn.Module) -> dict[str, int]:
    """total, embedding (input embedding + untied LM head) and non_embedding parameter counts."""
    total = sum(p.numel() for p in model.parameters())
    emb = 0
    if isinstance(model, CausalLM):
        emb = model.embeddings.weight.numel() + (model.lm_head.weight.numel() if model.lm_head is not None else 0)
    return {"total": total, "embedding": emb, "non_embedding": total - emb}


def count_parameters_for(cfg: dict[str, Any] | ModelConfig) -> dict[str, int]:
    """Parameter counts of a config without allocating it (meta device)."""
    return count_parameters(build_model(cfg, device="meta"))
