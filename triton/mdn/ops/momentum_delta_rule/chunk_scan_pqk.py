"""Inter-chunk scan in the "pqk" form (MDN_SCAN_FORM=pqk): the kernels load three [C, K] operands per chunk
(the read keys P, the queries Q and the write keys K_w) instead of the six of chunk_scan.py, and rebuild the six
virtual operands of the "six" form in registers from per-row scalars and the [C, C] matrix A (README §2-§3, §6):

    Y  = A D(a-) P,   Z  = A D(b-) P,   Qa = D(s a) Q,   Qb = D(s b) Q,   Ks = D(gamma) K_w,   Km = D(rho) K_w
    (A = (I + Lmat)^-1, gamma = Gamma[L, :], rho = m_L / m_:, L = C - 1)

Per sequence and head, with chunk-start states S, M ([K, V], fp32), every chunk in order:

    -W = D(b-) (P M) - D(a-) (P S)            # P S, P M: two fp32 [C, BV] tiles over the K sub-tiles
    Vt = U0 + A (-W)                          # one [C, C] x [C, BV] dot
    O  = D(s a) (Q S) - D(s b) (Q M) + Aqk Vt
    S' = gS S - gSM M + K_w^T (D(gamma) Vt),   M' = gM M + K_w^T (D(-rho) Vt)

and the reverse scan, with dS', dM' the gradients of the chunk's end states:

    dVt = D(gamma) (K_w dS') - D(rho) (K_w dM') + Aqk^T dO,   X = A^T dVt
    dS  = gS dS' + Q^T (D(s a) dO) + P^T (D(-a-) X)
    dM  = -gSM dS' + gM dM' + Q^T (D(-s b) dO) + P^T (D(b-) X)

Row scalars: r [NC, H, 6, C] (fp32) = (a-, b-, s a, s b, gamma, rho). They are applied to [C, BV] tiles (fp32
accumulators, or Vt, dO, X once per chunk), never to the [C, BK] operand tiles: those go from memory straight into
the dots, as in the six form (scaling them in registers cost ~2x the spills of the six form at K = 256 in ptxas),
and each is loaded once per chunk and used by two dots. The backward's GEMM phase computes the six
virtual-operand gradients exactly as chunk_scan.scan_bwd does and maps them to P, Q, K_w, A and r by the chain rule.
Helpers (dot modes, sub-tile loads, hi + lo end-state gradients, tile configs, TMA) come from chunk_scan.py.
"""
from __future__ import annotations

import os
import warnings
from typing import Optional

import torch
import triton
import triton.language as tl

from . import _triton_compat  # noqa: F401  (interpreter + NumPy >= 2.4)
from .chunk_scan import (_bwd_dg_rows, _cast, _dot, _dot_acc, _dot_mode, _empty, _load_ck, _load_state, _mm,
                         _store_dg_rows, _store_grad_state, _store_state, _sub_k, _use_tma, _use_triton, scan_config,
                         scan_load)

NR = 6  # row scalars per chunk: a-, b-, s a, s b, gamma, rho


# ---------------------------------------------------------------------------------------------------------------
# Triton kernels
# ---------------------------------------------------------------------------------------------------------------

@triton.jit
def _fwd_xsm(b_xs, b_xm, b_s, b_m, p_x, t_x, row, col: tl.constexpr, m_k, FIRST: tl.constexpr,
             DOT_MODE: tl.constexpr, LOAD_TMA: tl.constexpr):
    """One K sub-tile of X S and X M (X = P or Q, [C, BK], loaded once and used by both dots), accumulated into
    two [C, BV] fp32 tiles (FIRST: starts them)."""
    b_x = _load_ck(p_x, t_x, row, col, m_k, LOAD_TMA)  # [C, BK]
    if FIRST:
        b_xs = _dot(b_x, b_s, DOT_MODE)
        b_xm = _dot(b_x, b_m, DOT_MODE)
    else:
        b_xs = _dot_acc(b_x, b_s, b_xs, DOT_MODE)
        b_xm = _dot_acc(b_x, b_m, b_xm, DOT_MODE)
    return b_xs, b_xm


@triton.jit
def _fwd_state_update_pqk(b_s, b_m, p_kw, t_kw, row, col: tl.constexpr, m_k, b_gvt, b_nrvt,
                          b_g0, b_g1, b_g2, DOT_MODE: tl.constexpr, LOAD_TMA: tl.constexpr):
    """One [BK, BV] sub-tile of S' = gS S - gSM M + K_w^T (D(gamma) Vt), M' = gM M + K_w^T (D(-rho) Vt)
    (b_gvt, b_nrvt: the row-scaled Vt tiles): K_w loaded once, accumulated into the states (tl.dot acc=)."""
    b_s = b_g0 * b_s - b_g1 * b_m
    b_m = b_g2 * b_m
    b_kw = _load_ck(p_kw, t_kw, row, col, m_k, LOAD_TMA)  # [C, BK]
    b_s = _dot_acc(tl.trans(b_kw), b_gvt, b_s, DOT_MODE)
    b_m = _dot_acc(tl.trans(b_kw), b_nrvt, b_m, DOT_MODE)
    return b_s, b_m


@triton.jit(do_not_specialize=['H'])
def momentum_delta_rule_fwd_kernel_scan_pqk(
    u, p, q, kw, a, aqk, r, g,
    h0, o, vt, ht, hc,
    chunk_offsets,
    H,
    K: tl.constexpr,
    V: tl.constexpr,
    C: tl.constexpr,
    BK: tl.constexpr,
    BV: tl.constexpr,
    USE_H0: tl.constexpr,
    RECOMPUTE: tl.constexpr,
    STORE_STATES: tl.constexpr,
    DOT_MODE: tl.constexpr,
    LOAD_TMA: tl.constexpr,
):
    """Forward scan (pqk form) over the chunks of one (sequence, head, V-block).

    RECOMPUTE=False: computes Vt and O, stores them and the final state ht [2, N, H, K, V].
    RECOMPUTE=True: reads the saved Vt instead and only advances the states (loads K_w only).
    STORE_STATES: stores the chunk-start states into hc [NC, H, 2, K, V] (S then M).
    K sub-tiles (b_s1..b_s4), DOT_MODE and LOAD_TMA as in chunk_scan.momentum_delta_rule_fwd_kernel_scan; each of
    P, Q, K_w is loaded one [C, BK] sub-tile at a time (two dots each); the row scalars r [NC, H, 6, C] scale
    [C, BV] tiles (module docstring).
    """
    tl.static_assert(K <= 4 * BK, "K > 4 * BK")
    i_v, i_nh = tl.program_id(0), tl.program_id(1)
    i_n, i_h = i_nh // H, i_nh % H
    c_start = tl.load(chunk_offsets + i_n).to(tl.int64)
    c_end = tl.load(chunk_offsets + i_n + 1).to(tl.int64)
    N = tl.num_programs(1) // H

    o_k = tl.arange(0, BK)
    o_v = i_v * BV + tl.arange(0, BV)
    o_c = tl.arange(0, C)
    m_k1, m_k2, m_k3, m_k4 = o_k < K, o_k + BK < K, o_k + 2 * BK < K, o_k + 3 * BK < K
    m_v = o_v < V
    st_off = (i_n.to(tl.int64) * H + i_h) * K * V  # offset of [n, h] in [N, H, K, V]
    p_st = o_k[:, None] * V + o_v[None, :]          # [BK, BV] (sub-tile j: + j * BK * V)
    p_ck = o_c[:, None] * K + o_k[None, :]          # [C, BK]  (sub-tile j: + j * BK)
    p_cv = o_c[:, None] * V + o_v[None, :]          # [C, BV]
    p_cc = o_c[:, None] * C + o_c[None, :]          # [C, C]
    m_cv = m_v[None, :]
    if LOAD_TMA:
        # one descriptor per [C, K] operand, viewed as [NC * H * C, K] (chunk_offsets[N] = NC)
        NRows = (tl.load(chunk_offsets + N) * H * C).to(tl.int32)
        t_p = tl.make_tensor_descriptor(p, [NRows, K], [K, 1], [C, BK])
        t_q = tl.make_tensor_descriptor(q, [NRows, K], [K, 1], [C, BK])
        t_kw = tl.make_tensor_descriptor(kw, [NRows, K], [K, 1], [C, BK])
    else:
        t_p = p
        t_q = q
        t_kw = kw

    b_s1 = tl.zeros([BK, BV], dtype=tl.float32)
    b_m1 = tl.zeros([BK, BV], dtype=tl.float32)
    if USE_H0:
        p_h0 = h0 + st_off + p_st
        p_h0m = p_h0 + N.to(tl.int64) * H * K * V
        b_s1 += _load_state(p_h0, m_k1, m_v)
        b_m1 += _load_state(p_h0m, m_k1, m_v)
    if K > BK:
        b_s2 = tl.zeros([BK, BV], dtype=tl.float32)
        b_m2 = tl.zeros([BK, BV], dtype=tl.float32)
        if USE_H0:
            b_s2 += _load_state(p_h0 + BK * V, m_k2, m_v)
            b_m2 += _load_state(p_h0m + BK * V, m_k2, m_v)
    if K > 2 * BK:
        b_s3 = tl.zeros([BK, BV], dtype=tl.float32)
        b_m3 = tl.zeros([BK, BV], dtype=tl.float32)
        if USE_H0:
            b_s3 += _load_state(p_h0 + 2 * BK * V, m_k3, m_v)
            b_m3 += _load_state(p_h0m + 2 * BK * V, m_k3, m_v)
    if K > 3 * BK:
        b_s4 = tl.zeros([BK, BV], dtype=tl.float32)
        b_m4 = tl.zeros([BK, BV], dtype=tl.float32)
        if USE_H0:
            b_s4 += _load_state(p_h0 + 3 * BK * V, m_k4, m_v)
            b_m4 += _load_state(p_h0m + 3 * BK * V, m_k4, m_v)

    for i_c in range(c_start, c_end):  # int64: c_start is int64
        base = i_c * H + i_h                  # index of [c, h]
        o_ck = base * C * K                   # offset of [c, h] in [NC, H, C, K]
        row = (base * C).to(tl.int32)         # first row of [c, h] in [NC * H * C, K] (LOAD_TMA)
        o_cv = base * C * V
        p_r = r + base * 6 * C + o_c          # [C] pointers to row scalar 0 (a-) of [c, h]
        if STORE_STATES:
            p_hc = hc + base * 2 * K * V + p_st
            _store_state(p_hc, b_s1, m_k1, m_v, DOT_MODE)
            _store_state(p_hc + K * V, b_m1, m_k1, m_v, DOT_MODE)
            if K > BK:
                _store_state(p_hc + BK * V, b_s2, m_k2, m_v, DOT_MODE)
                _store_state(p_hc + K * V + BK * V, b_m2, m_k2, m_v, DOT_MODE)
            if K > 2 * BK:
                _store_state(p_hc + 2 * BK * V, b_s3, m_k3, m_v, DOT_MODE)
                _store_state(p_hc + K * V + 2 * BK * V, b_m3, m_k3, m_v, DOT_MODE)
            if K > 3 * BK:
                _store_state(p_hc + 3 * BK * V, b_s4, m_k4, m_v, DOT_MODE)
                _store_state(p_hc + K * V + 3 * BK * V, b_m4, m_k4, m_v, DOT_MODE)
        if RECOMPUTE:
            b_vt = tl.load(vt + o_cv + p_cv, mask=m_cv, other=0.)
        else:
            # P S and P M over the K sub-tiles (two fp32 [C, BV] tiles, P loaded once per sub-tile), then
            # -W = D(b-) (P M) - D(a-) (P S) row-scaled in fp32 and Vt = U0 + A (-W)
            p_p = p + o_ck + p_ck
            b_ps, b_pm = _fwd_xsm(b_s1, b_m1, b_s1, b_m1, p_p, t_p, row, 0, m_k1, True, DOT_MODE, LOAD_TMA)
            if K > BK:
                b_ps, b_pm = _fwd_xsm(b_ps, b_pm, b_s2, b_m2, p_p + BK, t_p, row, BK, m_k2, False, DOT_MODE, LOAD_TMA)
            if K > 2 * BK:
                b_ps, b_pm = _fwd_xsm(b_ps, b_pm, b_s3, b_m3, p_p + 2 * BK, t_p, row, 2 * BK, m_k3, False,
                                      DOT_MODE, LOAD_TMA)
            if K > 3 * BK:
                b_ps, b_pm = _fwd_xsm(b_ps, b_pm, b_s4, b_m4, p_p + 3 * BK, t_p, row, 3 * BK, m_k4, False,
                                      DOT_MODE, LOAD_TMA)
            b_am = tl.load(p_r)
            b_bm = tl.load(p_r + C)
            b_nw = _cast(b_bm[:, None] * b_pm - b_am[:, None] * b_ps, vt.dtype.element_ty, DOT_MODE)  # [C, BV]
            b_vt = tl.load(u + o_cv + p_cv, mask=m_cv, other=0.).to(tl.float32)  # [C, BV]
            b_a = tl.load(a + base * C * C + p_cc)  # [C, C]
            b_vt = _dot_acc(b_a, b_nw, b_vt, DOT_MODE)
            b_vt = _cast(b_vt, vt.dtype.element_ty, DOT_MODE)
            tl.store(vt + o_cv + p_cv, b_vt, mask=m_cv)
            # O = D(s a) (Q S) - D(s b) (Q M) + Aqk Vt
            p_q = q + o_ck + p_ck
            b_qs, b_qm = _fwd_xsm(b_s1, b_m1, b_s1, b_m1, p_q, t_q, row, 0, m_k1, True, DOT_MODE, LOAD_TMA)
            if K > BK:
                b_qs, b_qm = _fwd_xsm(b_qs, b_qm, b_s2, b_m2, p_q + BK, t_q, row, BK, m_k2, False, DOT_MODE, LOAD_TMA)
            if K > 2 * BK:
                b_qs, b_qm = _fwd_xsm(b_qs, b_qm, b_s3, b_m3, p_q + 2 * BK, t_q, row, 2 * BK, m_k3, False,
                                      DOT_MODE, LOAD_TMA)
            if K > 3 * BK:
                b_qs, b_qm = _fwd_xsm(b_qs, b_qm, b_s4, b_m4, p_q + 3 * BK, t_q, row, 3 * BK, m_k4, False,
                                      DOT_MODE, LOAD_TMA)
            b_sa = tl.load(p_r + 2 * C)
            b_sb = tl.load(p_r + 3 * C)
            b_o = b_sa[:, None] * b_qs - b_sb[:, None] * b_qm
            b_aqk = tl.load(aqk + base * C * C + p_cc)  # [C, C]
            b_o = _dot_acc(b_aqk, b_vt, b_o, DOT_MODE)
            tl.store(o + o_cv + p_cv, _cast(b_o, o.dtype.element_ty, DOT_MODE), mask=m_cv)
        b_g0 = tl.load(g + base * 3).to(tl.float32)
        b_g1 = tl.load(g + base * 3 + 1).to(tl.float32)
        b_g2 = tl.load(g + base * 3 + 2).to(tl.float32)
        # the write-side row scalars go on Vt (once per chunk), not on the [C, BK] K_w tiles
        b_vtf = b_vt.to(tl.float32)
        b_gvt = _cast(tl.load(p_r + 4 * C)[:, None] * b_vtf, vt.dtype.element_ty, DOT_MODE)
        b_nrvt = _cast(-tl.load(p_r + 5 * C)[:, None] * b_vtf, vt.dtype.element_ty, DOT_MODE)
        p_kw = kw + o_ck + p_ck
        b_s1, b_m1 = _fwd_state_update_pqk(b_s1, b_m1, p_kw, t_kw, row, 0, m_k1, b_gvt, b_nrvt,
                                           b_g0, b_g1, b_g2, DOT_MODE, LOAD_TMA)
        if K > BK:
            b_s2, b_m2 = _fwd_state_update_pqk(b_s2, b_m2, p_kw + BK, t_kw, row, BK, m_k2, b_gvt, b_nrvt,
                                               b_g0, b_g1, b_g2, DOT_MODE, LOAD_TMA)
        if K > 2 * BK:
            b_s3, b_m3 = _fwd_state_update_pqk(b_s3, b_m3, p_kw + 2 * BK, t_kw, row, 2 * BK, m_k3, b_gvt, b_nrvt,
                                               b_g0, b_g1, b_g2, DOT_MODE, LOAD_TMA)
        if K > 3 * BK:
            b_s4, b_m4 = _fwd_state_update_pqk(b_s4, b_m4, p_kw + 3 * BK, t_kw, row, 3 * BK, m_k4, b_gvt, b_nrvt,
                                               b_g0, b_g1, b_g2, DOT_MODE, LOAD_TMA)

    if not RECOMPUTE:
        p_ht = ht + st_off + p_st
        p_htm = p_ht + N.to(tl.int64) * H * K * V
        tl.store(p_ht, b_s1, mask=m_k1[:, None] & m_v[None, :])
        tl.store(p_htm, b_m1, mask=m_k1[:, None] & m_v[None, :])
        if K > BK:
            tl.store(p_ht + BK * V, b_s2, mask=m_k2[:, None] & m_v[None, :])
            tl.store(p_htm + BK * V, b_m2, mask=m_k2[:, None] & m_v[None, :])
        if K > 2 * BK:
            tl.store(p_ht + 2 * BK * V, b_s3, mask=m_k3[:, None] & m_v[None, :])
            tl.store(p_htm + 2 * BK * V, b_m3, mask=m_k3[:, None] & m_v[None, :])
        if K > 3 * BK:
            tl.store(p_ht + 3 * BK * V, b_s4, mask=m_k4[:, None] & m_v[None, :])
            tl.store(p_htm + 3 * BK * V, b_m4, mask=m_k4[:, None] & m_v[None, :])


@triton.jit
def _bwd_kd(b_kds, b_kdm, b_ds, b_dm, p_kw, t_kw, row, col: tl.constexpr, m_k, FIRST: tl.constexpr,
            DOT_MODE: tl.constexpr, LOAD_TMA: tl.constexpr):
    """One K sub-tile of K_w dS' and K_w dM' ([C, BV] fp32 each; K_w loaded once; FIRST: starts them)."""
    b_kw = _load_ck(p_kw, t_kw, row, col, m_k, LOAD_TMA)  # [C, BK]
    if FIRST:
        b_kds = _dot(b_kw, b_ds, DOT_MODE)
        b_kdm = _dot(b_kw, b_dm, DOT_MODE)
    else:
        b_kds = _dot_acc(b_kw, b_ds, b_kds, DOT_MODE)
        b_kdm = _dot_acc(b_kw, b_dm, b_kdm, DOT_MODE)
    return b_kds, b_kdm


@triton.jit
def _bwd_state_update_pqk(b_ds, b_dm, p_q, p_p, t_q, t_p, row, col: tl.constexpr, m_k,
                          b_sado, b_nsbdo, b_nax, b_bx, b_g0, b_g1, b_g2,
                          DOT_MODE: tl.constexpr, LOAD_TMA: tl.constexpr):
    """One [BK, BV] sub-tile of dS = gS dS' + Q^T (D(s a) dO) + P^T (D(-a-) X),
    dM = -gSM dS' + gM dM' + Q^T (D(-s b) dO) + P^T (D(b-) X) (X = A^T dVt; the row-scaled [C, BV] tiles are made
    once per chunk): Q and P loaded once each, accumulated into the states (tl.dot acc=)."""
    b_dm = b_g2 * b_dm - b_g1 * b_ds
    b_ds = b_g0 * b_ds
    b_q = _load_ck(p_q, t_q, row, col, m_k, LOAD_TMA)  # [C, BK]
    b_ds = _dot_acc(tl.trans(b_q), b_sado, b_ds, DOT_MODE)
    b_dm = _dot_acc(tl.trans(b_q), b_nsbdo, b_dm, DOT_MODE)
    b_p = _load_ck(p_p, t_p, row, col, m_k, LOAD_TMA)
    b_ds = _dot_acc(tl.trans(b_p), b_nax, b_ds, DOT_MODE)
    b_dm = _dot_acc(tl.trans(b_p), b_bx, b_dm, DOT_MODE)
    return b_ds, b_dm


@triton.jit(do_not_specialize=['H'])
def momentum_delta_rule_bwd_kernel_scan_pqk(
    p, q, kw, a, aqk, r, g,
    do, dht, dh0, dvo, dhc, hc, dgp,
    chunk_offsets,
    H,
    K: tl.constexpr,
    V: tl.constexpr,
    C: tl.constexpr,
    BK: tl.constexpr,
    BV: tl.constexpr,
    USE_DHT: tl.constexpr,
    DOT_MODE: tl.constexpr,
    LOAD_TMA: tl.constexpr,
):
    """Reverse scan (pqk form). Stores exactly what chunk_scan.momentum_delta_rule_bwd_kernel_scan stores (dhc,
    dvo = [dVt; dO], the partial sums dgp, dh0), with per chunk (last to first)

        dVt = D(gamma) (K_w dS') - D(rho) (K_w dM') + Aqk^T dO,   X = A^T dVt
        dS  = gS dS' + Q^T (D(s a) dO) + P^T (D(-a-) X)
        dM  = -gSM dS' + gM dM' + Q^T (D(-s b) dO) + P^T (D(b-) X)
    """
    tl.static_assert(K <= 4 * BK, "K > 4 * BK")
    i_v, i_nh = tl.program_id(0), tl.program_id(1)
    i_n, i_h = i_nh // H, i_nh % H
    c_start = tl.load(chunk_offsets + i_n).to(tl.int64)
    c_end = tl.load(chunk_offsets + i_n + 1).to(tl.int64)
    N = tl.num_programs(1) // H

    o_k = tl.arange(0, BK)
    o_v = i_v * BV + tl.arange(0, BV)
    o_c = tl.arange(0, C)
    m_k1, m_k2, m_k3, m_k4 = o_k < K, o_k + BK < K, o_k + 2 * BK < K, o_k + 3 * BK < K
    m_v = o_v < V
    st_off = (i_n.to(tl.int64) * H + i_h) * K * V
    p_st = o_k[:, None] * V + o_v[None, :]          # [BK, BV] (sub-tile j: + j * BK * V)
    p_ck = o_c[:, None] * K + o_k[None, :]          # [C, BK]  (sub-tile j: + j * BK)
    p_cv = o_c[:, None] * V + o_v[None, :]          # [C, BV]
    p_cc = o_c[:, None] * C + o_c[None, :]          # [C, C]
    m_cv = m_v[None, :]
    if LOAD_TMA:
        NRows = (tl.load(chunk_offsets + N) * H * C).to(tl.int32)
        t_p = tl.make_tensor_descriptor(p, [NRows, K], [K, 1], [C, BK])
        t_q = tl.make_tensor_descriptor(q, [NRows, K], [K, 1], [C, BK])
        t_kw = tl.make_tensor_descriptor(kw, [NRows, K], [K, 1], [C, BK])
    else:
        t_p = p
        t_q = q
        t_kw = kw

    b_ds1 = tl.zeros([BK, BV], dtype=tl.float32)
    b_dm1 = tl.zeros([BK, BV], dtype=tl.float32)
    if USE_DHT:
        p_dht = dht + st_off + p_st
        p_dhtm = p_dht + N.to(tl.int64) * H * K * V
        b_ds1 += _load_state(p_dht, m_k1, m_v)
        b_dm1 += _load_state(p_dhtm, m_k1, m_v)
    if K > BK:
        b_ds2 = tl.zeros([BK, BV], dtype=tl.float32)
        b_dm2 = tl.zeros([BK, BV], dtype=tl.float32)
        if USE_DHT:
            b_ds2 += _load_state(p_dht + BK * V, m_k2, m_v)
            b_dm2 += _load_state(p_dhtm + BK * V, m_k2, m_v)
    if K > 2 * BK:
        b_ds3 = tl.zeros([BK, BV], dtype=tl.float32)
        b_dm3 = tl.zeros([BK, BV], dtype=tl.float32)
        if USE_DHT:
            b_ds3 += _load_state(p_dht + 2 * BK * V, m_k3, m_v)
            b_dm3 += _load_state(p_dhtm + 2 * BK * V, m_k3, m_v)
    if K > 3 * BK:
        b_ds4 = tl.zeros([BK, BV], dtype=tl.float32)
        b_dm4 = tl.zeros([BK, BV], dtype=tl.float32)
        if USE_DHT:
            b_ds4 += _load_state(p_dht + 3 * BK * V, m_k4, m_v)
            b_dm4 += _load_state(p_dhtm + 3 * BK * V, m_k4, m_v)

    for i in range(0, c_end - c_start):
        i_c = c_end - 1 - i  # int64
        base = i_c * H + i_h
        o_ck = base * C * K
        row = (base * C).to(tl.int32)
        o_cv = base * C * V
        p_r = r + base * 6 * C + o_c
        p_hc = base * 2 * K * V + p_st
        # dhc planes: [dS', dM'] (fp32) or [hi(dS'), hi(dM'), lo(dS'), lo(dM')] (16-bit; _store_grad_state)
        p_dhc = base * (2 if DOT_MODE == 0 else 4) * K * V + p_st
        _store_grad_state(dhc + p_dhc, b_ds1, m_k1, m_v, 2 * K * V, DOT_MODE)
        _store_grad_state(dhc + K * V + p_dhc, b_dm1, m_k1, m_v, 2 * K * V, DOT_MODE)
        if K > BK:
            _store_grad_state(dhc + BK * V + p_dhc, b_ds2, m_k2, m_v, 2 * K * V, DOT_MODE)
            _store_grad_state(dhc + K * V + BK * V + p_dhc, b_dm2, m_k2, m_v, 2 * K * V, DOT_MODE)
        if K > 2 * BK:
            _store_grad_state(dhc + 2 * BK * V + p_dhc, b_ds3, m_k3, m_v, 2 * K * V, DOT_MODE)
            _store_grad_state(dhc + K * V + 2 * BK * V + p_dhc, b_dm3, m_k3, m_v, 2 * K * V, DOT_MODE)
        if K > 3 * BK:
            _store_grad_state(dhc + 3 * BK * V + p_dhc, b_ds4, m_k4, m_v, 2 * K * V, DOT_MODE)
            _store_grad_state(dhc + K * V + 3 * BK * V + p_dhc, b_dm4, m_k4, m_v, 2 * K * V, DOT_MODE)
        # gradients of the chunk's scalars gS, gSM, gM: row sums over this V-block, dgp [NC, H, NV, 3, K]
        # (chunk_scan._bwd_dg_rows: no cross-warp reduction)
        p_dg = dgp + (base * tl.num_programs(0) + i_v) * 3 * K
        d0, d1, d2 = _bwd_dg_rows(b_ds1, b_dm1, hc + p_hc, m_k1, m_v, K * V)
        _store_dg_rows(p_dg, d0, d1, d2, o_k, m_k1, K)
        if K > BK:
            d0, d1, d2 = _bwd_dg_rows(b_ds2, b_dm2, hc + BK * V + p_hc, m_k2, m_v, K * V)
            _store_dg_rows(p_dg + BK, d0, d1, d2, o_k, m_k2, K)
        if K > 2 * BK:
            d0, d1, d2 = _bwd_dg_rows(b_ds3, b_dm3, hc + 2 * BK * V + p_hc, m_k3, m_v, K * V)
            _store_dg_rows(p_dg + 2 * BK, d0, d1, d2, o_k, m_k3, K)
        if K > 3 * BK:
            d0, d1, d2 = _bwd_dg_rows(b_ds4, b_dm4, hc + 3 * BK * V + p_hc, m_k4, m_v, K * V)
            _store_dg_rows(p_dg + 3 * BK, d0, d1, d2, o_k, m_k4, K)

        b_do = tl.load(do + o_cv + p_cv, mask=m_cv, other=0.)
        p_cv2 = base * 2 * C * V + p_cv  # rows of dvo
        tl.store(dvo + C * V + p_cv2, b_do.to(dvo.dtype.element_ty), mask=m_cv)
        # dVt = D(gamma) (K_w dS') - D(rho) (K_w dM') + Aqk^T dO
        p_kw = kw + o_ck + p_ck
        b_kds, b_kdm = _bwd_kd(b_ds1, b_dm1, b_ds1, b_dm1, p_kw, t_kw, row, 0, m_k1, True, DOT_MODE, LOAD_TMA)
        if K > BK:
            b_kds, b_kdm = _bwd_kd(b_kds, b_kdm, b_ds2, b_dm2, p_kw + BK, t_kw, row, BK, m_k2, False,
                                   DOT_MODE, LOAD_TMA)
        if K > 2 * BK:
            b_kds, b_kdm = _bwd_kd(b_kds, b_kdm, b_ds3, b_dm3, p_kw + 2 * BK, t_kw, row, 2 * BK, m_k3, False,
                                   DOT_MODE, LOAD_TMA)
        if K > 3 * BK:
            b_kds, b_kdm = _bwd_kd(b_kds, b_kdm, b_ds4, b_dm4, p_kw + 3 * BK, t_kw, row, 3 * BK, m_k4, False,
                                   DOT_MODE, LOAD_TMA)
        b_ga = tl.load(p_r + 4 * C)
        b_rho = tl.load(p_r + 5 * C)
        b_dvt = b_ga[:, None] * b_kds - b_rho[:, None] * b_kdm
        b_aqk = tl.load(aqk + base * C * C + p_cc)
        b_dvt = _dot_acc(tl.trans(b_aqk), b_do, b_dvt, DOT_MODE)  # [C, BV]
        b_dvt = _cast(b_dvt, dvo.dtype.element_ty, DOT_MODE)
        tl.store(dvo + p_cv2, b_dvt, mask=m_cv)
        # X = A^T dVt (fp32), and the four row-scaled [C, BV] right-hand sides of this chunk's state update
        b_a = tl.load(a + base * C * C + p_cc)
        b_x = _dot(tl.trans(b_a), b_dvt, DOT_MODE)  # [C, BV]
        b_nax = _cast(-tl.load(p_r)[:, None] * b_x, dvo.dtype.element_ty, DOT_MODE)
        b_bx = _cast(tl.load(p_r + C)[:, None] * b_x, dvo.dtype.element_ty, DOT_MODE)
        b_dof = b_do.to(tl.float32)
        b_sado = _cast(tl.load(p_r + 2 * C)[:, None] * b_dof, dvo.dtype.element_ty, DOT_MODE)
        b_nsbdo = _cast(-tl.load(p_r + 3 * C)[:, None] * b_dof, dvo.dtype.element_ty, DOT_MODE)

        b_g0 = tl.load(g + base * 3).to(tl.float32)
        b_g1 = tl.load(g + base * 3 + 1).to(tl.float32)
        b_g2 = tl.load(g + base * 3 + 2).to(tl.float32)
        p_q = q + o_ck + p_ck
        p_p = p + o_ck + p_ck
        b_ds1, b_dm1 = _bwd_state_update_pqk(b_ds1, b_dm1, p_q, p_p, t_q, t_p, row, 0, m_k1,
                                             b_sado, b_nsbdo, b_nax, b_bx, b_g0, b_g1, b_g2, DOT_MODE, LOAD_TMA)
        if K > BK:
            b_ds2, b_dm2 = _bwd_state_update_pqk(b_ds2, b_dm2, p_q + BK, p_p + BK, t_q, t_p, row, BK, m_k2,
                                                 b_sado, b_nsbdo, b_nax, b_bx, b_g0, b_g1, b_g2, DOT_MODE, LOAD_TMA)
        if K > 2 * BK:
            b_ds3, b_dm3 = _bwd_state_update_pqk(b_ds3, b_dm3, p_q + 2 * BK, p_p + 2 * BK, t_q, t_p, row, 2 * BK,
                                                 m_k3, b_sado, b_nsbdo, b_nax, b_bx, b_g0, b_g1, b_g2,
                                                 DOT_MODE, LOAD_TMA)
        if K > 3 * BK:
            b_ds4, b_dm4 = _bwd_state_update_pqk(b_ds4, b_dm4, p_q + 3 * BK, p_p + 3 * BK, t_q, t_p, row, 3 * BK,
                                                 m_k4, b_sado, b_nsbdo, b_nax, b_bx, b_g0, b_g1, b_g2,
                                                 DOT_MODE, LOAD_TMA)

    p_dh0 = dh0 + st_off + p_st
    p_dh0m = p_dh0 + N.to(tl.int64) * H * K * V
    tl.store(p_dh0, b_ds1, mask=m_k1[:, None] & m_v[None, :])
    tl.store(p_dh0m, b_dm1, mask=m_k1[:, None] & m_v[None, :])
    if K > BK:
        tl.store(p_dh0 + BK * V, b_ds2, mask=m_k2[:, None] & m_v[None, :])
        tl.store(p_dh0m + BK * V, b_dm2, mask=m_k2[:, None] & m_v[None, :])
    if K > 2 * BK:
        tl.store(p_dh0 + 2 * BK * V, b_ds3, mask=m_k3[:, None] & m_v[None, :])
        tl.store(p_dh0m + 2 * BK * V, b_dm3, mask=m_k3[:, None] & m_v[None, :])
    if K > 3 * BK:
        tl.store(p_dh0 + 3 * BK * V, b_ds4, mask=m_k4[:, None] & m_v[None, :])
        tl.store(p_dh0m + 3 * BK * V, b_dm4, mask=m_k4[:, None] & m_v[None, :])


# ---------------------------------------------------------------------------------------------------------------
# launchers (Triton) and torch fallbacks (CPU without the interpreter; also the kernels' test reference)
# ---------------------------------------------------------------------------------------------------------------

def _dims(u, p, chunk_offsets):
    NC, H, C, V = u.shape
    K = p.shape[-1]
    N = chunk_offsets.shape[0] - 1
    return NC, H, C, K, V, N


def scan_pqk_fwd_triton(u, p, q, kw, a, aqk, r, g, h0, chunk_offsets, *, vt=None, store_states=False,
                        block_v=None, num_warps=None):
    NC, H, C, K, V, N = _dims(u, p, chunk_offsets)
    recompute = vt is not None
    dev = u.device
    cfg_bv, cfg_nw = scan_config(K, V, u.dtype, "bwd" if recompute else "fwd")
    BV = block_v or cfg_bv
    o = None if recompute else _empty((NC, H, C, V), u.dtype, dev)
    if not recompute:
        vt = _empty((NC, H, C, V), u.dtype, dev)
    ht = None if recompute else _empty((2, N, H, K, V), torch.float32, dev)
    hc = _empty((NC, H, 2, K, V), u.dtype, dev) if store_states else None
    grid = (triton.cdiv(V, BV), N * H)
    tma = _use_tma((p, q, kw))
    momentum_delta_rule_fwd_kernel_scan_pqk[grid](
        u, p, q, kw, a, aqk, r, g,
        h0, o if o is not None else vt, vt, ht if ht is not None else vt, hc if hc is not None else vt,
        chunk_offsets, H,
        K=K, V=V, C=C, BK=_sub_k(K), BV=BV,
        USE_H0=h0 is not None, RECOMPUTE=recompute, STORE_STATES=store_states,
        DOT_MODE=_dot_mode(u.dtype), LOAD_TMA=tma,
        num_warps=num_warps or cfg_nw,
        num_stages=1,  # the chunk loop is sequential
    )
    return o, vt, ht, hc


def scan_pqk_bwd_triton(p, q, kw, a, aqk, r, g, do, dht, hc, chunk_offsets, *, block_v=None, num_warps=None):
    NC, H, C, V = do.shape
    K = p.shape[-1]
    N = chunk_offsets.shape[0] - 1
    dev = do.device
    cfg_bv, cfg_nw = scan_config(K, V, p.dtype, "bwd")
    BV = block_v or cfg_bv
    NV = triton.cdiv(V, BV)
    dvo = _empty((NC, H, 2 * C, V), p.dtype, dev)
    dhc = _empty((NC, H, 2 if p.dtype == torch.float32 else 4, K, V), p.dtype, dev)
    dh0 = _empty((2, N, H, K, V), torch.float32, dev)
    dgp = _empty((NC, H, NV, 3, K), torch.float32, dev)  # row sums (_bwd_dg_rows)
    grid = (NV, N * H)
    tma = _use_tma((p, q, kw))
    momentum_delta_rule_bwd_kernel_scan_pqk[grid](
        p, q, kw, a, aqk, r, g,
        do, dht, dh0, dvo, dhc, hc, dgp,
        chunk_offsets, H,
        K=K, V=V, C=C, BK=_sub_k(K), BV=BV,
        USE_DHT=dht is not None,
        DOT_MODE=_dot_mode(p.dtype), LOAD_TMA=tma,
        num_warps=num_warps or cfg_nw,
        num_stages=1,
    )
    return dvo, dhc, dh0, dgp.sum((2, 4))


def _row_scalars(r):
    """r [NC, H, 6, C] -> six fp32 [NC, H, C, 1] columns (a-, b-, s a, s b, gamma, rho)."""
    rf = r.float()
    return tuple(rf[:, :, i, :, None] for i in range(NR))


def scan_pqk_fwd_torch(u, p, q, kw, a, aqk, r, g, h0, chunk_offsets, *, vt=None, store_states=False):
    """The forward kernel's math in torch, with its rounding (-W and the row-scaled Vt tiles rounded for 16-bit)."""
    NC, H, C, K, V, N = _dims(u, p, chunk_offsets)
    bf = u.dtype != torch.float32
    recompute = vt is not None
    offs = chunk_offsets.tolist()
    o = None if recompute else u.new_empty(NC, H, C, V)
    if not recompute:
        vt = u.new_empty(NC, H, C, V)
    ht = u.new_empty(2, N, H, K, V, dtype=torch.float32)
    hc = u.new_empty(NC, H, 2, K, V) if store_states else None
    gf = g.float()
    am, bm, sa, sb, ga, rho = _row_scalars(r)
    t = lambda x: x.transpose(-1, -2)  # noqa: E731
    for n in range(N):
        if h0 is not None:
            S, M = h0[0, n].float(), h0[1, n].float()  # [H, K, V]
        else:
            S = u.new_zeros(H, K, V, dtype=torch.float32)
            M = torch.zeros_like(S)
        for c in range(offs[n], offs[n + 1]):
            if store_states:
                hc[c, :, 0], hc[c, :, 1] = S, M
            if recompute:
                b_vt = vt[c]
            else:
                nw = (bm[c] * _mm(p[c], M, bf) - am[c] * _mm(p[c], S, bf)).to(vt.dtype)  # -W
                b_vt = (u[c].float() + _mm(a[c], nw, bf)).to(vt.dtype)
                vt[c] = b_vt
                o[c] = sa[c] * _mm(q[c], S, bf) - sb[c] * _mm(q[c], M, bf) + _mm(aqk[c], b_vt, bf)
            vtf = b_vt.float()
            gvt, nrvt = (ga[c] * vtf).to(vt.dtype), (-rho[c] * vtf).to(vt.dtype)
            g0, g1, g2 = (gf[c, :, i, None, None] for i in range(3))
            S, M = (g0 * S - g1 * M + _mm(t(kw[c]), gvt, bf), g2 * M + _mm(t(kw[c]), nrvt, bf))
        ht[0, n], ht[1, n] = S, M
    return o, vt, (None if recompute else ht), hc


def scan_pqk_bwd_torch(p, q, kw, a, aqk, r, g, do, dht, hc, chunk_offsets):
    """The reverse kernel's math in torch, with its rounding (dVt and the row-scaled [C, V] tiles rounded)."""
    NC, H, C, V = do.shape
    K = p.shape[-1]
    N = chunk_offsets.shape[0] - 1
    bf = p.dtype != torch.float32
    offs = chunk_offsets.tolist()
    dvo = p.new_empty(NC, H, 2 * C, V)
    dhc = p.new_empty(NC, H, 2 if p.dtype == torch.float32 else 4, K, V)
    dh0 = p.new_empty(2, N, H, K, V, dtype=torch.float32)
    dg = p.new_zeros(NC, H, 3, dtype=torch.float32)
    gf = g.float()
    am, bm, sa, sb, ga, rho = _row_scalars(r)
    t = lambda x: x.transpose(-1, -2)  # noqa: E731
    for n in range(N):
        if dht is not None:
            dS, dM = dht[0, n].float(), dht[1, n].float()
        else:
            dS = p.new_zeros(H, K, V, dtype=torch.float32)
            dM = torch.zeros_like(dS)
        for c in range(offs[n + 1] - 1, offs[n] - 1, -1):
            dhc[c, :, 0], dhc[c, :, 1] = dS, dM
            if dhc.shape[2] == 4:  # lo parts (see chunk_scan._store_grad_state)
                dhc[c, :, 2], dhc[c, :, 3] = dS - dhc[c, :, 0].float(), dM - dhc[c, :, 1].float()
            hs, hm = hc[c, :, 0].float(), hc[c, :, 1].float()
            dg[c, :, 0], dg[c, :, 1], dg[c, :, 2] = ((dS * hs).sum((-1, -2)), -(dS * hm).sum((-1, -2)),
                                                     (dM * hm).sum((-1, -2)))
            b_dvt = (ga[c] * _mm(kw[c], dS, bf) - rho[c] * _mm(kw[c], dM, bf)
                     + _mm(t(aqk[c]), do[c], bf)).to(dvo.dtype)
            dvo[c, :, :C] = b_dvt
            dvo[c, :, C:] = do[c]
            x = _mm(t(a[c]), b_dvt, bf)
            dof = do[c].float()
            nax, bx = (-am[c] * x).to(dvo.dtype), (bm[c] * x).to(dvo.dtype)
            sado, nsbdo = (sa[c] * dof).to(dvo.dtype), (-sb[c] * dof).to(dvo.dtype)
            g0, g1, g2 = (gf[c, :, i, None, None] for i in range(3))
            dS, dM = (g0 * dS + _mm(t(q[c]), sado, bf) + _mm(t(p[c]), nax, bf),
                      g2 * dM - g1 * dS + _mm(t(q[c]), nsbdo, bf) + _mm(t(p[c]), bx, bf))
        dh0[0, n], dh0[1, n] = dS, dM
    return dvo, dhc, dh0, dg


def scan_pqk_fwd_impl(u, p, q, kw, a, aqk, r, g, h0, chunk_offsets, **kw_):
    scan_load()  # reject a bad MDN_SCAN_LOAD on every path
    if _use_triton(u):
        return scan_pqk_fwd_triton(u, p, q, kw, a, aqk, r, g, h0, chunk_offsets, **kw_)
    return scan_pqk_fwd_torch(u, p, q, kw, a, aqk, r, g, h0, chunk_offsets, **kw_)


def scan_pqk_bwd_impl(p, q, kw, a, aqk, r, g, do, dht, hc, chunk_offsets):
    scan_load()
    if _use_triton(p):
        return scan_pqk_bwd_triton(p, q, kw, a, aqk, r, g, do, dht, hc, chunk_offsets)
    return scan_pqk_bwd_torch(p, q, kw, a, aqk, r, g, do, dht, hc, chunk_offsets)


# ---------------------------------------------------------------------------------------------------------------
# custom ops
# ---------------------------------------------------------------------------------------------------------------

@torch.library.custom_op("mdn::scan_pqk_fwd", mutates_args=())
def scan_pqk_fwd(
    u: torch.Tensor, p: torch.Tensor, q: torch.Tensor, kw: torch.Tensor, a: torch.Tensor, aqk: torch.Tensor,
    r: torch.Tensor, g: torch.Tensor, h0: Optional[torch.Tensor], chunk_offsets: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Returns (o [NC, H, C, V], vt [NC, H, C, V], ht [2, N, H, K, V] fp32)."""
    o, vt, ht, _ = scan_pqk_fwd_impl(u, p, q, kw, a, aqk, r, g, h0, chunk_offsets)
    return o, vt, ht


@scan_pqk_fwd.register_fake
def _(u, p, q, kw, a, aqk, r, g, h0, chunk_offsets):
    NC, H, C, V = u.shape
    K = p.shape[-1]
    N = chunk_offsets.shape[0] - 1
    return u.new_empty(NC, H, C, V), u.new_empty(NC, H, C, V), u.new_empty(2, N, H, K, V, dtype=torch.float32)


def _chain_rule(x, rr, p, q, kw, a, r):
    """Gradients of P, Q, K_w, A and r from the six-form GEMM results.

    x  [NC, H, 2C, 2K] = [dVt; dO] [S; M]^T = [[-dY, dZ], [dQa, -dQb]];
    rr [NC, H, C, 2K]  = Vt [dS'; dM']^T     = [dKs, -dKm]   (fp32)
    with Y = A D(a-) P, Z = A D(b-) P, Qa = D(s a) Q, Qb = D(s b) Q, Ks = D(gamma) K_w, Km = D(rho) K_w:
    dA = tril(dY (D(a-)P)^T + dZ (D(b-)P)^T, -1), dP = D(a-) A^T dY + D(b-) A^T dZ, da- = rowsum(P * A^T dY), ...
    (A is unit lower triangular: only its strictly lower part depends on anything).
    """
    C, K = p.shape[-2], p.shape[-1]
    t = lambda z: z.transpose(-1, -2)  # noqa: E731
    am, bm, sa, sb, ga, rho = _row_scalars(r)
    pf = p.float()
    xv = x[..., :C, :]                                      # [C, 2K] = [-dY, dZ]
    pab = torch.cat([am * pf, bm * pf], -1).to(p.dtype)     # [C, 2K] = [D(a-)P, D(b-)P]
    # dA = dY (D(a-)P)^T + dZ (D(b-)P)^T = [-dY, dZ] [-D(a-)P, D(b-)P]^T
    pab_signed = torch.cat([-pab[..., :K], pab[..., K:]], -1)
    da = (xv @ t(pab_signed)).tril(-1)                      # [C, C]
    gx = (t(a) @ xv).float()                                # [C, 2K] = [-A^T dY, A^T dZ]
    g1, g2 = gx[..., :K], gx[..., K:]
    dp = bm * g2 - am * g1
    dam, dbm = -(pf * g1).sum(-1), (pf * g2).sum(-1)
    xo = x[..., C:, :].float()                              # [C, 2K] = [dQa, -dQb]
    qf = q.float()
    dq = sa * xo[..., :K] - sb * xo[..., K:]
    dsa, dsb = (qf * xo[..., :K]).sum(-1), -(qf * xo[..., K:]).sum(-1)
    kwf = kw.float()
    r1, r2 = rr[..., :K], rr[..., K:]                       # dKs, -dKm
    dkw = ga * r1 - rho * r2
    dga, drho = (kwf * r1).sum(-1), -(kwf * r2).sum(-1)
    dr = torch.stack([dam, dbm, dsa, dsb, dga, drho], 2)    # [NC, H, 6, C]
    return dp.to(p.dtype), dq.to(q.dtype), dkw.to(kw.dtype), da.to(a.dtype), dr.to(r.dtype)


_compiled_chain = None
_chain_compile_failed = False


def _chain(x, rr, p, q, kw, a, r):
    """_chain_rule through torch.compile where the intra part is compiled (chunk.py's MDN_CHUNK_COMPILE policy: on
    CUDA by default, =1 anywhere, =0 never; backend MDN_CHUNK_COMPILE_BACKEND), so that its row scalings and row
    sums over [NC, H, C, K] fuse into a few kernels instead of ~20 eager passes. A compiler error warns once and
    runs eager from then on."""
    global _compiled_chain, _chain_compile_failed
    env = os.environ.get("MDN_CHUNK_COMPILE", "")
    want = env == "1" if env in ("0", "1") else (p.is_cuda and os.environ.get("TRITON_INTERPRET", "0") != "1")
    if not want or _chain_compile_failed:
        return _chain_rule(x, rr, p, q, kw, a, r)
    try:
        if _compiled_chain is None:
            backend = os.environ.get("MDN_CHUNK_COMPILE_BACKEND", "inductor")
            _compiled_chain = torch.compile(_chain_rule, dynamic=None, backend=backend)
        return _compiled_chain(x, rr, p, q, kw, a, r)
    except torch.cuda.OutOfMemoryError:
        raise
    except Exception as e:  # noqa: BLE001  (any compiler failure: fall back, never fail the op)
        _chain_compile_failed = True
        warnings.warn(f"mdn pqk scan backward: torch.compile of the chain rule failed ({type(e).__name__}: "
                      f"{str(e)[:300]}); using eager torch from now on", RuntimeWarning, stacklevel=2)
        return _chain_rule(x, rr, p, q, kw, a, r)


@torch.library.custom_op("mdn::scan_pqk_bwd", mutates_args=())
def scan_pqk_bwd(
    p: torch.Tensor, q: torch.Tensor, kw: torch.Tensor, a: torch.Tensor, aqk: torch.Tensor, r: torch.Tensor,
    g: torch.Tensor, h0: Optional[torch.Tensor], chunk_offsets: torch.Tensor,
    vt: torch.Tensor, do: torch.Tensor, dht: Optional[torch.Tensor],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
           torch.Tensor, torch.Tensor]:
    """Returns the grads of (u, p, q, kw, a, aqk, r, g, h0); dh0 is fp32 [2, N, H, K, V]."""
    NC, H, C, V = vt.shape
    K = p.shape[-1]
    do = do.to(vt.dtype)
    # chunk-start states S, M: [NC, H, 2, K, V] (in the operands' dtype); vt stands in for u (shape/dtype only)
    _, _, _, hc = scan_pqk_fwd_impl(vt, p, q, kw, a, aqk, r, g, h0, chunk_offsets, vt=vt, store_states=True)
    # dvo [NC, H, 2C, V] = [dVt; dO]; dhc [NC, H, 2 or 4, K, V] = end-state grads (hi + lo for 16-bit); dg [NC, H, 3]
    dvo, dhc, dh0, dg = scan_pqk_bwd_impl(p, q, kw, a, aqk, r, g, do, dht, hc, chunk_offsets)
    t = lambda x: x.transpose(-1, -2)  # noqa: E731
    x = dvo @ t(hc.view(NC, H, 2 * K, V))   # [NC, H, 2C, 2K] = [[dVt S^T, dVt M^T], [dO S^T, dO M^T]]
    P = dhc.shape[2]
    rr = vt @ t(dhc.view(NC, H, P * K, V))  # [NC, H, C, 2K] = [Vt dS'^T, Vt dM'^T] (+ the lo parts' when P = 4)
    rr = rr[..., :2 * K].float() + rr[..., 2 * K:].float() if P == 4 else rr.float()
    dp, dq, dkw, da, dr = _chain(x, rr, p, q, kw, a, r)
    daqk = (do @ t(vt)).tril()               # [NC, H, C, C]
    du = dvo[..., :C, :].contiguous()
    if h0 is None:
        dh0 = torch.zeros_like(dh0)
    return (du, dp, dq, dkw, da, daqk, dr, dg.to(g.dtype),
            dh0.to(h0.dtype if h0 is not None else torch.float32))


@scan_pqk_bwd.register_fake
def _(p, q, kw, a, aqk, r, g, h0, chunk_offsets, vt, do, dht):
    N = chunk_offsets.shape[0] - 1
    NC, H, C, V = vt.shape
    K = p.shape[-1]
    dh0_dtype = h0.dtype if h0 is not None else torch.float32
    return (vt.new_empty(vt.shape), p.new_empty(p.shape), q.new_empty(q.shape), kw.new_empty(kw.shape),
            a.new_empty(a.shape), aqk.new_empty(aqk.shape), r.new_empty(r.shape), g.new_empty(g.shape),
            vt.new_empty(2, N, H, K, V, dtype=dh0_dtype))


def _scan_pqk_setup_context(ctx, inputs, output):
    u, p, q, kw, a, aqk, r, g, h0, chunk_offsets = inputs
    _, vt, _ = output
    ctx.has_h0 = h0 is not None
    ctx.save_for_backward(p, q, kw, a, aqk, r, g, h0, chunk_offsets, vt)


def _scan_pqk_backward(ctx, do, dvt_unused, dht):
    p, q, kw, a, aqk, r, g, h0, chunk_offsets, vt = ctx.saved_tensors
    if do is None:
        do = torch.zeros_like(vt)
    grads = scan_pqk_bwd(p, q, kw, a, aqk, r, g, h0, chunk_offsets, vt, do.contiguous(),
                         dht.contiguous() if dht is not None else None)
    du, dp, dq, dkw, da, daqk, dr, dg, dh0 = grads
    return du, dp, dq, dkw, da, daqk, dr, dg, (dh0 if ctx.has_h0 else None), None


scan_pqk_fwd.register_autograd(_scan_pqk_backward, setup_context=_scan_pqk_setup_context)


def chunk_scan_pqk(u, p, q, kw, a, aqk, r, g, h0, chunk_offsets):
    """Differentiable inter-chunk scan, pqk form. Returns (o [NC, H, C, V], ht [2, N, H, K, V] fp32)."""
    o, _, ht = scan_pqk_fwd(u, p, q, kw, a, aqk, r, g, h0, chunk_offsets)
    return o, ht
