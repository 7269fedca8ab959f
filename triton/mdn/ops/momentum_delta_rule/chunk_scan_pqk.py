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
Helpers (dot modes, sub-tile loads, the state sub-tile loads and stores, hi + lo end-state gradients, the <dS', S>
row sums, tile configs, TMA, the launchers, the torch chunk loops and the backward's GEMMs) come from chunk_scan.py.
"""
from __future__ import annotations

import os
import warnings
from typing import Optional

import torch
import triton
import triton.language as tl

from . import _triton_compat  # noqa: F401  (interpreter + NumPy >= 2.4)
from .knobs import compile_mode, env_choice
from .chunk_chain_bwd import chain_kernel_applies, chain_rule_triton, tail_fusion_applies
from .chunk_output_pqk import output_pqk_triton
from .chunk_state_gemms import (dg_of, new_outputs, state_gemms_fused_qk_triton, state_gemms_triton, tail_config,
                                tail_split)
from .chunk_scan import (_bwd_dg_states, _cast, _dot, _dot_acc, _load_ck, _load_states, _mm, _o_like,
                         _rec_dg_states, _store_grad_states, _store_grad_states_q8, _store_states, _t, _unit_last,
                         _use_tma, _use_triton, _empty, dhc_format, launch_scan_bwd, launch_scan_fwd, scan_bwd_gemms,
                         scan_config, scan_load, torch_scan_bwd, torch_scan_fwd)

NR = 6  # row scalars per chunk: a-, b-, s a, s b, gamma, rho


# ---------------------------------------------------------------------------------------------------------------
# Triton kernels
# ---------------------------------------------------------------------------------------------------------------

@triton.jit
def _dot2_ck(b_xs, b_xm, b_s, b_m, p_x, t_x, row, col: tl.constexpr, m_k, FIRST: tl.constexpr,
             DOT_MODE: tl.constexpr, LOAD_TMA: tl.constexpr):
    """One K sub-tile (columns col ...) of X S and X M (X: a chunk's [C, K] operand, its [C, BK] sub-tile loaded
    once and used by both dots), accumulated into two [C, BV] fp32 tiles (FIRST: starts them)."""
    b_x = _load_ck(p_x, t_x, row, col, m_k, LOAD_TMA)  # [C, BK]
    if FIRST:
        b_xs = _dot(b_x, b_s, DOT_MODE)
        b_xm = _dot(b_x, b_m, DOT_MODE)
    else:
        b_xs = _dot_acc(b_x, b_s, b_xs, DOT_MODE)
        b_xm = _dot_acc(b_x, b_m, b_xm, DOT_MODE)
    return b_xs, b_xm


@triton.jit
def _ck_dot2(p, t, row, b_s, b_m, m_k, K: tl.constexpr, BK: tl.constexpr, DOT_MODE: tl.constexpr,
             LOAD_TMA: tl.constexpr):
    """X S and X M, two [C, BV] fp32 tiles, over the K sub-tiles (_dot2_ck; b_s, b_m: tuples of four [BK, BV]
    sub-tiles; p: the [C, BK] pointers of X's sub-tile 0)."""
    b_xs, b_xm = _dot2_ck(None, None, b_s[0], b_m[0], p, t, row, 0, m_k[0], True, DOT_MODE, LOAD_TMA)
    if K > BK:
        b_xs, b_xm = _dot2_ck(b_xs, b_xm, b_s[1], b_m[1], p + BK, t, row, BK, m_k[1], False, DOT_MODE, LOAD_TMA)
    if K > 2 * BK:
        b_xs, b_xm = _dot2_ck(b_xs, b_xm, b_s[2], b_m[2], p + 2 * BK, t, row, 2 * BK, m_k[2], False,
                              DOT_MODE, LOAD_TMA)
    if K > 3 * BK:
        b_xs, b_xm = _dot2_ck(b_xs, b_xm, b_s[3], b_m[3], p + 3 * BK, t, row, 3 * BK, m_k[3], False,
                              DOT_MODE, LOAD_TMA)
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


@triton.jit(do_not_specialize=['H', 'seg_j0', 'seg_j1', 'seg_len'])
def momentum_delta_rule_fwd_kernel_scan_pqk(
    u, p, q, kw, a, aqk, r, g,
    h0, o, vt, ht, hc, dhc, dgp, hb,
    chunk_offsets,
    H, s_oc, s_oh, s_ot, seg_j0, seg_j1, seg_len, s_uc, s_uh, s_ut,
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
    DG: tl.constexpr = False,
    SEGMENTED: tl.constexpr = False,
    STORE_BOUNDS: tl.constexpr = False,
    WRITE_O: tl.constexpr = True,
    V_IN: tl.constexpr = 0,
):
    """Forward scan (pqk form) over the chunks of one (sequence, head, V-block).

    RECOMPUTE=False: computes Vt and O, stores them and the final state ht [2, N, H, K, V]. WRITE_O=False (with
    STORE_STATES; MDN_FWD_O=kernel): Vt only, no Q, Aqk or O in the loop; chunk_output_pqk.py computes O from hc.
    RECOMPUTE=True: reads the saved Vt instead and only advances the states (loads K_w only).
    STORE_STATES: stores the chunk-start states into hc [NC, H, 2, K, V] (S then M).
    DG (with RECOMPUTE; MDN_BWD_DG=rec): also the row sums of <dS', S>, <dS', M>, <dM', M> for the gate gradients,
    from the chunk-start states in registers and the reverse scan's end-state gradients dhc [NC, H, 2 or 4, K, V],
    into dgp [NC, H, NV, 3, K] (what the reverse kernel computes otherwise; chunk_scan._rec_dg_states).
    V_IN (MDN_SCAN_V=v; 0 = off): u holds the chunk's values V, not U0 = A V, so that the intra part runs no A V
    GEMM. V_IN = 2 (MDN_SCAN_V_DOTS=2, the default): Vt = A V + A (-W), two [C, C] dots, V exact and -W rounded to
    the operands' dtype, fp32 accumulation (no rounding of U0). V_IN = 1 (MDN_SCAN_V_DOTS=1): Vt = A (V - W), one
    dot on the rounding of V - W (bf16 at K = 256, T = 100: dlog_alpha 1.03e-2 vs fp64, against 8.7e-3 for u0 and
    5.3e-3 for two dots). u is then read through its strides (s_uc, s_uh, s_ut: chunk, head, row), so that it can
    be a view of the op's [B, T, H, V] input (chunk.py::_v_chunks).
    STORE_BOUNDS (MDN_BWD_SEGMENTS): the fp32 states at the start of every seg_len-th chunk j of the sequence into
    hb [S, 2, N, H, K, V] at [j / seg_len]. SEGMENTED (with RECOMPUTE, STORE_STATES): only the chunks seg_j0 <= j <
    seg_j1, from h0 = the segment's start states, into hc rows n * seg_len + j - seg_j0 (a segment-sized hc).
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
    m_k = (m_k1, m_k2, m_k3, m_k4)
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

    b_s1, b_m1, b_s2, b_m2, b_s3, b_m3, b_s4, b_m4 = _load_states(h0, st_off, p_st, N, H, m_k, m_v, K, V, BK, BV,
                                                                  USE_H0)

    if SEGMENTED:
        i_lo = c_start + seg_j0
        i_hi = tl.minimum(c_end, c_start + seg_j1)
    else:
        i_lo = c_start
        i_hi = c_end
    for i_c in range(i_lo, i_hi):  # int64: c_start is int64
        base = i_c * H + i_h                  # index of [c, h]
        o_ck = base * C * K                   # offset of [c, h] in [NC, H, C, K]
        row = (base * C).to(tl.int32)         # first row of [c, h] in [NC * H * C, K] (LOAD_TMA)
        o_cv = base * C * V
        p_r = r + base * 6 * C + o_c          # [C] pointers to row scalar 0 (a-) of [c, h]
        b_S, b_M = (b_s1, b_s2, b_s3, b_s4), (b_m1, b_m2, b_m3, b_m4)
        if STORE_STATES:
            if SEGMENTED:  # the segment's own hc rows
                p_hc = hc + ((i_n.to(tl.int64) * seg_len + (i_c - i_lo)) * H + i_h) * 2 * K * V + p_st
            else:
                p_hc = hc + base * 2 * K * V + p_st
            _store_states(p_hc, p_hc + K * V, b_S, b_M, m_k, m_v, K, V, BK, DOT_MODE)
        if STORE_BOUNDS:
            if (i_c - c_start) % seg_len == 0:  # a segment's first chunk: its start states, fp32
                p_hb = hb + ((i_c - c_start) // seg_len) * 2 * N * H * K * V + st_off + p_st
                _store_states(p_hb, p_hb + N.to(tl.int64) * H * K * V, b_S, b_M, m_k, m_v, K, V, BK, 0)
        if DG:
            _rec_dg_states(dgp + (base * tl.num_programs(0) + i_v) * 3 * K, dhc,
                           base * (2 if DOT_MODE == 0 else 4) * K * V + p_st, b_S, b_M, o_k, m_k, m_v, K, V, BK,
                           DOT_MODE)
        if RECOMPUTE:
            b_vt = tl.load(vt + o_cv + p_cv, mask=m_cv, other=0.)
        else:
            # P S and P M over the K sub-tiles (two fp32 [C, BV] tiles, P loaded once per sub-tile), then
            # -W = D(b-) (P M) - D(a-) (P S) row-scaled in fp32 and Vt = U0 + A (-W)
            b_ps, b_pm = _ck_dot2(p + o_ck + p_ck, t_p, row, b_S, b_M, m_k, K, BK, DOT_MODE, LOAD_TMA)
            b_am = tl.load(p_r)
            b_bm = tl.load(p_r + C)
            b_a = tl.load(a + base * C * C + p_cc)  # [C, C]
            p_u = u + i_c * s_uc + i_h * s_uh + o_c[:, None] * s_ut + o_v[None, :]  # [C, BV] (V_IN: u's strides)
            if V_IN == 1:  # Vt = A (V - W)
                b_vw = tl.load(p_u, mask=m_cv, other=0.).to(tl.float32) + (
                    b_bm[:, None] * b_pm - b_am[:, None] * b_ps)
                b_vt = _dot(b_a, _cast(b_vw, vt.dtype.element_ty, DOT_MODE), DOT_MODE)
            else:  # Vt = A V + A (-W) (V_IN == 2: V as it is, exact in the operands' dtype) or U0 + A (-W)
                b_nw = _cast(b_bm[:, None] * b_pm - b_am[:, None] * b_ps, vt.dtype.element_ty, DOT_MODE)  # [C, BV]
                if V_IN == 2:
                    b_vt = _dot(b_a, tl.load(p_u, mask=m_cv, other=0.).to(vt.dtype.element_ty), DOT_MODE)
                else:
                    b_vt = tl.load(u + o_cv + p_cv, mask=m_cv, other=0.).to(tl.float32)  # [C, BV]
                b_vt = _dot_acc(b_a, b_nw, b_vt, DOT_MODE)
            b_vt = _cast(b_vt, vt.dtype.element_ty, DOT_MODE)
            tl.store(vt + o_cv + p_cv, b_vt, mask=m_cv)
            if WRITE_O:
                # O = D(s a) (Q S) - D(s b) (Q M) + Aqk Vt
                b_qs, b_qm = _ck_dot2(q + o_ck + p_ck, t_q, row, b_S, b_M, m_k, K, BK, DOT_MODE, LOAD_TMA)
                b_sa = tl.load(p_r + 2 * C)
                b_sb = tl.load(p_r + 3 * C)
                b_o = b_sa[:, None] * b_qs - b_sb[:, None] * b_qm
                b_aqk = tl.load(aqk + base * C * C + p_cc)  # [C, C]
                b_o = _dot_acc(b_aqk, b_vt, b_o, DOT_MODE)
                p_o = o + i_c * s_oc + i_h * s_oh + o_c[:, None] * s_ot + o_v[None, :]  # o's strides (_o_like)
                tl.store(p_o, _cast(b_o, o.dtype.element_ty, DOT_MODE), mask=m_cv)
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
        _store_states(p_ht, p_ht + N.to(tl.int64) * H * K * V, (b_s1, b_s2, b_s3, b_s4),
                      (b_m1, b_m2, b_m3, b_m4), m_k, m_v, K, V, BK, 0)


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


@triton.jit
def _await_flag(p_flag):
    """Spin until the int32 flag at p_flag is set (acquire, GPU scope), then sync the block, so that every thread's
    loads after it see what the flag's writer stored before it set the flag (CUTLASS's semaphore pattern)."""
    flag = tl.atomic_add(p_flag, 0, sem="acquire", scope="gpu")
    while flag == 0:
        flag = tl.atomic_add(p_flag, 0, sem="acquire", scope="gpu")
    tl.debug_barrier()


@triton.jit
def _publish_flag(p_flag):
    """Set the int32 flag at p_flag after every thread of the block has issued its stores (barrier, then a release
    at GPU scope)."""
    tl.debug_barrier()
    tl.atomic_xchg(p_flag, 1, sem="release", scope="gpu")


@triton.jit(do_not_specialize=['H', 'seg_j0', 'seg_j1', 'seg_len', 'pe_nh', 'pe_n', 'pe_len', 'pe_g'])
def momentum_delta_rule_bwd_kernel_scan_pqk(
    p, q, kw, a, aqk, r, g,
    do, dht, dh0, dvt, dob, dvs, dhc, hc, dgp,
    chunk_offsets,
    H, s_dc, s_dh, s_dt, seg_j0, seg_j1, seg_len,
    dx, s_xc, s_xh, s_xt,
    sync, carry, pe_nh, pe_n, pe_len, pe_g,
    K: tl.constexpr,
    V: tl.constexpr,
    C: tl.constexpr,
    BK: tl.constexpr,
    BV: tl.constexpr,
    USE_DHT: tl.constexpr,
    DOT_MODE: tl.constexpr,
    LOAD_TMA: tl.constexpr,
    STACKED: tl.constexpr = False,
    DG: tl.constexpr = True,
    SEGMENTED: tl.constexpr = False,
    SEG_HC: tl.constexpr = False,
    DHC_Q8: tl.constexpr = False,
    STORE_X: tl.constexpr = False,
    PERSIST: tl.constexpr = False,
):
    """Reverse scan (pqk form). Stores exactly what chunk_scan.momentum_delta_rule_bwd_kernel_scan stores (dhc,
    dVt into dvt, the chunk-major copy of dO (read through its strides) into dob, the partial sums dgp, dh0), with
    per chunk (last to first) (STACKED: dVt also into rows :C and dO into rows C: of dvs [NC, H, 2C, V], dob unused)

        dVt = D(gamma) (K_w dS') - D(rho) (K_w dM') + Aqk^T dO,   X = A^T dVt
        dS  = gS dS' + Q^T (D(s a) dO) + P^T (D(-a-) X)
        dM  = -gSM dS' + gM dM' + Q^T (D(-s b) dO) + P^T (D(b-) X)

    SEGMENTED (MDN_BWD_SEGMENTS, scan_pqk_bwd_segmented): only the chunks seg_j0 <= j < seg_j1 of the sequence (j
    from its first chunk), starting from dht (the gradient carried in from the later segment) and ending in dh0 (the
    one carried on), with dhc indexed by the segment's row n * seg_len + j - seg_j0 instead of the chunk (and hc
    too with SEG_HC, when the state recompute ran for this segment only).
    STORE_X (MDN_SCAN_V=v): also stores X = A^T dVt into dx [NC, H, C, V] (the operands' dtype; any strides s_xc,
    s_xh, s_xt, so that dx can be laid out as the op's [B, T, H, V] input): the gradient of the values V when the
    forward took them instead of U0 (Vt = A (V - W)).
    DHC_Q8 (MDN_DHC=q8, only with DG off and not SEGMENTED): dhc holds two bf16 hi planes per chunk and hc the
    int8 lo planes [NC, H, 2, K, V] (chunk_scan._store_grad_states_q8).
    PERSIST (dense batches, not SEGMENTED; persistent_plan): a 1-D grid of pe_g groups of NV programs, sized to
    the GPU's resident programs, instead of one program per (V-block, sequence, head) stream. The N * H streams of
    pe_n chunks each lie back to back on a line of pe_nh * pe_n chunk steps; group grp takes the steps
    [grp * pe_len, (grp + 1) * pe_len) (pe_len >= pe_n, so a stream is cut at most once), stream by stream from its
    last one down, so its first piece is the start of a stream and its last piece the end of the stream that group
    grp - 1 started first. That piece starts from the gradient state group grp - 1 left in carry [2, pe_g, K, V]
    (fp32) after its first piece, published by a flag (release) and awaited by spinning on it (acquire). A program
    takes its V-block i_v from its program id and its group from the V-block's ticket counter sync[i_v] when it
    starts (group x's flag: sync[NV + x * NV + i_v]), so it only ever waits for a program that is already running
    (as CUB's decoupled look-back does), whatever order the GPU starts them in. With more streams than
    resident programs this spreads the chunk steps evenly over the GPU instead of running whole waves of streams
    (H6 K256 V512, T = 8192: 384 streams of 128 chunks on 264 resident programs took two rounds, 256 steps; the
    groups take 192).
    """
    tl.static_assert(K <= 4 * BK, "K > 4 * BK")
    NV: tl.constexpr = (V + BV - 1) // BV
    o_k = tl.arange(0, BK)
    o_c = tl.arange(0, C)
    m_k1, m_k2, m_k3, m_k4 = o_k < K, o_k + BK < K, o_k + 2 * BK < K, o_k + 3 * BK < K
    m_k = (m_k1, m_k2, m_k3, m_k4)
    p_ck = o_c[:, None] * K + o_k[None, :]          # [C, BK]  (sub-tile j: + j * BK)
    p_cc = o_c[:, None] * C + o_c[None, :]          # [C, C]
    if PERSIST:
        # the V-block from the program id (cheap for the compiler to recompute: fewer spills than from the ticket),
        # the group from this V-block's ticket counter sync[i_v]
        i_v = tl.program_id(0) % NV
        grp = tl.atomic_add(sync + i_v, 1)
        p_flags = sync + NV + i_v                # flag of group x: p_flags + x * NV
        N = pe_nh // H
        l_a = grp * pe_len                       # this group's chunk steps [l_a, l_b) of the line
        l_b = tl.minimum(l_a + pe_len, pe_nh * pe_n)
        s_hi = tl.maximum(l_b - 1, 0) // pe_n
        n_pieces = tl.where(l_b > l_a, s_hi - l_a // pe_n + 1, 0)
    else:
        i_v = tl.program_id(0)
        N = tl.num_programs(1) // H
        n_pieces = 1
    o_v = i_v * BV + tl.arange(0, BV)
    m_v = o_v < V
    p_st = o_k[:, None] * V + o_v[None, :]          # [BK, BV] (sub-tile j: + j * BK * V)
    p_cv = o_c[:, None] * V + o_v[None, :]          # [C, BV]
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

    for piece in range(0, n_pieces):
        if PERSIST:  # stream s = n * H + h, its steps [i_lo, i_hi) (step i: the stream's chunk j_hi - 1 - i)
            s = s_hi - piece
            i_n, i_h = s // H, s % H
            i_lo = tl.maximum(l_a - s * pe_n, 0)
            i_hi = tl.minimum(l_b - s * pe_n, pe_n)
        else:
            i_nh = tl.program_id(1)
            i_n, i_h = i_nh // H, i_nh % H
        c_start = tl.load(chunk_offsets + i_n).to(tl.int64)
        c_end = tl.load(chunk_offsets + i_n + 1).to(tl.int64)
        st_off = (i_n.to(tl.int64) * H + i_h) * K * V
        if PERSIST:
            j_hi = c_end - c_start
            if i_lo == 0:
                b_ds1, b_dm1, b_ds2, b_dm2, b_ds3, b_dm3, b_ds4, b_dm4 = _load_states(
                    dht, st_off, p_st, N, H, m_k, m_v, K, V, BK, BV, USE_DHT)
            else:  # the end of a stream group grp - 1 started: its state after that piece
                _await_flag(p_flags + (grp - 1) * NV)
                b_ds1, b_dm1, b_ds2, b_dm2, b_ds3, b_dm3, b_ds4, b_dm4 = _load_states(
                    carry, (grp - 1).to(tl.int64) * K * V, p_st, pe_g, 1, m_k, m_v, K, V, BK, BV, True)
        else:
            b_ds1, b_dm1, b_ds2, b_dm2, b_ds3, b_dm3, b_ds4, b_dm4 = _load_states(
                dht, st_off, p_st, N, H, m_k, m_v, K, V, BK, BV, USE_DHT)
            if SEGMENTED:
                j_hi = tl.minimum(c_end - c_start, seg_j1.to(tl.int64))
                i_hi = tl.maximum(j_hi - seg_j0, 0)
            else:
                j_hi = c_end - c_start
                i_hi = j_hi
            i_lo = 0
        for i in range(i_lo, i_hi):
            i_c = c_start + j_hi - 1 - i  # int64
            base = i_c * H + i_h
            o_ck = base * C * K
            row = (base * C).to(tl.int32)
            o_cv = base * C * V
            p_r = r + base * 6 * C + o_c
            p_hc = base * 2 * K * V + p_st
            # dhc planes: [dS', dM'] (fp32) or [hi(dS'), hi(dM'), lo(dS'), lo(dM')] (16-bit; _store_grad_state)
            if SEGMENTED:  # the segment's own dhc rows (and hc's, SEG_HC: a segment-sized hc)
                l_c = i_n.to(tl.int64) * seg_len + (j_hi - 1 - i - seg_j0)
                p_dhc = (l_c * H + i_h) * (2 if DOT_MODE == 0 else 4) * K * V + p_st
                if SEG_HC:
                    p_hc = (l_c * H + i_h) * 2 * K * V + p_st
            else:
                p_dhc = base * (2 if DOT_MODE == 0 or DHC_Q8 else 4) * K * V + p_st
            b_dS, b_dM = (b_ds1, b_ds2, b_ds3, b_ds4), (b_dm1, b_dm2, b_dm3, b_dm4)
            if DHC_Q8:
                _store_grad_states_q8(dhc, hc, p_dhc, b_dS, b_dM, m_k, m_v, K, V, BK, DOT_MODE)
            else:
                _store_grad_states(dhc, p_dhc, b_dS, b_dM, m_k, m_v, K, V, BK, DOT_MODE)
            # gradients of the chunk's scalars gS, gSM, gM: row sums over this V-block, dgp [NC, H, NV, 3, K]
            # (chunk_scan._bwd_dg_rows: no cross-warp reduction)
            if DG:  # else the state recompute after this scan computes them (MDN_BWD_DG=rec), hc unused
                p_dg = dgp + (base * NV + i_v) * 3 * K
                _bwd_dg_states(p_dg, hc, p_hc, b_dS, b_dM, o_k, m_k, m_v, K, V, BK)

            b_do = tl.load(do + i_c * s_dc + i_h * s_dh + o_c[:, None] * s_dt + o_v[None, :], mask=m_cv, other=0.)
            p_cv2 = base * 2 * C * V + p_cv  # rows of dvs (STACKED)
            if STACKED:
                tl.store(dvs + C * V + p_cv2, b_do.to(dvs.dtype.element_ty), mask=m_cv)
            else:
                tl.store(dob + o_cv + p_cv, b_do.to(dob.dtype.element_ty), mask=m_cv)
            # dVt = D(gamma) (K_w dS') - D(rho) (K_w dM') + Aqk^T dO
            b_kds, b_kdm = _ck_dot2(kw + o_ck + p_ck, t_kw, row, b_dS, b_dM, m_k, K, BK, DOT_MODE, LOAD_TMA)
            b_ga = tl.load(p_r + 4 * C)
            b_rho = tl.load(p_r + 5 * C)
            b_dvt = b_ga[:, None] * b_kds - b_rho[:, None] * b_kdm
            b_aqk = tl.load(aqk + base * C * C + p_cc)
            b_dvt = _dot_acc(tl.trans(b_aqk), b_do, b_dvt, DOT_MODE)  # [C, BV]
            b_dvt = _cast(b_dvt, dvt.dtype.element_ty, DOT_MODE)
            tl.store(dvt + o_cv + p_cv, b_dvt, mask=m_cv)
            if STACKED:
                tl.store(dvs + p_cv2, b_dvt, mask=m_cv)
            # X = A^T dVt (fp32), and the four row-scaled [C, BV] right-hand sides of this chunk's state update
            b_a = tl.load(a + base * C * C + p_cc)
            b_x = _dot(tl.trans(b_a), b_dvt, DOT_MODE)  # [C, BV]
            if STORE_X:
                p_x = dx + i_c * s_xc + i_h * s_xh + o_c[:, None] * s_xt + o_v[None, :]  # [C, BV], dx's strides
                tl.store(p_x, _cast(b_x, dx.dtype.element_ty, DOT_MODE), mask=m_cv)
            b_nax = _cast(-tl.load(p_r)[:, None] * b_x, dvt.dtype.element_ty, DOT_MODE)
            b_bx = _cast(tl.load(p_r + C)[:, None] * b_x, dvt.dtype.element_ty, DOT_MODE)
            b_dof = b_do.to(tl.float32)
            b_sado = _cast(tl.load(p_r + 2 * C)[:, None] * b_dof, dvt.dtype.element_ty, DOT_MODE)
            b_nsbdo = _cast(-tl.load(p_r + 3 * C)[:, None] * b_dof, dvt.dtype.element_ty, DOT_MODE)

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

        b_dS, b_dM = (b_ds1, b_ds2, b_ds3, b_ds4), (b_dm1, b_dm2, b_dm3, b_dm4)
        if PERSIST:
            if i_hi < j_hi:  # the stream goes on in group grp + 1: publish the state there (fp32)
                p_cs = carry + grp.to(tl.int64) * K * V + p_st
                _store_states(p_cs, p_cs + pe_g.to(tl.int64) * K * V, b_dS, b_dM, m_k, m_v, K, V, BK, 0)
                _publish_flag(p_flags + grp * NV)
            else:
                p_dh0 = dh0 + st_off + p_st
                _store_states(p_dh0, p_dh0 + N.to(tl.int64) * H * K * V, b_dS, b_dM, m_k, m_v, K, V, BK, 0)
        else:
            p_dh0 = dh0 + st_off + p_st
            _store_states(p_dh0, p_dh0 + N.to(tl.int64) * H * K * V, b_dS, b_dM, m_k, m_v, K, V, BK, 0)


# ---------------------------------------------------------------------------------------------------------------
# launchers (Triton) and torch fallbacks (CPU without the interpreter; also the kernels' test reference)
# ---------------------------------------------------------------------------------------------------------------

def scan_pqk_fwd_triton(u, p, q, kw, a, aqk, r, g, h0, chunk_offsets, *, vt=None, store_states=False,
                        block_v=None, num_warps=None, dg_from=None, v_in=False):
    # MDN_FWD_O=kernel: the scan without O stores the chunk-start states (for the backward too when store_states),
    # then the parallel kernel of chunk_output_pqk.py computes O from them
    split_o = vt is None and fwd_o() == "kernel"
    out = launch_scan_fwd(momentum_delta_rule_fwd_kernel_scan_pqk, u, (p, q, kw, a, aqk, r, g),
                          _use_tma((p, q, kw)), h0, chunk_offsets, vt=vt, store_states=store_states or split_o,
                          block_v=block_v, num_warps=num_warps, dg_from=dg_from, write_o=not split_o, v_in=v_in,
                          v_dots=scan_v_dots() if v_in else 2)
    if split_o:
        _, vt_, ht, hc = out
        return output_pqk_triton(q, hc, vt_, aqk, r), vt_, ht, (hc if store_states else None)
    return out


def scan_pqk_bwd_triton(p, q, kw, a, aqk, r, g, do, dht, hc, chunk_offsets, *, block_v=None, num_warps=None,
                        stacked=None, dhc_q8=False, dx=None, stream_chunks=None):
    """stacked: None reads MDN_BWD_GEMM (bwd_gemm()). dhc_q8, dx, stream_chunks: launch_scan_bwd's (MDN_DHC=q8,
    tail path only; MDN_SCAN_V=v; dense batches' chunks per sequence, for the persistent grid)."""
    return launch_scan_bwd(momentum_delta_rule_bwd_kernel_scan_pqk, (p, q, kw, a, aqk, r, g),
                           _use_tma((p, q, kw)), do, dht, hc, chunk_offsets, block_v=block_v,
                           num_warps=num_warps, stacked=bwd_gemm() == "stacked" if stacked is None else stacked,
                           dhc_q8=dhc_q8, dx=dx, stream_chunks=stream_chunks)


FWD_OS = ("scan", "kernel")


def fwd_o() -> str:
    """MDN_FWD_O: where the pqk forward computes O. "scan": in the sequential chunk loop. "kernel" (the default: on
    an H200 at 32768 tokens 0.87 ms faster fwd+bwd at H6 K256 V512 and 0.3 ms at H16 K128 V128, same peak; README
    §6): the scan drops Q, Aqk and the two Q-dots from its loop (816 -> 88 bytes of spills at K = 256, and two
    pipeline stages fit; ptxas sm_90a) and stores every chunk's start states hc; the parallel kernel of
    chunk_output_pqk.py then computes O from them. With a gradient the forward keeps hc for the backward, which then
    runs no state recompute (as MDN_SAVE_STATES=1); without one hc is a temporary (NC * H * 2 * K * V elements in the
    operands' dtype). Same numbers up to the dots' accumulation order. The Triton path only (the torch mirror
    computes O in its loop either way); other values are a ValueError."""
    return env_choice("MDN_FWD_O", FWD_OS, "kernel")


SCAN_VS = ("u0", "v")


def scan_v() -> str:
    """MDN_SCAN_V (pqk form, torch intra part): what the forward scan takes besides P, K_w and A. "v" (the default
    since it was measured, docs/BENCHMARKS.md §1.19): V itself, read through its strides (for a dense batch with T a
    multiple of C a view of the op's input: no packing copy, and V's gradient is written in the input's layout), and
    Vt = A V + A (-W) in the loop (one more [C, C] dot there); the reverse scan also stores X = A^T dVt, which it
    computes anyway, as V's gradient, and the chain rule adds dVt V^T to A's. That removes the A V GEMM and V's
    packing from the forward and A^T dU0 and dV's unpacking from the backward. First measured in the one-dot form
    on bf16(V - W) with packed V (H100, 32768 tokens, T = 4096, same process as "u0"): fwd / fwd+bwd 3.89 / 13.38 ->
    3.46 / 12.95 ms at H6 K256 V512 and 3.18 / 11.00 -> 2.96 / 10.67 at H16 K128 V128. "u0": U0 = A V, a batched
    GEMM in the intra part, and Vt = U0 + A (-W) in the loop. "v" does not combine with MDN_BWD_GEMM=stacked:
    unset, the knob then means "u0"; set to "v", a ValueError. With MDN_INTRA=triton it is ignored (that intra
    kernel computes U0 itself). Other values are a ValueError."""
    stacked = bwd_gemm() == "stacked"
    val = env_choice("MDN_SCAN_V", SCAN_VS, "u0" if stacked else "v")
    if val == "v" and stacked:  # only when set explicitly
        raise ValueError("MDN_SCAN_V='v' does not combine with MDN_BWD_GEMM='stacked' (use MDN_BWD_GEMM=planes, or "
                         "MDN_SCAN_V=u0)")
    return val


def scan_v_dots() -> int:
    """MDN_SCAN_V_DOTS (with MDN_SCAN_V=v): how the forward scan forms Vt from V. "2" (default): A V + A (-W), two
    [C, C] dots, V exact; "1": A (V - W), one dot on the operands' rounding of V - W (the kernel's V_IN; less
    accurate gate gradients, see its docstring). Other values are a ValueError."""
    return int(env_choice("MDN_SCAN_V_DOTS", ("1", "2"), "2"))


BWD_GEMMS = ("planes", "stacked")
BWD_DGS = ("rev", "rec", "tail")


def bwd_dg() -> str:
    """MDN_BWD_DG: where the backward computes the row sums of <dS', S>, <dS', M>, <dM', M> (the gate gradients of
    each chunk's gS, gSM, gM). "tail" (default): the reverse scan runs without the states, and one fused kernel after
    it computes the sums together with the GEMMs against the states (chunk_state_gemms.py), reading each state tile
    once; measured on an H200 (README §6) 13.87 -> 12.96 ms fwd+bwd at H6 K256 V512 and even at H16 K128 V128.
    "rev": in the reverse scan, which then loads the chunk-start states hc every chunk (the GEMMs run in cuBLAS).
    "rec": the reverse scan runs first, without them, and the state recompute after it computes them from the
    states in its registers and the stored end-state gradients (+0.25 ms at H6 K256 V512: it loads four [K, BV]
    planes per chunk for them). "tail" and "rec" apply on the Triton path; elsewhere (the torch path) the reverse
    scan's row sums run, as they do for "rec" with MDN_SAVE_STATES=1 (no recompute); MDN_BWD_SEGMENTS > 1 takes
    "tail" (per segment, through a chunk-id index) and "rev", and refuses "rec". Other values are a ValueError."""
    return env_choice("MDN_BWD_DG", BWD_DGS, "tail")


def bwd_gemm() -> str:
    """MDN_BWD_GEMM, how the pqk reverse scan lays out dVt and dO for the GEMMs after it: "planes" (default: two
    [NC, H, C, V] planes, two M = C GEMMs against the states) or "stacked" (dVt written twice: contiguous for du,
    and with dO in one [NC, H, 2C, V] tensor for one M = 2C GEMM; measured 0.06-0.12 ms faster per 32k tokens for
    0.12-0.19 GiB more, training within noise: opt-in; README §6). The Triton path only; other values are a
    ValueError."""
    return env_choice("MDN_BWD_GEMM", BWD_GEMMS, "planes")


def bwd_segments() -> int:
    """MDN_BWD_SEGMENTS (default 1): run the pqk backward's scans and its GEMMs against the states in this many
    time segments, last to first, with segment-sized chunk-start states hc and end-state gradients dhc
    (scan_pqk_bwd_segmented): the backward's two largest buffers (4.8 GB per 32768 tokens at H6 K256 V512, bf16)
    shrink to 1 / segments, for one more store-free state-recompute pass and more launches. Needs
    MDN_BWD_DG=rev; the Triton path only. Anything but a positive integer is a ValueError."""
    env = os.environ.get("MDN_BWD_SEGMENTS", "") or "1"
    try:
        n = int(env)
    except ValueError:
        n = 0
    if n < 1 or str(n) != env.strip():
        raise ValueError(f"MDN_BWD_SEGMENTS={env!r}: expected a positive integer (default 1)")
    if n > 1 and bwd_dg() == "tail" and tail_split() == "gemm":
        raise ValueError(f"MDN_BWD_SEGMENTS={env!r} does not combine with MDN_TAIL_SPLIT='gemm' (the segment's rows "
                         f"are not contiguous for cuBLAS): use MDN_TAIL_SPLIT=0 or 1")
    if n > 1 and bwd_dg() == "rec":
        raise ValueError(f"MDN_BWD_SEGMENTS={env!r} needs MDN_BWD_DG=rev or tail (the state recompute reads the whole "
                         f"dhc with MDN_BWD_DG=rec), got MDN_BWD_DG={bwd_dg()!r}")
    return n


def scan_pqk_bwd_segmented(p, q, kw, a, aqk, r, g, do, dht, hc, chunk_offsets, vt, segments: int, h0=None,
                           dx=None):
    """The pqk backward's scans and GEMMs against the states in `segments` time segments (MDN_BWD_SEGMENTS), last
    to first: segment s covers the chunks s * L <= j < (s + 1) * L of every sequence (L = ceil(longest sequence's
    chunks / segments)).

    hc None (the states are recomputed): one state-recompute pass stores only each segment's fp32 start states
    (hb [S, 2, N, H, K, V]); then per segment the recompute from them fills a segment-sized hc. hc given
    (MDN_SAVE_STATES=1): used as it is. Per segment, the reverse scan starts from the end-state gradient carried out
    of the segment after it (dht for the last), writes the segment's end-state gradients into a segment-sized dhc,
    and the GEMMs of scan_bwd_gemms read both before the next segment reuses them. With MDN_BWD_DG=tail the reverse
    scan runs without the <dS', S> sums and the fused tail kernel (chunk_state_gemms.py) takes the segment's rows
    through a chunk-id index instead of the gathers, GEMMs and scatters. So the two largest buffers of
    the backward (hc, dhc: 4.8 GB per 32768 tokens at H6 K256 V512) shrink to 1 / segments, for one more
    (store-free) recompute pass and more launches. Same arithmetic as one pass. dx (MDN_SCAN_V=v): filled with
    X = A^T dVt, every segment its chunks.
    Returns (dvo, xv, xo, rr, dh0, dg): xv = dVt [S; M]^T and xo = dO [S; M]^T ([NC, H, C, 2K]) and rr = Vt [dS';
    dM']^T ([NC, H, C, P K]) as scan_bwd_gemms(sum_parts=False) gives them (the tail: [NC, H, C, 2K] fp32)."""
    NC, H, C, V = vt.shape
    K = p.shape[-1]
    N = chunk_offsets.shape[0] - 1
    dev = vt.device
    dt = p.dtype
    P = 2 if dt == torch.float32 else 4
    lens = (chunk_offsets[1:] - chunk_offsets[:-1]).long()
    starts = chunk_offsets[:-1].long()
    nt_max = int(lens.max().item()) if N else 0
    seg_len = max(1, -(-nt_max // segments))
    n_seg = max(1, -(-nt_max // seg_len))
    stacked = bwd_gemm() == "stacked"
    BV = scan_config(K, V, dt, "bwd")[0]
    NV = triton.cdiv(V, BV)
    ops = (p, q, kw, a, aqk, r, g)
    if stacked:
        dvo = (_empty((NC, H, C, V), dt, dev), _empty((NC, H, 2 * C, V), dt, dev))
    else:
        dvo = _empty((2, NC, H, C, V), dt, dev)
    tail = bwd_dg() == "tail"
    dhc = _empty((N * seg_len, H, P, K, V), dt, dev)
    if tail:
        dgp = _empty((1,), torch.float32, dev)  # unused: the reverse scan runs without the sums
        tail_outs = new_outputs(vt, K, triton.cdiv(K, tail_config(K, V, C, dt)[0]))
    else:
        dgp = _empty((NC, H, NV, 3, K), torch.float32, dev)
        rr = _empty((NC, H, C, P * K), dt, dev)
        xv, xo = _empty((NC, H, C, 2 * K), dt, dev), _empty((NC, H, C, 2 * K), dt, dev)
    seg_hc = hc is None
    if seg_hc:
        hb = _empty((n_seg, 2, N, H, K, V), torch.float32, dev)
        launch_scan_fwd(momentum_delta_rule_fwd_kernel_scan_pqk, vt, ops, _use_tma((p, q, kw)), h0, chunk_offsets,
                        vt=vt, bounds=(hb, seg_len))
        hc_seg = _empty((N * seg_len, H, 2, K, V), dt, dev)
    carry = [_empty((2, N, H, K, V), torch.float32, dev), _empty((2, N, H, K, V), torch.float32, dev)]
    jj = torch.arange(seg_len, device=dev)
    cur = dht
    for i, s_ in enumerate(reversed(range(n_seg))):
        j0, j1 = s_ * seg_len, min((s_ + 1) * seg_len, nt_max)
        if seg_hc:  # this segment's chunk-start states, from its start states in hb
            launch_scan_fwd(momentum_delta_rule_fwd_kernel_scan_pqk, vt, ops, _use_tma((p, q, kw)), hb[s_],
                            chunk_offsets, vt=vt, store_states=True, seg=(j0, j1, seg_len), hc_out=hc_seg)
        out = carry[i % 2]
        launch_scan_bwd(momentum_delta_rule_bwd_kernel_scan_pqk, ops, _use_tma((p, q, kw)), do, cur,
                        None if tail else (hc_seg if seg_hc else hc), chunk_offsets, stacked=stacked,
                        seg=(j0, j1, seg_len), bufs=(dvo, dhc, out, dgp), SEG_HC=seg_hc, dx=dx)
        cur = out
        # the GEMMs for the segment's chunk rows n * L + j - j0 that exist (j < j1, j < len_n); rows without a
        # chunk read chunk 0 and their products are discarded
        j = j0 + jj
        idx = (starts[:, None] + j[None, :]).flatten()                           # [N * L] chunk ids
        valid = ((j[None, :] < lens[:, None]) & (j[None, :] < j1)).flatten()
        if tail:
            state_gemms_triton(vt, dvo, hc_seg if seg_hc else hc, dhc, rows=torch.where(valid, idx, -1),
                               outs=tail_outs, hc_by_chunk=not seg_hc)
            continue
        safe = torch.where(valid, idx, torch.zeros_like(idx))
        rows = valid.nonzero().squeeze(1)
        dst = idx.index_select(0, rows)
        r_seg = vt.index_select(0, safe) @ _t(dhc.view(N * seg_len, H, P * K, V))
        rr.index_copy_(0, dst, r_seg.index_select(0, rows))
        h_seg = hc_seg if seg_hc else hc.index_select(0, safe)                  # [N * L, H, 2, K, V]
        hct = _t(h_seg.view(N * seg_len, H, 2 * K, V))
        if stacked:
            x = dvo[1].index_select(0, safe) @ hct                               # [N * L, H, 2C, 2K]
            xv.index_copy_(0, dst, x[:, :, :C].index_select(0, rows))
            xo.index_copy_(0, dst, x[:, :, C:].index_select(0, rows))
        else:
            xv.index_copy_(0, dst, (dvo[0].index_select(0, safe) @ hct).index_select(0, rows))
            xo.index_copy_(0, dst, (dvo[1].index_select(0, safe) @ hct).index_select(0, rows))
    dh0 = cur if cur is not None else torch.zeros(2, N, H, K, V, dtype=torch.float32, device=dev)
    if tail:
        (xv, xo), rr, dgp_tail = tail_outs
        return dvo, xv, xo, rr, dh0, dg_of(dgp_tail)
    return dvo, xv, xo, rr, dh0, dgp.sum((2, 4))


def _row_scalars(r):
    """r [NC, H, 6, C] -> six fp32 [NC, H, C, 1] columns (a-, b-, s a, s b, gamma, rho)."""
    rf = r.float()
    return tuple(rf[:, :, i, :, None] for i in range(NR))


def scan_pqk_fwd_torch(u, p, q, kw, a, aqk, r, g, h0, chunk_offsets, *, vt=None, store_states=False, v_in=False):
    """The forward kernel's math in torch, with its rounding (-W and the row-scaled Vt tiles rounded for 16-bit;
    v_in: u holds V and Vt = A V + A (-W), -W rounded; MDN_SCAN_V_DOTS=1: Vt = A (V - W), V - W rounded)."""
    dots = scan_v_dots() if v_in else 0
    bf = u.dtype != torch.float32
    gf = g.float()
    am, bm, sa, sb, ga, rho = _row_scalars(r)

    def step(c, S, M, o, vt, recompute):
        if recompute:
            b_vt = vt[c]
        else:
            nw = bm[c] * _mm(p[c], M, bf) - am[c] * _mm(p[c], S, bf)  # -W
            if v_in and dots == 1:
                b_vt = _mm(a[c], (u[c].float() + nw).to(vt.dtype), bf).to(vt.dtype)
            elif v_in:
                b_vt = (_mm(a[c], u[c], bf) + _mm(a[c], nw.to(vt.dtype), bf)).to(vt.dtype)
            else:
                b_vt = (u[c].float() + _mm(a[c], nw.to(vt.dtype), bf)).to(vt.dtype)
            vt[c] = b_vt
            o[c] = sa[c] * _mm(q[c], S, bf) - sb[c] * _mm(q[c], M, bf) + _mm(aqk[c], b_vt, bf)
        vtf = b_vt.float()
        gvt, nrvt = (ga[c] * vtf).to(vt.dtype), (-rho[c] * vtf).to(vt.dtype)
        g0, g1, g2 = (gf[c, :, i, None, None] for i in range(3))
        return g0 * S - g1 * M + _mm(_t(kw[c]), gvt, bf), g2 * M + _mm(_t(kw[c]), nrvt, bf)

    return torch_scan_fwd(u, p.shape[-1], h0, chunk_offsets, vt, store_states, step)


def scan_pqk_bwd_torch(p, q, kw, a, aqk, r, g, do, dht, hc, chunk_offsets, *, dx=None):
    """The reverse kernel's math in torch, with its rounding (dVt and the row-scaled [C, V] tiles rounded); dx:
    filled with X = A^T dVt (MDN_SCAN_V=v)."""
    bf = p.dtype != torch.float32
    gf = g.float()
    am, bm, sa, sb, ga, rho = _row_scalars(r)

    def step(c, dS, dM, dvo):
        b_dvt = (ga[c] * _mm(kw[c], dS, bf) - rho[c] * _mm(kw[c], dM, bf)
                 + _mm(_t(aqk[c]), do[c], bf)).to(dvo.dtype)
        dvo[0, c] = b_dvt
        dvo[1, c] = do[c]
        x = _mm(_t(a[c]), b_dvt, bf)
        if dx is not None:
            dx[c] = x
        dof = do[c].float()
        nax, bx = (-am[c] * x).to(dvo.dtype), (bm[c] * x).to(dvo.dtype)
        sado, nsbdo = (sa[c] * dof).to(dvo.dtype), (-sb[c] * dof).to(dvo.dtype)
        g0, g1, g2 = (gf[c, :, i, None, None] for i in range(3))
        return (g0 * dS + _mm(_t(q[c]), sado, bf) + _mm(_t(p[c]), nax, bf),
                g2 * dM - g1 * dS + _mm(_t(q[c]), nsbdo, bf) + _mm(_t(p[c]), bx, bf))

    return torch_scan_bwd(p, do, dht, hc, chunk_offsets, step)


def scan_pqk_fwd_impl(u, p, q, kw, a, aqk, r, g, h0, chunk_offsets, **kw_):
    scan_load()  # reject a bad MDN_SCAN_LOAD on every path
    fwd_o()  # and MDN_FWD_O
    if _use_triton(u):
        return scan_pqk_fwd_triton(u, p, q, kw, a, aqk, r, g, h0, chunk_offsets, **kw_)
    return scan_pqk_fwd_torch(u, p, q, kw, a, aqk, r, g, h0, chunk_offsets, **kw_)


def _check_bwd_knobs() -> None:
    """Reject a bad MDN_SCAN_LOAD, MDN_BWD_GEMM, MDN_BWD_DG, MDN_BWD_SEGMENTS or MDN_DHC on every path."""
    scan_load()
    bwd_gemm()
    bwd_dg()
    bwd_segments()
    dhc_format()


def scan_pqk_bwd_impl(p, q, kw, a, aqk, r, g, do, dht, hc, chunk_offsets, dx=None, stream_chunks=None):
    _check_bwd_knobs()
    if _use_triton(p):
        return scan_pqk_bwd_triton(p, q, kw, a, aqk, r, g, do, dht, hc, chunk_offsets, dx=dx,
                                   stream_chunks=stream_chunks)
    return scan_pqk_bwd_torch(p, q, kw, a, aqk, r, g, do, dht, hc, chunk_offsets, dx=dx)


# ---------------------------------------------------------------------------------------------------------------
# custom ops
# ---------------------------------------------------------------------------------------------------------------

def _v_in_kw(v_in: bool) -> dict:
    """{"v_in": True} for the MDN_SCAN_V=v forward, else nothing (so the u0 calls keep their earlier keywords)."""
    return {"v_in": True} if v_in else {}


@torch.library.custom_op("mdn::scan_pqk_fwd", mutates_args=())
def scan_pqk_fwd(
    u: torch.Tensor, p: torch.Tensor, q: torch.Tensor, kw: torch.Tensor, a: torch.Tensor, aqk: torch.Tensor,
    r: torch.Tensor, g: torch.Tensor, h0: Optional[torch.Tensor], chunk_offsets: torch.Tensor, dense: bool = True,
    v_in: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Returns (o [NC, H, C, V], vt [NC, H, C, V], ht [2, N, H, K, V] fp32). dense: every sequence has the same
    number of chunks (no cu_seqlens); only the backward's compile policy reads it (_chain). v_in (MDN_SCAN_V=v): u
    holds V, not U0 = A V."""
    o, vt, ht, _ = scan_pqk_fwd_impl(u, p, q, kw, a, aqk, r, g, h0, chunk_offsets, **_v_in_kw(v_in))
    return o, vt, ht


@scan_pqk_fwd.register_fake
def _(u, p, q, kw, a, aqk, r, g, h0, chunk_offsets, dense=True, v_in=False):
    NC, H, C, V = u.shape
    K = p.shape[-1]
    N = chunk_offsets.shape[0] - 1
    return _o_like(u), u.new_empty(NC, H, C, V), u.new_empty(2, N, H, K, V, dtype=torch.float32)


def _chain_rule(xv, xo, rr, p, q, kw, a, r, dvt=None, u=None):
    """Gradients of P, Q, K_w, A and r from the six-form GEMM results (and with dvt, u (MDN_SCAN_V=v: Vt = A (V -
    W)) A's share of A V: dA += dVt V^T).

    xv [NC, H, C, 2K]  = dVt [S; M]^T = [-dY, dZ];   xo [NC, H, C, 2K] = dO [S; M]^T = [dQa, -dQb];
    rr [NC, H, C, 2K]  = Vt [dS'; dM']^T     = [dKs, -dKm]   (fp32), or for 16-bit inputs [NC, H, C, 4K], the hi
                         and the lo parts' products (scan_bwd_gemms(sum_parts=False)), summed here in fp32
    with Y = A D(a-) P, Z = A D(b-) P, Qa = D(s a) Q, Qb = D(s b) Q, Ks = D(gamma) K_w, Km = D(rho) K_w:
    dA = tril(dY (D(a-)P)^T + dZ (D(b-)P)^T, -1), dP = D(a-) A^T dY + D(b-) A^T dZ, da- = rowsum(P * A^T dY), ...
    (A is unit lower triangular: only its strictly lower part depends on anything).
    """
    K = p.shape[-1]
    if rr.shape[-1] == 4 * K:
        rr = rr[..., :2 * K].float() + rr[..., 2 * K:].float()
    t = lambda z: z.transpose(-1, -2)  # noqa: E731
    am, bm, sa, sb, ga, rho = _row_scalars(r)
    pf = p.float()
    pab = torch.cat([am * pf, bm * pf], -1).to(p.dtype)     # [C, 2K] = [D(a-)P, D(b-)P]
    # dA = dY (D(a-)P)^T + dZ (D(b-)P)^T = [-dY, dZ] [-D(a-)P, D(b-)P]^T
    pab_signed = torch.cat([-pab[..., :K], pab[..., K:]], -1)
    da = xv @ t(pab_signed)                                 # [C, C]
    if dvt is not None:
        da = da.float() + (dvt @ t(u)).float()
    da = da.tril(-1)
    gx = (t(a) @ xv).float()                                # [C, 2K] = [-A^T dY, A^T dZ]
    g1, g2 = gx[..., :K], gx[..., K:]
    dp = bm * g2 - am * g1
    dam, dbm = -(pf * g1).sum(-1), (pf * g2).sum(-1)
    xo = xo.float()                                         # [C, 2K] = [dQa, -dQb]
    qf = q.float()
    dq = sa * xo[..., :K] - sb * xo[..., K:]
    dsa, dsb = (qf * xo[..., :K]).sum(-1), -(qf * xo[..., K:]).sum(-1)
    kwf = kw.float()
    r1, r2 = rr[..., :K], rr[..., K:]                       # dKs, -dKm
    dkw = ga * r1 - rho * r2
    dga, drho = (kwf * r1).sum(-1), -(kwf * r2).sum(-1)
    dr = torch.stack([dam, dbm, dsa, dsb, dga, drho], 2)    # [NC, H, 6, C]
    return dp.to(p.dtype), dq.to(q.dtype), dkw.to(kw.dtype), da.to(a.dtype), dr.to(r.dtype)


_compiled_chain: dict = {}  # dense (bool) -> the torch.compile'd _chain_rule
_chain_compile_failed = False
_CHAIN_RECOMPILE_LIMIT = 64  # static graphs of the dense chain rule per process (as chunk.py's intra part)


def _chain(xv, xo, rr, p, q, kw, a, r, dense: bool = True, dvt=None, u=None):
    """_chain_rule through torch.compile where the intra part is compiled (chunk.py's MDN_CHUNK_COMPILE policy: on
    CUDA by default, =1 anywhere, =0 never; backend MDN_CHUNK_COMPILE_BACKEND), so that its row scalings and row
    sums over [NC, H, C, K] fuse into a few kernels instead of ~20 eager passes. Dense batches get static shapes,
    one graph per shape, as the intra part does: with automatic dynamic shapes a second shape in one process (the
    accuracy check before the timings in scripts/bench_ops.py, a sweep over shapes in one worker) made the chain
    symbolic in NC, H, C and K, and that harness timed the op 0.7-1.0 ms slower than bench_op.py, which times one
    shape per process (docs/BENCHMARKS.md §1.14; not re-timed since). Varlen batches change NC with every batch:
    automatic dynamic there. A compiler error warns once and runs eager from then on."""
    global _chain_compile_failed
    env = os.environ.get("MDN_CHUNK_COMPILE", "")
    want = env == "1" if env in ("0", "1") else (p.is_cuda and os.environ.get("TRITON_INTERPRET", "0") != "1")
    if not want or _chain_compile_failed:
        return _chain_rule(xv, xo, rr, p, q, kw, a, r, dvt, u)
    try:
        fn = _compiled_chain.get(bool(dense))
        if fn is None:
            backend = os.environ.get("MDN_CHUNK_COMPILE_BACKEND", "inductor")
            fn = torch.compile(_chain_rule_dense if dense else _chain_rule_varlen, dynamic=False if dense else None,
                               backend=backend, **({"mode": compile_mode()} if backend == "inductor" else {}))
            _compiled_chain[bool(dense)] = fn
        if dense:
            with torch._dynamo.config.patch(recompile_limit=max(_CHAIN_RECOMPILE_LIMIT,
                                                                torch._dynamo.config.recompile_limit)):
                return fn(xv, xo, rr, p, q, kw, a, r, dvt, u)
        return fn(xv, xo, rr, p, q, kw, a, r, dvt, u)
    except torch.cuda.OutOfMemoryError:
        raise
    except Exception as e:  # noqa: BLE001  (any compiler failure: fall back, never fail the op)
        _chain_compile_failed = True
        warnings.warn(f"mdn pqk scan backward: torch.compile of the chain rule failed ({type(e).__name__}: "
                      f"{str(e)[:300]}); using eager torch from now on", RuntimeWarning, stacklevel=2)
        return _chain_rule(xv, xo, rr, p, q, kw, a, r, dvt, u)


def _chain_rule_dense(*args):
    """_chain_rule for dense batches: its own code object, so that its static compile keeps its own cache and
    recompile state apart from the varlen one's."""
    return _chain_rule(*args)


def _chain_rule_varlen(*args):
    return _chain_rule(*args)


def _bwd_from_products(vt, dvo, xv, xo, rr, dg, dh0, p, q, kw, a, r, g, h0, dense, dx=None, u=None, fused=None):
    """The pqk backward's gradients from the reverse scan's dVt / dO (dvo, either layout) and the products against
    the states (xv, xo, rr, dg) of the segmented or the tail path: du = dVt (MDN_SCAN_V=v: du = dx = A^T dVt, and
    the chain rule adds dVt u^T to dA), daqk = tril(dO Vt^T), the chain rule, dh0 in h0's dtype (zeros without h0).
    fused: (dq, dkw, drp) of the tail with the fused epilogue (xo, rr None; chunk_chain_bwd.tail_fusion_applies)."""
    du = dvo[0] if dx is None else dx
    dob = dvo[1][:, :, vt.shape[2]:] if isinstance(dvo, tuple) else dvo[1]
    dh0 = dh0.to(h0.dtype) if h0 is not None else torch.zeros_like(dh0)
    if fused is not None or chain_kernel_applies(p, rr):
        # MDN_BWD_CHAIN: the chain rule and daqk in one kernel per (chunk, head) (chunk_chain_bwd.py)
        dp, dq, dkw, da, dr, daqk = chain_rule_triton(xv, xo, rr, p, q, kw, a, r, vt, dob,
                                                      *((dvo[0], u) if dx is not None else (None, None)),
                                                      fused=fused)
    else:
        daqk = (dob @ _t(vt)).tril()
        dp, dq, dkw, da, dr = _chain(xv, xo, rr, p, q, kw, a, r, dense, *((dvo[0], u) if dx is not None else ()))
    return du, dp, dq, dkw, da, daqk, dr, dg.to(g.dtype), dh0


def _scan_pqk_bwd_body(p, q, kw, a, aqk, r, g, h0, chunk_offsets, vt, do, dht, hc, dense=True, u=None):
    """The backward of the pqk scan; hc: the chunk-start states saved by the forward (scan_pqk_fwd_saving), or None
    to rebuild them from the saved Vt (the state recompute). u: the forward's V when it ran with MDN_SCAN_V=v (then
    du = A^T dVt from the reverse scan, and dA gets dVt V^T), else None."""
    do = do.to(vt.dtype)
    # dx = V's gradient, token-major like the forward's u (chunk.py::_v_chunks), so that dV is a view of it
    dx = _o_like(vt) if u is not None else None
    # dense batches: every sequence has NC / N chunks (the reverse scan may then run persistent)
    n_dense = vt.shape[0] // max(chunk_offsets.shape[0] - 1, 1) if dense else None
    if hc is None and bwd_dg() == "rec" and _use_triton(p):
        # MDN_BWD_DG=rec: the reverse scan first (it needs no states without the dg row sums), then the state
        # recompute, which also computes the row sums from its registers and the end-state gradients dhc
        dvo, dhc, dh0, _ = scan_pqk_bwd_impl(p, q, kw, a, aqk, r, g, do, dht, None, chunk_offsets, dx=dx,
                                             stream_chunks=n_dense)
        _, _, _, hc, dg = scan_pqk_fwd_triton(vt, p, q, kw, a, aqk, r, g, h0, chunk_offsets, vt=vt,
                                              store_states=True, dg_from=dhc)
    else:
        segments = bwd_segments()
        if segments > 1 and _use_triton(p):
            # MDN_BWD_SEGMENTS: the scans and the GEMMs against the states in time segments (segment-sized hc, dhc)
            dvo, xv, xo, rr, dh0, dg = scan_pqk_bwd_segmented(
                p, q, kw, a, aqk, r, g, do, dht.float().contiguous() if dht is not None else None, hc,
                chunk_offsets, vt, segments, h0=h0, dx=dx)
            return _bwd_from_products(vt, dvo, xv, xo, rr, dg, dh0, p, q, kw, a, r, g, h0, dense, dx, u)
        if hc is None:
            # chunk-start states S, M: [NC, H, 2, K, V] (operands' dtype); vt stands in for u (shape/dtype only)
            _, _, _, hc = scan_pqk_fwd_impl(vt, p, q, kw, a, aqk, r, g, h0, chunk_offsets, vt=vt, store_states=True)
        if bwd_dg() == "tail" and _use_triton(p):
            # MDN_BWD_DG=tail: the reverse scan without the states; one fused kernel then does the GEMMs against
            # the states and the <dS', S> sums (chunk_state_gemms.py)
            _check_bwd_knobs()
            # MDN_DHC=q8: dS', dM' as bf16 hi + int8 lo planes instead of hi + lo bf16 (3 bytes instead of 4)
            q8 = dhc_format() == "q8" and vt.dtype == torch.bfloat16
            dvo, dhc, dh0, _ = scan_pqk_bwd_triton(p, q, kw, a, aqk, r, g, do, dht, None, chunk_offsets, dhc_q8=q8,
                                                   dx=dx, stream_chunks=n_dense)
            if tail_fusion_applies(p, tail_split()):
                # the tail computes dQ and dK_w from its xo, rr tiles for the chain kernel (chunk_chain_bwd.py)
                xv, dg, dq_, dkw_, drp = state_gemms_fused_qk_triton(vt, dvo, hc, dhc, q, kw, r)
                return _bwd_from_products(vt, dvo, xv, None, None, dg, dh0, p, q, kw, a, r, g, h0, dense, dx, u,
                                          fused=(dq_, dkw_, drp))
            (xv, xo), rr, dg = state_gemms_triton(vt, dvo, hc, dhc)
            return _bwd_from_products(vt, dvo, xv, xo, rr, dg, dh0, p, q, kw, a, r, g, h0, dense, dx, u)
        # dvo [2, NC, H, C, V] = (dVt, dO); dhc [NC, H, 2 or 4, K, V] = end-state grads (hi + lo for 16-bit);
        # dg [NC, H, 3]
        dvo, dhc, dh0, dg = scan_pqk_bwd_impl(p, q, kw, a, aqk, r, g, do, dht, hc, chunk_offsets, dx=dx,
                                              stream_chunks=n_dense)
    (xv, xo), rr, du, daqk, dh0 = scan_bwd_gemms(vt, do, dvo, hc, dhc, dh0, h0, sum_parts=False)
    if dx is not None:
        dp, dq, dkw, da, dr = _chain(xv, xo, rr, p, q, kw, a, r, dense, du, u)
        du = dx
    else:
        dp, dq, dkw, da, dr = _chain(xv, xo, rr, p, q, kw, a, r, dense)
    return du, dp, dq, dkw, da, daqk, dr, dg.to(g.dtype), dh0


def _scan_pqk_bwd_fake(p, q, kw, a, aqk, r, g, h0, chunk_offsets, vt, u=None):
    N = chunk_offsets.shape[0] - 1
    NC, H, C, V = vt.shape
    K = p.shape[-1]
    dh0_dtype = h0.dtype if h0 is not None else torch.float32
    # du: with u (MDN_SCAN_V=v) the reverse scan's token-major dx, as _scan_pqk_bwd_body allocates it
    return (_o_like(vt) if u is not None else vt.new_empty(vt.shape), p.new_empty(p.shape), q.new_empty(q.shape), kw.new_empty(kw.shape),
            a.new_empty(a.shape), aqk.new_empty(aqk.shape), r.new_empty(r.shape), g.new_empty(g.shape),
            vt.new_empty(2, N, H, K, V, dtype=dh0_dtype))


@torch.library.custom_op("mdn::scan_pqk_bwd", mutates_args=())
def scan_pqk_bwd(
    p: torch.Tensor, q: torch.Tensor, kw: torch.Tensor, a: torch.Tensor, aqk: torch.Tensor, r: torch.Tensor,
    g: torch.Tensor, h0: Optional[torch.Tensor], chunk_offsets: torch.Tensor,
    vt: torch.Tensor, do: torch.Tensor, dht: Optional[torch.Tensor], dense: bool = True,
    u: Optional[torch.Tensor] = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
           torch.Tensor, torch.Tensor]:
    """Returns the grads of (u, p, q, kw, a, aqk, r, g, h0); dh0 is fp32 [2, N, H, K, V]. u: the forward's V
    when it ran with v_in (MDN_SCAN_V=v), else None."""
    return _scan_pqk_bwd_body(p, q, kw, a, aqk, r, g, h0, chunk_offsets, vt, do, dht, None, dense, u)


@scan_pqk_bwd.register_fake
def _(p, q, kw, a, aqk, r, g, h0, chunk_offsets, vt, do, dht, dense=True, u=None):
    return _scan_pqk_bwd_fake(p, q, kw, a, aqk, r, g, h0, chunk_offsets, vt, u)


@torch.library.custom_op("mdn::scan_pqk_bwd_saved", mutates_args=())
def scan_pqk_bwd_saved(
    p: torch.Tensor, q: torch.Tensor, kw: torch.Tensor, a: torch.Tensor, aqk: torch.Tensor, r: torch.Tensor,
    g: torch.Tensor, h0: Optional[torch.Tensor], chunk_offsets: torch.Tensor,
    vt: torch.Tensor, do: torch.Tensor, dht: Optional[torch.Tensor], hc: torch.Tensor, dense: bool = True,
    u: Optional[torch.Tensor] = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
           torch.Tensor, torch.Tensor]:
    """scan_pqk_bwd with the chunk-start states hc [NC, H, 2, K, V] that the forward stored: no state recompute."""
    return _scan_pqk_bwd_body(p, q, kw, a, aqk, r, g, h0, chunk_offsets, vt, do, dht, hc, dense, u)


@scan_pqk_bwd_saved.register_fake
def _(p, q, kw, a, aqk, r, g, h0, chunk_offsets, vt, do, dht, hc, dense=True, u=None):
    return _scan_pqk_bwd_fake(p, q, kw, a, aqk, r, g, h0, chunk_offsets, vt, u)


def _scan_pqk_setup_context(ctx, inputs, output):
    u, p, q, kw, a, aqk, r, g, h0, chunk_offsets, dense, v_in = inputs
    _, vt, _ = output
    ctx.has_h0, ctx.dense = h0 is not None, dense
    # unused outputs (vt always, ht unless the caller uses it) come back as None, not as zero-filled tensors
    ctx.set_materialize_grads(False)
    ctx.save_for_backward(p, q, kw, a, aqk, r, g, h0, chunk_offsets, vt, u if v_in else None)


def _scan_pqk_backward(ctx, do, dvt_unused, dht):
    p, q, kw, a, aqk, r, g, h0, chunk_offsets, vt, u = ctx.saved_tensors
    if do is None:
        do = torch.zeros_like(vt)
    grads = scan_pqk_bwd(p, q, kw, a, aqk, r, g, h0, chunk_offsets, vt, _unit_last(do),
                         dht.contiguous() if dht is not None else None, ctx.dense, u)
    du, dp, dq, dkw, da, daqk, dr, dg, dh0 = grads
    return du, dp, dq, dkw, da, daqk, dr, dg, (dh0 if ctx.has_h0 else None), None, None, None


scan_pqk_fwd.register_autograd(_scan_pqk_backward, setup_context=_scan_pqk_setup_context)


# MDN_SAVE_STATES=1: the forward also stores every chunk's start states (hc [NC, H, 2, K, V], the operands' dtype)
# and the backward reads them instead of running the state recompute (a forward scan without the O and Vt work):
# one kernel less per backward for NC * H * 2 * K * V elements held from the forward to the backward (bf16, 32768
# tokens at H6 K256 V512: 1.6 GB per layer call).
@torch.library.custom_op("mdn::scan_pqk_fwd_saving", mutates_args=())
def scan_pqk_fwd_saving(
    u: torch.Tensor, p: torch.Tensor, q: torch.Tensor, kw: torch.Tensor, a: torch.Tensor, aqk: torch.Tensor,
    r: torch.Tensor, g: torch.Tensor, h0: Optional[torch.Tensor], chunk_offsets: torch.Tensor, dense: bool = True,
    v_in: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """scan_pqk_fwd that also returns the chunk-start states: (o, vt, ht, hc [NC, H, 2, K, V])."""
    return scan_pqk_fwd_impl(u, p, q, kw, a, aqk, r, g, h0, chunk_offsets, store_states=True, **_v_in_kw(v_in))


@scan_pqk_fwd_saving.register_fake
def _(u, p, q, kw, a, aqk, r, g, h0, chunk_offsets, dense=True, v_in=False):
    NC, H, C, V = u.shape
    K = p.shape[-1]
    N = chunk_offsets.shape[0] - 1
    return (_o_like(u), u.new_empty(NC, H, C, V), u.new_empty(2, N, H, K, V, dtype=torch.float32),
            u.new_empty(NC, H, 2, K, V))


def _scan_pqk_saving_setup_context(ctx, inputs, output):
    u, p, q, kw, a, aqk, r, g, h0, chunk_offsets, dense, v_in = inputs
    _, vt, _, hc = output
    ctx.has_h0, ctx.dense = h0 is not None, dense
    # unused outputs come back as None: hc's zero-filled gradient was a 1.6 GB fill (0.48 ms at H6 K256 V512, 32768
    # tokens, H200) per backward
    ctx.set_materialize_grads(False)
    ctx.save_for_backward(p, q, kw, a, aqk, r, g, h0, chunk_offsets, vt, hc, u if v_in else None)


def _scan_pqk_saving_backward(ctx, do, dvt_unused, dht, dhc_unused):
    p, q, kw, a, aqk, r, g, h0, chunk_offsets, vt, hc, u = ctx.saved_tensors
    if do is None:
        do = torch.zeros_like(vt)
    grads = scan_pqk_bwd_saved(p, q, kw, a, aqk, r, g, h0, chunk_offsets, vt, _unit_last(do),
                               dht.contiguous() if dht is not None else None, hc, ctx.dense, u)
    du, dp, dq, dkw, da, daqk, dr, dg, dh0 = grads
    return du, dp, dq, dkw, da, daqk, dr, dg, (dh0 if ctx.has_h0 else None), None, None, None


scan_pqk_fwd_saving.register_autograd(_scan_pqk_saving_backward, setup_context=_scan_pqk_saving_setup_context)


def save_states() -> bool:
    """MDN_SAVE_STATES: "0" (default: the backward recomputes the chunk-start states) or "1" (the forward stores
    them, see scan_pqk_fwd_saving). Any other value is a ValueError."""
    return env_choice("MDN_SAVE_STATES", ("0", "1"), "0") == "1"


def chunk_scan_pqk(u, p, q, kw, a, aqk, r, g, h0, chunk_offsets, dense: bool = True, v_in: bool = False):
    """Differentiable inter-chunk scan, pqk form. Returns (o [NC, H, C, V], ht [2, N, H, K, V] fp32).
    With MDN_SAVE_STATES=1 or MDN_FWD_O=kernel and a gradient required, the forward stores the chunk-start states
    for the backward.
    dense: no cu_seqlens (the backward compiles its chain rule with static shapes then, _chain).
    v_in (MDN_SCAN_V=v, scan_v): u holds the values V (any strides but a unit last one; chunk.py::_v_chunks)
    instead of U0 = A V."""
    if (save_states() or fwd_o() == "kernel") and torch.is_grad_enabled() and any(
            t.requires_grad for t in (u, p, q, kw, a, aqk, r, g, h0) if t is not None):
        o, _, ht, _ = scan_pqk_fwd_saving(u, p, q, kw, a, aqk, r, g, h0, chunk_offsets, dense, v_in)
        return o, ht
    o, _, ht = scan_pqk_fwd(u, p, q, kw, a, aqk, r, g, h0, chunk_offsets, dense, v_in)
    return o, ht
