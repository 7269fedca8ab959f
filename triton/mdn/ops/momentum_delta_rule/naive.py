"""Plain-torch references for the momentum delta rule (the test oracles).

Per (sequence, head), with S and M of shape [K, V] (spec §1.3):

    r_t = S_{t-1}^T p_t - v_t
    M_t = mu_t M_{t-1} + (eta_t k_t) r_t^T
    S_t = alpha_t S_{t-1} - beta_t M_t
    o_t = scale * S_t^T q_t

with k, q L2-normalised (``x / sqrt(sum x^2 + 1e-6)``) when ``use_qk_l2norm_in_kernel`` and the read key
p_t = alpha_t k_t when ``use_p_times_alpha`` (else p_t = k_t).
"""
from __future__ import annotations

import torch

L2NORM_EPS = 1e-6


def l2norm(x: torch.Tensor, eps: float = L2NORM_EPS) -> torch.Tensor:
    return x * torch.rsqrt((x * x).sum(-1, keepdim=True) + eps)


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


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
    Returns (o [B, T, H, V] in q's dtype, final_state [2, N, H, K, V] or None).
    """
    B, T, H, K = q.shape
    V = v.shape[-1]
    cd = _compute_dtype(q)
    out_dtype = q.dtype
    if scale is None:
        scale = K ** -0.5
    q, k, v = q.to(cd), k.to(cd), v.to(cd)
    la, b, lm, e = log_alpha.to(cd), beta.to(cd), log_mu.to(cd), eta.to(cd)
    if use_qk_l2norm_in_kernel:
        q, k = l2norm(q), l2norm(k)
    if cu_seqlens is None:
        bounds = [(i, 0, T) for i in range(B)]
    else:
        cs = cu_seqlens.tolist()
        bounds = [(0, cs[n], cs[n + 1]) for n in range(len(cs) - 1)]
    N = len(bounds)
    seq_outs = []
    finals_s, finals_m = [], []
    for n, (bi, t0, t1) in enumerate(bounds):
        if initial_state is not None:
            S = initial_state[0, n].to(cd)
            M = initial_state[1, n].to(cd)
        else:
            S = q.new_zeros(H, K, V)
            M = q.new_zeros(H, K, V)
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
    final_state = None
    if output_final_state:
        fd = torch.float64 if cd == torch.float64 else torch.float32
        final_state = torch.stack([torch.stack(finals_s, 0), torch.stack(finals_m, 0)], 0).to(fd)
    assert len(finals_s) == N
    return o.to(out_dtype), final_state
