"""The plain-torch references: recurrence vs chunk form (spec §2), exact special cases (spec §1.4), gradients."""
import math

import pytest
import torch

from conftest import (assert_rel, constant_gates, cu_seqlens_of, gap_gates, layer_gates, make_inputs, rel_rms,
                      to_fp64)
from mdn.ops.momentum_delta_rule.naive import (_chunk_step, _factorised_gamma, _safe_gamma, l2norm,
                                               naive_chunk_momentum_delta_rule, naive_recurrent_momentum_delta_rule)

F64 = torch.float64


def _both(x, chunk_size, **kw):
    o1, h1 = naive_recurrent_momentum_delta_rule(**x, output_final_state=True, **kw)
    o2, h2 = naive_chunk_momentum_delta_rule(**x, output_final_state=True, chunk_size=chunk_size, **kw)
    return (o1, h1), (o2, h2)


# ------------------------------------------------------------------------------------------- chunk == recurrence
@pytest.mark.parametrize("chunk_size", [16, 32, 64])
@pytest.mark.parametrize("T", [1, 15, 63, 64, 65, 300])
def test_chunk_matches_recurrence_fp64(T, chunk_size):
    x = make_inputs(2, T, 2, 8, 12, dtype=F64, initial_state=True)
    (o1, h1), (o2, h2) = _both(x, chunk_size)
    assert o1.dtype == F64 and h1.dtype == F64
    assert_rel("o", o1, o2, 1e-12)
    assert_rel("S_T", h1[0], h2[0], 1e-12)
    assert_rel("M_T", h1[1], h2[1], 1e-12)


@pytest.mark.parametrize("use_p_times_alpha", [True, False])
@pytest.mark.parametrize("use_qk_l2norm_in_kernel", [True, False])
def test_chunk_matches_recurrence_flags(use_p_times_alpha, use_qk_l2norm_in_kernel):
    x = make_inputs(1, 40, 2, 8, 6, dtype=F64, gates="layer", initial_state=True)
    if not use_qk_l2norm_in_kernel:  # keep the keys at unit scale so the recurrence stays bounded
        x["q"], x["k"] = l2norm(x["q"]), l2norm(x["k"])
    (o1, h1), (o2, h2) = _both(x, 16, use_p_times_alpha=use_p_times_alpha,
                               use_qk_l2norm_in_kernel=use_qk_l2norm_in_kernel)
    assert_rel("o", o1, o2, 1e-12)
    assert_rel("state", h1, h2, 1e-12)


@pytest.mark.parametrize("chunk_size", [16, 64])
def test_varlen_matches_separate_sequences(chunk_size):
    lengths = [1, 17, 64, 33, 1]
    T = sum(lengths)
    x = make_inputs(1, T, 2, 8, 12, dtype=F64, initial_state=True, lengths=lengths)
    (o1, h1), (o2, h2) = _both(x, chunk_size)
    assert_rel("o chunk vs recurrent", o1, o2, 1e-12)
    assert_rel("state chunk vs recurrent", h1, h2, 1e-12)
    # the packed batch must equal each sequence on its own (independent of the varlen code path)
    cs = x["cu_seqlens"].tolist()
    for n in range(len(lengths)):
        sl = slice(cs[n], cs[n + 1])
        xn = {name: x[name][:, sl] for name in ("q", "k", "v", "log_alpha", "beta", "log_mu", "eta")}
        on, hn = naive_recurrent_momentum_delta_rule(**xn, initial_state=x["initial_state"][:, n:n + 1],
                                                     output_final_state=True)
        assert_rel(f"o seq {n}", on, o1[:, sl], 1e-14)
        assert_rel(f"state seq {n}", hn[:, 0], h1[:, n], 1e-14)


def test_no_initial_state_is_zero_state():
    x = make_inputs(2, 20, 2, 8, 6, dtype=F64, initial_state=True)
    x["initial_state"] = torch.zeros_like(x["initial_state"])
    o1, h1 = naive_recurrent_momentum_delta_rule(**x, output_final_state=True)
    del x["initial_state"]
    o2, h2 = naive_chunk_momentum_delta_rule(**x, output_final_state=True, chunk_size=16)
    assert_rel("o", o1, o2, 1e-12)
    assert_rel("state", h1, h2, 1e-12)


def test_continuation_equals_one_pass():
    x = make_inputs(2, 50, 2, 8, 6, dtype=F64, initial_state=True)
    o, h = naive_recurrent_momentum_delta_rule(**x, output_final_state=True)
    t1 = 23
    part = lambda sl: {n: x[n][:, sl] for n in ("q", "k", "v", "log_alpha", "beta", "log_mu", "eta")}  # noqa
    oa, ha = naive_chunk_momentum_delta_rule(**part(slice(0, t1)), initial_state=x["initial_state"],
                                             output_final_state=True, chunk_size=16)
    ob, hb = naive_chunk_momentum_delta_rule(**part(slice(t1, None)), initial_state=ha, output_final_state=True,
                                             chunk_size=16)
    assert_rel("o", o, torch.cat([oa, ob], 1), 1e-12)
    assert_rel("state", h, hb, 1e-12)


# ------------------------------------------------------------------------------------------- extreme gates
@pytest.mark.parametrize("case", ["la-0.001_lm-2", "gap0.3", "gap0.5", "gap1.0", "mu>>alpha"])
def test_safe_chunk_exact_at_extreme_gates(case):
    B, T, H = 1, 200, 2
    if case == "la-0.001_lm-2":
        g = constant_gates(B, T, H, log_alpha=-0.001, log_mu=-2.0, beta=0.5, dtype=F64)
    elif case == "mu>>alpha":
        g = constant_gates(B, T, H, log_alpha=-3.0, log_mu=-0.001, beta=0.05, dtype=F64)
    else:
        g = gap_gates(B, T, H, gap=float(case[3:]), dtype=F64)
    x = make_inputs(B, T, H, 8, 12, dtype=F64, gates=g, initial_state=True)
    (o1, h1), (o2, h2) = _both(x, 64)
    assert_rel("o", o1, o2, 1e-12)
    assert_rel("state", h1, h2, 1e-12)
    # and the safe form computed in fp32 stays accurate (spec §2.5: <= 6e-7)
    x32 = {n: (t.float() if t.is_floating_point() else t) for n, t in x.items()}
    o3, _ = naive_chunk_momentum_delta_rule(**x32, chunk_size=64)
    assert_rel("o fp32 safe", o1, o3, 1e-5)


def test_factorised_gamma_agrees_at_benign_gates_and_fails_at_extreme():
    """The official factorisation is the same math (equal at benign gates, fp64) but loses everything in fp32
    when mu decays faster than alpha (spec §2.5); the safe form does not."""
    H, C = 2, 64
    la = torch.nn.functional.logsigmoid(torch.rand(H, C, dtype=F64)).cumsum(-1)
    lm = torch.nn.functional.logsigmoid(torch.rand(H, C, dtype=F64)).cumsum(-1)
    beta = 0.5 * torch.rand(H, C, dtype=F64)
    g_safe, b_safe = _safe_gamma(la, lm, beta)
    g_fact, b_fact = _factorised_gamma(la, lm, beta, beta_eps=0.0)
    assert_rel("gamma (benign, fp64)", g_safe, g_fact, 1e-12)
    assert_rel("b (benign, fp64)", b_safe, b_fact, 1e-12)

    g = constant_gates(1, 128, 2, log_alpha=-0.001, log_mu=-2.0, beta=0.5, dtype=F64)
    x = make_inputs(1, 128, 2, 8, 8, dtype=F64, gates=g, initial_state=True)
    o_ref, _ = naive_recurrent_momentum_delta_rule(**x)
    x32 = {n: (t.float() if t.is_floating_point() else t) for n, t in x.items()}
    o_fact, _ = naive_chunk_momentum_delta_rule(**x32, chunk_size=64, _gamma_fn=_factorised_gamma)
    o_safe, _ = naive_chunk_momentum_delta_rule(**x32, chunk_size=64)
    err_fact = rel_rms(o_ref, o_fact)
    assert not (err_fact < 0.1), f"the factorised form unexpectedly accurate: {err_fact}"
    assert_rel("o safe fp32", o_ref, o_safe, 1e-5)


# ------------------------------------------------------------------------------------------- reductions (§1.4)
def _gdn_recurrence(q, k, v, log_alpha, beta_eff, scale, S0, read_alpha=True):
    """Independent gated delta rule, one (b, h) at a time: S = a (I - b' k k^T) S + b' k v^T (read key alpha*k),
    or S = a S - b' k (k^T S - v)^T with the pre-decay read (read_alpha=False). q, k already normalised."""
    B, T, H, K = q.shape
    o = torch.zeros(B, T, H, v.shape[-1], dtype=q.dtype)
    S_out = S0.clone()
    for b in range(B):
        for h in range(H):
            S = S0[b, h].clone()
            for t in range(T):
                a, bt = math.exp(log_alpha[b, t, h].item()), beta_eff[b, t, h].item()
                kt, vt = k[b, t, h], v[b, t, h]
                if read_alpha:
                    S = a * (S - bt * torch.outer(kt, kt @ S)) + bt * torch.outer(kt, vt)
                else:
                    S = a * S - bt * torch.outer(kt, kt @ S - vt)
                o[b, t, h] = scale * (S.T @ q[b, t, h])
            S_out[b, h] = S
    return o, S_out


@pytest.mark.parametrize("use_p_times_alpha", [True, False])
def test_R1_R2_mu_zero_is_gated_delta_rule(use_p_times_alpha):
    B, T, H, K, V = 1, 70, 2, 8, 6
    x = make_inputs(B, T, H, K, V, dtype=F64, initial_state=True)
    x["initial_state"][1].zero_()  # M0 = 0: with mu = 0 the old momentum would otherwise leak in at t=1
    S0 = x["initial_state"][0]
    o_gdn, S_gdn = _gdn_recurrence(l2norm(x["q"]), l2norm(x["k"]), x["v"], x["log_alpha"], x["beta"] * x["eta"],
                                   K ** -0.5, S0, read_alpha=use_p_times_alpha)
    # recurrence with mu exactly 0 (log_mu = -inf)
    xr = dict(x, log_mu=torch.full_like(x["log_mu"], float("-inf")))
    o, h = naive_recurrent_momentum_delta_rule(**xr, output_final_state=True, use_p_times_alpha=use_p_times_alpha)
    assert_rel("o recurrent", o_gdn, o, 1e-12)
    assert_rel("S recurrent", S_gdn, h[0], 1e-12)
    # chunk form with log_mu = -60 per step (mu ~ 1e-26; -inf would give inf - inf in the differences)
    xc = dict(x, log_mu=torch.full_like(x["log_mu"], -60.0))
    o, h = naive_chunk_momentum_delta_rule(**xc, output_final_state=True, use_p_times_alpha=use_p_times_alpha,
                                           chunk_size=32)
    assert_rel("o chunk", o_gdn, o, 1e-12)
    assert_rel("S chunk", S_gdn, h[0], 1e-12)


def test_R3_no_delta_correction_is_momentum_linear_attention():
    """p = 0 (not reachable through the public API, where p is k): the chunk step's triangular system is the
    identity and the result is linear attention with momentum."""
    H, L, K, V = 2, 20, 8, 6
    qc, kw, vc = (torch.randn(H, L, d, dtype=F64) for d in (K, K, V))
    la, lm = -torch.rand(H, L, dtype=F64), -torch.rand(H, L, dtype=F64)
    bt = torch.rand(H, L, dtype=F64)
    S0, M0 = torch.randn(H, K, V, dtype=F64), torch.randn(H, K, V, dtype=F64)
    o, S, M = _chunk_step(qc, kw, torch.zeros_like(kw), vc, la, bt, lm, S0, M0, _safe_gamma)
    S_ref, M_ref, outs = S0.clone(), M0.clone(), []
    for t in range(L):
        M_ref = lm[:, t, None, None].exp() * M_ref - kw[:, t, :, None] * vc[:, t, None, :]
        S_ref = la[:, t, None, None].exp() * S_ref - bt[:, t, None, None] * M_ref
        outs.append(torch.einsum('hk,hkv->hv', qc[:, t], S_ref))
    assert_rel("o", torch.stack(outs, 1), o, 1e-12)
    assert_rel("S", S_ref, S, 1e-12)
    assert_rel("M", M_ref, M, 1e-12)


def test_R4_beta_zero_only_decays_the_initial_state():
    B, T, H, K, V = 2, 40, 2, 8, 6
    x = make_inputs(B, T, H, K, V, dtype=F64, initial_state=True)
    x["beta"] = torch.zeros_like(x["beta"])
    a_bar = x["log_alpha"].cumsum(1).exp()  # [B, T, H]
    o_ref = K ** -0.5 * a_bar[..., None] * torch.einsum('bthk,bhkv->bthv', l2norm(x["q"]), x["initial_state"][0])
    for chunk_size in (16, 64):
        (o1, h1), (o2, h2) = _both(x, chunk_size)
        assert_rel("o recurrent", o_ref, o1, 1e-12)
        assert_rel("o chunk", o_ref, o2, 1e-12)
        assert_rel("S_T", a_bar[:, -1, :, None, None] * x["initial_state"][0], h2[0], 1e-12)


@pytest.mark.parametrize("use_p_times_alpha", [True, False])
def test_R5_single_token_closed_form(use_p_times_alpha):
    B, H, K, V = 3, 2, 8, 6
    x = make_inputs(B, 1, H, K, V, dtype=F64, initial_state=True)
    q, k = l2norm(x["q"][:, 0]), l2norm(x["k"][:, 0])  # [B, H, K]
    a, bt, mu, e = (x[n][:, 0, :, None, None] for n in ("log_alpha", "beta", "log_mu", "eta"))
    a, mu = a.exp(), mu.exp()
    S0, M0 = x["initial_state"]
    p = a[..., 0] * k if use_p_times_alpha else k
    r = torch.einsum('bhk,bhkv->bhv', p, S0) - x["v"][:, 0]
    S1 = a * S0 - bt * (mu * M0 + e * k[..., None] * r[:, :, None, :])
    o_ref = K ** -0.5 * torch.einsum('bhk,bhkv->bhv', q, S1)[:, None]
    (o1, _), (o2, _) = _both(x, 16, use_p_times_alpha=use_p_times_alpha)
    assert_rel("o recurrent", o_ref, o1, 1e-13)
    assert_rel("o chunk", o_ref, o2, 1e-13)


# ------------------------------------------------------------------------------------------- gradients
def test_gradcheck_recurrence_p_is_k():
    """p = k: k feeds both the write key and the read key; gradcheck sees both paths."""
    x = make_inputs(1, 3, 1, 3, 2, dtype=F64, initial_state=True, requires_grad=True)
    names = ("q", "k", "v", "log_alpha", "beta", "log_mu", "eta", "initial_state")

    def f(*args):
        o, h = naive_recurrent_momentum_delta_rule(*args[:7], initial_state=args[7], output_final_state=True)
        return o, h

    assert torch.autograd.gradcheck(f, tuple(x[n] for n in names))


def test_gradcheck_chunk():
    x = make_inputs(1, 5, 1, 3, 2, dtype=F64, initial_state=True, requires_grad=True)
    names = ("q", "k", "v", "log_alpha", "beta", "log_mu", "eta", "initial_state")

    def f(*args):
        return naive_chunk_momentum_delta_rule(*args[:7], initial_state=args[7], output_final_state=True,
                                               chunk_size=16)

    assert torch.autograd.gradcheck(f, tuple(x[n] for n in names))


def test_read_key_gradient_path_matters():
    """Sanity for the aliasing test of the kernels: dk with the read path differs from dk without it."""
    x = to_fp64(make_inputs(1, 6, 1, 4, 3, initial_state=True))
    grads = []
    for pta in (True, False):
        k = x["k"].clone().requires_grad_(True)
        o, _ = naive_recurrent_momentum_delta_rule(**dict(x, k=k), use_p_times_alpha=pta)
        o.sum().backward()
        grads.append(k.grad)
    assert rel_rms(grads[0], grads[1]) > 1e-3


@pytest.mark.parametrize("gates", ["spec", "layer"])
def test_chunk_gradients_match_recurrence(gates):
    names = ("q", "k", "v", "log_alpha", "beta", "log_mu", "eta", "initial_state")
    x = make_inputs(1, 37, 2, 6, 5, dtype=F64, gates=gates, initial_state=True)
    do = torch.randn(1, 37, 2, 5, dtype=F64)
    dht = torch.randn_like(x["initial_state"])
    res = []
    for fn, kw in ((naive_recurrent_momentum_delta_rule, {}), (naive_chunk_momentum_delta_rule, {"chunk_size": 16})):
        xi = {n: x[n].clone().requires_grad_(True) for n in names}
        o, h = fn(**xi, output_final_state=True, **kw)
        ((o * do).sum() + (h * dht).sum()).backward()
        res.append({n: xi[n].grad for n in names})
    for n in names:
        assert_rel(f"d{n}", res[0][n], res[1][n], 1e-11)


def test_layer_gates_are_in_the_feasible_set():
    g = layer_gates(2, 256, 4)
    assert (g["log_alpha"].exp() + g["beta"] <= 1 + 1e-6).all()
    assert (g["log_mu"] >= -2.0).all() and (g["eta"] > 0).all() and (g["eta"] < 2).all()


def test_low_precision_inputs_compute_in_fp32():
    x = make_inputs(1, 20, 2, 8, 6, dtype=torch.bfloat16, initial_state=True)
    o, h = naive_recurrent_momentum_delta_rule(**x, output_final_state=True)
    assert o.dtype == torch.bfloat16 and h.dtype == torch.float32
    o64, _ = naive_recurrent_momentum_delta_rule(**to_fp64(x))
    assert_rel("o bf16 vs fp64", o64, o, 1e-2)


def test_cu_seqlens_of():
    assert cu_seqlens_of([1, 2, 0, 3]).tolist() == [0, 1, 3, 3, 6]
