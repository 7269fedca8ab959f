"""Plain-torch references for the momentum delta rule (the test oracles).

Per (sequence, head), with S and M of shape [K, V] (spec §1.3):

    r_t = S_{t-1}^T p_t - v_t
    M_t = mu_t M_{t-1} + (eta_t k_t) r_t^T
    S_t = alpha_t S_{t-1} - beta_t M_t
    o_t = scale * S_t^T q_t

with k, q L2-normalised (``x / sqrt(sum x^2 + 1e-6)``) when ``use_qk_l2norm_in_kernel`` and the read key
p_t = alpha_t k_t when ``use_p_times_alpha`` (else p_t = k_t).

Two references, both differentiable and float64-capable (they compute in float64 when q is float64, else in
float32):

* ``naive_recurrent_momentum_delta_rule``: the step-by-step recurrence (the oracle);
* ``naive_chunk_momentum_delta_rule``: the chunkwise-parallel algorithm (spec §2.2-2.3) with the overflow-free
  coefficients of spec §2.6 (Gamma = L_a D(beta) L_m, b = L_a (beta * mu_bar)).

``_factorised_gamma`` is the official log-space factorisation of Gamma (spec §2.1), kept only so that a test can
show where it fails; nothing else uses it.
"""
from __future__ import annotations

import torch

from .validation import check_inputs

L2NORM_EPS = 1e-6


def l2norm(x: torch.Tensor, eps: float = L2NORM_EPS) -> torch.Tensor:
    return x * torch.rsqrt((x * x).sum(-1, keepdim=True) + eps)


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _sequence_bounds(B: int, T: int, cu_seqlens: torch.Tensor | None):
    """[(batch index, start, end)] for each of the N sequences."""
    if cu_seqlens is None:
        return [(i, 0, T) for i in range(B)]
    cs = cu_seqlens.tolist()
    return [(0, cs[n], cs[n + 1]) for n in range(len(cs) - 1)]


def _initial(initial_state, n, H, K, V, like):
    if initial_state is None:
        z = like.new_zeros(H, K, V)
        return z, z
    return initial_state[0, n].to(like.dtype), initial_state[1, n].to(like.dtype)


def _final_state(finals_s, finals_m, cd):
    return torch.stack([torch.stack(finals_s, 0), torch.stack(finals_m, 0)], 0).to(cd)


def naive_recurrent_momentum_delta_rule(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    log_alpha: torch.Tensor,
    beta: torch.Tensor,
    log_mu: torch.Tensor,
    eta: torch.Tensor,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    cu_seqlens: torch.Tensor | None = None,
    use_qk_l2norm_in_kernel: bool = True,
    use_p_times_alpha: bool = True,
):
    """Step-by-step recurrence. Differentiable; computes in float64 when q is float64, else float32.

    Shapes: q, k [B, T, H, K]; v [B, T, H, V]; gates [B, T, H]; initial_state [2, N, H, K, V].
    Returns (o [B, T, H, V] in q's dtype, final_state [2, N, H, K, V] (fp64 if computing in fp64, else fp32)
    or None).
    """
    _, scale = check_inputs(q, k, v, log_alpha, beta, log_mu, eta, scale, initial_state, cu_seqlens,
                            allow_fp64=True)
    B, T, H, K = q.shape
    V = v.shape[-1]
    cd = _compute_dtype(q)
    out_dtype = q.dtype
    q, k, v = q.to(cd), k.to(cd), v.to(cd)
    la, b, lm, e = log_alpha.to(cd), beta.to(cd), log_mu.to(cd), eta.to(cd)
    if use_qk_l2norm_in_kernel:
        q, k = l2norm(q), l2norm(k)
    seq_outs, finals_s, finals_m = [], [], []
    for n, (bi, t0, t1) in enumerate(_sequence_bounds(B, T, cu_seqlens)):
        S, M = _initial(initial_state, n, H, K, V, q)
        outs = []
        for t in range(t0, t1):
            alpha = la[bi, t].exp()[:, None, None]  # [H, 1, 1]
            mu = lm[bi, t].exp()[:, None, None]
            kt = k[bi, t]  # [H, K]
            pt = kt * alpha[:, :, 0] if use_p_times_alpha else kt
            r = torch.einsum('hk,hkv->hv', pt, S) - v[bi, t]  # [H, V]
            M = mu * M + (e[bi, t][:, None] * kt)[:, :, None] * r[:, None, :]
            S = alpha * S - b[bi, t][:, None, None] * M
            outs.append(scale * torch.einsum('hk,hkv->hv', q[bi, t], S))
        seq_outs.append(torch.stack(outs, 0) if outs else q.new_zeros(0, H, V))
        finals_s.append(S)
        finals_m.append(M)
    o = torch.stack(seq_outs, 0) if cu_seqlens is None else torch.cat(seq_outs, 0)[None]
    final_state = _final_state(finals_s, finals_m, cd) if output_final_state else None
    return o.to(out_dtype), final_state


# ------------------------------------------------------------------------------------------------ chunk form
def _tril_exp_diff(x: torch.Tensor) -> torch.Tensor:
    """[..., C] -> [..., C, C] with entry [t, i] = exp(x_t - x_i) for i <= t, else 0.

    The mask is applied *before* the exp, so the upper triangle never overflows and its gradient is exactly 0.
    For non-increasing x (cumulative sums of log-decays) every entry lies in (0, 1].
    """
    C = x.shape[-1]
    mask = torch.ones(C, C, dtype=torch.bool, device=x.device).tril()
    d = x[..., :, None] - x[..., None, :]
    return d.masked_fill(~mask, float('-inf')).exp()


def _safe_gamma(la_cum, lm_cum, beta):
    """Spec §2.6. Inputs [H, C] (chunk-local cumulative log-decays and beta). Returns Gamma [H, C, C], b [H, C]."""
    L_a = _tril_exp_diff(la_cum)  # [H, C, C]
    L_m = _tril_exp_diff(lm_cum)  # [H, C, C]
    gamma = L_a @ (beta[..., :, None] * L_m)  # L_a D(beta) L_m
    b = (L_a @ (beta * lm_cum.exp())[..., None])[..., 0]  # L_a (beta * mu_bar)
    return gamma, b


def _factorised_gamma(la_cum, lm_cum, beta, beta_eps: float = 1e-6):
    """The official factorisation (spec §2.1): lc = log(beta + 1e-6) + lm - la, lC = logcumsumexp(lc),
    gamma[t, j] = exp(la_t + lC_t - lm_j) * (1 - exp(lC_{j-1} - lC_t)) for j <= t, b_t = exp(la_t + lC_t).
    Returns (gamma, b) like ``_safe_gamma``. Overflows or cancels when mu decays faster than alpha (spec §2.5). For tests only."""
    lc = torch.log(beta + beta_eps) + lm_cum - la_cum
    lC = torch.logcumsumexp(lc, -1)  # [H, C]
    lC_prev = torch.cat([torch.full_like(lC[..., :1], float('-inf')), lC[..., :-1]], -1)
    C = la_cum.shape[-1]
    mask = torch.ones(C, C, dtype=torch.bool, device=la_cum.device).tril()
    big = torch.exp(la_cum[..., :, None] + lC[..., :, None] - lm_cum[..., None, :])
    small = 1 - torch.exp(lC_prev[..., None, :] - lC[..., :, None])
    gamma = torch.where(mask, big * small, torch.zeros_like(big))
    return gamma, torch.exp(la_cum + lC)


def _shift_down(x: torch.Tensor, fill: float, dim: int) -> torch.Tensor:
    """x shifted one place towards higher indices along dim, with `fill` in the first place."""
    first = torch.full_like(x.narrow(dim, 0, 1), fill)
    return torch.cat([first, x.narrow(dim, 0, x.shape[dim] - 1)], dim)


def _chunk_step(qc, kw, pr, vc, la, bt, lm, S0, M0, gamma_fn):
    """One chunk for all heads. qc (already scaled), kw, pr: [H, L, K]; vc: [H, L, V]; gates [H, L];
    S0, M0: [H, K, V]. Returns o [H, L, V], S_L, M_L."""
    la_cum, lm_cum = la.cumsum(-1), lm.cumsum(-1)  # [H, L]
    a_bar, mu_bar = la_cum.exp(), lm_cum.exp()
    gamma, b = gamma_fn(la_cum, lm_cum, bt)  # [H, L, L], [H, L]
    gamma_m = _shift_down(gamma, 0.0, -2)  # row t holds gamma_{t-1, .}; strictly lower
    a_m = _shift_down(a_bar, 1.0, -1)
    b_m = _shift_down(b, 0.0, -1)
    L = qc.shape[-2]
    eye = torch.eye(L, dtype=qc.dtype, device=qc.device)
    lmat = (pr @ kw.transpose(-1, -2)) * gamma_m  # [H, L, L] strictly lower
    P_S0 = pr @ S0  # [H, L, V]
    P_M0 = pr @ M0
    rhs = vc - a_m[..., None] * P_S0 + b_m[..., None] * P_M0
    v_new = torch.linalg.solve_triangular(eye + lmat, rhs, upper=False, unitriangular=True)  # [H, L, V]
    o = (a_bar[..., None] * (qc @ S0) - b[..., None] * (qc @ M0)
         + ((qc @ kw.transpose(-1, -2)) * gamma) @ v_new)
    d_s = gamma[:, -1, :]  # [H, L]
    d_m = (lm_cum[:, -1:] - lm_cum).exp()  # mu_bar_L / mu_bar_j
    S = a_bar[:, -1, None, None] * S0 - b[:, -1, None, None] * M0 + kw.transpose(-1, -2) @ (d_s[..., None] * v_new)
    M = mu_bar[:, -1, None, None] * M0 - kw.transpose(-1, -2) @ (d_m[..., None] * v_new)
    return o, S, M


def naive_chunk_momentum_delta_rule(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    log_alpha: torch.Tensor,
    beta: torch.Tensor,
    log_mu: torch.Tensor,
    eta: torch.Tensor,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    cu_seqlens: torch.Tensor | None = None,
    use_qk_l2norm_in_kernel: bool = True,
    use_p_times_alpha: bool = True,
    chunk_size: int = 64,
    _gamma_fn=_safe_gamma,
):
    """The chunkwise algorithm (spec §2.2-2.3) in plain torch with the safe coefficients of spec §2.6.

    Same arguments and returns as ``naive_recurrent_momentum_delta_rule`` plus ``chunk_size`` (16/32/64/128).
    Chunks restart at each sequence start; the last chunk of a sequence may be shorter. Differentiable.
    ``_gamma_fn`` swaps the coefficient routine (tests pass ``_factorised_gamma`` to show its failure).
    """
    _, scale = check_inputs(q, k, v, log_alpha, beta, log_mu, eta, scale, initial_state, cu_seqlens,
                            chunk_size=chunk_size, allow_fp64=True)
    B, T, H, K = q.shape
    V = v.shape[-1]
    C = chunk_size
    cd = _compute_dtype(q)
    out_dtype = q.dtype
    q, k, v = q.to(cd), k.to(cd), v.to(cd)
    la, bt, lm, e = log_alpha.to(cd), beta.to(cd), log_mu.to(cd), eta.to(cd)
    if use_qk_l2norm_in_kernel:
        q, k = l2norm(q), l2norm(k)
    q = q * scale
    kw = e[..., None] * k  # write key
    pr = la.exp()[..., None] * k if use_p_times_alpha else k  # read key
    seq_outs, finals_s, finals_m = [], [], []
    for n, (bi, t0, t1) in enumerate(_sequence_bounds(B, T, cu_seqlens)):
        S, M = _initial(initial_state, n, H, K, V, q)
        outs = []
        for c0 in range(t0, t1, C):
            c1 = min(c0 + C, t1)
            sl = (bi, slice(c0, c1))
            o, S, M = _chunk_step(
                q[sl].transpose(0, 1), kw[sl].transpose(0, 1), pr[sl].transpose(0, 1), v[sl].transpose(0, 1),
                la[sl].transpose(0, 1), bt[sl].transpose(0, 1), lm[sl].transpose(0, 1), S, M, _gamma_fn)
            outs.append(o.transpose(0, 1))  # [L, H, V]
        seq_outs.append(torch.cat(outs, 0) if outs else q.new_zeros(0, H, V))
        finals_s.append(S)
        finals_m.append(M)
    o = torch.stack(seq_outs, 0) if cu_seqlens is None else torch.cat(seq_outs, 0)[None]
    final_state = _final_state(finals_s, finals_m, cd) if output_final_state else None
    return o.to(out_dtype), final_state
