import math

import pytest
import torch

from mdn.bench.gates import MIN_LOG_MU, make_gates


def test_deterministic_and_shaped():
    a = make_gates("trig", 2, 50, 3, seed=4)
    b = make_gates("trig", 2, 50, 3, seed=4)
    c = make_gates("trig", 2, 50, 3, seed=5)
    for n in ("log_alpha", "beta", "log_mu", "eta"):
        assert a[n].shape == (2, 50, 3) and a[n].dtype == torch.float32
        assert torch.equal(a[n], b[n])
        assert not torch.equal(a[n], c[n])


@pytest.mark.parametrize("name", ["layer_init", "trig"])
def test_trig_constraint_holds(name):
    g = make_gates(name, 4, 500, 8, dtype=torch.float64)
    alpha, beta = g["log_alpha"].exp(), g["beta"]
    assert (alpha + beta <= 1 + 1e-12).all()
    assert (g["log_mu"] >= MIN_LOG_MU).all() and (g["log_alpha"] < 0).all()
    assert ((g["eta"] > 0) & (g["eta"] < 2)).all()


def test_layer_init_regime():
    # the anchor regime: mean log alpha about -1.4, mean log mu about -0.13 (spec §2.5)
    g = make_gates("layer_init", 8, 2000, 16, dtype=torch.float64)
    assert -3.0 < g["log_alpha"].mean() < -0.5
    assert -0.6 < g["log_mu"].mean() < 0
    assert (g["eta"] - 1).abs().max() < 0.5  # e is small at init


def test_none_is_unconstrained_and_clamp_only_clamps():
    none = make_gates("none", 4, 2000, 16, dtype=torch.float64)
    clamp = make_gates("clamp", 4, 2000, 16, dtype=torch.float64)
    assert (none["log_mu"] < MIN_LOG_MU).any()
    assert (clamp["log_mu"] >= MIN_LOG_MU).all()
    assert (none["log_alpha"].exp() + none["beta"] > 1).any()  # no alpha + beta <= 1 coupling


def test_stress_gap():
    g = make_gates("stress_gap_0.3", 1, 10, 2, dtype=torch.float64)
    assert torch.allclose(g["log_alpha"] - g["log_mu"], torch.full((1, 10, 2), 0.3, dtype=torch.float64))
    assert torch.allclose(g["log_alpha"].exp(), torch.full((1, 10, 2), 0.99, dtype=torch.float64))


def test_spec_gates_ranges():
    g = make_gates("spec", 2, 100, 2, dtype=torch.float64)
    assert (g["beta"] <= 0.5).all() and (g["log_alpha"] >= math.log(0.5) - 1e-12).all() and (g["log_alpha"] < 0).all()


@pytest.mark.parametrize("bad", ["trigg", "stress_gap_", "stress_gap_x", ""])
def test_bad_name(bad):
    with pytest.raises(ValueError, match="constraint="):
        make_gates(bad, 1, 1, 1)
