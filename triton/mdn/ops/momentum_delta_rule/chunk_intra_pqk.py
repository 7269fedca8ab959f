"""Intra-chunk part for the "pqk" scan form (chunk_scan_pqk.py, MDN_SCAN_FORM=pqk), in plain (differentiable) torch.

Same coefficients as chunk_intra.chunk_mdn_intra (README §1-§3), but instead of the six [C, K] scan operands
Y, Z, Qa, Qb, Ks, Km it returns the three they factor through (P, Q^, K_w), the [C, C] matrix A = (I + Lmat)^-1
and the per-row scalars, from which the scan kernels rebuild the six in registers:

    Y = A D(a-) P,  Z = A D(b-) P,  Qa = D(s a) Q,  Qb = D(s b) Q,  Ks = D(gamma) K_w,  Km = D(rho) K_w.
"""
from __future__ import annotations

from typing import NamedTuple

import torch

from .chunk_intra import _mm, compute_dtype, gate_coefficients, intra_coefficients
from .chunk_intra_qk import intra_qk_op, qk_config
from .tril_inverse import unit_lower_inverse


class IntraChunkPQK(NamedTuple):
    """Per-chunk operands of the pqk scan (chunk_scan_pqk.py)."""

    u: torch.Tensor | None  # [NC, H, C, V]  U0 = A V (v_in: None, the scan takes V itself)
    p: torch.Tensor    # [NC, H, C, K]  read keys P
    q: torch.Tensor    # [NC, H, C, K]  queries Q^ (L2-normalised when asked)
    kw: torch.Tensor   # [NC, H, C, K]  write keys K_w = eta k^
    a: torch.Tensor    # [NC, H, C, C]  A = (I + Lmat)^-1 (unit lower triangular)
    aqk: torch.Tensor  # [NC, H, C, C]  s (Q K_w^T) * Gamma   (lower incl. diagonal)
    r: torch.Tensor    # [NC, H, 6, C]  row scalars (a-, b-, s a, s b, gamma, rho)   compute dtype (fp32)
    g: torch.Tensor    # [NC, H, 3]     (a_last, b_last, mu_last)                   compute dtype (fp32)


def _row_scalars(abar, mbar, b, lm_last, gam, scale: float):
    """The pqk scan's row scalars r [NC, H, 6, C] (a-, b-, s a, s b, gamma, rho) and chunk-end gates g [NC, H, 3]
    (a_last, b_last, mu_last) from the gate coefficients (chunk_intra.gate_coefficients), contiguous."""
    C = abar.shape[-1]
    a_prev = torch.cat([torch.ones_like(abar[..., :1]), abar[..., :-1]], -1)
    b_prev = torch.cat([torch.zeros_like(b[..., :1]), b[..., :-1]], -1)
    r = torch.stack([a_prev, b_prev, scale * abar, scale * b, gam[..., C - 1, :], lm_last], -2)
    g = torch.stack([abar[..., C - 1], b[..., C - 1], mbar[..., C - 1]], -1)
    return r.contiguous(), g.contiguous()


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
    tril_inv: str = "solve",
    v_in: bool = False,
    gates: str = "torch",
) -> IntraChunkPQK:
    """Intra-chunk coefficients and A, all chunks at once (arguments as chunk_intra.chunk_mdn_intra).

    ``bf16_gemm``: P K_w^T, Q K_w^T and A V take bf16 operands (fp32 accumulation), as in chunk_mdn_intra; Gamma,
    b, the row scalars and the triangular solve stay fp32 (Gamma's [C, C] product in TF32 when the gate kernels
    run, chunk_intra.gate_coefficients). ``tril_inv``: as in chunk_intra.intra_coefficients.
    ``v_in`` (MDN_SCAN_V=v): no U0 (u is None; v may be None), for a scan that takes V and computes Vt = A (V - W)
    itself (chunk_scan_pqk.scan_v, chunk.py::_v_chunks). ``gates``: as in chunk_intra.intra_coefficients.
    """
    out_dtype = out_dtype or compute_dtype(q)
    c = intra_coefficients(q, k, v, log_alpha, beta, log_mu, eta, use_qk_l2norm_in_kernel, use_p_times_alpha,
                           bf16_gemm, tril_inv, gates)
    q, p, kw, A, abar, b, gam = c.q, c.p, c.kw, c.A, c.abar, c.b, c.gam

    def mm(x, y):
        return _mm(x, y, bf16_gemm)

    u = None if v_in else mm(A, c.v)               # [NC, H, C, V]
    aqk = scale * mm(q, kw.transpose(-1, -2)) * gam
    r, g = _row_scalars(abar, c.mbar, b, c.lm_last, gam, scale)

    def cast(t):
        return t.to(out_dtype).contiguous()

    return IntraChunkPQK(None if u is None else cast(u), cast(p), cast(q), cast(kw), cast(A), cast(aqk), r, g)


def chunk_mdn_intra_pqk_qk(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor | None,
    log_alpha: torch.Tensor,
    beta: torch.Tensor,
    log_mu: torch.Tensor,
    eta: torch.Tensor,
    chunks: torch.Tensor,
    scale: float,
    use_qk_l2norm_in_kernel: bool = True,
    use_p_times_alpha: bool = True,
    out_dtype: torch.dtype = torch.bfloat16,
    bf16_gemm: bool = True,
    tril_inv: str = "auto",
    v_in: bool = True,
    gates: str = "auto",
) -> IntraChunkPQK:
    """chunk_mdn_intra_pqk with the key/query work in the Triton kernels of chunk_intra_qk.py (MDN_INTRA_QK): q, k
    in the caller's [B, T, H, K] layout ([1, T, H, K] for varlen), read through the chunk table ``chunks``
    (chunk_intra_qk.chunk_table); v [NC, H, C, V] packed (only without ``v_in``); gates packed [NC, H, C].
    ``out_dtype`` bf16 (bf16 products, for 16-bit inputs; ``bf16_gemm`` must say so) or fp32 (ieee products)."""
    if (out_dtype == torch.bfloat16) != bf16_gemm:
        raise ValueError(f"chunk_mdn_intra_pqk_qk: out_dtype {out_dtype} with bf16_gemm={bf16_gemm}; the kernels "
                         "take bf16 products exactly for bf16 operands")
    la, be, lm, et = (x.float() for x in (log_alpha, beta, log_mu, eta))
    abar, mbar, b, lm_last, gam = gate_coefficients(la, be, lm, gates, tf32=bf16_gemm)
    p, qn, kw, lmat, aqk, _ = intra_qk_op(q, k, la.contiguous(), be.contiguous(), lm.contiguous(), et.contiguous(),
                                          gam.contiguous(), chunks, float(scale), use_qk_l2norm_in_kernel,
                                          use_p_times_alpha, bf16_gemm, *qk_config("fwd", q.shape[-1]))
    A = unit_lower_inverse(lmat, tril_inv)  # [NC, H, C, C] fp32
    u = None if v_in else _mm(A, v.float(), bf16_gemm).to(out_dtype).contiguous()
    r, g = _row_scalars(abar, mbar, b, lm_last, gam, scale)
    return IntraChunkPQK(u, p, qn, kw, A.to(out_dtype).contiguous(), aqk, r, g)
