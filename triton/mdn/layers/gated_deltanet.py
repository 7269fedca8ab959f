"""Gated DeltaNet (GDN) baseline mixer with the same surroundings as the MDN layer.

The layer structure (and so the parameter set and count) matches fla's ``GatedDeltaNet``: q/k/v projections
with short convs, a_proj/b_proj gates, A_log/dt_bias, a swish-gated per-head RMSNorm and o_proj. Only the
token mixer differs from MDN, so an MDN-vs-GDN timing isolates the op.

The op comes from fla (``fla.ops.gated_delta_rule``) on GPU. Without fla on a GPU the layer raises
``MixerUnavailable`` unless ``mixer_impl="reference"``. On the CPU it always uses the reference: GDN is MDN with
mu = 0 and eta = 1 (spec §1.4, R1), so the MDN reference recurrence (impl "torch") computes it exactly.
"""
from __future__ import annotations

import importlib
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .availability import MixerUnavailable, bypass_fla_hopper_guard, fla_ops_available
from .conv import ShortConvolution
from .momentum_deltanet import LAST_IMPL, _recurrent_torch
from .norm import GatedRMSNorm, upcast

GDN_IMPLS = ("auto", "fla", "reference")


_FLA_GDN: list = []  # fla.ops.gated_delta_rule, once loaded (load_fla_gdn)


def load_fla_gdn():
    """fla's GDN op module, imported (with the Hopper guard bypass where opted in) once, outside any compiled region:
    GatedDeltaNet.__init__ calls it, so that a torch.compile'd block only reads the cached module. Traced by dynamo,
    the import check failed and compile=true reported fla as not installed (eighth session, H200)."""
    if not _FLA_GDN:
        if not fla_ops_available():
            raise MixerUnavailable("gdn on GPU needs flash-linear-attention (fla.ops.gated_delta_rule), which is not "
                                   "installed; install the fla wheel or set model.mixer_impl = \"reference\"")
        bypass_fla_hopper_guard()
        _FLA_GDN.append(importlib.import_module("fla.ops.gated_delta_rule"))
    return _FLA_GDN[0]


def gated_delta_rule(q, k, v, log_alpha, beta, *, initial_state=None, output_final_state=False, impl="auto"):
    """GDN: S_t = alpha_t (I - beta_t k k^T) S_{t-1} + beta_t k v_t^T, o_t = scale * S_t^T q (q, k L2-normalised).

    q, k [B, T, H, K]; v [B, T, H, V]; log_alpha, beta [B, T, H] fp32; state [B, H, K, V] fp32.
    """
    if impl not in GDN_IMPLS:
        raise ValueError(f"mixer_impl={impl!r} for gdn: expected one of {', '.join(GDN_IMPLS)}")
    if impl == "auto":
        impl = "fla" if q.device.type == "cuda" else "reference"
    LAST_IMPL["gdn"] = impl
    if impl == "reference":
        la = upcast(log_alpha)
        h0 = None
        if initial_state is not None:
            h0 = torch.stack([upcast(initial_state), torch.zeros_like(upcast(initial_state))])
        o, ht = _recurrent_torch(q, k, v, la, upcast(beta), torch.full_like(la, -math.inf), torch.ones_like(la),
                              None, h0, output_final_state, True, True)
        return o, (ht[0] if ht is not None else None)
    fla_gdn = _FLA_GDN[0] if _FLA_GDN else load_fla_gdn()
    short = q.shape[1] <= 64 and not torch.is_grad_enabled()
    fn = fla_gdn.fused_recurrent_gated_delta_rule if short else fla_gdn.chunk_gated_delta_rule
    return fn(q=q, k=k, v=v, g=log_alpha, beta=beta, initial_state=initial_state,
              output_final_state=output_final_state, use_qk_l2norm_in_kernel=True)


class GatedDeltaNet(nn.Module):
    def __init__(self, hidden_size: int, num_heads: int, head_dim: int, expand_v: float = 2.0,
                 conv_size: int = 4, use_short_conv: bool = True, use_output_gate: bool = True,
                 output_gate_act: str = "swish", norm_eps: float = 1e-6, mixer_impl: str = "auto",
                 layer_idx: int | None = None, **_ignored):
        super().__init__()
        if mixer_impl not in GDN_IMPLS:
            raise ValueError(f"mixer_impl={mixer_impl!r} for gdn: expected one of {', '.join(GDN_IMPLS)}")
        head_v_dim = head_dim * expand_v
        if head_v_dim != int(head_v_dim):
            raise ValueError(f"expand_v={expand_v} * head_dim={head_dim} is not an integer value head dim")
        self.num_heads = num_heads
        self.head_k_dim = head_dim
        self.head_v_dim = int(head_v_dim)
        self.key_dim = num_heads * head_dim
        self.value_dim = num_heads * self.head_v_dim
        self.use_short_conv = use_short_conv
        self.use_output_gate = use_output_gate
        self.mixer_impl = mixer_impl
        if mixer_impl in ("auto", "fla") and fla_ops_available():
            load_fla_gdn()  # before any torch.compile traces forward (load_fla_gdn)
        self.layer_idx = layer_idx

        self.q_proj = nn.Linear(hidden_size, self.key_dim, bias=False)
        self.k_proj = nn.Linear(hidden_size, self.key_dim, bias=False)
        self.v_proj = nn.Linear(hidden_size, self.value_dim, bias=False)
        self.a_proj = nn.Linear(hidden_size, num_heads, bias=False)
        self.b_proj = nn.Linear(hidden_size, num_heads, bias=False)
        if use_short_conv:
            self.q_conv1d = ShortConvolution(self.key_dim, conv_size)
            self.k_conv1d = ShortConvolution(self.key_dim, conv_size)
            self.v_conv1d = ShortConvolution(self.value_dim, conv_size)
        self.A_log = nn.Parameter(torch.empty(num_heads))
        self.dt_bias = nn.Parameter(torch.empty(num_heads))
        self.A_log._no_weight_decay = True
        self.dt_bias._no_weight_decay = True
        if use_output_gate:
            self.g_proj = nn.Linear(hidden_size, self.value_dim, bias=False)
        self.o_norm = GatedRMSNorm(self.head_v_dim, eps=norm_eps, activation=output_gate_act)
        self.o_proj = nn.Linear(self.value_dim, hidden_size, bias=False)

    @torch.no_grad()
    def reset_parameters(self) -> None:
        self.A_log.uniform_(0, 16).clamp_(min=1e-4).log_()
        self.dt_bias.uniform_(math.log(1e-3), math.log(0.1)).exp_().clamp_(min=1e-4)
        self.dt_bias.add_(torch.expm1(-self.dt_bias).neg_().log_())

    def forward(self, x: torch.Tensor, state: dict | None = None) -> torch.Tensor:
        B, T, _ = x.shape
        use_cache = state is not None
        conv_q = conv_k = conv_v = None
        if use_cache and "conv" in state:
            conv_q, conv_k, conv_v = state["conv"]
        q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        if self.use_short_conv:
            q, conv_q = self.q_conv1d(q, conv_q, use_cache)
            k, conv_k = self.k_conv1d(k, conv_k, use_cache)
            v, conv_v = self.v_conv1d(v, conv_v, use_cache)
        else:
            q, k, v = F.silu(q), F.silu(k), F.silu(v)
        q = q.view(B, T, self.num_heads, self.head_k_dim)
        k = k.view(B, T, self.num_heads, self.head_k_dim)
        v = v.view(B, T, self.num_heads, self.head_v_dim)
        with torch.autocast(device_type=x.device.type, enabled=False):
            a, b = upcast(self.a_proj(x)), upcast(self.b_proj(x))
            log_alpha = -self.A_log.to(a.dtype).exp() * F.softplus(a + self.dt_bias.to(a.dtype))
            beta = torch.sigmoid(b)
        o, final = gated_delta_rule(q, k, v, log_alpha, beta, initial_state=state.get("recurrent") if use_cache
                                    else None, output_final_state=use_cache, impl=self.mixer_impl)
        if use_cache:
            state["recurrent"] = final
            if self.use_short_conv:
                state["conv"] = (conv_q, conv_k, conv_v)
        g = self.g_proj(x).view(B, T, self.num_heads, self.head_v_dim) if self.use_output_gate else None
        o = self.o_norm(o.to(v.dtype), g)
        return self.o_proj(o.reshape(B, T, self.value_dim))
