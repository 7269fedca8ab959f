"""Models: build_model API, parameter counts of configs/*.toml vs spec §6.2 (on the meta device), explicit init,
decoding through the cache, the FLOP formula."""
import math
import os

import pytest
import torch

from mdn.layers.availability import MixerUnavailable, fla_layers_available
from mdn.models import ModelConfig, build_model, count_parameters, count_parameters_for, flops_per_token
from mdn.models.flops import mixer_forward_flops

try:
    import tomllib
except ImportError:  # Python 3.10
    tomllib = None


@pytest.fixture(autouse=True)
def _one_thread():
    """Small ops: extra threads only add contention on a busy CI box."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)

CONFIGS = os.path.join(os.path.dirname(__file__), "..", "..", "..", "configs")

# spec §6.2, total parameters in millions (vocab 50257, untied embeddings)
SPEC_PARAMS_M = {
    "mdn-400m": 417.5, "mdn-1.3b": 1462.6, "gdn-400m": 417.3, "gdn-1.3b": 1462.1,
    "transformer-400m": 411.3, "transformer-1.3b": 1439.1, "kda-400m": 424.4, "kda-1.3b": 1465.7,
    "mamba2-400m": 419.8, "mamba2-1.3b": 1446.6, "mdn-hybrid-3to1-400m": 430.9, "mdn-hybrid-7to1-400m": 434.2,
    "gdn-hybrid-3to1-400m": 430.7,
}
SPEC_NON_EMB_M = {"mdn-400m": 314.6, "mdn-1.3b": 1256.8, "gdn-400m": 314.4}
FLA_ARCHS = ("kda", "mamba2")

TINY = dict(vocab_size=61, hidden_size=32, num_layers=2, num_heads=2, head_dim=16, attn_num_heads=2)


def _model_cfg(name):
    if tomllib is None:
        pytest.skip("tomllib needs Python >= 3.11")
    with open(os.path.join(CONFIGS, name + ".toml"), "rb") as f:
        return tomllib.load(f)["model"]


@pytest.mark.parametrize("name", sorted(SPEC_PARAMS_M))
def test_config_parameter_counts_match_spec(name):
    cfg = _model_cfg(name)
    if cfg["arch"] in FLA_ARCHS and not fla_layers_available():
        with pytest.raises(MixerUnavailable, match="flash-linear-attention"):
            count_parameters_for(cfg)
        pytest.skip(f"{cfg['arch']} needs fla; checked that it is reported unavailable")
    n = count_parameters_for(cfg)
    want = SPEC_PARAMS_M[name] * 1e6
    assert abs(n["total"] - want) / want < 0.01, f"{name}: {n['total'] / 1e6:.1f}M vs spec {SPEC_PARAMS_M[name]}M"
    if name in SPEC_NON_EMB_M:
        want = SPEC_NON_EMB_M[name] * 1e6
        assert abs(n["non_embedding"] - want) / want < 0.01


def test_mdn_layer_counts_of_spec_6_2():
    """One MDN layer at 400M: 6.33M mixer + 8.65M MLP; at 1.3B: 25.24M + 34.60M."""
    for d, heads, hd, mixer_m, mlp_m in ((1024, 6, 128, 6.33, 8.65), (2048, 6, 256, 25.24, 34.60)):
        m = build_model(dict(hidden_size=d, num_layers=1, num_heads=heads, head_dim=hd), device="meta")
        blk = m.layers[0]
        assert round(sum(p.numel() for p in blk.mixer.parameters()) / 1e6, 2) == mixer_m
        assert round(sum(p.numel() for p in blk.mlp.parameters()) / 1e6, 2) == mlp_m


@pytest.mark.parametrize("arch,extra", [("mdn", {}), ("mdn", {"gate_mode": "quadrant"}), ("gdn", {}),
                                        ("transformer", {}), ("mdn", {"attn_layers": [1]})])
def test_every_parameter_is_initialised_explicitly(arch, extra):
    """Fill every parameter with NaN, run init_weights: nothing may be left (log_factor and D_log included)."""
    m = build_model(dict(TINY, arch=arch, **extra), init=False)
    with torch.no_grad():
        for p in m.parameters():
            p.fill_(float("nan"))
    m.init_weights()
    for name, p in m.named_parameters():
        assert torch.isfinite(p).all(), f"{name} was not initialised"
    names = {n.rsplit(".", 1)[-1] for n, _ in m.named_parameters()}
    if arch == "mdn" and not extra:
        assert {"log_factor", "D_log", "A_log", "Mu_log", "dt_bias", "mu_bias"} <= names


def test_same_seed_same_weights_and_meta_build_is_cheap():
    a = build_model(TINY, seed=3)
    b = build_model(TINY, seed=3)
    for (n, p), (_, q) in zip(a.named_parameters(), b.named_parameters()):
        assert torch.equal(p, q), n
    meta = build_model(dict(TINY, hidden_size=4096, num_layers=40), device="meta")
    assert count_parameters(meta)["total"] > 1e9


@pytest.mark.parametrize("arch,extra", [("mdn", {}), ("gdn", {}), ("transformer", {}),
                                        ("mdn", {"attn_layers": [0], "tie_embeddings": True})])
def test_forward_api_and_cached_decoding(arch, extra):
    m = build_model(dict(TINY, arch=arch, **extra), seed=0).double()
    ids = torch.randint(0, 61, (2, 9))
    logits = m(ids)
    assert logits.shape == (2, 9, 61)
    cache = m.new_cache()
    steps = [m(ids[:, :5], cache)] + [m(ids[:, t:t + 1], cache) for t in range(5, 9)]
    torch.testing.assert_close(torch.cat(steps, 1), logits, rtol=1e-9, atol=1e-10)
    out = m.generate(ids[:, :4], max_new_tokens=5)
    seq = ids[:, :4]
    for _ in range(5):  # greedy generation == argmax of full re-computation
        seq = torch.cat([seq, m(seq)[:, -1].argmax(-1, keepdim=True)], 1)
    assert torch.equal(out, seq)


def test_loss_backward_is_finite():
    m = build_model(dict(TINY, vocab_size=256), seed=0)
    ids = torch.randint(0, 256, (2, 33))
    loss = torch.nn.functional.cross_entropy(m(ids[:, :-1]).flatten(0, 1), ids[:, 1:].flatten())
    loss.backward()
    assert abs(loss.item() - math.log(256)) < 0.5
    assert all(torch.isfinite(p.grad).all() for p in m.parameters() if p.grad is not None)


@pytest.mark.parametrize("bad,match", [
    ({"hiden_size": 3}, "model.hiden_size: unknown key"),
    ({"arch": "rwkv"}, "model.arch = 'rwkv'"),
    ({"num_layers": 0}, "model.num_layers = 0"),
    ({"gate_mode": "soft"}, "model.gate_mode = 'soft'"),
    ({"attn_layers": [5]}, r"model.attn_layers = \[5\]"),
    ({"hidden_size": "64"}, "model.hidden_size = '64': expected an integer"),
    ({"mixer_impl": "fla"}, "model.mixer_impl = 'fla'"),
])
def test_config_errors_name_the_field(bad, match):
    with pytest.raises(ValueError, match=match):
        build_model(dict(TINY, **bad))


def test_min_log_mu_none_string():
    assert ModelConfig.from_dict({"min_log_mu": "none"}).min_log_mu is None


def test_flops_formula():
    cfg = ModelConfig.from_dict(dict(arch="transformer", hidden_size=1024, num_layers=24, attn_num_heads=16))
    assert mixer_forward_flops(cfg, 0, 4096) == 2 * 16 * 64 * 4097
    mdn = ModelConfig.from_dict(dict(hidden_size=1024, num_heads=6, head_dim=128))
    # linear attention: no dependence on T once T >= the chunk size
    assert mixer_forward_flops(mdn, 0, 4096) == mixer_forward_flops(mdn, 0, 65536) == \
        2 * 6 * (6 * 128 * 256 + 64 * (4 * 128 + 2 * 256))
    n = count_parameters_for(mdn.to_dict())["non_embedding"]
    fpt = flops_per_token(mdn, 4096, n)
    assert fpt == 6 * (n + 1024 * 50257) + 3 * 21 * mixer_forward_flops(mdn, 0, 4096)
