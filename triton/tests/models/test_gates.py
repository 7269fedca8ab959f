"""Gating-constraint modes (mdn.layers.gates): each a small function of the raw projections.

Checked against the formulas of spec §5.1 written out independently in float64, and against the stability
claims of spec §5.2 (tr T > 0 is the right-half-plane condition).
"""
import json
import math
import os

import pytest
import torch
import torch.nn.functional as F

from mdn.layers.gates import GATE_MODES, compute_gates, transition_trace

H = 6


def _params(seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    u = lambda lo, hi: torch.empty(H, dtype=dtype).uniform_(lo, hi, generator=g)  # noqa: E731
    dt = torch.exp(u(math.log(1e-3), math.log(0.1)))
    return {"A_log": u(1e-4, 16).log(), "Mu_log": u(1e-4, 16).log(), "dt_bias": dt + torch.log(-torch.expm1(-dt)),
            "mu_bias": dt + torch.log(-torch.expm1(-dt)) + 0.3, "log_factor": u(1e-4, 4).log()}


def _raw(n=4096, scale=3.0, seed=1, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return [scale * torch.randn(n, H, dtype=dtype, generator=g) for _ in range(4)]  # a, b, m, e


def _spec_trig(a, b, m, e, p, min_log_mu):
    """Spec §5.1 verbatim (arctan, sin^2, log cos^2)."""
    log_alpha_raw = -p["A_log"].exp() * F.softplus(a + p["dt_bias"])
    log_mu = -p["Mu_log"].exp() * F.softplus(m + p["mu_bias"])
    eta = torch.tanh(e) + 1
    theta = torch.atan(eta * p["log_factor"].exp())
    beta = torch.sin(theta) ** 2 * torch.sigmoid(b)
    log_alpha = torch.log(torch.cos(theta) ** 2) + log_alpha_raw
    return log_alpha, beta, log_mu.clamp_min(min_log_mu), eta


def test_trig_matches_spec_formulas():
    p = _params()
    a, b, m, e = _raw(scale=1.0)
    got = compute_gates("trig", a, b, m, e, min_log_mu=-2.0, **p)
    want = _spec_trig(a, b, m, e, p, -2.0)
    for name, x, y in zip(("log_alpha", "beta", "log_mu", "eta"), got, want):
        torch.testing.assert_close(x, y, rtol=1e-10, atol=1e-12, msg=name)


def test_trig_bounds_alpha_plus_beta_le_one_and_mu_floor():
    p = _params()
    log_alpha, beta, log_mu, eta = compute_gates("trig", *_raw(), min_log_mu=-1.0, **p)
    assert (log_alpha.exp() + beta <= 1 + 1e-12).all()
    assert (log_mu >= -1.0).all() and (log_mu <= 0).all()
    assert ((eta > 0) & (eta < 2)).all()
    assert ((beta >= 0) & (beta <= 1)).all()


def test_trig_log_alpha_finite_where_arctan_form_underflows():
    """For huge eta*factor, log(cos^2(arctan x)) underflows to -inf in the literal form; ours stays finite."""
    p = _params(dtype=torch.float32)
    p["log_factor"] = torch.full((H,), 60.0)
    a, b, m, e = (x.float() for x in _raw(n=8, scale=1.0))
    log_alpha, beta, _, _ = compute_gates("trig", a, b, m, e, min_log_mu=-2.0, **p)
    assert torch.isfinite(log_alpha).all() and torch.isfinite(beta).all()


def test_clamp_and_none_are_the_raw_gates():
    p = _params()
    a, b, m, e = _raw()
    la_n, b_n, lm_n, e_n = compute_gates("none", a, b, m, e, **p)
    torch.testing.assert_close(la_n, -p["A_log"].exp() * F.softplus(a + p["dt_bias"]))
    torch.testing.assert_close(b_n, torch.sigmoid(b))
    torch.testing.assert_close(lm_n, -p["Mu_log"].exp() * F.softplus(m + p["mu_bias"]))
    torch.testing.assert_close(e_n, torch.tanh(e) + 1)
    assert (lm_n < -2).any(), "test inputs must exercise the clamp"
    la_c, b_c, lm_c, e_c = compute_gates("clamp", a, b, m, e, min_log_mu=-2.0, **p)
    torch.testing.assert_close(la_c, la_n)
    torch.testing.assert_close(b_c, b_n)
    torch.testing.assert_close(lm_c, lm_n.clamp_min(-2.0))


@pytest.mark.parametrize("rho_alpha", [True, False])
def test_quadrant_keeps_trace_positive_everywhere(rho_alpha):
    """Our mode: tr T > 0 for every input, for rho = alpha and rho = 1, without any clamp on mu."""
    for seed in range(3):
        p = _params(seed)
        a, b, m, e = _raw(seed=seed + 10, scale=6.0)
        la, beta, lm, eta = compute_gates("quadrant", a, b, m, e, min_log_mu=None, use_p_times_alpha=rho_alpha, **p)
        tr = transition_trace(la, beta, lm, eta, use_p_times_alpha=rho_alpha)
        alpha, mu = la.exp(), lm.exp()
        # the proved margin: tr >= (1 - sigmoid(b)) * (alpha + mu), up to the rounding of the subtraction
        margin = (1 - torch.sigmoid(b)) * (alpha + mu)
        assert (tr - margin >= -1e-14 * (alpha + mu)).all()
        assert (tr > 0).all()


def test_quadrant_only_bites_when_needed():
    p = _params()
    a, b, m, e = _raw()
    la, beta, lm, eta = compute_gates("quadrant", a, b, m, e, min_log_mu=None, use_p_times_alpha=True, **p)
    la0, beta0, lm0, eta0 = compute_gates("none", a, b, m, e, **p)
    room = eta * la.exp() <= la.exp() + lm.exp()  # rho * eta <= alpha + mu: no change expected
    assert room.any() and (~room).any()
    torch.testing.assert_close(beta[room], beta0[room])
    assert (beta[~room] < beta0[~room]).all()


def test_trace_claims_of_spec_5_2():
    """trig with rho = alpha and min_log_mu > ln(1/8) keeps tr > 0 (spec §5.2, §8 item 8); trig with rho = 1,
    and the unconstrained mode, do not -- which is what `quadrant` fixes."""
    worst_trig, worst_rho1, worst_none = math.inf, math.inf, math.inf
    for seed in range(4):
        p = _params(seed)
        a, b, m, e = _raw(seed=seed + 20, scale=6.0)
        e = e.abs()  # large eta makes beta*eta large
        la, beta, lm, eta = compute_gates("trig", a, b, m, e, min_log_mu=-2.0, **p)
        worst_trig = min(worst_trig, transition_trace(la, beta, lm, eta, True).min().item())
        worst_rho1 = min(worst_rho1, transition_trace(la, beta, lm, eta, False).min().item())
        la, beta, lm, eta = compute_gates("none", a, b, m, e, **p)
        worst_none = min(worst_none, transition_trace(la, beta, lm, eta, True).min().item())
    assert worst_trig > 0
    assert worst_rho1 < 0
    assert worst_none < 0


@pytest.mark.parametrize("mode", GATE_MODES)
def test_modes_are_differentiable_and_finite(mode):
    p = {k: v.float().requires_grad_(True) for k, v in _params().items()}
    raw = [x.float().requires_grad_(True) for x in _raw(n=64)]
    out = compute_gates(mode, *raw, min_log_mu=-2.0, **p)
    sum(o.sum() for o in out).backward()
    for x in raw:
        assert torch.isfinite(x.grad).all()


def test_unknown_mode_is_a_clear_error():
    with pytest.raises(ValueError, match="gate_mode='tanh'.*trig"):
        compute_gates("tanh", *_raw(n=2), **_params())


# ------------------------------------------------------------------------------------------ golden file for Go
# stability/testdata/gates_golden.json holds raw inputs and the gates this module computes from them; the Go
# checker (stability/gates.go) is tested against the same file. Regenerate with MDN_WRITE_GOLDEN=1.
GOLDEN = os.path.join(os.path.dirname(__file__), "..", "..", "..", "stability", "testdata", "gates_golden.json")


def _golden_cases():
    g = torch.Generator().manual_seed(7)
    cases = []
    for mode in GATE_MODES:
        for rho_alpha in (True, False):
            for min_log_mu in (-2.0, -1.0, None):
                for _ in range(6):
                    r = (torch.rand(8, generator=g, dtype=torch.float64) * 2 - 1).tolist()
                    cases.append({
                        "mode": mode, "use_p_times_alpha": rho_alpha, "min_log_mu": min_log_mu,
                        "a": 6 * r[0], "b": 6 * r[1], "m": 6 * r[2], "e": 4 * r[3],
                        "A_log": math.log(8.0 * (r[4] + 1) + 1e-3), "Mu_log": math.log(8.0 * (r[5] + 1) + 1e-3),
                        "dt_bias": r[6], "mu_bias": r[7] - 0.5, "log_factor": 1.5 * r[7]})
    return cases


def _gates_of(case):
    t = lambda x: torch.tensor([x], dtype=torch.float64)  # noqa: E731
    la, beta, lm, eta = compute_gates(
        case["mode"], t(case["a"]), t(case["b"]), t(case["m"]), t(case["e"]), A_log=t(case["A_log"]),
        Mu_log=t(case["Mu_log"]), dt_bias=t(case["dt_bias"]), mu_bias=t(case["mu_bias"]),
        log_factor=t(case["log_factor"]), min_log_mu=case["min_log_mu"], use_p_times_alpha=case["use_p_times_alpha"])
    return {"log_alpha": la.item(), "beta": beta.item(), "log_mu": lm.item(), "eta": eta.item()}


def test_gates_golden_file_for_the_go_checker():
    cases = _golden_cases()
    for c in cases:
        c["want"] = _gates_of(c)
    if os.environ.get("MDN_WRITE_GOLDEN") == "1":
        with open(GOLDEN, "w") as f:
            json.dump(cases, f, indent=1)
    with open(GOLDEN) as f:
        stored = json.load(f)
    assert len(stored) == len(cases)
    for s, c in zip(stored, cases):
        for k in ("log_alpha", "beta", "log_mu", "eta"):
            assert s["want"][k] == pytest.approx(c["want"][k], rel=1e-12, abs=1e-300), (c["mode"], k)
