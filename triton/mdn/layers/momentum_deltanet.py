"""The Momentum DeltaNet token mixer (spec §5.1, §6.1).

    x -> q, k, v projections -> depthwise causal short conv (kernel 4) + SiLU -> heads
      -> gates (fp32, one of the constraint modes in gates.py)
      -> output correction q <- q - exp(D_log) * k (before the in-op L2 norm)
      -> momentum delta rule (the op; chunk for training, fused recurrent for short decoding steps)
      -> per-head RMSNorm * act(W_g x) -> o_proj

The op is reached through ONE function, ``momentum_delta_rule`` below: it calls the Triton op from
``mdn.ops`` when that exists and the tensors are on a GPU, and otherwise a reference recurrence, so CPU training
and tests work and the switch to the kernel is automatic when it lands. Implementations (``mixer_impl``):
  chunk            mdn.ops.chunk_momentum_delta_rule (Triton; training and prefill)
  fused_recurrent  mdn.ops.fused_recurrent_momentum_delta_rule (Triton; short no-grad calls, i.e. decoding)
  torch            the recurrence of spec §1.3 vectorised over batch and heads, looping over time (fp32; the
                   CPU default: about 20x faster to differentiate than the oracle, and checked against it)
  naive            mdn.ops.naive.naive_recurrent_momentum_delta_rule, the oracle (batch folded into heads)
  auto             chunk / fused_recurrent on a GPU when the op exists, else naive on a GPU (warned), torch on CPU
"""
from __future__ import annotations

import math
import os
import warnings

import torch
import torch.nn as nn
import torch.nn.functional as F

from .availability import mdn_op
from .conv import ShortConvolution
from .gates import GATE_MODES, compute_gates
from .norm import GatedRMSNorm, upcast

MDN_IMPLS = ("auto", "chunk", "fused_recurrent", "torch", "naive")
_warned: set[str] = set()
LAST_IMPL: dict[str, str] = {}  # mixer -> implementation used by the latest call (reported in training results)


def _fused_gate_proj() -> bool:
    """MDN_FUSED_GATE_PROJ=0 runs the four gate projections one by one (the A/B baseline of the fused GEMM)."""
    v = os.environ.get("MDN_FUSED_GATE_PROJ", "1")
    if v not in ("0", "1"):
        raise ValueError(f"MDN_FUSED_GATE_PROJ={v!r}: expected 0 or 1")
    return v == "1"


def _warn_once(key: str, msg: str) -> None:
    if key not in _warned:
        _warned.add(key)
        warnings.warn(msg, stacklevel=3)


def _naive_folded(q, k, v, log_alpha, beta, log_mu, eta, scale, initial_state, output_final_state,
                  use_qk_l2norm_in_kernel, use_p_times_alpha):
    """The reference recurrence with the batch folded into the heads, so its Python loop runs over T only."""
    from mdn.ops.naive import naive_recurrent_momentum_delta_rule

    B, T, H, K = q.shape
    V = v.shape[-1]

    def fold(x):  # [B, T, H, ...] -> [1, T, B*H, ...]
        return x.transpose(0, 1).reshape(T, B * H, *x.shape[3:])[None]

    h0 = None if initial_state is None else initial_state.reshape(2, 1, B * H, K, V)
    o, ht = naive_recurrent_momentum_delta_rule(
        fold(q), fold(k), fold(v), fold(log_alpha), fold(beta), fold(log_mu), fold(eta),
        scale=scale, initial_state=h0, output_final_state=output_final_state,
        use_qk_l2norm_in_kernel=use_qk_l2norm_in_kernel, use_p_times_alpha=use_p_times_alpha)
    o = o[0].reshape(T, B, H, V).transpose(0, 1)
    if ht is not None:
        ht = ht.reshape(2, B, H, K, V)
    return o, ht


def _recurrent_torch(q, k, v, log_alpha, beta, log_mu, eta, scale, initial_state, output_final_state,
                     use_qk_l2norm_in_kernel, use_p_times_alpha):
    """Spec §1.3 step by step, all (batch, head) pairs at once; inputs unbound over time up front so the
    backward is cheap. Computes in fp64 when q is fp64, else fp32."""
    from mdn.ops.naive import l2norm

    B, T, H, K = q.shape
    V = v.shape[-1]
    cd = torch.float64 if q.dtype == torch.float64 else torch.float32
    scale = K ** -0.5 if scale is None else scale
    q, k, v = q.to(cd), k.to(cd), v.to(cd)
    if use_qk_l2norm_in_kernel:
        q, k = l2norm(q), l2norm(k)
    alpha = log_alpha.to(cd).exp()  # [B, T, H]
    mu = log_mu.to(cd).exp()
    p = k * alpha[..., None] if use_p_times_alpha else k  # read key [B, T, H, K]
    kw = k * eta.to(cd)[..., None]  # write key
    bt = beta.to(cd)
    if initial_state is None:
        S = q.new_zeros(B, H, K, V)
        M = q.new_zeros(B, H, K, V)
    else:
        S, M = initial_state[0].to(cd), initial_state[1].to(cd)
    outs = []
    for q_t, p_t, kw_t, v_t, a_t, m_t, b_t in zip(
            (q * scale).unbind(1), p.unbind(1), kw.unbind(1), v.unbind(1), alpha.unbind(1), mu.unbind(1),
            bt.unbind(1)):
        r = torch.einsum("bhk,bhkv->bhv", p_t, S) - v_t  # [B, H, V]
        M = m_t[..., None, None] * M + kw_t[..., :, None] * r[..., None, :]  # [B, H, K, V]
        S = a_t[..., None, None] * S - b_t[..., None, None] * M
        outs.append(torch.einsum("bhk,bhkv->bhv", q_t, S))
    o = torch.stack(outs, 1) if outs else q.new_zeros(B, 0, H, V)
    final = torch.stack([S, M]).float() if output_final_state and cd != torch.float64 else (
        torch.stack([S, M]) if output_final_state else None)
    return o, final


def resolve_mdn_impl(impl: str, q: torch.Tensor, needs_grad: bool) -> str:
    """Which implementation ``momentum_delta_rule`` will use for these inputs."""
    if impl not in MDN_IMPLS:
        raise ValueError(f"mixer_impl={impl!r}: expected one of {', '.join(MDN_IMPLS)}")
    if impl != "auto":
        return impl
    if q.device.type != "cuda":
        return "torch"  # the Triton kernels need a GPU (the interpreter is far too slow for training)
    short = q.shape[1] <= 64 and not needs_grad
    if short and mdn_op("fused_recurrent_momentum_delta_rule") is not None:
        return "fused_recurrent"
    if mdn_op("chunk_momentum_delta_rule") is not None:
        return "chunk"
    _warn_once("naive-cuda", "mdn.ops.chunk_momentum_delta_rule is not available: the MDN layer falls back to "
                             "the reference recurrence (correct but slow)")
    return "naive"


def momentum_delta_rule(q, k, v, log_alpha, beta, log_mu, eta, *, scale=None, initial_state=None,
                        output_final_state=False, use_qk_l2norm_in_kernel=True, use_p_times_alpha=True,
                        chunk_size=64, impl="auto"):
    """The MDN token mixer, dispatched to the best available implementation (see module docstring).

    Shapes as the op API: q, k [B, T, H, K]; v [B, T, H, V]; gates [B, T, H] fp32; state [2, B, H, K, V] fp32.
    Returns (o [B, T, H, V], final_state or None).
    """
    needs_grad = torch.is_grad_enabled() and any(
        t.requires_grad for t in (q, k, v, log_alpha, beta, log_mu, eta))
    which = resolve_mdn_impl(impl, q, needs_grad)
    LAST_IMPL["mdn"] = which
    common = dict(scale=scale, initial_state=initial_state, output_final_state=output_final_state,
                  use_qk_l2norm_in_kernel=use_qk_l2norm_in_kernel, use_p_times_alpha=use_p_times_alpha)
    if which == "torch":
        return _recurrent_torch(q, k, v, log_alpha, beta, log_mu, eta, **common)
    if which == "naive":
        return _naive_folded(q, k, v, log_alpha, beta, log_mu, eta, **common)
    name = "chunk_momentum_delta_rule" if which == "chunk" else "fused_recurrent_momentum_delta_rule"
    op = mdn_op(name)
    if op is None:
        raise ImportError(f"mixer_impl={which!r}: mdn.ops.{name} is not available")
    if which == "chunk":
        common["chunk_size"] = chunk_size
    return op(q, k, v, log_alpha, beta, log_mu, eta, **common)


class MomentumDeltaNet(nn.Module):
    """MDN mixer. Call with x [B, T, d]; ``state`` is this layer's cache dict (filled in place) or None."""

    def __init__(self, hidden_size: int, num_heads: int, head_dim: int, expand_v: float = 2.0,
                 conv_size: int = 4, use_short_conv: bool = True, gate_mode: str = "trig",
                 min_log_mu: float | None = -2.0, tau_factor: float = 1.0, use_output_gate: bool = True,
                 output_gate_act: str = "sigmoid", use_output_correction: bool = True,
                 use_p_times_alpha: bool = True, norm_eps: float = 1e-6, chunk_size: int = 64,
                 mixer_impl: str = "auto", layer_idx: int | None = None):
        super().__init__()
        if gate_mode not in GATE_MODES:
            raise ValueError(f"gate_mode={gate_mode!r}: expected one of {', '.join(GATE_MODES)}")
        if mixer_impl not in MDN_IMPLS:
            raise ValueError(f"mixer_impl={mixer_impl!r}: expected one of {', '.join(MDN_IMPLS)}")
        head_v_dim = head_dim * expand_v
        if head_v_dim != int(head_v_dim):
            raise ValueError(f"expand_v={expand_v} * head_dim={head_dim} is not an integer value head dim")
        self.hidden_size = hidden_size
        self.num_heads = num_heads
        self.head_k_dim = head_dim
        self.head_v_dim = int(head_v_dim)
        self.key_dim = num_heads * head_dim
        self.value_dim = num_heads * self.head_v_dim
        self.gate_mode = gate_mode
        self.min_log_mu = min_log_mu
        self.tau = math.sqrt(hidden_size / tau_factor)
        self.use_short_conv = use_short_conv
        self.use_output_gate = use_output_gate
        self.use_output_correction = use_output_correction
        self.use_p_times_alpha = use_p_times_alpha
        self.chunk_size = chunk_size
        self.mixer_impl = mixer_impl
        self.layer_idx = layer_idx

        self.q_proj = nn.Linear(hidden_size, self.key_dim, bias=False)
        self.k_proj = nn.Linear(hidden_size, self.key_dim, bias=False)
        self.v_proj = nn.Linear(hidden_size, self.value_dim, bias=False)
        self.a_proj = nn.Linear(hidden_size, num_heads, bias=False)
        self.b_proj = nn.Linear(hidden_size, num_heads, bias=False)
        self.m_proj = nn.Linear(hidden_size, num_heads, bias=False)
        self.e_proj = nn.Linear(hidden_size, num_heads, bias=False)
        if use_short_conv:
            self.q_conv1d = ShortConvolution(self.key_dim, conv_size)
            self.k_conv1d = ShortConvolution(self.key_dim, conv_size)
            self.v_conv1d = ShortConvolution(self.value_dim, conv_size)

        self.A_log = nn.Parameter(torch.empty(num_heads))
        self.Mu_log = nn.Parameter(torch.empty(num_heads))
        self.dt_bias = nn.Parameter(torch.empty(num_heads))
        self.mu_bias = nn.Parameter(torch.empty(num_heads))
        scalars = ["A_log", "Mu_log", "dt_bias", "mu_bias"]
        if gate_mode == "trig":  # the only mode that reads it (an unused parameter would upset DDP)
            self.log_factor = nn.Parameter(torch.empty(num_heads))
            scalars.append("log_factor")
        if use_output_correction:
            self.D_log = nn.Parameter(torch.empty(num_heads))
            scalars.append("D_log")
        for name in scalars:
            getattr(self, name)._no_weight_decay = True

        if use_output_gate:
            self.g_proj = nn.Linear(hidden_size, self.value_dim, bias=False)
        self.o_norm = GatedRMSNorm(self.head_v_dim, eps=norm_eps, activation=output_gate_act)
        self.o_proj = nn.Linear(self.value_dim, hidden_size, bias=False)

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Initialise the per-head scalars (spec §5.1 table). Projections/convs/norms are done by the model."""
        self.A_log.uniform_(0, 16).clamp_(min=1e-4).log_()
        self.Mu_log.uniform_(0, 16).clamp_(min=1e-4).log_()
        # dt = exp(U(log 1e-3, log 0.1)) floored at 1e-4; dt_bias = softplus^-1(dt) = dt + log(-expm1(-dt))
        self.dt_bias.uniform_(math.log(1e-3), math.log(0.1)).exp_().clamp_(min=1e-4)
        self.dt_bias.add_(torch.expm1(-self.dt_bias).neg_().log_())
        self.mu_bias.copy_(self.dt_bias)
        if hasattr(self, "log_factor"):
            self.log_factor.uniform_(0, 4).clamp_(min=1e-4).log_()
        if hasattr(self, "D_log"):
            self.D_log.uniform_(0, 1).clamp_(min=1e-4).log_()

    def gates(self, x: torch.Tensor):
        """(log_alpha, beta, log_mu, eta) [B, T, H] fp32 for hidden states x [B, T, d]."""
        with torch.autocast(device_type=x.device.type, enabled=False):
            projs = (self.a_proj, self.b_proj, self.m_proj, self.e_proj)
            if _fused_gate_proj():
                # the four [d -> H] projections as one GEMM: x is read once (and its gradient is one GEMM, not
                # four summed); the parameters stay four Linear modules, so checkpoints and HF loading are unchanged
                w = torch.cat([lin.weight for lin in projs])
                a, b, m, e = upcast(F.linear(x, w)).split(self.num_heads, dim=-1)
            else:
                a, b, m, e = (upcast(lin(x)) for lin in projs)
            e = e / self.tau
            return compute_gates(
                self.gate_mode, a, b, m, e, A_log=self.A_log, Mu_log=self.Mu_log, dt_bias=self.dt_bias,
                mu_bias=self.mu_bias, log_factor=getattr(self, "log_factor", None), min_log_mu=self.min_log_mu,
                use_p_times_alpha=self.use_p_times_alpha)

    def forward(self, x: torch.Tensor, state: dict | None = None) -> torch.Tensor:
        B, T, _ = x.shape
        use_cache = state is not None
        conv_q = conv_k = conv_v = None
        if use_cache and "conv" in state:
            conv_q, conv_k, conv_v = state["conv"]
        q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        if self.use_short_conv:
            q, conv_q = self.q_conv1d(q, conv_q, use_cache)  # [B, T, key_dim]
            k, conv_k = self.k_conv1d(k, conv_k, use_cache)
            v, conv_v = self.v_conv1d(v, conv_v, use_cache)  # [B, T, value_dim]
        else:
            q, k, v = nn.functional.silu(q), nn.functional.silu(k), nn.functional.silu(v)
        q = q.view(B, T, self.num_heads, self.head_k_dim)  # [B, T, H, K]
        k = k.view(B, T, self.num_heads, self.head_k_dim)
        v = v.view(B, T, self.num_heads, self.head_v_dim)  # [B, T, H, V]

        log_alpha, beta, log_mu, eta = self.gates(x)  # [B, T, H] fp32
        if self.use_output_correction:
            q = (upcast(q) - upcast(self.D_log).exp()[:, None] * upcast(k)).to(k.dtype)

        recurrent = state.get("recurrent") if use_cache else None
        o, final = momentum_delta_rule(
            q, k, v, log_alpha, beta, log_mu, eta, initial_state=recurrent, output_final_state=use_cache,
            use_qk_l2norm_in_kernel=True, use_p_times_alpha=self.use_p_times_alpha,
            chunk_size=self.chunk_size, impl=self.mixer_impl)
        if use_cache:
            state["recurrent"] = final
            if self.use_short_conv:
                state["conv"] = (conv_q, conv_k, conv_v)

        g = self.g_proj(x).view(B, T, self.num_heads, self.head_v_dim) if self.use_output_gate else None
        o = self.o_norm(o.to(v.dtype), g)  # [B, T, H, V]
        return self.o_proj(o.reshape(B, T, self.value_dim))
