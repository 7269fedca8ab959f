"""Layers: the MDN token mixer, baselines (GDN, attention, fla's KDA/Mamba2), norms, short conv, SwiGLU."""
from .attention import Attention
from .availability import MixerUnavailable
from .conv import ShortConvolution
from .gated_deltanet import GatedDeltaNet, gated_delta_rule
from .gates import GATE_MODES, compute_gates
from .mlp import SwiGLU, swiglu_intermediate_size
from .momentum_deltanet import MomentumDeltaNet, momentum_delta_rule
from .norm import GatedRMSNorm, RMSNorm

__all__ = [
    "Attention", "GATE_MODES", "GatedDeltaNet", "GatedRMSNorm", "MixerUnavailable", "MomentumDeltaNet",
    "RMSNorm", "ShortConvolution", "SwiGLU", "compute_gates", "gated_delta_rule", "momentum_delta_rule",
    "swiglu_intermediate_size",
]
