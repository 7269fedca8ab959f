"""Intra-chunk part of the chunked momentum delta rule, in plain (differentiable) torch.

Everything here is batched over all chunks: tensors are laid out [NC, H, C, D] (NC = number of chunks over all
sequences, C = chunk size) and gates [NC, H, C]. Padded positions carry identity gates (log_alpha = log_mu = 0,
beta = eta = 0) and zero q/k/v, so they change nothing.

The coefficients use the overflow-free form of spec §2.6: every exponential is of a masked, non-positive
segment sum, so all of L_a, L_m, Gamma, b lie in [0, C] and no exp ever sees garbage.
See README.md in this folder for the derivation of the outputs.
"""
from __future__ import annotations

from typing import NamedTuple

import torch

from .intra_gates import intra_gates_op, kernel_applies
from .tril_inverse import unit_lower_inverse

L2NORM_EPS = 1e-6


class IntraChunk(NamedTuple):
    """Per-chunk operands of the inter-chunk scan (see chunk_scan.py)."""

    u: torch.Tensor    # [NC, H, C, V]  U0 = A V
    y: torch.Tensor    # [NC, H, C, K]  Y  = A D(a-) P
    z: torch.Tensor    # [NC, H, C, K]  Z  = A D(b-) P
    qa: torch.Tensor   # [NC, H, C, K]  s D(a) Q
    qb: torch.Tensor   # [NC, H, C, K]  s D(b) Q
    aqk: torch.Tensor  # [NC, H, C, C]  s (Q K_w^T) * Gamma   (lower incl. diagonal)
    ks: torch.Tensor   # [NC, H, C, K]  D(d_s) K_w
    km: torch.Tensor   # [NC, H, C, K]  D(d_m) K_w
    g: torch.Tensor    # [NC, H, 3]     (a_last, b_last, mu_last)   fp32


def l2norm(x: torch.Tensor, eps: float = L2NORM_EPS) -> torch.Tensor:
    return x * torch.rsqrt((x * x).sum(-1, keepdim=True) + eps)


def segsum(x: torch.Tensor) -> torch.Tensor:
    """out[..., t, i] = sum_{i < l <= t} x[..., l] for t >= i, and -inf above the diagonal.

    Computed as a masked cumulative sum (not as a difference of two cumsums), so it is exact for the short
    segments near the diagonal and never sees positive garbage above it.
    """
    C = x.shape[-1]
    strict = torch.ones(C, C, dtype=torch.bool, device=x.device).tril(-1)
    xx = x.unsqueeze(-1).expand(*x.shape, C)  # [..., C(l), C(i)] = x_l
    xx = xx.masked_fill(~strict, 0)
    out = xx.cumsum(-2)  # [..., t, i] = sum_{i < l <= t} x_l
    lower = torch.ones(C, C, dtype=torch.bool, device=x.device).tril()
    return out.masked_fill(~lower, float('-inf'))


def compute_dtype(q: torch.Tensor) -> torch.dtype:
    """The intra part computes in fp32, or fp64 for fp64 inputs."""
    return torch.float64 if q.dtype == torch.float64 else torch.float32


def _mm(a: torch.Tensor, b: torch.Tensor, bf16_gemm: bool) -> torch.Tensor:
    """a @ b, or with bf16 operands (fp32 accumulation) when bf16_gemm, back in a's dtype."""
    if bf16_gemm:
        return (a.to(torch.bfloat16) @ b.to(torch.bfloat16)).to(a.dtype)
    return a @ b


class IntraCoefficients(NamedTuple):
    """What both scan forms' intra parts compute first (README §1-§2), in the compute dtype."""

    q: torch.Tensor       # [NC, H, C, K]  queries (L2-normalised when asked)
    v: torch.Tensor | None  # [NC, H, C, V] (None when the caller passed none)
    p: torch.Tensor       # [NC, H, C, K]  read keys (alpha k^ or k^)
    kw: torch.Tensor      # [NC, H, C, K]  write keys eta k^
    abar: torch.Tensor    # [NC, H, C]     a_t = exp(sum_{l<=t} log alpha_l)
    mbar: torch.Tensor    # [NC, H, C]     m_t = exp(sum_{l<=t} log mu_l)
    lm_last: torch.Tensor  # [NC, H, C]    L_m[C-1, :] = m_{C-1} / m_j
    gam: torch.Tensor     # [NC, H, C, C]  Gamma = L_a D(beta) L_m
    b: torch.Tensor       # [NC, H, C]     b = L_a (beta * m)
    a_prev: torch.Tensor  # [NC, H, C]     a shifted down one row (1 first)
    b_prev: torch.Tensor  # [NC, H, C]     b shifted down one row (0 first)
    A: torch.Tensor       # [NC, H, C, C]  (I + (P K_w^T) * Gamma^-)^-1, unit lower triangular


def gate_coefficients(log_alpha, beta, log_mu, gates: str = "torch", tf32: bool = False):
    """(a, m, b, L_m[C-1], Gamma) of README §1 from gates [NC, H, C] in the compute dtype: the torch graph, or the
    Triton kernels of intra_gates.py (custom op mdn::intra_gates, with its own backward) where ``gates``
    (MDN_INTRA_GATES: "torch", "kernel" or "auto") says so and they apply (fp32, C <= 64; "auto" only with
    ``tf32``, i.e. for 16-bit inputs, where their [C, C] products take TF32)."""
    if kernel_applies(log_alpha, gates, tf32):
        return intra_gates_op(log_alpha, beta, log_mu, tf32)
    C = log_alpha.shape[-1]
    abar, mbar = log_alpha.cumsum(-1).exp(), log_mu.cumsum(-1).exp()  # [NC, H, C]
    La = segsum(log_alpha).exp()  # [NC, H, C, C]  a_t / a_i, t >= i
    Lm = segsum(log_mu).exp()     # [NC, H, C, C]  mu_i / mu_j, i >= j
    gam = (La * beta.unsqueeze(-2)) @ Lm  # [NC, H, C, C]  Gamma = L_a D(beta) L_m
    # b = L_a (beta * m) as a row sum, not a matrix-vector bmm: inductor fuses it with L_a's exp (forward and
    # backward); the two batched [C, C] x [C, 1] cuBLAS calls took 0.22 ms of an H16 K128 V128 fwd+bwd (H200)
    b = (La * (beta * mbar).unsqueeze(-2)).sum(-1)  # [NC, H, C]
    return abar, mbar, b, Lm[..., C - 1, :], gam


def intra_coefficients(q, k, v, log_alpha, beta, log_mu, eta, use_qk_l2norm_in_kernel: bool,
                       use_p_times_alpha: bool, bf16_gemm: bool, tril_inv: str = "solve",
                       gates: str = "torch") -> IntraCoefficients:
    """Keys, the overflow-free coefficients (every exp of a masked non-positive segment sum) and A, all chunks at
    once; inputs [NC, H, C, D] and gates [NC, H, C] in any float dtype, results in the compute dtype.
    ``tril_inv`` (MDN_TRIL_INV, chunk.py): how A is computed, "solve" (torch.linalg.solve_triangular) or "triton"
    (tril_inverse.py; fp32 on a GPU or the interpreter, the solve elsewhere). ``gates`` (MDN_INTRA_GATES): how
    the gate coefficients are computed (gate_coefficients)."""
    cd = compute_dtype(q)
    q, k, v = q.to(cd), k.to(cd), (v.to(cd) if v is not None else None)  # v None: the caller needs no A V
    log_alpha, beta, log_mu, eta = log_alpha.to(cd), beta.to(cd), log_mu.to(cd), eta.to(cd)
    C = q.shape[-2]
    if use_qk_l2norm_in_kernel:
        q, k = l2norm(q), l2norm(k)
    kw = eta.unsqueeze(-1) * k  # [NC, H, C, K] write key
    p = log_alpha.exp().unsqueeze(-1) * k if use_p_times_alpha else k  # [NC, H, C, K] read key

    abar, mbar, b, lm_last, gam = gate_coefficients(log_alpha, beta, log_mu, gates, tf32=bf16_gemm)

    # row-shifted ("previous token") versions
    gam_prev = torch.cat([torch.zeros_like(gam[..., :1, :]), gam[..., :-1, :]], -2)  # strictly lower
    a_prev = torch.cat([torch.ones_like(abar[..., :1]), abar[..., :-1]], -1)
    b_prev = torch.cat([torch.zeros_like(b[..., :1]), b[..., :-1]], -1)

    lmat = _mm(p, kw.transpose(-1, -2), bf16_gemm) * gam_prev  # [NC, H, C, C]  strictly lower
    # A = (I + Lmat)^-1 explicitly (a C-wide triangular solve), then the wide products as batched GEMMs: cheaper
    # than one solve with a (V + 2K)-wide right-hand side, and its backward is GEMMs plus one more C-wide solve.
    A = unit_lower_inverse(lmat, tril_inv)  # [NC, H, C, C]
    return IntraCoefficients(q, v, p, kw, abar, mbar, lm_last, gam, b, a_prev, b_prev, A)


def chunk_mdn_intra(
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
    gates: str = "torch",
) -> IntraChunk:
    """Intra-chunk coefficients and the triangular solve, all chunks at once.

    q, k: [NC, H, C, K]; v: [NC, H, C, V]; gates: [NC, H, C]. Computes in fp32 (fp64 for fp64 inputs) and returns
    the scan operands in ``out_dtype`` (default: the compute dtype); ``g`` stays in the compute dtype.
    ``bf16_gemm`` (experimental, off by default; chunk.py sets it from MDN_INTRA_GEMM=bf16 for 16-bit inputs): the
    K- and V-wide GEMMs (P K_w^T, Q K_w^T, A V, A D(a-)P, A D(b-)P) take bf16 operands and give bf16 results, as
    the official kernels do; Gamma, b and the triangular solve stay fp32 (Gamma's [C, C] product in TF32 when the
    gate kernels run, gate_coefficients).
    """
    out_dtype = out_dtype or compute_dtype(q)
    c = intra_coefficients(q, k, v, log_alpha, beta, log_mu, eta, use_qk_l2norm_in_kernel, use_p_times_alpha,
                           bf16_gemm, tril_inv, gates)
    C, q, p, kw, A, abar, b, gam = q.shape[-2], c.q, c.p, c.kw, c.A, c.abar, c.b, c.gam
    a_prev, b_prev, mbar = c.a_prev, c.b_prev, c.mbar

    def mm(x, y):
        return _mm(x, y, bf16_gemm)

    u = mm(A, c.v)                                 # [NC, H, C, V]
    y = mm(A, a_prev.unsqueeze(-1) * p)            # [NC, H, C, K]
    z = mm(A, b_prev.unsqueeze(-1) * p)            # [NC, H, C, K]

    qa = (scale * abar).unsqueeze(-1) * q
    qb = (scale * b).unsqueeze(-1) * q
    aqk = scale * mm(q, kw.transpose(-1, -2)) * gam
    ks = gam[..., C - 1, :].unsqueeze(-1) * kw
    km = c.lm_last.unsqueeze(-1) * kw
    g = torch.stack([abar[..., C - 1], b[..., C - 1], mbar[..., C - 1]], -1)  # [NC, H, 3]

    def cast(t):
        return t.to(out_dtype).contiguous()

    return IntraChunk(cast(u), cast(y), cast(z), cast(qa), cast(qb), cast(aqk), cast(ks), cast(km),
                      g.contiguous())
