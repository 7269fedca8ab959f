"""The pqk scan backward's chain rule as one Triton kernel per (chunk, head) (MDN_BWD_CHAIN=auto: CUDA, 16-bit
operands, the fused-tail path), in place of the compiled torch `chunk_scan_pqk._chain_rule` plus the daqk product
of `_bwd_from_products`: four batched cuBLAS GEMMs (two of them M = 64 over V), a transposing copy, the row
scalings and row sums over [NC, H, C, K] as inductor kernels, and a tril, about 1.4 ms of an H16 K128 V128 fwd+bwd
(H200, 32768 tokens; docs/BENCHMARKS.md §1.21). From the tail's products against the states

    xv = [-dY, dZ],  xo = [dQa, -dQb]  ([C, 2K], operands' dtype),   rr = [dKs, -dKm]  ([C, 2K] fp32)

and the reverse scan's dVt, dO, the forward's Vt and (MDN_SCAN_V=v) V, with Y = A D(a-) P, Z = A D(b-) P,
Qa = D(s a) Q, Qb = D(s b) Q, Ks = D(gamma) K_w, Km = D(rho) K_w (chunk_scan_pqk's docstring):

    daqk = tril(dO Vt^T)
    dA   = tril(-xv_1 (D(a-) P)^T + xv_2 (D(b-) P)^T + dVt V^T, -1)     (D(a-) P, D(b-) P rounded as stored)
    g    = A^T xv,  dP = D(b-) g_2 - D(a-) g_1,  da- = -rowsum(P * g_1),  db- = rowsum(P * g_2)
    dQ   = D(s a) xo_1 - D(s b) xo_2,  d(s a) = rowsum(Q * xo_1),  d(s b) = -rowsum(Q * xo_2)
    dK_w = D(gamma) rr_1 - D(rho) rr_2,  dgamma = rowsum(K_w * rr_1),  drho = -rowsum(K_w * rr_2)

Every product accumulates in fp32 and is rounded once at the store (the torch graph rounds dA's two GEMMs and A^T xv
to bf16 on the way). Each [C, V] and [C, K] tile is read once; A stays in registers across the K blocks, dA's
accumulator across the K blocks too. With the tail's fused epilogue (FUSED; the default where the tail runs in one
launch) the dQ and dK_w lines are the tail's (chunk_state_gemms.py, FUSE_QK) and this kernel only adds up their row
sums' shares. Checked against `_chain_rule` (fp32) and the same math in float64 (bf16) in
tests/ops/test_chunk_chain_bwd.py.
"""
from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from . import _triton_compat  # noqa: F401  (interpreter + NumPy >= 2.4)
from .alloc import empty
from .chunk_scan import _cast, _dot, _dot_acc, _dot_mode
from .knobs import env_choice

CHAIN_MODES = ("auto", "torch", "kernel", "unfused")

# (BK, BV, num_warps, num_stages, trans_load) by head dim K (bf16, C = 64; sm_90a: 255 registers, 116 bytes of
# spills at K = 128, none at 256: tests/ops/test_chunk_chain_bwd.py::test_sm90_resources). H200, fwd+bwd ms of the
# op at H16 K128 V128 / H6 K256 V512, T = 4096 (docs/BENCHMARKS.md §1.22): (64, 64, 4) 6.89 / 10.53, (32, 64, 2)
# 6.97 / 10.59, (64, 64, 2) 7.27 / 10.70, (32, 64, 8) 7.13 / 10.74, (64, 64, 8) 7.20 / 10.79. (32, 64, 4) timed
# 6.82-6.85 / 10.51, but Triton 3.6 miscompiles it on Hopper: dP, dA, da- / db- 35-68 % off float64 and, at V = 512,
# illegal memory accesses, with or without the transposed loads (H200; every other tile within 2.2e-3 of float64
# there), so sm_90 refuses BK 32 at 4 warps (HOPPER_BAD), as fla restricts its own miscompiled tiles (fla issue 640).
CHAIN_CONFIG = {16: (16, 64, 2, 1, True), 32: (32, 64, 2, 1, True), 64: (64, 64, 4, 1, True),
                128: (64, 64, 4, 1, True), 256: (64, 64, 4, 1, True)}  # K <= 32: one K-block, 2 warps
HOPPER_BAD = {(32, 4)}  # (BK, num_warps) that sm_90 miscompiles (above)


def chain_mode() -> str:
    """MDN_BWD_CHAIN: "auto" (default: the kernel for 16-bit CUDA operands on the fused-tail path, with the tail
    computing dQ and dK_w in its epilogue where it runs in one launch without segments; torch elsewhere, the CPU
    interpreter included), "torch", "kernel" (the same wherever Triton runs: CUDA or the interpreter), or
    "unfused" (the kernel wherever Triton runs, the tail storing xo and rr for it as before)."""
    return env_choice("MDN_BWD_CHAIN", CHAIN_MODES, "auto")


def chain_kernel_applies(p: torch.Tensor, rr: torch.Tensor | None = None) -> bool:
    """Whether the chain rule of operands p [NC, H, C, K] and products rr runs as the kernel (rr fp32 [.., 2K]: the
    fused tail's products; the cuBLAS path's hi / lo parts [.., 4K] go to torch; None: the products of the tail
    with the fused epilogue)."""
    mode = chain_mode()
    if mode == "torch" or (rr is not None and (rr.shape[-1] != 2 * p.shape[-1] or rr.dtype != torch.float32)):
        return False
    interp = os.environ.get("TRITON_INTERPRET", "0") == "1"
    if mode == "auto":
        return p.is_cuda and not interp and p.dtype in (torch.bfloat16, torch.float16)
    return p.is_cuda or interp


def tail_fusion_applies(p: torch.Tensor, split: str) -> bool:
    """Whether the tail (MDN_TAIL_SPLIT=``split``, one unsegmented launch) computes dQ and dK_w itself for the
    chain kernel (chunk_state_gemms.state_gemms_fused_qk_triton)."""
    return split == "0" and chain_mode() != "unfused" and chain_kernel_applies(p)


def chain_config(K: int) -> tuple[int, int, int, int, bool]:
    """(BK, BV, num_warps, num_stages, trans_load) for head dim K; MDN_BWD_CHAIN_CONFIG="BK,BV,warps[,stages[,tload]]"
    overrides (BK, BV powers of two >= 16; stages 1-4, default 1; tload 0 / 1, default 1: the transposed operands
    loaded as transposed tiles instead of tl.trans of loaded ones)."""
    env = os.environ.get("MDN_BWD_CHAIN_CONFIG", "")
    if env:
        parts = env.split(",")
        parts += ["1", "1"][len(parts) - 3:] if 3 <= len(parts) <= 5 else []
        try:
            bk, bv, w, st, tl_ = (int(x) for x in parts)
        except ValueError:
            bk = bv = w = st = tl_ = 0
        ok = (all(x >= 16 and x & (x - 1) == 0 for x in (bk, bv)) and w in (1, 2, 4, 8, 16) and 1 <= st <= 4
              and tl_ in (0, 1))
        if not ok:
            raise ValueError(f"MDN_BWD_CHAIN_CONFIG={env!r}: expected 'BK,BV,warps[,stages[,tload]]' with BK, BV "
                             "powers of two >= 16, warps in 1, 2, 4, 8, 16, stages 1-4 and tload 0 or 1")
        return bk, bv, w, st, bool(tl_)
    key = max(16, triton.next_power_of_2(K))
    return CHAIN_CONFIG.get(key, CHAIN_CONFIG[256])


def launch_tile(K: int, V: int, capability: tuple[int, int] | None = None) -> tuple[int, int, int, int, bool]:
    """chain_config(K) with BK, BV clamped to K, V (powers of two >= 16), as the kernel runs it; on a GPU of compute
    ``capability`` 9.x a ValueError for a tile that sm_90 miscompiles (HOPPER_BAD) instead of wrong gradients."""
    BK, BV, num_warps, num_stages, trans_load = chain_config(K)
    BK = min(BK, max(16, triton.next_power_of_2(K)))
    BV = min(BV, max(16, triton.next_power_of_2(V)))
    if capability is not None and capability[0] == 9 and (BK, num_warps) in HOPPER_BAD:
        raise ValueError(f"MDN_BWD_CHAIN_CONFIG: BK {BK} with {num_warps} warps gives wrong gradients on this GPU "
                         f"(sm_90, Triton {triton.__version__}); expected another tile, e.g. the default "
                         f"{CHAIN_CONFIG[256][:3]}")
    return BK, BV, num_warps, num_stages, trans_load


@triton.jit
def _row_sum_update(acc, x, y):
    return acc + tl.sum(x * y, 1)


@triton.jit
def momentum_delta_rule_bwd_kernel_chain(
    xv, xo, rr, p, q, kw, a, r, dvt, u, dob, vt, drp,
    dp, dq, dkw, da, daqk, dr,
    s_dvt_n, s_dvt_h, s_dvt_c, s_u_n, s_u_h, s_u_c, s_do_n, s_do_h, s_do_c,
    H,
    K: tl.constexpr, V: tl.constexpr, C: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    HAS_U: tl.constexpr, DOT_MODE: tl.constexpr, TRANS_LOAD: tl.constexpr, FUSED: tl.constexpr, NKT: tl.constexpr,
):
    """One program per (chunk, head): the module docstring's products. xv, xo [NC, H, C, 2K], rr fp32 [NC, H, C, 2K],
    p, q, kw, dp, dq, dkw [NC, H, C, K], a, da, daqk [NC, H, C, C], r, dr fp32 [NC, H, 6, C] contiguous; vt
    [NC, H, C, V] contiguous; dvt, u, dob [NC, H, C, V] with the given (chunk, head, row) strides, unit columns.
    FUSED: the tail computed dQ, dK_w and the row sums' shares of its NKT K-blocks, drp [NC, H, NKT, 4, C] fp32
    (chunk_state_gemms.state_gemms_fused_qk_triton): xo, rr, q, kw, dq, dkw are not touched."""
    i_nh = tl.program_id(0).to(tl.int64)
    i_n, i_h = i_nh // H, i_nh % H
    o_c = tl.arange(0, C)
    m_lower = o_c[:, None] > o_c[None, :]
    m_lower_eq = o_c[:, None] >= o_c[None, :]

    # ---- [C, C] products over V: daqk = dO Vt^T, dA's share dVt V^T (MDN_SCAN_V=v)
    b_daqk = tl.zeros([C, C], dtype=tl.float32)
    b_da = tl.zeros([C, C], dtype=tl.float32)
    p_vt0 = vt + i_nh * C * V
    p_do0 = dob + i_n * s_do_n + i_h * s_do_h
    p_dvt0 = dvt + i_n * s_dvt_n + i_h * s_dvt_h
    p_u0 = u + i_n * s_u_n + i_h * s_u_h
    for i_v in range(0, tl.cdiv(V, BV)):
        o_v = i_v * BV + tl.arange(0, BV)
        m_v = (o_v < V)[None, :]
        m_vt = (o_v < V)[:, None]
        b_do = tl.load(p_do0 + o_c[:, None] * s_do_c + o_v[None, :], mask=m_v, other=0.)       # [C, BV]
        if TRANS_LOAD:
            b_vtt = tl.load(p_vt0 + o_c[None, :] * V + o_v[:, None], mask=m_vt, other=0.)      # [BV, C]
        else:
            b_vtt = tl.trans(tl.load(p_vt0 + o_c[:, None] * V + o_v[None, :], mask=m_v, other=0.))
        b_daqk = _dot_acc(b_do, b_vtt, b_daqk, DOT_MODE)
        if HAS_U:
            b_dvt = tl.load(p_dvt0 + o_c[:, None] * s_dvt_c + o_v[None, :], mask=m_v, other=0.)
            if TRANS_LOAD:
                b_ut = tl.load(p_u0 + o_c[None, :] * s_u_c + o_v[:, None], mask=m_vt, other=0.)  # [BV, C]
            else:
                b_ut = tl.trans(tl.load(p_u0 + o_c[:, None] * s_u_c + o_v[None, :], mask=m_v, other=0.))
            b_da = _dot_acc(b_dvt, b_ut, b_da, DOT_MODE)
    o_cc = i_nh * C * C + o_c[:, None] * C + o_c[None, :]
    tl.store(daqk + o_cc, _cast(tl.where(m_lower_eq, b_daqk, 0.), daqk.dtype.element_ty, DOT_MODE))

    # ---- per-row scalars (a-, b-, s a, s b, gamma, rho) and A
    p_r = r + i_nh * 6 * C + o_c
    b_am = tl.load(p_r)[:, None]
    b_bm = tl.load(p_r + C)[:, None]
    b_sa = tl.load(p_r + 2 * C)[:, None]
    b_sb = tl.load(p_r + 3 * C)[:, None]
    b_ga = tl.load(p_r + 4 * C)[:, None]
    b_rho = tl.load(p_r + 5 * C)[:, None]
    b_am_r = tl.load(p_r)[None, :]
    b_bm_r = tl.load(p_r + C)[None, :]
    if TRANS_LOAD:
        b_at = tl.load(a + i_nh * C * C + o_c[None, :] * C + o_c[:, None])                     # [C, C] A^T
    else:
        b_at = tl.trans(tl.load(a + o_cc))
    d_am = tl.zeros([C], dtype=tl.float32)
    d_bm = tl.zeros([C], dtype=tl.float32)
    d_sa = tl.zeros([C], dtype=tl.float32)
    d_sb = tl.zeros([C], dtype=tl.float32)
    d_ga = tl.zeros([C], dtype=tl.float32)
    d_rho = tl.zeros([C], dtype=tl.float32)

    # ---- K blocks: dA's share from xv, dP, dQ, dK_w and the row sums
    for i_k in range(0, tl.cdiv(K, BK)):
        o_k = i_k * BK + tl.arange(0, BK)
        m_k = (o_k < K)[None, :]
        m_kt = (o_k < K)[:, None]
        o_ck = i_nh * C * K + o_c[:, None] * K + o_k[None, :]                                   # [C, BK]
        o_c2k = i_nh * C * 2 * K + o_c[:, None] * 2 * K + o_k[None, :]                          # [C, BK] of [C, 2K]
        b_p = tl.load(p + o_ck, mask=m_k, other=0.)
        b_pf = b_p.to(tl.float32)
        b_x1 = tl.load(xv + o_c2k, mask=m_k, other=0.)                                         # -dY
        b_x2 = tl.load(xv + o_c2k + K, mask=m_k, other=0.)                                     # dZ
        # dA += [-dY, dZ] [-D(a-) P, D(b-) P]^T, the scaled P rounded to the operands' dtype as the torch graph does
        if TRANS_LOAD:
            # P^T loaded as [BK, C] rather than transposed in registers (Hopper codegen, see CHAIN_CONFIG)
            b_ptf = tl.load(p + i_nh * C * K + o_c[None, :] * K + o_k[:, None], mask=m_kt, other=0.).to(tl.float32)
            b_pat = _cast(-b_am_r * b_ptf, b_p.dtype, DOT_MODE)                                 # [BK, C]
            b_pbt = _cast(b_bm_r * b_ptf, b_p.dtype, DOT_MODE)
        else:
            b_pat = tl.trans(_cast(-b_am * b_pf, b_p.dtype, DOT_MODE))  # negate in fp32 (interpreter)
            b_pbt = tl.trans(_cast(b_bm * b_pf, b_p.dtype, DOT_MODE))
        b_da = _dot_acc(b_x1, b_pat, b_da, DOT_MODE)
        b_da = _dot_acc(b_x2, b_pbt, b_da, DOT_MODE)
        b_g1 = _dot(b_at, b_x1, DOT_MODE)                                                       # [C, BK] -A^T dY
        b_g2 = _dot(b_at, b_x2, DOT_MODE)                                                       # [C, BK]  A^T dZ
        tl.store(dp + o_ck, _cast(b_bm * b_g2 - b_am * b_g1, dp.dtype.element_ty, DOT_MODE), mask=m_k)
        d_am = _row_sum_update(d_am, b_pf, -b_g1)
        d_bm = _row_sum_update(d_bm, b_pf, b_g2)

        if not FUSED:
            b_qf = tl.load(q + o_ck, mask=m_k, other=0.).to(tl.float32)
            b_o1 = tl.load(xo + o_c2k, mask=m_k, other=0.).to(tl.float32)                      # dQa
            b_o2 = tl.load(xo + o_c2k + K, mask=m_k, other=0.).to(tl.float32)                  # -dQb
            tl.store(dq + o_ck, _cast(b_sa * b_o1 - b_sb * b_o2, dq.dtype.element_ty, DOT_MODE), mask=m_k)
            d_sa = _row_sum_update(d_sa, b_qf, b_o1)
            d_sb = _row_sum_update(d_sb, b_qf, -b_o2)

            b_kf = tl.load(kw + o_ck, mask=m_k, other=0.).to(tl.float32)
            b_r1 = tl.load(rr + o_c2k, mask=m_k, other=0.)                                     # dKs
            b_r2 = tl.load(rr + o_c2k + K, mask=m_k, other=0.)                                 # -dKm
            tl.store(dkw + o_ck, _cast(b_ga * b_r1 - b_rho * b_r2, dkw.dtype.element_ty, DOT_MODE), mask=m_k)
            d_ga = _row_sum_update(d_ga, b_kf, b_r1)
            d_rho = _row_sum_update(d_rho, b_kf, -b_r2)
    if FUSED:
        for i_t in range(0, NKT):
            p_rp = drp + (i_nh * NKT + i_t) * 4 * C + o_c
            d_sa += tl.load(p_rp)
            d_sb += tl.load(p_rp + C)
            d_ga += tl.load(p_rp + 2 * C)
            d_rho += tl.load(p_rp + 3 * C)

    tl.store(da + o_cc, _cast(tl.where(m_lower, b_da, 0.), da.dtype.element_ty, DOT_MODE))
    p_dr = dr + i_nh * 6 * C + o_c
    tl.store(p_dr, d_am)
    tl.store(p_dr + C, d_bm)
    tl.store(p_dr + 2 * C, d_sa)
    tl.store(p_dr + 3 * C, d_sb)
    tl.store(p_dr + 4 * C, d_ga)
    tl.store(p_dr + 5 * C, d_rho)


def _strides_ncv(x: torch.Tensor, name: str) -> tuple[int, int, int]:
    if x.stride(-1) != 1:
        raise ValueError(f"chain_rule_triton: {name} needs unit column stride, got strides {tuple(x.stride())}")
    return x.stride(0), x.stride(1), x.stride(2)


def chain_rule_triton(xv, xo, rr, p, q, kw, a, r, vt, dob, dvt=None, u=None, fused=None):
    """(dp, dq, dkw, da, dr, daqk) of chunk_scan_pqk._chain_rule plus daqk = tril(dO Vt^T), in one launch (module
    docstring). dob, dvt, u [NC, H, C, V] may be strided views (unit column stride: the reverse scan's planes, the
    token-major V); dvt and u together (MDN_SCAN_V=v) or neither. fused: (dq, dkw, drp) of
    chunk_state_gemms.state_gemms_fused_qk_triton, whose dq and dkw come back as they are (xo, rr unused, None)."""
    NC, H, C, K = p.shape
    V = vt.shape[-1]
    if (dvt is None) != (u is None):
        raise ValueError("chain_rule_triton: dvt and u go together (MDN_SCAN_V=v) or not at all")
    named = [("xv", xv), ("p", p), ("q", q), ("kw", kw), ("a", a), ("r", r), ("vt", vt)]
    named += [("drp", fused[2])] if fused is not None else [("xo", xo), ("rr", rr)]
    for name, x in named:
        if not x.is_contiguous():
            raise ValueError(f"chain_rule_triton: {name} must be contiguous, got strides {tuple(x.stride())}")
    if fused is None and (rr.shape != (NC, H, C, 2 * K) or rr.dtype != torch.float32):
        raise ValueError(f"chain_rule_triton: rr must be fp32 {(NC, H, C, 2 * K)}, got {rr.dtype} "
                         f"{tuple(rr.shape)}")
    if fused is not None and (fused[2].dtype != torch.float32 or fused[2].shape[:2] != (NC, H)
                              or fused[2].shape[3:] != (4, C)):
        raise ValueError(f"chain_rule_triton: drp must be fp32 {(NC, H)} + (NK, 4, {C}), got {fused[2].dtype} "
                         f"{tuple(fused[2].shape)}")
    BK, BV, num_warps, num_stages, trans_load = launch_tile(K, V, torch.cuda.get_device_capability(p.device)
                                                            if p.is_cuda else None)
    dev = p.device
    dp = empty(NC, H, C, K, dtype=p.dtype, device=dev)
    if fused is None:
        dq, dkw = (empty(NC, H, C, K, dtype=x.dtype, device=dev) for x in (q, kw))
        drp, nkt = dp, 1
    else:
        dq, dkw, drp = fused
        nkt = drp.shape[2]
    da = empty(NC, H, C, C, dtype=a.dtype, device=dev)
    daqk = empty(NC, H, C, C, dtype=vt.dtype, device=dev)
    dr = empty(NC, H, 6, C, dtype=torch.float32, device=dev)
    has_u = u is not None
    s_do = _strides_ncv(dob, "dO")
    s_dvt = _strides_ncv(dvt, "dVt") if has_u else (0, 0, 0)
    s_u = _strides_ncv(u, "V") if has_u else (0, 0, 0)
    if NC * H:
        momentum_delta_rule_bwd_kernel_chain[(NC * H,)](
            xv, xo if fused is None else xv, rr if fused is None else r, p, q, kw, a, r, dvt if has_u else vt,
            u if has_u else vt, dob, vt, drp, dp, dq, dkw, da, daqk, dr, *s_dvt, *s_u, *s_do, H,
            K=K, V=V, C=C, BK=BK, BV=BV, HAS_U=has_u, DOT_MODE=_dot_mode(vt.dtype), TRANS_LOAD=trans_load,
            FUSED=fused is not None, NKT=nkt, num_warps=num_warps, num_stages=num_stages)
    return dp, dq, dkw, da, dr.to(r.dtype), daqk
