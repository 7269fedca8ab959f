"""Baseline mixers taken whole from fla (KDA, Mamba2, and fla's own GDN layer), when fla is installed.

fla is optional: without it these raise ``MixerUnavailable`` at construction, with the reason.
They are used for training and throughput only; the decoding cache is not wired through (fla has its own).
"""
from __future__ import annotations

import importlib

import torch
import torch.nn as nn

from .availability import MixerUnavailable, bypass_fla_hopper_guard, fla_layers_available

FLA_LAYER_CLASSES = {"kda": "KimiDeltaAttention", "mamba2": "Mamba2", "gdn_fla": "GatedDeltaNet"}


class FlaMixer(nn.Module):
    """Wraps ``fla.layers.<cls>(**kwargs)``; forward(x) returns the mixer output [B, T, d]."""

    def __init__(self, arch: str, **kwargs):
        super().__init__()
        if arch not in FLA_LAYER_CLASSES:
            raise ValueError(f"fla mixer {arch!r}: expected one of {sorted(FLA_LAYER_CLASSES)}")
        if not fla_layers_available():
            raise MixerUnavailable(
                f"mixer {arch!r} needs flash-linear-attention (fla.layers, which also imports transformers); "
                "it is not installed here")
        bypass_fla_hopper_guard()
        cls = getattr(importlib.import_module("fla.layers"), FLA_LAYER_CLASSES[arch])
        self.arch = arch
        self.inner = cls(**kwargs)

    def reset_parameters(self) -> None:
        """Nothing to do: fla sets its gate parameters (A_log, dt_bias, D, ...) in its constructor, and the
        model-level init re-initialises the projections and convolutions (normal(0, initializer_range),
        zero biases), as fla's own ``_init_weights`` does."""

    def forward(self, x: torch.Tensor, state: dict | None = None) -> torch.Tensor:
        if state is not None:
            raise NotImplementedError(f"decoding with a cache is not wired for the fla mixer {self.arch!r}")
        return self.inner(x)[0]
