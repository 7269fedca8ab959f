"""Layers: op dispatch, reference recurrences vs the fp64 oracle, caches (prefill + decode == one pass)."""
import math
from types import SimpleNamespace

import pytest
import torch

import mdn.layers.momentum_deltanet as mdn_layer
from mdn.layers import Attention, GatedDeltaNet, MomentumDeltaNet, ShortConvolution, gated_delta_rule
from mdn.layers.availability import MixerUnavailable
from mdn.layers.momentum_deltanet import momentum_delta_rule, resolve_mdn_impl
from mdn.ops.naive import naive_recurrent_momentum_delta_rule

from conftest import INTERPRET, make_inputs, rel_rms, to_fp64


@pytest.fixture(autouse=True)
def _one_thread():
    """Small ops: extra threads only add contention on a busy CI box."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.mark.parametrize("impl", ["torch", "naive"])
@pytest.mark.parametrize("p_alpha", [True, False])
def test_reference_impls_match_the_oracle(impl, p_alpha):
    x = to_fp64(make_inputs(3, 19, 2, 8, 12, gates="layer", initial_state=True))
    o_ref, h_ref = naive_recurrent_momentum_delta_rule(**x, output_final_state=True, use_p_times_alpha=p_alpha)
    o, h = momentum_delta_rule(**x, output_final_state=True, use_p_times_alpha=p_alpha, impl=impl)
    assert rel_rms(o_ref, o) < 1e-13
    assert rel_rms(h_ref, h) < 1e-13


def test_torch_impl_gradients_match_the_oracle():
    x = to_fp64(make_inputs(2, 9, 2, 4, 6, gates="layer", initial_state=True))
    names = ("q", "k", "v", "log_alpha", "beta", "log_mu", "eta", "initial_state")
    grads = []
    for fn in (naive_recurrent_momentum_delta_rule, lambda **kw: momentum_delta_rule(**kw, impl="torch")):
        args = {n: t.detach().clone().requires_grad_(True) for n, t in x.items()}
        o, h = fn(**args, output_final_state=True)
        (o.sin().sum() + h.cos().sum()).backward()
        grads.append([args[n].grad for n in names])
    for n, a, b in zip(names, *grads):
        assert rel_rms(a, b) < 1e-12, n


def test_dispatch_picks_the_triton_op_on_gpu_when_it_exists(monkeypatch):
    """The switch to the kernel is automatic: on a CUDA tensor, auto resolves to the op when mdn.ops has it."""
    calls = []

    def fake_chunk(q, k, v, log_alpha, beta, log_mu, eta, **kw):
        calls.append(kw)
        return v, None

    def gpu(T):  # resolve only looks at the device type and the length
        return SimpleNamespace(device=SimpleNamespace(type="cuda"), shape=(1, T, 1, 4))

    monkeypatch.setattr(mdn_layer, "mdn_op", lambda name: fake_chunk if name == "chunk_momentum_delta_rule" else None)
    assert resolve_mdn_impl("auto", torch.empty(1, 128, 1, 4), True) == "torch"  # CPU: reference
    assert resolve_mdn_impl("auto", gpu(128), True) == "chunk"
    assert resolve_mdn_impl("auto", gpu(1), False) == "chunk"  # no fused recurrent op: chunk for decoding too
    fake_fused = object()
    monkeypatch.setattr(mdn_layer, "mdn_op", lambda name: fake_chunk if name == "chunk_momentum_delta_rule"
                        else fake_fused)
    assert resolve_mdn_impl("auto", gpu(1), False) == "fused_recurrent"
    assert resolve_mdn_impl("auto", gpu(1), True) == "chunk"  # training needs the backward
    assert resolve_mdn_impl("auto", gpu(128), False) == "chunk"
    monkeypatch.setattr(mdn_layer, "mdn_op", lambda name: fake_chunk if name == "chunk_momentum_delta_rule" else None)
    x = make_inputs(1, 8, 1, 4, 4)
    o, _ = momentum_delta_rule(**x, impl="chunk", chunk_size=32)
    assert calls and calls[0]["chunk_size"] == 32 and calls[0]["use_qk_l2norm_in_kernel"] is True
    assert torch.equal(o, x["v"])
    monkeypatch.setattr(mdn_layer, "mdn_op", lambda name: None)
    with pytest.raises(ImportError, match="chunk_momentum_delta_rule is not available"):
        momentum_delta_rule(**x, impl="chunk")


def test_gdn_reference_is_the_gated_delta_rule():
    """GDN (impl reference = MDN with mu = 0, eta = 1) against a direct loop of
    S_t = alpha_t (I - beta_t k k^T) S_{t-1} + beta_t k v_t^T, o_t = S_t^T q / sqrt(K)."""
    B, T, H, K, V = 2, 7, 2, 4, 3
    g = torch.Generator().manual_seed(0)
    q, k = (torch.randn(B, T, H, K, dtype=torch.float64, generator=g) for _ in range(2))
    v = torch.randn(B, T, H, V, dtype=torch.float64, generator=g)
    la = -torch.rand(B, T, H, dtype=torch.float64, generator=g)
    beta = torch.rand(B, T, H, dtype=torch.float64, generator=g)
    h0 = torch.randn(B, H, K, V, dtype=torch.float64, generator=g)
    o, ht = gated_delta_rule(q, k, v, la, beta, initial_state=h0, output_final_state=True, impl="reference")
    qn = q / torch.sqrt((q * q).sum(-1, keepdim=True) + 1e-6)
    kn = k / torch.sqrt((k * k).sum(-1, keepdim=True) + 1e-6)
    S = h0.clone()
    for t in range(T):
        a, bt = la[:, t].exp()[..., None, None], beta[:, t][..., None, None]
        kt, vt = kn[:, t], v[:, t]
        eye = torch.eye(K, dtype=torch.float64)
        S = a * (eye - bt * kt[..., :, None] * kt[..., None, :]) @ S + bt * kt[..., :, None] * vt[..., None, :]
        torch.testing.assert_close(o[:, t], torch.einsum("bhk,bhkv->bhv", qn[:, t], S) / math.sqrt(K))
    torch.testing.assert_close(ht, S)


def test_gdn_without_fla_on_gpu_is_unavailable(monkeypatch):
    import mdn.layers.gated_deltanet as gdn

    monkeypatch.setattr(gdn, "fla_ops_available", lambda: False)
    x = torch.zeros(1, 4, 1, 4)
    with pytest.raises(MixerUnavailable, match="flash-linear-attention"):
        gated_delta_rule(x, x, x, x[..., 0], x[..., 0], impl="fla")


def test_short_conv_cache_continuation():
    conv = ShortConvolution(6, 4)
    conv.reset_parameters()
    x = torch.randn(2, 11, 6)
    full, _ = conv(x)
    y1, c = conv(x[:, :5], None, True)
    ys = [y1]
    for t in range(5, 11):
        y, c = conv(x[:, t:t + 1], c, True)
        ys.append(y)
    torch.testing.assert_close(torch.cat(ys, 1), full)


def _init(mod):
    for m in mod.modules():
        if isinstance(m, torch.nn.Linear):
            torch.nn.init.normal_(m.weight, 0, 0.3)
        elif hasattr(m, "reset_parameters") and type(m).__module__.startswith("mdn."):
            m.reset_parameters()
    return mod


@pytest.mark.parametrize("make", [
    lambda: MomentumDeltaNet(16, 2, 8, expand_v=1.5, gate_mode="trig"),
    lambda: MomentumDeltaNet(16, 2, 8, gate_mode="quadrant", min_log_mu=None, use_p_times_alpha=False),
    lambda: GatedDeltaNet(16, 2, 8),
    lambda: Attention(16, 4),
], ids=["mdn-trig", "mdn-quadrant", "gdn", "attention"])
def test_layer_prefill_then_decode_equals_one_pass(make):
    layer = _init(make()).double()
    x = torch.randn(2, 10, 16, dtype=torch.float64)
    full = layer(x)
    state = {}
    parts = [layer(x[:, :6], state)] + [layer(x[:, t:t + 1], state) for t in range(6, 10)]
    torch.testing.assert_close(torch.cat(parts, 1), full, rtol=1e-10, atol=1e-12)


def test_mdn_layer_gates_in_range_and_scalars_initialised():
    layer = MomentumDeltaNet(32, 4, 8, min_log_mu=-1.0)
    layer.reset_parameters()
    assert torch.all(layer.A_log.exp() <= 16) and torch.all(layer.Mu_log.exp() <= 16)
    assert torch.all(layer.log_factor.exp() <= 4) and torch.all(layer.D_log.exp() <= 1)
    dt = torch.nn.functional.softplus(layer.dt_bias)
    assert torch.all(dt >= 1e-4 * 0.999) and torch.all(dt <= 0.1 * 1.001)
    torch.testing.assert_close(layer.mu_bias, layer.dt_bias)
    la, beta, lm, eta = layer.gates(torch.randn(3, 5, 32))
    assert la.dtype == torch.float32
    assert torch.all(la.exp() + beta <= 1 + 1e-6) and torch.all(lm >= -1.0)


@pytest.mark.parametrize("fused", ["1", "0"])
@pytest.mark.parametrize("mode", ["trig", "clamp", "none", "quadrant"])
def test_mdn_layer_gate_projections_as_one_gemm_equal_four(mode, fused, monkeypatch):
    """gates() runs the four [d -> H] projections as one GEMM; each gate equals its own Linear's output through
    compute_gates, and each projection's weight gets its own gradient."""
    from mdn.layers.gates import compute_gates

    monkeypatch.setenv("MDN_FUSED_GATE_PROJ", fused)
    torch.manual_seed(0)
    layer = MomentumDeltaNet(32, 4, 8, gate_mode=mode).double()
    layer.reset_parameters()
    for lin in (layer.a_proj, layer.b_proj, layer.m_proj, layer.e_proj):
        torch.nn.init.normal_(lin.weight, std=0.3)
    x = torch.randn(2, 7, 32, dtype=torch.float64)
    got = layer.gates(x)
    want = compute_gates(mode, layer.a_proj(x), layer.b_proj(x), layer.m_proj(x), layer.e_proj(x) / layer.tau,
                         A_log=layer.A_log, Mu_log=layer.Mu_log, dt_bias=layer.dt_bias, mu_bias=layer.mu_bias,
                         log_factor=getattr(layer, "log_factor", None), min_log_mu=layer.min_log_mu,
                         use_p_times_alpha=layer.use_p_times_alpha)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-12, atol=1e-12)
    sum(g.sum() for g in got).backward()
    grads = [lin.weight.grad for lin in (layer.a_proj, layer.b_proj, layer.m_proj, layer.e_proj)]
    layer.zero_grad()
    sum(w.sum() for w in want).backward()
    for lin, g in zip((layer.a_proj, layer.b_proj, layer.m_proj, layer.e_proj), grads):
        torch.testing.assert_close(g, lin.weight.grad, rtol=1e-12, atol=1e-12)
        assert g.abs().sum() > 0


def test_mdn_fused_gate_proj_env_is_checked(monkeypatch):
    monkeypatch.setenv("MDN_FUSED_GATE_PROJ", "yes")
    layer = MomentumDeltaNet(32, 4, 8)
    with pytest.raises(ValueError, match=r"MDN_FUSED_GATE_PROJ='yes': expected 0 or 1"):
        layer.gates(torch.randn(1, 3, 32))


def test_bad_layer_arguments_are_clear():
    with pytest.raises(ValueError, match="gate_mode='x'"):
        MomentumDeltaNet(16, 2, 8, gate_mode="x")
    with pytest.raises(ValueError, match="mixer_impl='cuda'"):
        MomentumDeltaNet(16, 2, 8, mixer_impl="cuda")
    with pytest.raises(ValueError, match="expand_v=0.3"):
        MomentumDeltaNet(16, 2, 8, expand_v=0.3)


@pytest.mark.skipif(not (INTERPRET or torch.cuda.is_available()), reason="the Triton op needs a GPU or TRITON_INTERPRET=1")
def test_layer_with_the_triton_op_matches_the_reference():
    """The layer on the real op (chunk for training, fused recurrent for decoding) == the torch reference."""
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    layer = _init(MomentumDeltaNet(32, 2, 16)).to(dev)
    x = torch.randn(2, 70, 32, device=dev, requires_grad=True)
    layer.mixer_impl = "torch"
    ref = layer(x)
    ref.square().sum().backward()
    g_ref, x.grad = x.grad.clone(), None
    layer.mixer_impl = "chunk"
    out = layer(x)
    out.square().sum().backward()
    assert rel_rms(ref, out) < 1e-4
    assert rel_rms(g_ref, x.grad) < 1e-4
    layer.mixer_impl = "fused_recurrent"
    state = {}
    with torch.no_grad():
        y = torch.cat([layer(x[:, :66], state)] + [layer(x[:, t:t + 1], state) for t in range(66, 70)], 1)
    assert rel_rms(ref, y) < 1e-4
