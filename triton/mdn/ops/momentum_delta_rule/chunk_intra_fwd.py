"""Intra-chunk FORWARD of the chunked momentum delta rule as one fused Triton kernel (opt-in, no autograd).

Computes exactly what ``chunk_intra.chunk_mdn_intra`` returns (an ``IntraChunk`` with the same shapes, dtypes and
layout), one program per (chunk, head), everything in fp32 registers:

    q^, k^ = l2norm(q, k);  k_w = eta k^;  p = alpha k^ (or k^)
    la, lm = chunk-local cumsums of log alpha, log mu;  a = exp(la), m = exp(lm)
    L_a, L_m = exp(masked segment sums)  (masked BEFORE exp: every entry in [0, 1])
    Gamma = L_a D(beta) L_m,  b = L_a (beta * m)                       (fp32 dots, input_precision="ieee")
    Lmat = (P K_w^T) * Gamma^-,  A = (I + Lmat)^-1                     (forward substitution, row by row)
    U0 = A V,  Y = A D(a^-) P,  Z = A D(b^-) P,  Qa = s D(a) Q,  Qb = s D(b) Q,  Aqk = s (Q K_w^T) * Gamma,
    Ks = D(Gamma[C-1]) K_w,  Km = D(L_m[C-1]) K_w,  g = (a_{C-1}, b_{C-1}, m_{C-1})

The row-shifted Gamma^-, a^-, b^- come from products with the shift matrix (one non-zero term per sum: exact).
There is no backward: chunk.py uses it only when MDN_INTRA=triton and no gradient is required (inference /
prefill). See README.md in this folder for the derivation.
"""
from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from . import _triton_compat  # noqa: F401  (interpreter + NumPy >= 2.4)
from .alloc import empty
from .chunk_intra import L2NORM_EPS, IntraChunk
from .chunk_scan import _cast


def _interpret() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


@triton.jit
def _dot32(a, b, PREC: tl.constexpr):
    return tl.dot(a, b, input_precision=PREC)


@triton.jit(do_not_specialize=['H'])
def momentum_delta_rule_fwd_kernel_intra(
    q, k, v, log_alpha, beta, log_mu, eta,
    u, y, z, qa, qb, aqk, ks, km, g,
    scale,
    H,
    K: tl.constexpr,
    V: tl.constexpr,
    C: tl.constexpr,
    BK: tl.constexpr,
    BV: tl.constexpr,
    USE_L2NORM: tl.constexpr,
    P_TIMES_ALPHA: tl.constexpr,
    CAST_MODE: tl.constexpr,
    DOT_PREC: tl.constexpr,
    EPS: tl.constexpr,
):
    """One (chunk, head): q, k [NC, H, C, K], v [NC, H, C, V], gates [NC, H, C] (contiguous) -> the scan operands
    (u [NC, H, C, V]; y, z, qa, qb, ks, km [NC, H, C, K]; aqk [NC, H, C, C]; g [NC, H, 3] fp32).
    CAST_MODE 2 rounds fp32 -> bf16 to nearest in the interpreter (whose cast truncates), else a plain cast.
    DOT_PREC: input_precision of every dot but the (exact) shift products: "ieee" (default) or "tf32x3"."""
    i_c, i_h = tl.program_id(0).to(tl.int64), tl.program_id(1).to(tl.int64)
    base = i_c * H + i_h                       # index of [c, h]

    o_c = tl.arange(0, C)
    o_k = tl.arange(0, BK)
    m_k = o_k < K
    p_ck = base * C * K + o_c[:, None] * K + o_k[None, :]   # [C, BK]
    m_ck = m_k[None, :] & (o_c[:, None] >= 0)
    p_g = base * C + o_c                                     # [C]

    row = o_c[:, None]                                       # [C, 1] t
    col = o_c[None, :]                                       # [1, C] i / j
    m_lower = row >= col                                     # t >= i
    m_strict = row > col                                     # t > i
    last = row == C - 1                                      # [C, 1]

    # ---------------------------------------------------------------- gates, cumsums, L_a, L_m, Gamma, b
    b_la = tl.load(log_alpha + p_g).to(tl.float32)           # [C]
    b_lm = tl.load(log_mu + p_g).to(tl.float32)
    b_beta = tl.load(beta + p_g).to(tl.float32)
    b_eta = tl.load(eta + p_g).to(tl.float32)
    b_a = tl.exp(tl.cumsum(b_la, 0))                         # [C] a_t
    b_m = tl.exp(tl.cumsum(b_lm, 0))                         # [C] m_t
    # segment sums out[t, i] = sum_{i < l <= t} x_l: masked cumulative sum over l (rows), then mask before exp
    zero_cc = tl.zeros([C, C], dtype=tl.float32)
    s_a = tl.cumsum(tl.where(m_strict, b_la[:, None] + zero_cc, 0.), 0)   # [C(t), C(i)]
    s_m = tl.cumsum(tl.where(m_strict, b_lm[:, None] + zero_cc, 0.), 0)
    b_La = tl.exp(tl.where(m_lower, s_a, float('-inf')))    # [C, C] a_t / a_i, t >= i
    b_Lm = tl.exp(tl.where(m_lower, s_m, float('-inf')))    # [C, C] m_i / m_j, i >= j
    b_gam = _dot32(b_La * b_beta[None, :], b_Lm, DOT_PREC)             # [C, C] Gamma = L_a D(beta) L_m
    b_b = tl.sum(b_La * (b_beta * b_m)[None, :], 1)          # [C]    b = L_a (beta * m)

    # row shift by the shift matrix (exact: one non-zero term per sum)
    b_sh = tl.where(row == col + 1, 1., 0.)                  # [C, C] Sh[t, t-1] = 1
    b_gam_prev = _dot32(b_sh, b_gam, "ieee")                         # [C, C] Gamma[t-1], row 0 zero
    b_a_prev = tl.sum(b_sh * b_a[None, :], 1) + tl.where(o_c == 0, 1., 0.)   # [C] a_{t-1}, a^-_0 = 1
    b_b_prev = tl.sum(b_sh * b_b[None, :], 1)                # [C] b_{t-1}, b^-_0 = 0

    # ---------------------------------------------------------------- keys
    b_k = tl.load(k + p_ck, mask=m_ck, other=0.).to(tl.float32)   # [C, BK]
    if USE_L2NORM:
        b_k = b_k * tl.rsqrt(tl.sum(b_k * b_k, 1) + EPS)[:, None]
    b_kw = b_k * b_eta[:, None]                              # [C, BK] write key
    if P_TIMES_ALPHA:
        b_p = b_k * tl.exp(b_la)[:, None]                    # [C, BK] read key
    else:
        b_p = b_k

    # ---------------------------------------------------------------- A = (I + Lmat)^-1 by forward substitution
    b_l = _dot32(b_p, tl.trans(b_kw), DOT_PREC) * b_gam_prev           # [C, C] Lmat, strictly lower
    b_A = tl.where(row == col, 1., 0.)                       # [C, C] rows >= t are still e_t
    for t in range(1, C):
        # A[t] = e_t - sum_{j < t} Lmat[t, j] A[j]   (Lmat[t, j] = 0 for j >= t, so the identity rows add nothing)
        l_t = tl.sum(tl.where(row == t, b_l, 0.), 0)         # [C] Lmat[t, :]
        a_t = -tl.sum(l_t[:, None] * b_A, 0)                 # [C]
        b_A = tl.where(row == t, a_t[None, :] + tl.where(col == t, 1., 0.), b_A)

    # ---------------------------------------------------------------- U0 = A V (V in blocks), Y, Z
    for i_v in range(0, tl.cdiv(V, BV)):
        o_v = i_v * BV + tl.arange(0, BV)
        m_cv = (o_v < V)[None, :] & (o_c[:, None] >= 0)
        p_cv = base * C * V + o_c[:, None] * V + o_v[None, :]
        b_v = tl.load(v + p_cv, mask=m_cv, other=0.).to(tl.float32)   # [C, BV]
        tl.store(u + p_cv, _cast(_dot32(b_A, b_v, DOT_PREC), u.dtype.element_ty, CAST_MODE), mask=m_cv)
    b_y = _dot32(b_A, b_p * b_a_prev[:, None], DOT_PREC)              # [C, BK]
    tl.store(y + p_ck, _cast(b_y, y.dtype.element_ty, CAST_MODE), mask=m_ck)
    b_z = _dot32(b_A, b_p * b_b_prev[:, None], DOT_PREC)              # [C, BK]
    tl.store(z + p_ck, _cast(b_z, z.dtype.element_ty, CAST_MODE), mask=m_ck)

    # ---------------------------------------------------------------- chunk-end weights
    d_s = tl.sum(tl.where(last, b_gam, 0.), 0)               # [C] Gamma[C-1, :]
    d_m = tl.sum(tl.where(last, b_Lm, 0.), 0)                # [C] L_m[C-1, :]
    tl.store(ks + p_ck, _cast(b_kw * d_s[:, None], ks.dtype.element_ty, CAST_MODE), mask=m_ck)
    tl.store(km + p_ck, _cast(b_kw * d_m[:, None], km.dtype.element_ty, CAST_MODE), mask=m_ck)
    a_last = tl.sum(tl.where(o_c == C - 1, b_a, 0.), 0)
    b_last = tl.sum(tl.where(o_c == C - 1, b_b, 0.), 0)
    m_last = tl.sum(tl.where(o_c == C - 1, b_m, 0.), 0)
    tl.store(g + base * 3, a_last)
    tl.store(g + base * 3 + 1, b_last)
    tl.store(g + base * 3 + 2, m_last)

    # ---------------------------------------------------------------- queries
    b_q = tl.load(q + p_ck, mask=m_ck, other=0.).to(tl.float32)   # [C, BK]
    if USE_L2NORM:
        b_q = b_q * tl.rsqrt(tl.sum(b_q * b_q, 1) + EPS)[:, None]
    tl.store(qa + p_ck, _cast((scale * b_a)[:, None] * b_q, qa.dtype.element_ty, CAST_MODE), mask=m_ck)
    tl.store(qb + p_ck, _cast((scale * b_b)[:, None] * b_q, qb.dtype.element_ty, CAST_MODE), mask=m_ck)
    b_aqk = scale * _dot32(b_q, tl.trans(b_kw), DOT_PREC) * b_gam      # [C, C] lower incl. diagonal
    p_cc = base * C * C + row * C + col
    tl.store(aqk + p_cc, _cast(b_aqk, aqk.dtype.element_ty, CAST_MODE))


def _dot_precision() -> str:
    """MDN_INTRA_DOT=ieee (default) or tf32x3 (3xTF32 on tensor cores, ~fp32 accuracy; spec §2.6)."""
    env = os.environ.get("MDN_INTRA_DOT", "") or "ieee"
    if env not in ("ieee", "tf32x3"):
        raise ValueError(f"MDN_INTRA_DOT={env!r}: expected 'ieee' (default) or 'tf32x3'")
    return env


HOPPER_SHARED_LIMIT = 232448  # bytes per block (227 KB), sm_90


def shared_bytes_estimate(C: int, K: int, dot_precision: str | None = None) -> int:
    """Shared memory of the kernel: two fp32 [C, BK] dot operands, twice that for tf32x3. Matches the sm_90
    compiles (bf16/fp32 in, num_warps 4/8): C64 K128 ieee 65536, tf32x3 131072; C64 K256 ieee 131072;
    C128 K256 ieee 262144, tf32x3 524288 bytes (the last two do not fit)."""
    BK = max(16, triton.next_power_of_2(K))
    prec = dot_precision or _dot_precision()
    return 4 * C * BK * 2 * (2 if prec == "tf32x3" else 1)


def fits(C: int, K: int) -> bool:
    """Whether the kernel fits Hopper's shared memory at this chunk size and head dim (else use the torch intra)."""
    return shared_bytes_estimate(C, K) <= HOPPER_SHARED_LIMIT


def _num_warps(K: int, C: int) -> int:
    env = os.environ.get("MDN_INTRA_WARPS", "")
    if env:
        if env not in ("1", "2", "4", "8", "16"):
            raise ValueError(f"MDN_INTRA_WARPS={env!r}: expected one of 1, 2, 4, 8, 16")
        return int(env)
    return 8 if max(K, C) >= 64 else 4


def chunk_mdn_intra_fwd_triton(
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
) -> IntraChunk:
    """Drop-in forward of ``chunk_mdn_intra`` (no autograd): q, k [NC, H, C, K], v [NC, H, C, V], gates
    [NC, H, C]. Computes in fp32; returns the scan operands in ``out_dtype`` (default fp32) and g in fp32."""
    NC, H, C, K = q.shape
    V = v.shape[-1]
    if q.dtype == torch.float64:
        raise ValueError("chunk_mdn_intra_fwd_triton: q is float64; the Triton intra kernel computes in fp32 "
                         "(use chunk_intra.chunk_mdn_intra for fp64)")
    if C not in (16, 32, 64, 128):
        raise ValueError(f"chunk_mdn_intra_fwd_triton: chunk size {C}; expected one of 16, 32, 64, 128")
    out_dtype = out_dtype or torch.float32
    dev = q.device
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    log_alpha, beta, log_mu, eta = (x.contiguous() for x in (log_alpha, beta, log_mu, eta))

    u = empty(NC, H, C, V, dtype=out_dtype, device=dev)
    y, z, qa, qb, ks, km = (empty(NC, H, C, K, dtype=out_dtype, device=dev) for _ in range(6))
    aqk = empty(NC, H, C, C, dtype=out_dtype, device=dev)
    g = empty(NC, H, 3, dtype=torch.float32, device=dev)
    if NC == 0 or H == 0:
        return IntraChunk(u, y, z, qa, qb, aqk, ks, km, g)
    BK = max(16, triton.next_power_of_2(K))
    BV = max(16, min(64, triton.next_power_of_2(V)))
    cast_mode = 2 if (_interpret() and out_dtype == torch.bfloat16) else 0
    momentum_delta_rule_fwd_kernel_intra[(NC, H)](
        q, k, v, log_alpha, beta, log_mu, eta,
        u, y, z, qa, qb, aqk, ks, km, g,
        float(scale), H,
        K=K, V=V, C=C, BK=BK, BV=BV,
        USE_L2NORM=bool(use_qk_l2norm_in_kernel), P_TIMES_ALPHA=bool(use_p_times_alpha),
        CAST_MODE=cast_mode, DOT_PREC=_dot_precision(), EPS=L2NORM_EPS,
        num_warps=_num_warps(K, C), num_stages=1,
    )
    return IntraChunk(u, y, z, qa, qb, aqk, ks, km, g)
