"""The backward's reductions over V against the chunk states, fused into one Triton kernel (MDN_BWD_DG=tail).

After the reverse scan, per chunk and head (README §4), with S, M the chunk-start states (hc) and dS', dM' the
chunk-end state gradients (dhc, hi + lo bf16 planes for 16-bit inputs):

    xv = dVt [S; M]^T,   xo = dO [S; M]^T,   rr = Vt [dS'; dM']^T            # [C, 2K] each
    dg = (<dS', S>, -<dS', M>, <dM', M>)                                      # the gate gradients of gS, gSM, gM

scan_bwd_gemms does the first three as cuBLAS GEMMs and the reverse scan computes dg, loading the states of every
chunk on its sequential critical path (1.7 of its 5.1 ms at H6 K256 V512 on an H200, docs/BENCHMARKS.md §1.13).
Here one program per (chunk, head, K-block) walks V once: it loads each [BK, BV] tile of S, M, dS', dM' a single
time, feeds the six products (hi and lo of dS', dM' into one fp32 accumulator, so rr keeps the lo parts' bits that
a bf16 GEMM output rounded away) and takes the three inner products from the same tiles. The states are read
once instead of three times, and the reverse scan runs without them.
"""
from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from . import _triton_compat  # noqa: F401  (interpreter + NumPy >= 2.4)
from .chunk_scan import _cast, _dot_acc, _dot_mode, _empty, _grad_state_q8, _launch_pipelined
from .knobs import env_choice


@triton.jit
def _tile(p, m, DOT_MODE: tl.constexpr):
    """A masked tile in its storage dtype (16-bit inputs feed the tensor cores as they are)."""
    x = tl.load(p, mask=m, other=0.)
    if DOT_MODE == 0:
        x = x.to(tl.float32)
    return x


# s_dob (C V or 2 C V) is specialised as Triton does by default (a multiple of 16): with do_not_specialize the
# compiler could not tell that dO's tiles are 16-byte aligned and loaded them one bf16 at a time outside the cp.async
# pipeline, 23 % of the kernel's stall samples (Nsight Compute, docs/BENCHMARKS.md §1.26)
@triton.jit(do_not_specialize=["H"])
def momentum_delta_rule_bwd_kernel_state_gemms(
    vt, dvt, dob, hc, dhc, dlo, xv, xo, rr, dgp, s_dob, idx, q, kw, rsc, dq, dkw, drp, H,
    K: tl.constexpr, V: tl.constexpr, C: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, NK: tl.constexpr,
    P: tl.constexpr, DOT_MODE: tl.constexpr, X: tl.constexpr = True, R: tl.constexpr = True,
    INDEXED: tl.constexpr = False, HC_GLOBAL: tl.constexpr = True, LO_Q8: tl.constexpr = False,
    FUSE_QK: tl.constexpr = False,
):
    """Grid (NK, NC * H). vt, dvt [NC * H, C, V] contiguous; dob the same with s_dob elements between (chunk, head)
    blocks (C V for the planes layout, 2 C V for the stacked one); hc [NC * H, 2, K, V]; dhc [NC * H, P, K, V]
    (P = 2: fp32 [dS', dM']; P = 4: bf16 [hi dS', hi dM', lo dS', lo dM']); xv, xo [NC * H, C, 2K] in the inputs'
    dtype; rr [NC * H, C, 2K] fp32; dgp [NC * H, NK, 3] fp32 (partial sums over this K-block).
    X: compute xv, xo (loads dVt, dO, S, M); R: compute rr and dgp (loads Vt, S, M, dS', dM'). Both (the default)
    share the S, M tiles; one part per launch halves the accumulators (MDN_TAIL_SPLIT).
    INDEXED (MDN_BWD_SEGMENTS): grid (NK, rows * H) over a segment's rows; idx [rows] (int64) holds each row's
    chunk id, or -1 for a row without a chunk (nothing stored). dhc (and hc unless HC_GLOBAL) are segment-sized,
    [rows * H, ...]; everything else is addressed by chunk id.
    LO_Q8 (MDN_DHC=q8, bf16, not INDEXED): dhc [NC * H, 2, K, V] holds the hi planes and dlo (same shape, int8)
    the lo parts (chunk_scan._store_grad_state_q8); each tile is rebuilt in fp32 and its lo part rounded to bf16
    here, so the products are those of the split format.
    FUSE_QK (X and R, not INDEXED; chunk_chain_bwd.py): instead of xo and rr, store what the chain rule makes of
    them, dQ = D(s a) dO S^T - D(s b) dO M^T and dK_w = D(gamma) Vt dS'^T - D(rho) Vt dM'^T ([NC * H, C, K] like q,
    kw), and this K-block's share of the row sums d(s a), d(s b), dgamma, drho into drp [NC * H, NK, 4, C] fp32;
    rsc [NC * H, 6, C] fp32 holds the row scalars. Saves writing and re-reading xo and rr (fp32)."""
    i_k, i_p = tl.program_id(0), tl.program_id(1).to(tl.int64)
    if INDEXED:
        i_c = tl.load(idx + i_p // H)
        valid = i_c >= 0
        i_g = tl.maximum(i_c, 0) * H + i_p % H                        # global (chunk, head)
    else:
        valid = i_p >= 0
        i_g = i_p
    o_c = tl.arange(0, C)
    o_k = i_k * BK + tl.arange(0, BK)
    m_k = o_k < K
    vt += i_g * C * V
    dvt += i_g * C * V
    dob += i_g * s_dob
    if HC_GLOBAL:
        hc += i_g * 2 * K * V
    else:
        hc += i_p * 2 * K * V
    dhc += i_p * P * K * V
    dlo += i_p * 2 * K * V

    b_xs = tl.zeros([C, BK], dtype=tl.float32)  # dVt S^T
    b_xm = tl.zeros([C, BK], dtype=tl.float32)  # dVt M^T
    b_os = tl.zeros([C, BK], dtype=tl.float32)  # dO S^T
    b_om = tl.zeros([C, BK], dtype=tl.float32)  # dO M^T
    b_rs = tl.zeros([C, BK], dtype=tl.float32)  # Vt dS'^T
    b_rm = tl.zeros([C, BK], dtype=tl.float32)  # Vt dM'^T
    d_ss = tl.zeros([BK], dtype=tl.float32)     # row sums of dS' * S
    d_sm = tl.zeros([BK], dtype=tl.float32)     # dS' * M
    d_mm = tl.zeros([BK], dtype=tl.float32)     # dM' * M
    for i_v in range(0, tl.cdiv(V, BV)):
        o_v = i_v * BV + tl.arange(0, BV)
        m_v = o_v < V
        p_cv = o_c[:, None] * V + o_v[None, :]                        # [C, BV]
        p_kv = o_k[:, None] * V + o_v[None, :]                        # [BK, BV]
        m_kv = m_k[:, None] & m_v[None, :]
        b_s = _tile(hc + p_kv, m_kv, DOT_MODE)                        # [BK, BV]
        b_m = _tile(hc + K * V + p_kv, m_kv, DOT_MODE)
        if X:
            b_dvt = _tile(dvt + p_cv, m_v[None, :], DOT_MODE)         # [C, BV]
            b_do = _tile(dob + p_cv, m_v[None, :], DOT_MODE)
            b_xs = _dot_acc(b_dvt, tl.trans(b_s), b_xs, DOT_MODE)
            b_xm = _dot_acc(b_dvt, tl.trans(b_m), b_xm, DOT_MODE)
            b_os = _dot_acc(b_do, tl.trans(b_s), b_os, DOT_MODE)
            b_om = _dot_acc(b_do, tl.trans(b_m), b_om, DOT_MODE)
        if R:
            b_vt = _tile(vt + p_cv, m_v[None, :], DOT_MODE)           # [C, BV]
        if R and LO_Q8:
            b_ds = _tile(dhc + p_kv, m_kv, DOT_MODE)                  # hi (bf16)
            b_dm = _tile(dhc + K * V + p_kv, m_kv, DOT_MODE)
            f_ds = _grad_state_q8(b_ds, tl.load(dlo + p_kv, mask=m_kv, other=0))
            f_dm = _grad_state_q8(b_dm, tl.load(dlo + K * V + p_kv, mask=m_kv, other=0))
            b_rs = _dot_acc(b_vt, tl.trans(b_ds), b_rs, DOT_MODE)
            b_rm = _dot_acc(b_vt, tl.trans(b_dm), b_rm, DOT_MODE)
            b_rs = _dot_acc(b_vt, tl.trans(_cast(f_ds - b_ds.to(tl.float32), vt.dtype.element_ty, DOT_MODE)), b_rs,
                            DOT_MODE)
            b_rm = _dot_acc(b_vt, tl.trans(_cast(f_dm - b_dm.to(tl.float32), vt.dtype.element_ty, DOT_MODE)), b_rm,
                            DOT_MODE)
        elif R:
            b_ds = _tile(dhc + p_kv, m_kv, DOT_MODE)
            b_dm = _tile(dhc + K * V + p_kv, m_kv, DOT_MODE)
            b_rs = _dot_acc(b_vt, tl.trans(b_ds), b_rs, DOT_MODE)
            b_rm = _dot_acc(b_vt, tl.trans(b_dm), b_rm, DOT_MODE)
            f_ds = b_ds.to(tl.float32)
            f_dm = b_dm.to(tl.float32)
            if P == 4:
                b_dsl = _tile(dhc + 2 * K * V + p_kv, m_kv, DOT_MODE)
                b_dml = _tile(dhc + 3 * K * V + p_kv, m_kv, DOT_MODE)
                b_rs = _dot_acc(b_vt, tl.trans(b_dsl), b_rs, DOT_MODE)
                b_rm = _dot_acc(b_vt, tl.trans(b_dml), b_rm, DOT_MODE)
                f_ds += b_dsl.to(tl.float32)
                f_dm += b_dml.to(tl.float32)
        if R:
            f_s = b_s.to(tl.float32)
            f_m = b_m.to(tl.float32)
            d_ss += tl.sum(f_ds * f_s, 1)
            d_sm += tl.sum(f_ds * f_m, 1)
            d_mm += tl.sum(f_dm * f_m, 1)

    p_ck = i_g * C * 2 * K + o_c[:, None] * 2 * K + o_k[None, :]     # [C, BK] in [C, 2K]
    m_ck = m_k[None, :] & valid
    if X:
        tl.store(xv + p_ck, b_xs.to(xv.dtype.element_ty), mask=m_ck)
        tl.store(xv + K + p_ck, b_xm.to(xv.dtype.element_ty), mask=m_ck)
    if FUSE_QK:
        p_r = rsc + i_g * 6 * C + o_c
        p_qk = i_g * C * K + o_c[:, None] * K + o_k[None, :]          # [C, BK] in [C, K]
        f_q = tl.load(q + p_qk, mask=m_ck, other=0.).to(tl.float32)
        f_kw = tl.load(kw + p_qk, mask=m_ck, other=0.).to(tl.float32)
        b_dq = tl.load(p_r + 2 * C)[:, None] * b_os - tl.load(p_r + 3 * C)[:, None] * b_om
        b_dkw = tl.load(p_r + 4 * C)[:, None] * b_rs - tl.load(p_r + 5 * C)[:, None] * b_rm
        tl.store(dq + p_qk, _cast(b_dq, dq.dtype.element_ty, DOT_MODE), mask=m_ck)
        tl.store(dkw + p_qk, _cast(b_dkw, dkw.dtype.element_ty, DOT_MODE), mask=m_ck)
        p_rp = drp + (i_g * NK + i_k) * 4 * C + o_c
        tl.store(p_rp, tl.sum(f_q * b_os, 1))
        tl.store(p_rp + C, -tl.sum(f_q * b_om, 1))
        tl.store(p_rp + 2 * C, tl.sum(f_kw * b_rs, 1))
        tl.store(p_rp + 3 * C, -tl.sum(f_kw * b_rm, 1))
    elif X:
        tl.store(xo + p_ck, b_os.to(xo.dtype.element_ty), mask=m_ck)
        tl.store(xo + K + p_ck, b_om.to(xo.dtype.element_ty), mask=m_ck)
    if R and not FUSE_QK:
        tl.store(rr + p_ck, b_rs, mask=m_ck)
        tl.store(rr + K + p_ck, b_rm, mask=m_ck)
    if R:
        p_dg = dgp + (i_g * NK + i_k) * 3
        tl.store(p_dg, tl.sum(d_ss, 0), mask=valid)
        tl.store(p_dg + 1, -tl.sum(d_sm, 0), mask=valid)
        tl.store(p_dg + 2, tl.sum(d_mm, 0), mask=valid)


def _pow2_clamp(n: int, lo: int, hi: int) -> int:
    return max(lo, min(hi, triton.next_power_of_2(n)))


def tail_config(K: int, V: int, C: int, dtype: torch.dtype) -> tuple[int, int, int, int]:
    """(BK, BV, num_warps, num_stages) of the fused kernel; MDN_TAIL_CONFIG="BK,BV,warps,stages" overrides it
    (a ValueError names a malformed value). Default at C <= 64: BK 32, BV 32, 4 warps, 3 stages for 16-bit inputs
    (fp32: 2 stages; the V loop's loads do not depend on the accumulators, so the next V-blocks' tiles load while
    this one multiplies). A GPU whose shared memory cannot hold the stages runs the loop with one
    (chunk_scan._launch_pipelined).
    Measured at 32768 tokens on one H200, fwd+bwd ms with (BK, BV, warps, stages). Since the twenty-first session
    (docs/BENCHMARKS.md §1.26; dO's tiles known to be 16-byte aligned, so they go through the cp.async pipeline
    too), two processes: H6 K256 V512 T = 8192 (32, 32, 4, 3) 9.75-9.78 (151 registers, 58 KB: three CTAs per
    SM), (64, 32, 4, 3) 9.90, (32, 32, 4, 4) 10.00, (32, 64, 4, 2) 10.15, (32, 32, 4, 2) 10.27, (16, 64, 4, 3)
    10.55, (32, 64, 4, 3) 10.57-10.61 (116 KB: one CTA per SM), (32, 16, 4, 4) 10.74, (16, 32, 4, 4) 11.18, (32,
    32, 8, 3) 12.54, against 10.30-10.44 for the previous default (32, 64, 4, 3) with dO loaded a bf16 at a time;
    H16 K128 V128 T = 4096 (32, 32, 4, 3) 6.16, (32, 32, 4, 2) 6.28, (32, 64, 4, 2) 6.31, (32, 128, 4, 2)
    6.26-6.35, (16, 128, 4, 2) 6.43, (16, 32, 4, 3) 6.72, against 6.34-6.42 for the previous default (32, 128, 4,
    2) with dO a bf16 at a time. Before (§1.14-§1.23, the fused epilogue FUSE_QK from §1.22 on):
    (32, 64, 4, 3) beat (32, 64, 4, 2), (64, 32, 4, 3), (32, 32, 4, 2), (64, 64, 8, 3), (16, 64, 4, 2),
    (64, 32, 8, 3) and (32, 128, 8, 2 or 3) at H6 K256 V512, and (32, 128, 4, 2) was taken at 64 < V <= 128.
    ptxas for sm_90a: no spills at C <= 64 (test_state_gemms.py::test_tail_resources_sm90, slow); at C = 128, BV 32
    and 8 warps."""
    env = os.environ.get("MDN_TAIL_CONFIG", "").strip()
    if env:
        try:
            bk, bv, nw, ns = (int(x) for x in env.split(","))
        except ValueError:
            bk = bv = nw = ns = 0
        if bk < 16 or bk & (bk - 1) or bv < 16 or bv & (bv - 1) or nw not in (1, 2, 4, 8, 16) or not 1 <= ns <= 4:
            raise ValueError(f"MDN_TAIL_CONFIG={env!r}: expected \"BK,BV,num_warps,num_stages\" with BK and BV powers "
                             f"of two >= 16, num_warps in 1-16 (a power of two), num_stages 1-4, e.g. \"64,32,8,3\"")
        return bk, bv, nw, ns
    bk = _pow2_clamp(K, 16, 32)
    if C <= 64:
        return bk, _pow2_clamp(V, 16, 32), 4, 2 if dtype == torch.float32 else 3
    return bk, _pow2_clamp(V, 16, 32), 8, 2


TAIL_SPLITS = ("0", "1", "gemm")


def tail_split() -> str:
    """MDN_TAIL_SPLIT: how the tail runs. "0" (default): one fused kernel for all six products and the sums; "1": the
    same kernel launched twice, once for dVt / dO x (S, M) and once for Vt x (dS', dM') with the sums, each with
    half the accumulators (so larger K-blocks fit), S and M read twice; "gemm": cuBLAS GEMMs for dVt / dO x (S, M)
    (one M = 2C GEMM with MDN_BWD_GEMM=stacked) and the kernel for the rest. Opt-in: on one H200 (docs/BENCHMARKS.md
    §1.15) "1" took 12.57 / 9.36 ms and "gemm" (stacked) 12.35 / 9.22 ms fwd+bwd at H6 K256 V512 / H16 K128 V128,
    against 12.40 / 9.50 fused. Other values are a ValueError."""
    return env_choice("MDN_TAIL_SPLIT", TAIL_SPLITS, "0")


def _tail_operands(who: str, vt, dvo, hc, dhc, extra=()):
    """The tail's inputs unpacked and checked (contiguous, else a ValueError naming ``who`` and the tensor): dVt,
    the stacked [dVt; dO] (None for planes), dO and its (chunk, head) stride, dhc, the q8 lo planes (or None) and P."""
    C, V = vt.shape[2], vt.shape[3]
    dlo = None
    if isinstance(dhc, tuple):
        dhc, dlo = dhc
    dvs = None
    if isinstance(dvo, tuple):
        dvt, dvs = dvo
        dob, s_dob = dvs[:, :, C:], 2 * C * V
    else:
        dvt, dob, s_dob = dvo[0], dvo[1], C * V
    for name, x in (("vt", vt), ("dVt", dvt), ("hc", hc), ("dhc", dhc), ("dlo", dlo if dlo is not None else dhc),
                    *extra):
        if not x.is_contiguous():
            raise ValueError(f"{who}: {name} must be contiguous, got strides {tuple(x.stride())}")
    return dvt, dvs, dob, s_dob, dhc, dlo, dhc.shape[2]


def state_gemms_triton(vt, dvo, hc, dhc, rows=None, outs=None, hc_by_chunk=True):
    """xv, xo, rr and dg of the module docstring (MDN_TAIL_SPLIT says in how many launches). vt [NC, H, C, V]; dvo
    the reverse scan's dVt and dO: [2, NC, H, C, V] (planes) or the stacked pair (dVt [NC, H, C, V], [dVt; dO]
    [NC, H, 2C, V]); hc [NC, H, 2, K, V]; dhc [NC, H, P, K, V]. Returns ((xv, xo), rr, dg): xv, xo [NC, H, C, 2K] in
    vt's dtype, rr [NC, H, C, 2K] fp32, dg [NC, H, 3] fp32 = (<dS', S>, -<dS', M>, <dM', M>). dhc may be the pair
    (hi planes [NC, H, 2, K, V] bf16, lo planes int8) of MDN_DHC=q8 (not with rows).
    One segment of MDN_BWD_SEGMENTS: rows [L] (int64 chunk ids, -1 for none) names the chunk of each row of the
    segment-sized dhc [L, H, P, K, V] (and hc [L, H, 2, K, V] unless hc_by_chunk: then hc [NC, ...] is read by
    chunk id, as with MDN_SAVE_STATES=1); the products go into
    outs = new_outputs(...) at those chunks, and the call returns None (dg_of(outs) once every segment ran)."""
    split = tail_split()
    NC, H, C, V = vt.shape
    K = hc.shape[-2]
    if isinstance(dhc, tuple) and rows is not None:
        raise ValueError("state_gemms_triton: the q8 dhc (MDN_DHC=q8) does not run per segment")
    dvt, dvs, dob, s_dob, dhc, dlo, P = _tail_operands("state_gemms_triton", vt, dvo, hc, dhc)
    BK, BV, num_warps, num_stages = tail_config(K, V, C, vt.dtype)
    NK = triton.cdiv(K, BK)
    if rows is not None and split == "gemm":
        raise ValueError("MDN_TAIL_SPLIT=gemm does not run per segment (MDN_BWD_SEGMENTS > 1): use 0 or 1")
    (xv, xo), rr, dgp = outs if outs is not None else new_outputs(vt, K, NK)
    if split == "gemm":
        hct = hc.view(NC, H, 2 * K, V).transpose(-1, -2)              # [V, 2K]
        if isinstance(dvo, tuple):
            x = dvs @ hct                                             # [NC, H, 2C, 2K]: one M = 2C GEMM
            xv, xo = x[:, :, :C], x[:, :, C:]
        else:
            xv, xo = dvt @ hct, dob @ hct
    parts = [(True, True)] if split == "0" else ([(True, False), (False, True)] if split == "1" else [(False, True)])
    n_prog = (rows.numel() if rows is not None else NC) * H
    if n_prog:
        for x_part, r_part in parts:
            _launch_pipelined(
                momentum_delta_rule_bwd_kernel_state_gemms, (NK, n_prog),
                (vt, dvt, dob, hc, dhc, dlo if dlo is not None else dgp, xv, xo, rr, dgp, s_dob,
                 rows if rows is not None else dgp, *(dgp,) * 6, H),
                dict(K=K, V=V, C=C, BK=BK, BV=BV, NK=NK, P=P, DOT_MODE=_dot_mode(vt.dtype), X=x_part, R=r_part,
                     INDEXED=rows is not None, HC_GLOBAL=rows is None or hc_by_chunk, LO_Q8=dlo is not None),
                num_warps, num_stages)
    if rows is not None:
        return None
    return (xv, xo), rr, dg_of(dgp)


def state_gemms_fused_qk_triton(vt, dvo, hc, dhc, q, kw, r):
    """The tail with the chain rule's dQ and dK_w in its epilogue (FUSE_QK; one launch, MDN_TAIL_SPLIT=0, no
    segments): arguments as state_gemms_triton, plus q, kw [NC, H, C, K] and the row scalars r [NC, H, 6, C] fp32.
    Returns (xv [NC, H, C, 2K] in vt's dtype, dg [NC, H, 3], dq, dkw [NC, H, C, K] in q's dtype, drp [NC, H, NK, 4,
    C] fp32: each K-block's share of the row sums d(s a), d(s b), dgamma, drho)."""
    NC, H, C, V = vt.shape
    K = hc.shape[-2]
    dvt, _, dob, s_dob, dhc, dlo, P = _tail_operands("state_gemms_fused_qk_triton", vt, dvo, hc, dhc,
                                                     (("q", q), ("kw", kw), ("r", r)))
    if r.dtype != torch.float32 or r.shape != (NC, H, 6, C):
        raise ValueError(f"state_gemms_fused_qk_triton: r must be fp32 {(NC, H, 6, C)}, got {r.dtype} "
                         f"{tuple(r.shape)}")
    BK, BV, num_warps, num_stages = tail_config(K, V, C, vt.dtype)
    NK = triton.cdiv(K, BK)
    xv = _empty((NC, H, C, 2 * K), vt.dtype, vt.device)
    dgp = _empty((NC, H, NK, 3), torch.float32, vt.device)
    dq, dkw = _empty(q.shape, q.dtype, q.device), _empty(kw.shape, kw.dtype, kw.device)
    drp = _empty((NC, H, NK, 4, C), torch.float32, vt.device)
    if NC * H:
        _launch_pipelined(
            momentum_delta_rule_bwd_kernel_state_gemms, (NK, NC * H),
            (vt, dvt, dob, hc, dhc, dlo if dlo is not None else dgp, xv, dgp, dgp, dgp, s_dob, dgp,
             q, kw, r, dq, dkw, drp, H),
            dict(K=K, V=V, C=C, BK=BK, BV=BV, NK=NK, P=P, DOT_MODE=_dot_mode(vt.dtype), X=True, R=True,
                 INDEXED=False, HC_GLOBAL=True, LO_Q8=dlo is not None, FUSE_QK=True),
            num_warps, num_stages)
    return xv, dg_of(dgp), dq, dkw, drp


def new_outputs(vt, K: int, NK: int):
    """The tail's outputs for vt [NC, H, C, V]: ((xv, xo), rr, dgp [NC, H, NK, 3] partial sums)."""
    NC, H, C, V = vt.shape
    return ((_empty((NC, H, C, 2 * K), vt.dtype, vt.device), _empty((NC, H, C, 2 * K), vt.dtype, vt.device)),
            _empty((NC, H, C, 2 * K), torch.float32, vt.device), _empty((NC, H, NK, 3), torch.float32, vt.device))


def dg_of(dgp):
    """dg [NC, H, 3] from the partial sums over K-blocks."""
    return dgp.sum(2)
