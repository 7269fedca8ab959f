"""Intra-chunk part for the "pqk" scan form (chunk_scan_pqk.py, MDN_SCAN_FORM=pqk), in plain (differentiable) torch.

Same coefficients as chunk_intra.chunk_mdn_intra (README §1-§3), but instead of the six [C, K] scan operands
Y, Z, Qa, Qb, Ks, Km it returns the three they factor through (P, Q^, K_w), the [C, C] matrix A = (I + Lmat)^-1
and the per-row scalars, from which the scan kernels rebuild the six in registers:

    Y = A D(a-) P,  Z = A D(b-) P,  Qa = D(s a) Q,  Qb = D(s b) Q,  Ks = D(gamma) K_w,  Km = D(rho) K_w.
"""
from __future__ import annotations

from typing import NamedTuple

import torch

from .chunk_intra import l2norm, segsum


class IntraChunkPQK(NamedTuple):
    """Per-chunk operands of the pqk scan (chunk_scan_pqk.py)."""

    u: torch.Tensor    # [NC, H, C, V]  U0 = A V
    p: torch.Tensor    # [NC, H, C, K]  read keys P
    q: torch.Tensor    # [NC, H, C, K]  queries Q^ (L2-normalised when asked)
    kw: torch.Tensor   # [NC, H, C, K]  write keys K_w = eta k^
    a: torch.Tensor    # [NC, H, C, C]  A = (I + Lmat)^-1 (unit lower triangular)
    aqk: torch.Tensor  # [NC, H, C, C]  s (Q K_w^T) * Gamma   (lower incl. diagonal)
    r: torch.Tensor    # [NC, H, 6, C]  row scalars (a-, b-, s a, s b, gamma, rho)   compute dtype (fp32)
    g: torch.Tensor    # [NC, H, 3]     (a_last, b_last, mu_last)                   compute dtype (fp32)


def chunk_mdn_intra_pqk(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    log_alpha: torch.Tensor,
    beta: torch.Tensor,
    log_mu: torch.Tensor,
    eta: torch.Tensor,
    scale: float,
    use_qk_l2norm_in_kernel: bool = True,
    use_p_times_alpha: bool = True,
    out_dtype: torch.dtype | None = None,
    bf16_gemm: bool = False,
) -> IntraChunkPQK:
    """Intra-chunk coefficients and A, all chunks at once (arguments as chunk_intra.chunk_mdn_intra).

    ``bf16_gemm``: P K_w^T, Q K_w^T and A V take bf16 operands (fp32 accumulation), as in chunk_mdn_intra; Gamma,
    b, the row scalars and the triangular solve stay fp32.
    """
    cd = torch.float64 if q.dtype == torch.float64 else torch.float32
    out_dtype = out_dtype or cd
    q, k, v = q.to(cd), k.to(cd), v.to(cd)
    log_alpha, beta, log_mu, eta = log_alpha.to(cd), beta.to(cd), log_mu.to(cd), eta.to(cd)
    C = q.shape[-2]

    def mm(a, b):
        if bf16_gemm:
            return (a.to(torch.bfloat16) @ b.to(torch.bfloat16)).to(cd)
        return a @ b

    if use_qk_l2norm_in_kernel:
        q, k = l2norm(q), l2norm(k)
    kw = eta.unsqueeze(-1) * k  # [NC, H, C, K] write key
    p = log_alpha.exp().unsqueeze(-1) * k if use_p_times_alpha else k  # [NC, H, C, K] read key

    la = log_alpha.cumsum(-1)  # [NC, H, C]
    lm = log_mu.cumsum(-1)
    abar = la.exp()
    La = segsum(log_alpha).exp()  # [NC, H, C, C]  a_t / a_i, t >= i
    Lm = segsum(log_mu).exp()     # [NC, H, C, C]  mu_i / mu_j, i >= j
    gam = (La * beta.unsqueeze(-2)) @ Lm  # [NC, H, C, C]  Gamma = L_a D(beta) L_m
    b = (La @ (beta * lm.exp()).unsqueeze(-1)).squeeze(-1)  # [NC, H, C]

    gam_prev = torch.cat([torch.zeros_like(gam[..., :1, :]), gam[..., :-1, :]], -2)  # strictly lower
    a_prev = torch.cat([torch.ones_like(abar[..., :1]), abar[..., :-1]], -1)
    b_prev = torch.cat([torch.zeros_like(b[..., :1]), b[..., :-1]], -1)

    lmat = mm(p, kw.transpose(-1, -2)) * gam_prev  # [NC, H, C, C]  strictly lower
    eye = torch.eye(C, dtype=cd, device=q.device)
    A = torch.linalg.solve_triangular(lmat, eye, upper=False, unitriangular=True)  # [NC, H, C, C]
    u = mm(A, v)                                   # [NC, H, C, V]
    aqk = scale * mm(q, kw.transpose(-1, -2)) * gam
    r = torch.stack([a_prev, b_prev, scale * abar, scale * b, gam[..., C - 1, :], Lm[..., C - 1, :]], -2)
    g = torch.stack([abar[..., C - 1], b[..., C - 1], lm[..., C - 1].exp()], -1)  # [NC, H, 3]

    def cast(t):
        return t.to(out_dtype).contiguous()

    return IntraChunkPQK(cast(u), cast(p), cast(q), cast(kw), cast(A), cast(aqk), r.contiguous(), g.contiguous())
