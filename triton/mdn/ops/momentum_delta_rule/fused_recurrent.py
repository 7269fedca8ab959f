"""Fused recurrent momentum delta rule: one token at a time, S and M in fp32 registers.

For decoding (T = 1 per call with a state cache) and as a second, independent implementation of the op.

Forward (``momentum_delta_rule_fwd_kernel_fused_recurrent``), grid (cdiv(V, BV), N*H). Each program holds its
[BK, BV] slices of S and M (BK = next_pow2(K)); the value columns of S and M evolve independently, so splitting
V is exact. Per token: L2 norm of q and k (x * rsqrt(sum x^2 + 1e-6), as in the chunk path), write key eta*k,
read key alpha*k (use_p_times_alpha), then

    r = S^T p - v ;  M = mu M + k_w r^T ;  S = alpha S - beta M ;  o = scale S^T q

Backward (``momentum_delta_rule_bwd_kernel_fused_recurrent``), a reverse-time scan with the same grid. When
gradients are needed the forward also stores (S, M) every BC tokens (checkpoints, BC ~ sqrt(T)). The backward
walks the checkpoint intervals from last to first: it recomputes the interval's states forward into a
per-program scratch buffer, then steps back through them:

    dS += scale q do^T
    dalpha = <S_{t-1}, dS> ; dbeta = -<M_t, dS> ; dM~ = dM - beta dS ; dmu = <M_{t-1}, dM~>
    dk_w = dM~ r ; dr = dM~^T k_w ; dp = S_{t-1} dr ; dv = -dr
    dS <- alpha dS + p dr^T ; dM <- mu dM~

Gradients of q, k and the gates are sums over value columns, so each V-block writes a partial ([NV, ...]) and
torch sums them; the L2-norm backward is then applied in torch. Memory: checkpoints N*H*cdiv(T,BC)*2*K*V fp32
plus scratch N*H*(BC+1)*2*K*V fp32, i.e. O(sqrt(T)*K*V) per head.

On CPU tensors without TRITON_INTERPRET=1 the op falls back to the differentiable torch recurrence
(``naive_recurrent_momentum_delta_rule``, fp32 math).
"""
from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
import triton
import triton.language as tl

from .alloc import empty
from .naive import naive_recurrent_momentum_delta_rule
from .validation import check_inputs
from .autocast import no_autocast

INTERPRET = bool(triton.knobs.runtime.interpret)
L2NORM_EPS = 1e-6


@triton.jit(do_not_specialize=['T', 'BC', 'N'])
def momentum_delta_rule_fwd_kernel_fused_recurrent(
    q, k, v, log_alpha, beta, log_mu, eta,
    o,  # [B, T, H, V]
    h0,  # [2, N, H, K, V] or None
    ht,  # [2, N, H, K, V] fp32 or None
    ckpt,  # [NC_total, H, 2, K, V] fp32 or None: the state at the start of every BC-token interval
    cu_seqlens, chunk_offsets,
    scale, T, BC, N,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    USE_INITIAL_STATE: tl.constexpr, STORE_FINAL_STATE: tl.constexpr, SAVE_CKPT: tl.constexpr,
    IS_VARLEN: tl.constexpr, USE_QK_L2NORM: tl.constexpr, USE_P_TIMES_ALPHA: tl.constexpr,
):
    i_v, i_nh = tl.program_id(0).to(tl.int64), tl.program_id(1).to(tl.int64)
    i_n, i_h = i_nh // H, i_nh % H
    if IS_VARLEN:
        bos = tl.load(cu_seqlens + i_n).to(tl.int64)
        eos = tl.load(cu_seqlens + i_n + 1).to(tl.int64)
        T = (eos - bos).to(tl.int32)
        if SAVE_CKPT:
            c_off = tl.load(chunk_offsets + i_n).to(tl.int64)
    else:
        bos = i_n * T
        if SAVE_CKPT:
            c_off = i_n * (T + BC - 1) // BC

    o_k = tl.arange(0, BK)
    o_v = i_v * BV + tl.arange(0, BV)
    m_k = o_k < K
    m_v = o_v < V
    m_h = m_k[:, None] & m_v[None, :]
    o_h = o_k[:, None] * V + o_v[None, :]  # [BK, BV]

    b_S = tl.zeros([BK, BV], dtype=tl.float32)
    b_M = tl.zeros([BK, BV], dtype=tl.float32)
    if USE_INITIAL_STATE:
        p_h0 = h0 + i_nh * K * V + o_h
        b_S += tl.load(p_h0, mask=m_h, other=0).to(tl.float32)
        b_M += tl.load(p_h0 + N * H * K * V, mask=m_h, other=0).to(tl.float32)

    p_q = q + (bos * H + i_h) * K + o_k
    p_k = k + (bos * H + i_h) * K + o_k
    p_v = v + (bos * H + i_h) * V + o_v
    p_o = o + (bos * H + i_h) * V + o_v
    p_g = bos * H + i_h

    NC = (T + BC - 1) // BC
    for i_c in range(0, NC):
        if SAVE_CKPT:
            p_c = ckpt + ((c_off + i_c) * H + i_h) * 2 * K * V + o_h
            tl.store(p_c, b_S, mask=m_h)
            tl.store(p_c + K * V, b_M, mask=m_h)
        for _ in range(i_c * BC, tl.minimum(i_c * BC + BC, T)):
            b_q = tl.load(p_q, mask=m_k, other=0).to(tl.float32)  # [BK]
            b_k = tl.load(p_k, mask=m_k, other=0).to(tl.float32)  # [BK]
            b_v = tl.load(p_v, mask=m_v, other=0).to(tl.float32)  # [BV]
            b_la = tl.load(log_alpha + p_g).to(tl.float32)
            b_beta = tl.load(beta + p_g).to(tl.float32)
            b_lm = tl.load(log_mu + p_g).to(tl.float32)
            b_eta = tl.load(eta + p_g).to(tl.float32)
            if USE_QK_L2NORM:
                b_q = b_q * tl.rsqrt(tl.sum(b_q * b_q) + 1e-6)
                b_k = b_k * tl.rsqrt(tl.sum(b_k * b_k) + 1e-6)
            b_alpha = tl.exp(b_la)
            b_mu = tl.exp(b_lm)
            if USE_P_TIMES_ALPHA:
                b_p = b_k * b_alpha
            else:
                b_p = b_k
            b_r = tl.sum(b_S * b_p[:, None], 0) - b_v  # [BV]
            b_M = b_mu * b_M + (b_eta * b_k)[:, None] * b_r[None, :]
            b_S = b_alpha * b_S - b_beta * b_M
            b_o = tl.sum(b_S * (b_q * scale)[:, None], 0)  # [BV]
            tl.store(p_o, b_o.to(p_o.dtype.element_ty), mask=m_v)
            p_q += H * K
            p_k += H * K
            p_v += H * V
            p_o += H * V
            p_g += H

    if STORE_FINAL_STATE:
        p_ht = ht + i_nh * K * V + o_h
        tl.store(p_ht, b_S.to(p_ht.dtype.element_ty), mask=m_h)
        tl.store(p_ht + N * H * K * V, b_M.to(p_ht.dtype.element_ty), mask=m_h)


@triton.jit(do_not_specialize=['T', 'BC', 'N', 'BTH'])
def momentum_delta_rule_bwd_kernel_fused_recurrent(
    q, k, v, log_alpha, beta, log_mu, eta,
    do,  # [B, T, H, V]
    dht,  # [2, N, H, K, V] or None
    ckpt,  # [NC_total, H, 2, K, V] fp32 (from the forward)
    scratch,  # [N*H, BC+1, 2, K, V] fp32: the states of one interval (slot 0 = its start)
    cu_seqlens, chunk_offsets,
    dq, dk,  # [NV, B, T, H, K] fp32 partials: d q_hat, d k_hat (before the L2-norm backward)
    dv,  # [B, T, H, V]
    dg,  # [NV, 4, B, T, H] fp32 partials: d log_alpha, d beta, d log_mu, d eta
    dh0,  # [2, N, H, K, V] fp32 or None
    scale, T, BC, N, BTH,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    USE_FINAL_STATE_GRADIENT: tl.constexpr, USE_INITIAL_STATE_GRADIENT: tl.constexpr,
    IS_VARLEN: tl.constexpr, USE_QK_L2NORM: tl.constexpr, USE_P_TIMES_ALPHA: tl.constexpr,
):
    i_v, i_nh = tl.program_id(0).to(tl.int64), tl.program_id(1).to(tl.int64)
    i_n, i_h = i_nh // H, i_nh % H
    if IS_VARLEN:
        bos = tl.load(cu_seqlens + i_n).to(tl.int64)
        eos = tl.load(cu_seqlens + i_n + 1).to(tl.int64)
        T = (eos - bos).to(tl.int32)
        c_off = tl.load(chunk_offsets + i_n).to(tl.int64)
    else:
        bos = i_n * T
        c_off = i_n * (T + BC - 1) // BC

    o_k = tl.arange(0, BK)
    o_v = i_v * BV + tl.arange(0, BV)
    m_k = o_k < K
    m_v = o_v < V
    m_h = m_k[:, None] & m_v[None, :]
    o_h = o_k[:, None] * V + o_v[None, :]  # [BK, BV]

    b_dS = tl.zeros([BK, BV], dtype=tl.float32)
    b_dM = tl.zeros([BK, BV], dtype=tl.float32)
    if USE_FINAL_STATE_GRADIENT:
        p_dht = dht + i_nh * K * V + o_h
        b_dS += tl.load(p_dht, mask=m_h, other=0).to(tl.float32)
        b_dM += tl.load(p_dht + N * H * K * V, mask=m_h, other=0).to(tl.float32)

    p_scr = scratch + i_nh * (BC + 1) * 2 * K * V + o_h
    NC = (T + BC - 1) // BC
    for i_r in range(0, NC):
        i_c = NC - 1 - i_r
        t0 = i_c * BC
        t1 = tl.minimum(t0 + BC, T)
        # ---- recompute the interval's states; slot j holds the state after token t0 + j - 1
        p_c = ckpt + ((c_off + i_c) * H + i_h) * 2 * K * V + o_h
        b_S = tl.load(p_c, mask=m_h, other=0)
        b_M = tl.load(p_c + K * V, mask=m_h, other=0)
        tl.store(p_scr, b_S, mask=m_h)
        tl.store(p_scr + K * V, b_M, mask=m_h)
        for t in range(t0, t1):
            i_g = (bos + t) * H + i_h
            b_k = tl.load(k + i_g * K + o_k, mask=m_k, other=0).to(tl.float32)
            b_v = tl.load(v + i_g * V + o_v, mask=m_v, other=0).to(tl.float32)
            b_alpha = tl.exp(tl.load(log_alpha + i_g).to(tl.float32))
            b_beta = tl.load(beta + i_g).to(tl.float32)
            b_mu = tl.exp(tl.load(log_mu + i_g).to(tl.float32))
            b_eta = tl.load(eta + i_g).to(tl.float32)
            if USE_QK_L2NORM:
                b_k = b_k * tl.rsqrt(tl.sum(b_k * b_k) + 1e-6)
            if USE_P_TIMES_ALPHA:
                b_p = b_k * b_alpha
            else:
                b_p = b_k
            b_r = tl.sum(b_S * b_p[:, None], 0) - b_v
            b_M = b_mu * b_M + (b_eta * b_k)[:, None] * b_r[None, :]
            b_S = b_alpha * b_S - b_beta * b_M
            p_s = p_scr + (t - t0 + 1) * 2 * K * V
            tl.store(p_s, b_S, mask=m_h)
            tl.store(p_s + K * V, b_M, mask=m_h)
        tl.debug_barrier()
        # ---- reverse through the interval; (b_S, b_M) hold the state after token t on entry
        for j in range(0, t1 - t0):
            t = t1 - 1 - j
            i_g = (bos + t) * H + i_h
            p_s = p_scr + (t - t0) * 2 * K * V
            b_Sp = tl.load(p_s, mask=m_h, other=0)  # S_{t-1}  [BK, BV]
            b_Mp = tl.load(p_s + K * V, mask=m_h, other=0)  # M_{t-1}
            b_q = tl.load(q + i_g * K + o_k, mask=m_k, other=0).to(tl.float32)
            b_k = tl.load(k + i_g * K + o_k, mask=m_k, other=0).to(tl.float32)
            b_v = tl.load(v + i_g * V + o_v, mask=m_v, other=0).to(tl.float32)
            b_do = tl.load(do + i_g * V + o_v, mask=m_v, other=0).to(tl.float32)
            b_alpha = tl.exp(tl.load(log_alpha + i_g).to(tl.float32))
            b_beta = tl.load(beta + i_g).to(tl.float32)
            b_mu = tl.exp(tl.load(log_mu + i_g).to(tl.float32))
            b_eta = tl.load(eta + i_g).to(tl.float32)
            if USE_QK_L2NORM:
                b_q = b_q * tl.rsqrt(tl.sum(b_q * b_q) + 1e-6)
                b_k = b_k * tl.rsqrt(tl.sum(b_k * b_k) + 1e-6)
            if USE_P_TIMES_ALPHA:
                b_p = b_k * b_alpha
            else:
                b_p = b_k
            b_kw = b_eta * b_k
            # o_t = scale S_t^T q
            b_dq = scale * tl.sum(b_S * b_do[None, :], 1)  # [BK]
            b_dS += (scale * b_q)[:, None] * b_do[None, :]
            # S_t = alpha S_{t-1} - beta M_t
            b_dalpha = tl.sum(tl.sum(b_Sp * b_dS, 1), 0)
            b_dbeta = -tl.sum(tl.sum(b_M * b_dS, 1), 0)
            b_dMt = b_dM - b_beta * b_dS
            # M_t = mu M_{t-1} + k_w r^T ; r = S_{t-1}^T p - v
            b_dmu = tl.sum(tl.sum(b_Mp * b_dMt, 1), 0)
            b_r = tl.sum(b_Sp * b_p[:, None], 0) - b_v  # [BV]
            b_dkw = tl.sum(b_dMt * b_r[None, :], 1)  # [BK]
            b_dr = tl.sum(b_dMt * b_kw[:, None], 0)  # [BV]
            b_dp = tl.sum(b_Sp * b_dr[None, :], 1)  # [BK]
            b_dS = b_alpha * b_dS + b_p[:, None] * b_dr[None, :]
            b_dM = b_mu * b_dMt
            # chain through k_w = eta k and p = alpha k
            b_deta = tl.sum(b_dkw * b_k)
            if USE_P_TIMES_ALPHA:
                b_dk = b_eta * b_dkw + b_alpha * b_dp
                b_dalpha += tl.sum(b_dp * b_k)
            else:
                b_dk = b_eta * b_dkw + b_dp
            p_dqk = (i_v * BTH + i_g) * K + o_k
            tl.store(dq + p_dqk, b_dq, mask=m_k)
            tl.store(dk + p_dqk, b_dk, mask=m_k)
            tl.store(dv + i_g * V + o_v, (-b_dr).to(dv.dtype.element_ty), mask=m_v)
            p_dg = dg + i_v * 4 * BTH + i_g
            tl.store(p_dg, b_dalpha * b_alpha)
            tl.store(p_dg + BTH, b_dbeta)
            tl.store(p_dg + 2 * BTH, b_dmu * b_mu)
            tl.store(p_dg + 3 * BTH, b_deta)
            b_S = b_Sp
            b_M = b_Mp
        tl.debug_barrier()

    if USE_INITIAL_STATE_GRADIENT:
        p_dh0 = dh0 + i_nh * K * V + o_h
        tl.store(p_dh0, b_dS.to(p_dh0.dtype.element_ty), mask=m_h)
        tl.store(p_dh0 + N * H * K * V, b_dM.to(p_dh0.dtype.element_ty), mask=m_h)


def _block_v(BK: int, V: int) -> int:
    # keep a [BK, BV] fp32 tile at <= 2048 elements (registers), at least 8 columns
    return min(triton.next_power_of_2(V), max(8, 2048 // BK))


def _ckpt_interval(T: int) -> int:
    # ~sqrt(T) balances checkpoint and scratch memory (both O(sqrt(T) K V) per head)
    return int(min(256, max(16, triton.next_power_of_2(int(math.isqrt(max(T, 1)))))))


def _chunk_offsets(cu_seqlens: torch.Tensor, BC: int) -> Tuple[torch.Tensor, int]:
    lens = cu_seqlens[1:] - cu_seqlens[:-1]
    n = (lens + BC - 1) // BC
    offsets = torch.cat([n.new_zeros(1), n.cumsum(0)]).to(torch.int32)
    return offsets, int(offsets[-1].item())


def fused_recurrent_momentum_delta_rule_fwd(q, k, v, log_alpha, beta, log_mu, eta, scale, initial_state,
                                            output_final_state, cu_seqlens, use_qk_l2norm_in_kernel,
                                            use_p_times_alpha, save_ckpt: bool):
    B, T, H, K = q.shape
    V = v.shape[-1]
    N = B if cu_seqlens is None else cu_seqlens.numel() - 1
    BK = triton.next_power_of_2(K)
    BV = _block_v(BK, V)
    NV = triton.cdiv(V, BV)
    o = empty(B, T, H, V, dtype=q.dtype, device=q.device)
    ht = empty(2, N, H, K, V, dtype=torch.float32, device=q.device) if output_final_state else None
    ckpt, chunk_offsets, BC = None, None, _ckpt_interval(T)
    if save_ckpt:
        if cu_seqlens is None:
            n_ckpt = B * triton.cdiv(T, BC)
        else:
            chunk_offsets, n_ckpt = _chunk_offsets(cu_seqlens, BC)
        ckpt = empty(max(n_ckpt, 1), H, 2, K, V, dtype=torch.float32, device=q.device)
    momentum_delta_rule_fwd_kernel_fused_recurrent[(NV, N * H)](
        q, k, v, log_alpha, beta, log_mu, eta, o, initial_state, ht, ckpt, cu_seqlens, chunk_offsets,
        scale, T, BC, N,
        H=H, K=K, V=V, BK=BK, BV=BV,
        USE_INITIAL_STATE=initial_state is not None, STORE_FINAL_STATE=output_final_state,
        SAVE_CKPT=save_ckpt, IS_VARLEN=cu_seqlens is not None,
        USE_QK_L2NORM=use_qk_l2norm_in_kernel, USE_P_TIMES_ALPHA=use_p_times_alpha,
        num_warps=1 if BK * BV <= 512 else 2 if BK * BV <= 1024 else 4,
    )
    return o, ht, ckpt, chunk_offsets, BC


def _l2norm_bwd(x: torch.Tensor, dy: torch.Tensor) -> torch.Tensor:
    """y = x * rsqrt(sum x^2 + eps): dx = (dy - y (y . dy)) * rsqrt(sum x^2 + eps), in fp32."""
    x = x.float()
    rstd = torch.rsqrt((x * x).sum(-1, keepdim=True) + L2NORM_EPS)
    y = x * rstd
    return (dy - y * (y * dy).sum(-1, keepdim=True)) * rstd


def fused_recurrent_momentum_delta_rule_bwd(q, k, v, log_alpha, beta, log_mu, eta, do, dht, ckpt, chunk_offsets,
                                            BC, scale, initial_state, cu_seqlens, use_qk_l2norm_in_kernel,
                                            use_p_times_alpha):
    B, T, H, K = q.shape
    V = v.shape[-1]
    N = B if cu_seqlens is None else cu_seqlens.numel() - 1
    BK = triton.next_power_of_2(K)
    BV = _block_v(BK, V)
    NV = triton.cdiv(V, BV)
    dev = q.device
    scratch = torch.empty(N * H, BC + 1, 2, K, V, dtype=torch.float32, device=dev)
    dq = empty(NV, B, T, H, K, dtype=torch.float32, device=dev)
    dk = empty(NV, B, T, H, K, dtype=torch.float32, device=dev)
    dv = empty(B, T, H, V, dtype=v.dtype, device=dev)
    dg = empty(NV, 4, B, T, H, dtype=torch.float32, device=dev)
    dh0 = empty(2, N, H, K, V, dtype=torch.float32, device=dev) if initial_state is not None else None
    momentum_delta_rule_bwd_kernel_fused_recurrent[(NV, N * H)](
        q, k, v, log_alpha, beta, log_mu, eta, do, dht, ckpt, scratch, cu_seqlens, chunk_offsets,
        dq, dk, dv, dg, dh0,
        scale, T, BC, N, B * T * H,
        H=H, K=K, V=V, BK=BK, BV=BV,
        USE_FINAL_STATE_GRADIENT=dht is not None, USE_INITIAL_STATE_GRADIENT=initial_state is not None,
        IS_VARLEN=cu_seqlens is not None,
        USE_QK_L2NORM=use_qk_l2norm_in_kernel, USE_P_TIMES_ALPHA=use_p_times_alpha,
        num_warps=4,
    )
    dq, dk, dg = dq.sum(0), dk.sum(0), dg.sum(0)
    if use_qk_l2norm_in_kernel:
        dq, dk = _l2norm_bwd(q, dq), _l2norm_bwd(k, dk)
    dla, dbeta, dlm, deta = dg.unbind(0)
    return (dq.to(q.dtype), dk.to(k.dtype), dv, dla.to(log_alpha.dtype), dbeta.to(beta.dtype),
            dlm.to(log_mu.dtype), deta.to(eta.dtype),
            dh0.to(initial_state.dtype) if dh0 is not None else None)


class FusedRecurrentFunction(torch.autograd.Function):

    @staticmethod
    def forward(ctx, q, k, v, log_alpha, beta, log_mu, eta, scale, initial_state, output_final_state, cu_seqlens,
                use_qk_l2norm_in_kernel, use_p_times_alpha):
        save = any(ctx.needs_input_grad)
        o, ht, ckpt, chunk_offsets, BC = fused_recurrent_momentum_delta_rule_fwd(
            q, k, v, log_alpha, beta, log_mu, eta, scale, initial_state, output_final_state, cu_seqlens,
            use_qk_l2norm_in_kernel, use_p_times_alpha, save_ckpt=save)
        if save:
            ctx.save_for_backward(q, k, v, log_alpha, beta, log_mu, eta, initial_state, cu_seqlens, ckpt,
                                  chunk_offsets)
            ctx.scale, ctx.BC = scale, BC
            ctx.flags = (use_qk_l2norm_in_kernel, use_p_times_alpha)
        return o, ht

    @staticmethod
    def backward(ctx, do, dht):
        q, k, v, log_alpha, beta, log_mu, eta, initial_state, cu_seqlens, ckpt, chunk_offsets = ctx.saved_tensors
        grads = fused_recurrent_momentum_delta_rule_bwd(
            q, k, v, log_alpha, beta, log_mu, eta, do.contiguous(),
            dht.contiguous() if dht is not None else None, ckpt, chunk_offsets, ctx.BC, ctx.scale, initial_state,
            cu_seqlens, *ctx.flags)
        return (*grads[:7], None, grads[7], None, None, None, None)


@no_autocast
def fused_recurrent_momentum_delta_rule(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    log_alpha: torch.Tensor,
    beta: torch.Tensor,
    log_mu: torch.Tensor,
    eta: torch.Tensor,
    scale: Optional[float] = None,
    initial_state: Optional[torch.Tensor] = None,
    output_final_state: bool = False,
    cu_seqlens: Optional[torch.Tensor] = None,
    use_qk_l2norm_in_kernel: bool = True,
    use_p_times_alpha: bool = True,
) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    r"""Momentum delta rule, one token at a time (decoding, and a second implementation of the chunk op).

    Args:
        q, k: [B, T, H, K] queries and keys, K <= 256 (fp32, fp16 or bf16; one dtype with v).
        v: [B, T, H, V] values.
        log_alpha, beta, log_mu, eta: [B, T, H] gates (log state decay, step size, log momentum decay, gain).
        scale: query scale; None -> K ** -0.5.
        initial_state: [2, N, H, K, V] (index 0 = S, 1 = M), any floating dtype; promoted to fp32.
        output_final_state: also return the final [2, N, H, K, V] fp32 state.
        cu_seqlens: [N + 1] int cumulative sequence lengths of a packed batch (B must be 1).
        use_qk_l2norm_in_kernel: L2-normalise q and k inside the op.
        use_p_times_alpha: read key alpha * k (else k).

    Returns:
        o [B, T, H, V] in q's dtype, and the final state (fp32) or None.

    Differentiable in every tensor argument (the reverse-time Triton kernel; see the module docstring).
    Raises ValueError for bad arguments before any kernel runs.
    """
    N, scale = check_inputs(q, k, v, log_alpha, beta, log_mu, eta, scale, initial_state, cu_seqlens,
                            check_values=not torch.compiler.is_compiling())
    if q.device.type == "cpu" and not INTERPRET:
        return naive_recurrent_momentum_delta_rule(
            q, k, v, log_alpha, beta, log_mu, eta, scale=scale, initial_state=initial_state,
            output_final_state=output_final_state, cu_seqlens=cu_seqlens,
            use_qk_l2norm_in_kernel=use_qk_l2norm_in_kernel, use_p_times_alpha=use_p_times_alpha)
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    log_alpha, beta, log_mu, eta = log_alpha.contiguous(), beta.contiguous(), log_mu.contiguous(), eta.contiguous()
    if initial_state is not None:
        initial_state = initial_state.contiguous()
    return FusedRecurrentFunction.apply(q, k, v, log_alpha, beta, log_mu, eta, scale, initial_state,
                                        output_final_state, cu_seqlens, use_qk_l2norm_in_kernel, use_p_times_alpha)
