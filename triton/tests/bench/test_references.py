"""The baseline references agree with each other where the models coincide, and with fla's own naive code when
fla is importable."""
import importlib.util

import pytest
import torch

from mdn.bench import references
from mdn.ops.naive import l2norm, naive_recurrent_momentum_delta_rule

HAS_FLA = importlib.util.find_spec("fla") is not None


def _inputs(B=2, T=23, H=3, K=8, V=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    f = torch.float64
    q, k = torch.randn(B, T, H, K, generator=g, dtype=f), torch.randn(B, T, H, K, generator=g, dtype=f)
    v = torch.randn(B, T, H, V, generator=g, dtype=f)
    la = -torch.rand(B, T, H, generator=g, dtype=f)
    beta = torch.rand(B, T, H, generator=g, dtype=f)
    return q, k, v, la, beta


def test_gdn_is_mdn_without_momentum():
    # mu = 0, eta = 1, p = alpha k: M_t = k r^T and S_t = alpha (I - beta k k^T) S + beta k v^T, the GDN update.
    q, k, v, la, beta = _inputs()
    o_g, s_g = references.gated_delta_rule(q, k, v, la, beta)
    o_m, s_m = naive_recurrent_momentum_delta_rule(q, k, v, la, beta, torch.full_like(la, -1e4), torch.ones_like(la),
                                                   output_final_state=True)
    assert torch.allclose(o_g, o_m, atol=1e-12, rtol=1e-10)
    assert torch.allclose(s_g, s_m[0], atol=1e-12, rtol=1e-10)


def test_kda_with_uniform_channels_is_gdn():
    q, k, v, la, beta = _inputs()
    o_g, s_g = references.gated_delta_rule(q, k, v, la, beta)
    o_k, s_k = references.kda(q, k, v, la[..., None].expand_as(k), beta)
    assert torch.allclose(o_g, o_k) and torch.allclose(s_g, s_k)
    # a different decay per channel changes the result
    o_k2, _ = references.kda(q, k, v, la[..., None] * torch.linspace(0.5, 1.5, k.shape[-1], dtype=q.dtype), beta)
    assert not torch.allclose(o_g, o_k2)


def test_simple_gla_closed_form():
    # o_t = scale * sum_{s<=t} exp(G_t - G_s) (q_t . k_s) v_s with G the cumulative log decay
    q, k, v, la, _ = _inputs(B=1, T=9, H=2)
    o, _ = references.simple_gla(q, k, v, la)
    G = la.cumsum(1)  # [B, T, H]
    scale = q.shape[-1] ** -0.5
    w = torch.einsum('bthk,bshk->bhts', q, k) * (G.transpose(1, 2)[..., :, None] - G.transpose(1, 2)[..., None, :]).exp()
    w = w.tril()
    ref = scale * torch.einsum('bhts,bshv->bthv', w, v)
    assert torch.allclose(o, ref, atol=1e-12)


def test_causal_attention_matches_torch():
    q, k, v, _, _ = _inputs(K=8, V=8)
    o, st = references.causal_attention(q, k, v)
    ref = torch.nn.functional.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                                           is_causal=True).transpose(1, 2)
    assert st is None and torch.allclose(o, ref, atol=1e-12)


@pytest.mark.skipif(not HAS_FLA, reason="fla is not installed")
def test_against_fla_naive():
    from fla.ops.gated_delta_rule.naive import naive_recurrent_gated_delta_rule
    from fla.ops.kda.naive import naive_recurrent_kda
    from fla.ops.simple_gla.naive import naive_recurrent_simple_gla
    q, k, v, la, beta = _inputs()
    qn, kn = l2norm(q), l2norm(k)
    o, s = references.gated_delta_rule(q, k, v, la, beta)
    o_f, s_f = naive_recurrent_gated_delta_rule(qn, kn, v, beta, la, output_final_state=True)
    assert torch.allclose(o, o_f.double(), atol=1e-5) and torch.allclose(s, s_f.double(), atol=1e-5)
    g = la[..., None] * torch.linspace(0.5, 1.5, k.shape[-1], dtype=q.dtype)
    o, s = references.kda(q, k, v, g, beta)
    o_f, s_f = naive_recurrent_kda(qn, kn, v, g, beta, output_final_state=True)
    assert torch.allclose(o, o_f.double(), atol=1e-5) and torch.allclose(s, s_f.double(), atol=1e-5)
    o, s = references.simple_gla(q, k, v, la)
    o_f, s_f = naive_recurrent_simple_gla(q, k, v, la, output_final_state=True)
    assert torch.allclose(o, o_f.double(), atol=1e-5) and torch.allclose(s, s_f.double(), atol=1e-5)
