"""Intra-chunk BACKWARD of the pqk form as one fused Triton kernel per (chunk, head) (opt-in, MDN_INTRA=triton).

Given the gradients of the outputs of ``chunk_intra_pqk.chunk_mdn_intra_pqk`` (dU0, dP, dQ^, dK_w, dA, dAqk, dr,
dg) it returns those of its inputs (dq, dk, dv, dlog_alpha, dbeta, dlog_mu, deta), recomputing the forward from
q, k and the gates in registers. Forward (README §1-§3; s = scale, k^ and q^ L2-normalised):

    p = alpha k^,  k_w = eta k^,  a = exp(cumsum la),  m = exp(cumsum lm)
    L_a = exp(segsum la),  L_m = exp(segsum lm),  Gamma = (L_a D(beta)) L_m,  b = L_a (beta m)
    PK = P K_w^T,  QK = Q^ K_w^T,  Lmat = PK * Gamma^-,  A = (I + Lmat)^-1,  U0 = A V,  Aqk = s QK * Gamma
    r = (a^-, b^-, s a, s b, Gamma[C-1], L_m[C-1]),  g = (a[C-1], b[C-1], m[C-1])

Backward, in the order the kernel runs it:

    dA += dU0 V^T,  dV = A^T dU0                               (V in blocks)
    dLmat = -(A^T dA A^T) on the strict lower triangle         (the inverse's derivative)
    dPK = dLmat * Gamma^-,  dGamma^- = dLmat * PK,  dQK = s dAqk * Gamma,  dGamma = s dAqk * QK + Sh^T dGamma^-
    r, g:  da[t-1] += dr0[t],  db[t-1] += dr1[t],  da += s dr2,  db += s dr3,  dGamma[C-1] += dr4,
           dL_m[C-1] += dr5,  da[C-1] += dg0,  db[C-1] += dg1,  dm[C-1] += dg2
    Gamma:  X = L_a D(beta),  dX = dGamma L_m^T,  dL_a += dX D(beta),  dbeta += colsum(dX * L_a),  dL_m += X^T dGamma
    b:      dL_a += db (beta m)^T,  y = L_a^T db,  dbeta += m y,  dm += beta y
    segsum: dla[l] += sum_{t >= l} sum_{i < l} (dL_a * L_a)[t, i]   (and lm from L_m)
    cumsum: dla[l] += sum_{t >= l} da[t] a[t]                        (and lm from m)
    keys (K in blocks):  dP += dPK K_w,  dK_w += dPK^T P + dQK^T Q^,  dQ^ += dQK K_w,
           dla += rowsum(dP * P),  deta = rowsum(dK_w * k^),  dk^ = alpha dP + eta dK_w
    L2 norm:  dk = |k|^-1 (dk^ - k^ (k^ . dk^))  (a second pass over K, dk^ kept in the output meanwhile)

The products that the forward takes in bf16 (``bf16_gemm``: P K_w^T, Q K_w^T, A V) take bf16 operands here too, as
torch's autograd of those matmuls does; the [C, C] algebra is fp32 (DOT_PREC). Checked against torch autograd of
chunk_mdn_intra_pqk in tests/ops/test_chunk_intra_bwd.py.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import _triton_compat  # noqa: F401  (interpreter + NumPy >= 2.4)
from .alloc import empty
from .chunk_intra import L2NORM_EPS
from .chunk_intra_fwd import _dot32, _dot_precision, _intra_gates, _num_warps, _unit_lower_inverse, _wide, _wide_mode


@triton.jit
def _rev_cumsum(x, m_lower):
    """out[l] = sum_{t >= l} x[t] for x [C] (m_lower: [C(t), C(l)] t >= l)."""
    return tl.sum(tl.where(m_lower, x[:, None], 0.), 0)


@triton.jit
def _segsum_grad(dS, m_lower):
    """d x[l] of S[t, i] = sum_{i < l <= t} x[l], given dS [C, C] (lower incl. diagonal): sum_{t >= l} sum_{i < l}."""
    excl = tl.cumsum(dS, 1) - dS                             # [t, l] sum_{i < l} dS[t, i]
    return tl.sum(tl.where(m_lower, excl, 0.), 0)


@triton.jit
def _load_keys(q, k, p_ck, m_ck, b_rq, b_rk, b_eta, b_alpha, P_TIMES_ALPHA: tl.constexpr):
    """q^, k^, k_w, p [C, BK] fp32 of one K block (b_rq, b_rk: the rows' inverse norms, 1 without L2 norm)."""
    b_qn = tl.load(q + p_ck, mask=m_ck, other=0.).to(tl.float32) * b_rq[:, None]
    b_kn = tl.load(k + p_ck, mask=m_ck, other=0.).to(tl.float32) * b_rk[:, None]
    b_kw = b_kn * b_eta[:, None]
    if P_TIMES_ALPHA:
        b_p = b_kn * b_alpha[:, None]
    else:
        b_p = b_kn
    return b_qn, b_kn, b_kw, b_p


@triton.jit(do_not_specialize=['H'])
def momentum_delta_rule_bwd_kernel_intra_pqk(
    q, k, v, log_alpha, beta, log_mu, eta,
    du, dp, dqn, dkw, da, daqk, dr, dg,
    dq, dk, dv, dla, dbeta, dlm, deta,
    scale,
    H,
    K: tl.constexpr,
    V: tl.constexpr,
    C: tl.constexpr,
    BK: tl.constexpr,
    BV: tl.constexpr,
    USE_L2NORM: tl.constexpr,
    P_TIMES_ALPHA: tl.constexpr,
    DOT_PREC: tl.constexpr,
    WIDE_MODE: tl.constexpr,
    EPS: tl.constexpr,
):
    """One (chunk, head): inputs q, k [NC, H, C, K], v [NC, H, C, V], gates [NC, H, C]; the outputs' gradients
    du [NC, H, C, V], dp, dqn, dkw [NC, H, C, K], da, daqk [NC, H, C, C], dr [NC, H, 6, C], dg [NC, H, 3];
    writes dq, dk [NC, H, C, K], dv [NC, H, C, V] and the gate gradients [NC, H, C], all fp32."""
    i_c, i_h = tl.program_id(0).to(tl.int64), tl.program_id(1).to(tl.int64)
    base = i_c * H + i_h                                     # index of [c, h]
    o_c = tl.arange(0, C)
    o_k = tl.arange(0, BK)
    row = o_c[:, None]
    col = o_c[None, :]
    m_lower = row >= col
    m_strict = row > col
    last = row == C - 1
    p_g = base * C + o_c                                     # [C]
    p_cc = base * C * C + row * C + col                      # [C, C]
    b_sh = tl.where(row == col + 1, 1., 0.)                  # [C, C] Sh[t, t-1] = 1

    # ------------------------------------------------------------ forward quantities
    b_la, b_a, b_m, b_b, b_gam, b_Lm, b_gam_prev, b_a_prev, b_b_prev = _intra_gates(
        log_alpha, beta, log_mu, p_g, C, DOT_PREC)
    b_lm = tl.load(log_mu + p_g).to(tl.float32)
    b_beta = tl.load(beta + p_g).to(tl.float32)
    b_eta = tl.load(eta + p_g).to(tl.float32)
    b_alpha = tl.exp(b_la)
    zero_cc = tl.zeros([C, C], dtype=tl.float32)
    s_a = tl.cumsum(tl.where(m_strict, b_la[:, None] + zero_cc, 0.), 0)
    b_La = tl.exp(tl.where(m_lower, s_a, float('-inf')))    # [C, C] (the helper keeps it to itself)
    # the rows' inverse norms, then PK = P K_w^T and QK = Q^ K_w^T over K blocks
    b_rq = tl.zeros([C], dtype=tl.float32) + 1.
    b_rk = tl.zeros([C], dtype=tl.float32) + 1.
    if USE_L2NORM:
        s_q = tl.zeros([C], dtype=tl.float32)
        s_k = tl.zeros([C], dtype=tl.float32)
        for i_k in range(0, tl.cdiv(K, BK)):
            p_ck = base * C * K + row * K + (i_k * BK + o_k)[None, :]
            m_ck = ((i_k * BK + o_k) < K)[None, :] & (row >= 0)
            b_q = tl.load(q + p_ck, mask=m_ck, other=0.).to(tl.float32)
            b_k = tl.load(k + p_ck, mask=m_ck, other=0.).to(tl.float32)
            s_q += tl.sum(b_q * b_q, 1)
            s_k += tl.sum(b_k * b_k, 1)
        b_rq = tl.rsqrt(s_q + EPS)
        b_rk = tl.rsqrt(s_k + EPS)
    b_pk = tl.zeros([C, C], dtype=tl.float32)
    b_qk = tl.zeros([C, C], dtype=tl.float32)
    for i_k in range(0, tl.cdiv(K, BK)):
        p_ck = base * C * K + row * K + (i_k * BK + o_k)[None, :]
        m_ck = ((i_k * BK + o_k) < K)[None, :] & (row >= 0)
        b_qn, b_kn, b_kw, b_p = _load_keys(q, k, p_ck, m_ck, b_rq, b_rk, b_eta, b_alpha, P_TIMES_ALPHA)
        b_pk += _wide(b_p, tl.trans(b_kw), DOT_PREC, WIDE_MODE)
        b_qk += _wide(b_qn, tl.trans(b_kw), DOT_PREC, WIDE_MODE)
    b_A = _unit_lower_inverse(b_pk * b_gam_prev, C, DOT_PREC)   # [C, C]

    # ------------------------------------------------------------ U0 = A V
    b_dA = tl.load(da + p_cc).to(tl.float32)
    for i_v in range(0, tl.cdiv(V, BV)):
        o_v = i_v * BV + tl.arange(0, BV)
        m_cv = (o_v < V)[None, :] & (row >= 0)
        p_cv = base * C * V + row * V + o_v[None, :]
        b_v = tl.load(v + p_cv, mask=m_cv, other=0.).to(tl.float32)
        b_du = tl.load(du + p_cv, mask=m_cv, other=0.).to(tl.float32)
        b_dA += _wide(b_du, tl.trans(b_v), DOT_PREC, WIDE_MODE)
        tl.store(dv + p_cv, _wide(tl.trans(b_A), b_du, DOT_PREC, WIDE_MODE), mask=m_cv)

    # ------------------------------------------------------------ the [C, C] algebra
    b_dl = -_dot32(_dot32(tl.trans(b_A), b_dA, DOT_PREC), tl.trans(b_A), DOT_PREC)
    b_dl = tl.where(m_strict, b_dl, 0.)                      # dLmat
    b_dpk = b_dl * b_gam_prev
    b_daqk = tl.load(daqk + p_cc).to(tl.float32)
    b_dqk = scale * b_daqk * b_gam
    b_dgam = scale * b_daqk * b_qk + _dot32(tl.trans(b_sh), b_dl * b_pk, "ieee")
    # r and g
    p_r = dr + base * 6 * C + o_c
    b_dr0 = tl.load(p_r)
    b_dr1 = tl.load(p_r + C)
    b_dabar = tl.sum(b_sh * b_dr0[:, None], 0) + scale * tl.load(p_r + 2 * C)      # [C]
    b_db = tl.sum(b_sh * b_dr1[:, None], 0) + scale * tl.load(p_r + 3 * C)
    b_dgam += tl.where(last, tl.load(p_r + 4 * C)[None, :], 0.)
    b_dLm = tl.where(last, tl.load(p_r + 5 * C)[None, :], 0.)
    is_last = o_c == C - 1
    b_dabar += tl.where(is_last, tl.load(dg + base * 3), 0.)
    b_db += tl.where(is_last, tl.load(dg + base * 3 + 1), 0.)
    b_dmbar = tl.where(is_last, tl.load(dg + base * 3 + 2), 0.)
    # Gamma = (L_a D(beta)) L_m and b = L_a (beta m)
    b_dX = _dot32(b_dgam, tl.trans(b_Lm), DOT_PREC)
    b_dLa = b_dX * b_beta[None, :] + b_db[:, None] * (b_beta * b_m)[None, :]
    b_y = tl.sum(b_La * b_db[:, None], 0)                    # L_a^T db
    b_dbeta = tl.sum(b_dX * b_La, 0) + b_m * b_y
    b_dmbar += b_beta * b_y
    b_dLm += _dot32(tl.trans(b_La * b_beta[None, :]), b_dgam, DOT_PREC)
    # L_a, L_m (segment sums) and a, m (cumulative sums)
    b_dla = _segsum_grad(tl.where(m_lower, b_dLa * b_La, 0.), m_lower) + _rev_cumsum(b_dabar * b_a, m_lower)
    b_dlm = _segsum_grad(tl.where(m_lower, b_dLm * b_Lm, 0.), m_lower) + _rev_cumsum(b_dmbar * b_m, m_lower)

    # ------------------------------------------------------------ keys, K in blocks
    b_deta = tl.zeros([C], dtype=tl.float32)
    s_dq = tl.zeros([C], dtype=tl.float32)
    s_dk = tl.zeros([C], dtype=tl.float32)
    for i_k in range(0, tl.cdiv(K, BK)):
        p_ck = base * C * K + row * K + (i_k * BK + o_k)[None, :]
        m_ck = ((i_k * BK + o_k) < K)[None, :] & (row >= 0)
        b_qn, b_kn, b_kw, b_p = _load_keys(q, k, p_ck, m_ck, b_rq, b_rk, b_eta, b_alpha, P_TIMES_ALPHA)
        b_dp = tl.load(dp + p_ck, mask=m_ck, other=0.).to(tl.float32) + _wide(b_dpk, b_kw, DOT_PREC, WIDE_MODE)
        b_dkw = (tl.load(dkw + p_ck, mask=m_ck, other=0.).to(tl.float32)
                 + _wide(tl.trans(b_dpk), b_p, DOT_PREC, WIDE_MODE) + _wide(tl.trans(b_dqk), b_qn, DOT_PREC, WIDE_MODE))
        b_dqn = tl.load(dqn + p_ck, mask=m_ck, other=0.).to(tl.float32) + _wide(b_dqk, b_kw, DOT_PREC, WIDE_MODE)
        b_deta += tl.sum(b_dkw * b_kn, 1)
        if P_TIMES_ALPHA:
            b_dla += tl.sum(b_dp * b_p, 1)
            b_dkn = b_dp * b_alpha[:, None] + b_dkw * b_eta[:, None]
        else:
            b_dkn = b_dp + b_dkw * b_eta[:, None]
        s_dq += tl.sum(b_dqn * b_qn, 1)
        s_dk += tl.sum(b_dkn * b_kn, 1)
        tl.store(dq + p_ck, b_dqn, mask=m_ck)                # dq^, dk^ until the second pass
        tl.store(dk + p_ck, b_dkn, mask=m_ck)
    if USE_L2NORM:
        for i_k in range(0, tl.cdiv(K, BK)):
            p_ck = base * C * K + row * K + (i_k * BK + o_k)[None, :]
            m_ck = ((i_k * BK + o_k) < K)[None, :] & (row >= 0)
            b_qn = tl.load(q + p_ck, mask=m_ck, other=0.).to(tl.float32) * b_rq[:, None]
            b_kn = tl.load(k + p_ck, mask=m_ck, other=0.).to(tl.float32) * b_rk[:, None]
            b_dqn = tl.load(dq + p_ck, mask=m_ck, other=0.)
            b_dkn = tl.load(dk + p_ck, mask=m_ck, other=0.)
            tl.store(dq + p_ck, b_rq[:, None] * (b_dqn - b_qn * s_dq[:, None]), mask=m_ck)
            tl.store(dk + p_ck, b_rk[:, None] * (b_dkn - b_kn * s_dk[:, None]), mask=m_ck)
    tl.store(dla + p_g, b_dla)
    tl.store(dbeta + p_g, b_dbeta)
    tl.store(dlm + p_g, b_dlm)
    tl.store(deta + p_g, b_deta)


def chunk_mdn_intra_pqk_bwd_triton(q, k, v, log_alpha, beta, log_mu, eta, grads, scale: float,
                                   use_qk_l2norm_in_kernel: bool = True, use_p_times_alpha: bool = True,
                                   bf16_gemm: bool = False):
    """Gradients (dq, dk, dv, dlog_alpha, dbeta, dlog_mu, deta), all fp32, of chunk_mdn_intra_pqk's inputs, given
    ``grads`` = the gradients of its outputs (u, p, q, kw, a, aqk, r, g), in that order (any float dtype)."""
    NC, H, C, K = q.shape
    V = v.shape[-1]
    if C not in (16, 32, 64):
        raise ValueError(f"chunk_mdn_intra_pqk_bwd_triton: chunk size {C}; expected one of 16, 32, 64")
    xs = [x.contiguous() for x in (q, k, v, log_alpha, beta, log_mu, eta)]
    gs = [g.contiguous() for g in grads]
    dq, dk = (empty(NC, H, C, K, dtype=torch.float32, device=q.device) for _ in range(2))
    dv = empty(NC, H, C, V, dtype=torch.float32, device=q.device)
    dgates = [empty(NC, H, C, dtype=torch.float32, device=q.device) for _ in range(4)]
    if NC and H:
        momentum_delta_rule_bwd_kernel_intra_pqk[(NC, H)](
            *xs, *gs, dq, dk, dv, *dgates, float(scale), H,
            K=K, V=V, C=C, BK=min(64, max(16, triton.next_power_of_2(K))),
            BV=max(16, min(64, triton.next_power_of_2(V))),
            USE_L2NORM=bool(use_qk_l2norm_in_kernel), P_TIMES_ALPHA=bool(use_p_times_alpha),
            DOT_PREC=_dot_precision(), WIDE_MODE=_wide_mode(bf16_gemm), EPS=L2NORM_EPS,
            num_warps=_num_warps(K, C), num_stages=1,
        )
    return (dq, dk, dv, *dgates)



# ---------------------------------------------------------------------------------------------------------------
# custom ops: the Triton intra part (pqk form), forward and backward, for autograd and torch.compile
# ---------------------------------------------------------------------------------------------------------------

def _fwd_dtype(bf16_out: bool) -> torch.dtype:
    return torch.bfloat16 if bf16_out else torch.float32


@torch.library.custom_op("mdn::intra_pqk_fwd", mutates_args=())
def intra_pqk_fwd(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, log_alpha: torch.Tensor, beta: torch.Tensor,
    log_mu: torch.Tensor, eta: torch.Tensor, scale: float, use_qk_l2norm_in_kernel: bool, use_p_times_alpha: bool,
    bf16_out: bool, bf16_gemm: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
           torch.Tensor]:
    """chunk_mdn_intra_pqk's outputs (u, p, q, kw, a, aqk, r, g) from the fused Triton kernel; operands in bf16
    (bf16_out) or fp32, r and g fp32."""
    from .chunk_intra_fwd import chunk_mdn_intra_pqk_fwd_triton
    return tuple(chunk_mdn_intra_pqk_fwd_triton(q, k, v, log_alpha, beta, log_mu, eta, scale,
                                                use_qk_l2norm_in_kernel, use_p_times_alpha,
                                                out_dtype=_fwd_dtype(bf16_out), bf16_gemm=bf16_gemm))


@intra_pqk_fwd.register_fake
def _(q, k, v, log_alpha, beta, log_mu, eta, scale, use_qk_l2norm_in_kernel, use_p_times_alpha, bf16_out, bf16_gemm):
    NC, H, C, K = q.shape
    dt = _fwd_dtype(bf16_out)
    return (q.new_empty(NC, H, C, v.shape[-1], dtype=dt), q.new_empty(NC, H, C, K, dtype=dt),
            q.new_empty(NC, H, C, K, dtype=dt), q.new_empty(NC, H, C, K, dtype=dt), q.new_empty(NC, H, C, C, dtype=dt),
            q.new_empty(NC, H, C, C, dtype=dt), q.new_empty(NC, H, 6, C, dtype=torch.float32),
            q.new_empty(NC, H, 3, dtype=torch.float32))


@torch.library.custom_op("mdn::intra_pqk_bwd", mutates_args=())
def intra_pqk_bwd(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, log_alpha: torch.Tensor, beta: torch.Tensor,
    log_mu: torch.Tensor, eta: torch.Tensor, du: torch.Tensor, dp: torch.Tensor, dq: torch.Tensor, dkw: torch.Tensor,
    da: torch.Tensor, daqk: torch.Tensor, dr: torch.Tensor, dg: torch.Tensor, scale: float,
    use_qk_l2norm_in_kernel: bool, use_p_times_alpha: bool, bf16_gemm: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """fp32 gradients (dq, dk, dv, dlog_alpha, dbeta, dlog_mu, deta) of intra_pqk_fwd's inputs."""
    return tuple(chunk_mdn_intra_pqk_bwd_triton(q, k, v, log_alpha, beta, log_mu, eta,
                                                (du, dp, dq, dkw, da, daqk, dr, dg), scale,
                                                use_qk_l2norm_in_kernel, use_p_times_alpha, bf16_gemm))


@intra_pqk_bwd.register_fake
def _(q, k, v, log_alpha, beta, log_mu, eta, du, dp, dq, dkw, da, daqk, dr, dg, scale, use_qk_l2norm_in_kernel,
      use_p_times_alpha, bf16_gemm):
    f32 = dict(dtype=torch.float32)
    return (q.new_empty(q.shape, **f32), k.new_empty(k.shape, **f32), v.new_empty(v.shape, **f32),
            *(x.new_empty(x.shape, **f32) for x in (log_alpha, beta, log_mu, eta)))


def _intra_pqk_setup_context(ctx, inputs, output):
    q, k, v, log_alpha, beta, log_mu, eta, scale, l2, pa, bf16_out, bf16_gemm = inputs
    ctx.save_for_backward(q, k, v, log_alpha, beta, log_mu, eta)
    ctx.args = (scale, l2, pa, bf16_gemm)
    ctx.shapes = [(o.shape, o.dtype) for o in output]


def _intra_pqk_backward(ctx, *grads):
    q, k, v, log_alpha, beta, log_mu, eta = ctx.saved_tensors
    scale, l2, pa, bf16_gemm = ctx.args
    grads = [torch.zeros(s, dtype=dt, device=q.device) if g is None else g.contiguous()
             for g, (s, dt) in zip(grads, ctx.shapes)]
    dq, dk, dv, dla, dbeta, dlm, deta = intra_pqk_bwd(q, k, v, log_alpha, beta, log_mu, eta, *grads, scale, l2, pa,
                                                      bf16_gemm)
    ins = (q, k, v, log_alpha, beta, log_mu, eta)
    outs = [d.to(x.dtype) for d, x in zip((dq, dk, dv, dla, dbeta, dlm, deta), ins)]
    return (*outs, None, None, None, None, None)


intra_pqk_fwd.register_autograd(_intra_pqk_backward, setup_context=_intra_pqk_setup_context)
