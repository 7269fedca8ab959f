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
A second kernel returns the operands of the pqk scan form instead (chunk_intra_pqk.chunk_mdn_intra_pqk: U0, P, Q^,
K_w, A, Aqk, the row scalars r and g); both share the jit helpers below. There is no backward: chunk.py uses them
only when MDN_INTRA=triton and no gradient is required (inference / prefill), the one matching MDN_SCAN_FORM. See
README.md in this folder for the derivation.
"""
from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from . import _triton_compat  # noqa: F401  (interpreter + NumPy >= 2.4)
from .alloc import empty
from .chunk_intra import L2NORM_EPS, IntraChunk
from .chunk_intra_pqk import IntraChunkPQK
from .chunk_scan import _cast, _dot
from .intra_gates import _gate_matrices


def _interpret() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


@triton.jit
def _dot32(a, b, PREC: tl.constexpr):
    return tl.dot(a, b, input_precision=PREC)


@triton.jit
def _wide(a, b, PREC: tl.constexpr, WIDE_MODE: tl.constexpr):
    """The K- and V-wide products (P K_w^T, Q K_w^T, A V, and the six form's A D(a-) P, A D(b-) P): fp32 operands
    at PREC (WIDE_MODE 0) or bf16 operands with fp32 accumulation, as the torch intra's bf16_gemm (WIDE_MODE 1 on
    the GPU, 2 in the interpreter: chunk_scan._dot's modes)."""
    if WIDE_MODE == 0:
        return tl.dot(a, b, input_precision=PREC)
    else:
        return _dot(a, b, WIDE_MODE)


@triton.jit
def _intra_offsets(H, K: tl.constexpr, C: tl.constexpr, BK: tl.constexpr):
    """This program's (chunk, head): base = its index in [NC, H], chunk rows o_c [C], [C, BK] offsets and mask of
    its [C, K] tensors, [C] offsets of its gates."""
    i_c, i_h = tl.program_id(0).to(tl.int64), tl.program_id(1).to(tl.int64)
    base = i_c * H + i_h                                     # index of [c, h]
    o_c = tl.arange(0, C)
    o_k = tl.arange(0, BK)
    p_ck = base * C * K + o_c[:, None] * K + o_k[None, :]   # [C, BK]
    m_ck = (o_k < K)[None, :] & (o_c[:, None] >= 0)
    p_g = base * C + o_c                                     # [C]
    return base, o_c, p_ck, m_ck, p_g


@triton.jit
def _intra_gates(log_alpha, beta, log_mu, p_g, C: tl.constexpr, DOT_PREC: tl.constexpr):
    """The gate coefficients of one (chunk, head) from its gates at p_g ([C] pointers): returns la (log alpha),
    a, m, b [C], Gamma, L_m, Gamma^- [C, C] and a^-, b^- [C] (all fp32)."""
    o_c = tl.arange(0, C)
    row = o_c[:, None]                                       # [C, 1] t
    col = o_c[None, :]                                       # [1, C] i / j
    b_la, b_beta, b_a, b_m, b_La, b_Lm = _gate_matrices(log_alpha, beta, log_mu, p_g, C)
    b_gam = _dot32(b_La * b_beta[None, :], b_Lm, DOT_PREC)             # [C, C] Gamma = L_a D(beta) L_m
    b_b = tl.sum(b_La * (b_beta * b_m)[None, :], 1)          # [C]    b = L_a (beta * m)

    # row shift by the shift matrix (exact: one non-zero term per sum)
    b_sh = tl.where(row == col + 1, 1., 0.)                  # [C, C] Sh[t, t-1] = 1
    b_gam_prev = _dot32(b_sh, b_gam, "ieee")                         # [C, C] Gamma[t-1], row 0 zero
    b_a_prev = tl.sum(b_sh * b_a[None, :], 1) + tl.where(o_c == 0, 1., 0.)   # [C] a_{t-1}, a^-_0 = 1
    b_b_prev = tl.sum(b_sh * b_b[None, :], 1)                # [C] b_{t-1}, b^-_0 = 0
    return b_la, b_a, b_m, b_b, b_gam, b_Lm, b_gam_prev, b_a_prev, b_b_prev


@triton.jit
def _intra_keys(k, eta, p_ck, m_ck, p_g, b_la, USE_L2NORM: tl.constexpr, P_TIMES_ALPHA: tl.constexpr,
                EPS: tl.constexpr):
    """Write and read keys [C, BK] fp32 of one (chunk, head): k_w = eta k^, p = alpha k^ (or k^)."""
    b_eta = tl.load(eta + p_g).to(tl.float32)
    b_k = tl.load(k + p_ck, mask=m_ck, other=0.).to(tl.float32)   # [C, BK]
    if USE_L2NORM:
        b_k = b_k * tl.rsqrt(tl.sum(b_k * b_k, 1) + EPS)[:, None]
    b_kw = b_k * b_eta[:, None]                              # [C, BK] write key
    if P_TIMES_ALPHA:
        b_p = b_k * tl.exp(b_la)[:, None]                    # [C, BK] read key
    else:
        b_p = b_k
    return b_kw, b_p


@triton.jit
def _intra_inverse(b_p, b_kw, b_gam_prev, C: tl.constexpr, DOT_PREC: tl.constexpr, WIDE_MODE: tl.constexpr):
    """A = (I + Lmat)^-1 [C, C], Lmat = (P K_w^T) * Gamma^- (strictly lower)."""
    b_l = _wide(b_p, tl.trans(b_kw), DOT_PREC, WIDE_MODE) * b_gam_prev  # [C, C] Lmat, strictly lower
    return _unit_lower_inverse(b_l, C, DOT_PREC)


@triton.jit
def _unit_lower_inverse(b_l, C: tl.constexpr, DOT_PREC: tl.constexpr):
    """(I + L)^-1 [C, C] of a strictly lower triangular L, in 16-row blocks.

    With D = I + (the block-diagonal part of L) and F the rest (strictly block-lower):
    I + L = D (I + N), N = D^-1 F, so (I + L)^-1 = (I + N)^-1 D^-1. D^-1 comes from forward substitution, the rows s of
    all C / 16 blocks at once (15 steps instead of C - 1); N is nilpotent (N^(C/16) = 0), so
    (I + N)^-1 = (I - N)(I + N^2)(I + N^4)... exactly, in log2(C / 16) [C, C] products."""
    o_c = tl.arange(0, C)
    row = o_c[:, None]
    col = o_c[None, :]
    eye = tl.where(row == col, 1., 0.)
    same = (row // 16) == (col // 16)
    b_ld = tl.where(same, b_l, 0.)                           # [C, C] the 16 x 16 diagonal blocks
    b_di = eye                                               # [C, C] D^-1; rows >= s of each block still e_t
    for s in range(1, min(C, 16)):
        # rows t = 16 b + s: D^-1[t] = e_t - sum_{j < t, same block} Lmat[t, j] D^-1[j] (rows j already final)
        sel = (row % 16) == s                                # [C, 1]
        b_di = tl.where(sel, eye - _dot32(tl.where(sel, b_ld, 0.), b_di, DOT_PREC), b_di)
    if C > 16:
        b_n = _dot32(b_di, tl.where(same, 0., b_l), DOT_PREC)   # [C, C] N = D^-1 F
        b_inv = eye - b_n                                    # (I - N)
        b_pow = b_n
        for _ in range(1, (C // 16).bit_length() - 1):  # (I + N^2), (I + N^4), ... while N^(2^j) can be non-zero
            b_pow = _dot32(b_pow, b_pow, DOT_PREC)
            b_inv = _dot32(b_inv, eye + b_pow, DOT_PREC)
        b_di = _dot32(b_inv, b_di, DOT_PREC)
    return b_di


@triton.jit
def _intra_queries(q, p_ck, m_ck, USE_L2NORM: tl.constexpr, EPS: tl.constexpr):
    b_q = tl.load(q + p_ck, mask=m_ck, other=0.).to(tl.float32)   # [C, BK]
    if USE_L2NORM:
        b_q = b_q * tl.rsqrt(tl.sum(b_q * b_q, 1) + EPS)[:, None]
    return b_q


@triton.jit
def _intra_store_u(v, u, b_A, base, V: tl.constexpr, C: tl.constexpr, BV: tl.constexpr, CAST_MODE: tl.constexpr,
                   DOT_PREC: tl.constexpr, WIDE_MODE: tl.constexpr):
    """U0 = A V, V in [C, BV] blocks."""
    o_c = tl.arange(0, C)
    for i_v in range(0, tl.cdiv(V, BV)):
        o_v = i_v * BV + tl.arange(0, BV)
        m_cv = (o_v < V)[None, :] & (o_c[:, None] >= 0)
        p_cv = base * C * V + o_c[:, None] * V + o_v[None, :]
        b_v = tl.load(v + p_cv, mask=m_cv, other=0.).to(tl.float32)   # [C, BV]
        tl.store(u + p_cv, _cast(_wide(b_A, b_v, DOT_PREC, WIDE_MODE), u.dtype.element_ty, CAST_MODE), mask=m_cv)


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
    WIDE_MODE: tl.constexpr,
    EPS: tl.constexpr,
):
    """One (chunk, head), six scan form: q, k [NC, H, C, K], v [NC, H, C, V], gates [NC, H, C] (contiguous) -> the
    scan operands (u [NC, H, C, V]; y, z, qa, qb, ks, km [NC, H, C, K]; aqk [NC, H, C, C]; g [NC, H, 3] fp32).
    CAST_MODE 2 rounds fp32 -> bf16 to nearest in the interpreter (whose cast truncates), else a plain cast.
    DOT_PREC: input_precision of every fp32 dot but the (exact) shift products: "ieee" (default) or "tf32x3".
    WIDE_MODE: the K- and V-wide products in fp32 at DOT_PREC (0) or with bf16 operands (1; 2 in the interpreter),
    as the torch intra's bf16_gemm (_wide)."""
    base, o_c, p_ck, m_ck, p_g = _intra_offsets(H, K, C, BK)
    row = o_c[:, None]
    col = o_c[None, :]
    last = row == C - 1                                      # [C, 1]

    b_la, b_a, b_m, b_b, b_gam, b_Lm, b_gam_prev, b_a_prev, b_b_prev = _intra_gates(
        log_alpha, beta, log_mu, p_g, C, DOT_PREC)
    b_kw, b_p = _intra_keys(k, eta, p_ck, m_ck, p_g, b_la, USE_L2NORM, P_TIMES_ALPHA, EPS)
    b_A = _intra_inverse(b_p, b_kw, b_gam_prev, C, DOT_PREC, WIDE_MODE)

    # U0 = A V, Y, Z
    _intra_store_u(v, u, b_A, base, V, C, BV, CAST_MODE, DOT_PREC, WIDE_MODE)
    b_y = _wide(b_A, b_p * b_a_prev[:, None], DOT_PREC, WIDE_MODE)    # [C, BK]
    tl.store(y + p_ck, _cast(b_y, y.dtype.element_ty, CAST_MODE), mask=m_ck)
    b_z = _wide(b_A, b_p * b_b_prev[:, None], DOT_PREC, WIDE_MODE)    # [C, BK]
    tl.store(z + p_ck, _cast(b_z, z.dtype.element_ty, CAST_MODE), mask=m_ck)

    # chunk-end weights
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

    # queries
    b_q = _intra_queries(q, p_ck, m_ck, USE_L2NORM, EPS)
    tl.store(qa + p_ck, _cast((scale * b_a)[:, None] * b_q, qa.dtype.element_ty, CAST_MODE), mask=m_ck)
    tl.store(qb + p_ck, _cast((scale * b_b)[:, None] * b_q, qb.dtype.element_ty, CAST_MODE), mask=m_ck)
    b_aqk = scale * _wide(b_q, tl.trans(b_kw), DOT_PREC, WIDE_MODE) * b_gam      # [C, C] lower incl. diagonal
    p_cc = base * C * C + row * C + col
    tl.store(aqk + p_cc, _cast(b_aqk, aqk.dtype.element_ty, CAST_MODE))


@triton.jit(do_not_specialize=['H'])
def momentum_delta_rule_fwd_kernel_intra_pqk(
    q, k, v, log_alpha, beta, log_mu, eta,
    u, p, qn, kw, a, aqk, r, g,
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
    WIDE_MODE: tl.constexpr,
    EPS: tl.constexpr,
):
    """One (chunk, head), pqk scan form (chunk_intra_pqk.IntraChunkPQK): u [NC, H, C, V]; p, qn (the normalised
    queries), kw [NC, H, C, K]; a = A and aqk [NC, H, C, C]; r [NC, H, 6, C] fp32 (a^-, b^-, s a, s b, Gamma[C-1],
    L_m[C-1]); g [NC, H, 3] fp32. CAST_MODE, DOT_PREC and WIDE_MODE as in momentum_delta_rule_fwd_kernel_intra."""
    base, o_c, p_ck, m_ck, p_g = _intra_offsets(H, K, C, BK)
    row = o_c[:, None]
    col = o_c[None, :]
    last = row == C - 1                                      # [C, 1]
    p_cc = base * C * C + row * C + col                      # [C, C]

    b_la, b_a, b_m, b_b, b_gam, b_Lm, b_gam_prev, b_a_prev, b_b_prev = _intra_gates(
        log_alpha, beta, log_mu, p_g, C, DOT_PREC)
    b_kw, b_p = _intra_keys(k, eta, p_ck, m_ck, p_g, b_la, USE_L2NORM, P_TIMES_ALPHA, EPS)
    tl.store(kw + p_ck, _cast(b_kw, kw.dtype.element_ty, CAST_MODE), mask=m_ck)
    tl.store(p + p_ck, _cast(b_p, p.dtype.element_ty, CAST_MODE), mask=m_ck)
    b_A = _intra_inverse(b_p, b_kw, b_gam_prev, C, DOT_PREC, WIDE_MODE)
    tl.store(a + p_cc, _cast(b_A, a.dtype.element_ty, CAST_MODE))
    _intra_store_u(v, u, b_A, base, V, C, BV, CAST_MODE, DOT_PREC, WIDE_MODE)

    # the row scalars r [6, C] and the chunk-end gates g
    p_r = r + base * 6 * C + o_c
    tl.store(p_r, b_a_prev)
    tl.store(p_r + C, b_b_prev)
    tl.store(p_r + 2 * C, scale * b_a)
    tl.store(p_r + 3 * C, scale * b_b)
    tl.store(p_r + 4 * C, tl.sum(tl.where(last, b_gam, 0.), 0))   # Gamma[C-1, :]
    tl.store(p_r + 5 * C, tl.sum(tl.where(last, b_Lm, 0.), 0))    # L_m[C-1, :]
    tl.store(g + base * 3, tl.sum(tl.where(o_c == C - 1, b_a, 0.), 0))
    tl.store(g + base * 3 + 1, tl.sum(tl.where(o_c == C - 1, b_b, 0.), 0))
    tl.store(g + base * 3 + 2, tl.sum(tl.where(o_c == C - 1, b_m, 0.), 0))

    # queries
    b_q = _intra_queries(q, p_ck, m_ck, USE_L2NORM, EPS)
    tl.store(qn + p_ck, _cast(b_q, qn.dtype.element_ty, CAST_MODE), mask=m_ck)
    b_aqk = scale * _wide(b_q, tl.trans(b_kw), DOT_PREC, WIDE_MODE) * b_gam      # [C, C] lower incl. diagonal
    tl.store(aqk + p_cc, _cast(b_aqk, aqk.dtype.element_ty, CAST_MODE))


def _dot_precision() -> str:
    """MDN_INTRA_DOT=ieee (default) or tf32x3 (3xTF32 on tensor cores, ~fp32 accuracy; spec §2.6)."""
    env = os.environ.get("MDN_INTRA_DOT", "") or "ieee"
    if env not in ("ieee", "tf32x3"):
        raise ValueError(f"MDN_INTRA_DOT={env!r}: expected 'ieee' (default) or 'tf32x3'")
    return env


HOPPER_SHARED_LIMIT = 232448  # bytes per block (227 KB), sm_90


def shared_bytes_estimate(C: int, K: int, dot_precision: str | None = None) -> int:
    """Shared memory of the kernels with fp32 wide products (fp32 inputs): two fp32 [C, BK] dot operands, twice
    that for tf32x3. Matches the sm_90 compiles (num_warps 4/8): C64 K128 ieee 65536, tf32x3 131072; C64 K256 ieee
    131072, tf32x3 262144; C128 K256 ieee 262144 bytes. With bf16 wide products (16-bit inputs) the compiles need
    less at C <= 64 (pqk, C64 K256: 81920), but more than this at C = 128 (C128 K128: 229376, the [C, C] products
    of the blocked inverse), which fits() therefore leaves to the torch intra."""
    BK = max(16, triton.next_power_of_2(K))
    prec = dot_precision or _dot_precision()
    return 4 * C * BK * 2 * (2 if prec == "tf32x3" else 1)


def fits(C: int, K: int, bf16_gemm: bool = False) -> bool:
    """Whether the kernels fit Hopper's shared memory at this chunk size and head dim (else chunk.py uses the
    torch intra): C <= 64, and with fp32 wide products shared_bytes_estimate within the limit (bf16 wide products
    need at most 131072 bytes at C = 64, K = 256, tf32x3 included: sm_90 compiles)."""
    return C <= 64 and (bf16_gemm or shared_bytes_estimate(C, K) <= HOPPER_SHARED_LIMIT)


def _wide_mode(bf16_gemm: bool) -> int:
    """WIDE_MODE of the kernels: 0 (fp32 dots), 1 (bf16 operands), 2 (bf16-rounded operands in the interpreter)."""
    if not bf16_gemm:
        return 0
    return 2 if _interpret() else 1


def _num_warps(K: int, C: int) -> int:
    env = os.environ.get("MDN_INTRA_WARPS", "")
    if env:
        if env not in ("1", "2", "4", "8", "16"):
            raise ValueError(f"MDN_INTRA_WARPS={env!r}: expected one of 1, 2, 4, 8, 16")
        return int(env)
    return 8 if max(K, C) >= 64 else 4


def _check_and_prepare(name, q, k, v, gates, out_dtype):
    """Shared argument checks of the wrappers; contiguous inputs and the launch constants."""
    NC, H, C, K = q.shape
    if q.dtype == torch.float64:
        raise ValueError(f"{name}: q is float64; the Triton intra kernel computes in fp32 (use the torch intra, "
                         "chunk_intra.py / chunk_intra_pqk.py, for fp64)")
    if C not in (16, 32, 64, 128):
        raise ValueError(f"{name}: chunk size {C}; expected one of 16, 32, 64, 128")
    out_dtype = out_dtype or torch.float32
    xs = [x.contiguous() for x in (q, k, v, *gates)]
    V = v.shape[-1]
    consts = dict(K=K, V=V, C=C, BK=max(16, triton.next_power_of_2(K)), BV=max(16, min(64, triton.next_power_of_2(V))),
                  CAST_MODE=2 if (_interpret() and out_dtype == torch.bfloat16) else 0)
    return NC, H, xs, out_dtype, consts


def _launch(kernel, xs, outs, scale, NC, H, consts, use_qk_l2norm_in_kernel, use_p_times_alpha, bf16_gemm):
    if NC == 0 or H == 0:
        return
    kernel[(NC, H)](
        *xs, *outs, float(scale), H, **consts,
        USE_L2NORM=bool(use_qk_l2norm_in_kernel), P_TIMES_ALPHA=bool(use_p_times_alpha),
        DOT_PREC=_dot_precision(), WIDE_MODE=_wide_mode(bf16_gemm), EPS=L2NORM_EPS,
        num_warps=_num_warps(consts["K"], consts["C"]), num_stages=1,
    )


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
    bf16_gemm: bool = False,
) -> IntraChunk:
    """Drop-in forward of ``chunk_mdn_intra`` (no autograd): q, k [NC, H, C, K], v [NC, H, C, V], gates
    [NC, H, C]. Computes in fp32; returns the scan operands in ``out_dtype`` (default fp32) and g in fp32.
    ``bf16_gemm``: the K- and V-wide products take bf16 operands (fp32 accumulation), as chunk_mdn_intra's."""
    NC, H, xs, out_dtype, c = _check_and_prepare("chunk_mdn_intra_fwd_triton", q, k, v,
                                                 (log_alpha, beta, log_mu, eta), out_dtype)
    new = lambda *shape, dtype=out_dtype: empty(*shape, dtype=dtype, device=q.device)  # noqa: E731
    out = IntraChunk(u=new(NC, H, c["C"], c["V"]), y=new(NC, H, c["C"], c["K"]), z=new(NC, H, c["C"], c["K"]),
                     qa=new(NC, H, c["C"], c["K"]), qb=new(NC, H, c["C"], c["K"]), aqk=new(NC, H, c["C"], c["C"]),
                     ks=new(NC, H, c["C"], c["K"]), km=new(NC, H, c["C"], c["K"]),
                     g=new(NC, H, 3, dtype=torch.float32))
    _launch(momentum_delta_rule_fwd_kernel_intra, xs, out, scale, NC, H, c, use_qk_l2norm_in_kernel,
            use_p_times_alpha, bf16_gemm)
    return out


def chunk_mdn_intra_pqk_fwd_triton(
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
    """Drop-in forward of ``chunk_intra_pqk.chunk_mdn_intra_pqk`` (no autograd), arguments as
    ``chunk_mdn_intra_fwd_triton``: the operands in ``out_dtype`` (default fp32), r and g in fp32."""
    NC, H, xs, out_dtype, c = _check_and_prepare("chunk_mdn_intra_pqk_fwd_triton", q, k, v,
                                                 (log_alpha, beta, log_mu, eta), out_dtype)
    new = lambda *shape, dtype=out_dtype: empty(*shape, dtype=dtype, device=q.device)  # noqa: E731
    out = IntraChunkPQK(u=new(NC, H, c["C"], c["V"]), p=new(NC, H, c["C"], c["K"]), q=new(NC, H, c["C"], c["K"]),
                        kw=new(NC, H, c["C"], c["K"]), a=new(NC, H, c["C"], c["C"]), aqk=new(NC, H, c["C"], c["C"]),
                        r=new(NC, H, 6, c["C"], dtype=torch.float32), g=new(NC, H, 3, dtype=torch.float32))
    _launch(momentum_delta_rule_fwd_kernel_intra_pqk, xs, out, scale, NC, H, c, use_qk_l2norm_in_kernel,
            use_p_times_alpha, bf16_gemm)
    return out
