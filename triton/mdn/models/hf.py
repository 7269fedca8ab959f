"""Hugging Face wrappers (only when ``transformers`` is importable): save_pretrained / from_pretrained and
``generate`` with the recurrent state cache.

    from mdn.models.hf import MDNConfig, MDNForCausalLM
    hf = MDNForCausalLM(MDNConfig(mdn={"hidden_size": 64, "num_layers": 2, ...}))   # or from_core(model)
    hf.save_pretrained(path); MDNForCausalLM.from_pretrained(path).generate(ids, max_new_tokens=20)

The core stays the plain ``mdn.models.CausalLM`` (``hf.model``); the wrapper adds the HF config, the output
dataclass and the cache plumbing. ``past_key_values`` is an ``mdn.models.Cache`` (per-layer recurrent + conv
state, or K/V for attention layers).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

try:
    from transformers import GenerationMixin, PretrainedConfig, PreTrainedModel
    from transformers.modeling_outputs import CausalLMOutputWithPast
except ImportError as exc:  # pragma: no cover - exercised only without transformers
    raise ImportError(f"mdn.models.hf needs the transformers package ({exc})") from None

from .causal_lm import Cache, CausalLM
from .config import ModelConfig


class MDNConfig(PretrainedConfig):
    model_type = "mdn_causal_lm"

    def __init__(self, mdn: dict | None = None, **kwargs):
        cfg = ModelConfig.from_dict(dict(mdn or {}))
        self.mdn = cfg.to_dict()
        kwargs.setdefault("vocab_size", cfg.vocab_size)
        kwargs.setdefault("hidden_size", cfg.hidden_size)
        kwargs.setdefault("num_hidden_layers", cfg.num_layers)
        kwargs.setdefault("tie_word_embeddings", cfg.tie_embeddings)
        super().__init__(**kwargs)


class MDNForCausalLM(PreTrainedModel, GenerationMixin):
    config_class = MDNConfig
    base_model_prefix = "model"
    main_input_name = "input_ids"
    _supports_cache_class = False

    def __init__(self, config: MDNConfig):
        super().__init__(config)
        self.model = CausalLM(ModelConfig.from_dict(config.mdn))
        self.model.init_weights()
        self.post_init()

    @classmethod
    def from_core(cls, core: CausalLM) -> "MDNForCausalLM":
        hf = cls(MDNConfig(mdn=core.config.to_dict()))
        hf.model.load_state_dict(core.state_dict())
        return hf

    def _init_weights(self, module):  # the core initialises itself explicitly (CausalLM.init_weights)
        pass

    def get_input_embeddings(self):
        return self.model.embeddings

    def set_input_embeddings(self, value):
        self.model.embeddings = value

    def forward(self, input_ids: torch.Tensor, past_key_values: Cache | None = None, use_cache: bool | None = None,
                labels: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None, **kwargs):
        if attention_mask is not None and not bool(attention_mask.all()):
            raise ValueError("attention_mask with padding is not supported (the recurrent state has no mask)")
        cache = past_key_values if isinstance(past_key_values, Cache) else None
        if cache is None and use_cache:
            cache = self.model.new_cache()
        logits = self.model(input_ids, cache)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits[:, :-1].float().reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1),
                                   ignore_index=-100)
        return CausalLMOutputWithPast(loss=loss, logits=logits, past_key_values=cache if use_cache else None)

    def prepare_inputs_for_generation(self, input_ids, past_key_values=None, use_cache=True, **kwargs):
        if isinstance(past_key_values, Cache) and past_key_values.seen_tokens > 0:
            input_ids = input_ids[:, past_key_values.seen_tokens:]  # only the tokens the state has not seen
        else:
            past_key_values = None
        return {"input_ids": input_ids, "past_key_values": past_key_values, "use_cache": use_cache}

    def _reorder_cache(self, past_key_values, beam_idx):  # pragma: no cover - beam search
        raise NotImplementedError("beam search is not supported with the MDN state cache")
