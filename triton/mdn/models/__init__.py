"""Models: ``build_model(cfg: dict)`` -> ``CausalLM`` (plain nn.Module); HF wrappers in ``mdn.models.hf``."""
from .build import build_model, count_parameters, count_parameters_for
from .causal_lm import Cache, CausalLM
from .config import ARCHS, ModelConfig
from .flops import flops_per_token

__all__ = ["ARCHS", "Cache", "CausalLM", "ModelConfig", "build_model", "count_parameters",
           "count_parameters_for", "flops_per_token"]
