"""The pqk scan's output O as a parallel kernel (MDN_FWD_O=kernel), from the chunk-start states the forward stores.

    O = D(s a) (Q S) - D(s b) (Q M) + Aqk Vt          (per chunk and head; S, M the chunk-start states)

The forward scan computes O inside its sequential chunk loop by default (chunk_scan_pqk.py). When the forward also
stores every chunk's start states hc for the backward (MDN_SAVE_STATES=1), O needs nothing sequential any more:
the scan can drop Q, Aqk and the two Q-dots from its loop (WRITE_O=False: fewer registers, less shared memory per
pipeline stage) and this kernel computes O for all chunks at once, as fla's chunk_fwd_o does for the gated delta
rule. The products are the fused scan's: bf16 operands (the states rounded to bf16 exactly as the scan's
`_dot` rounds its fp32 registers, which is what hc stores) with fp32 accumulation for 16-bit inputs, fp32 "ieee"
dots for fp32 inputs (hc is fp32 then).
"""
from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from . import _triton_compat  # noqa: F401  (interpreter + NumPy >= 2.4)
from .chunk_scan import _cast, _dot_acc, _dot_mode, _launch_pipelined, _mm, _o_like, _sub_k


@triton.jit(do_not_specialize=['H'])
def momentum_delta_rule_fwd_kernel_output_pqk(
    q, hc, vt, aqk, r, o,
    H, s_oc, s_oh, s_ot,
    K: tl.constexpr,
    V: tl.constexpr,
    C: tl.constexpr,
    BK: tl.constexpr,
    BV: tl.constexpr,
    DOT_MODE: tl.constexpr,
):
    """O of one (chunk, head, V-block): q [NC, H, C, K], hc [NC, H, 2, K, V] (S then M, the chunk-start states),
    vt [NC, H, C, V], aqk [NC, H, C, C], r [NC, H, 6, C] (row scalars; s a and s b are rows 2 and 3); o with the
    strides of chunk_scan._o_like (token-major)."""
    i_v, i_ch = tl.program_id(0), tl.program_id(1)  # V-blocks of one (chunk, head) run side by side: Q from L2
    i_c, i_h = i_ch // H, i_ch % H
    base = i_ch.to(tl.int64)                         # index of [c, h] in [NC, H]

    o_k = tl.arange(0, BK)
    o_v = i_v * BV + tl.arange(0, BV)
    o_c = tl.arange(0, C)
    m_v = o_v < V
    p_q = q + base * C * K + o_c[:, None] * K + o_k[None, :]    # [C, BK]  (sub-tile j: + j * BK)
    p_s = hc + base * 2 * K * V + o_k[:, None] * V + o_v[None, :]  # [BK, BV] (sub-tile j: + j * BK * V)

    b_qs = tl.zeros([C, BV], dtype=tl.float32)
    b_qm = tl.zeros([C, BV], dtype=tl.float32)
    # unrolled over the K sub-tiles, as the scans' (a pipelined runtime loop here gave wrong O and an illegal
    # address on an H200 at K = 253, rows not 16-byte aligned; the unrolled loads are all issued up front anyway)
    for i_k in tl.static_range(0, (K + BK - 1) // BK):
        m_k = o_k + i_k * BK < K
        b_q = tl.load(p_q + i_k * BK, mask=m_k[None, :], other=0.)                            # [C, BK]
        m_kv = m_k[:, None] & m_v[None, :]
        b_s = tl.load(p_s + i_k * BK * V, mask=m_kv, other=0.)                                # [BK, BV]
        b_m = tl.load(p_s + K * V + i_k * BK * V, mask=m_kv, other=0.)                        # [BK, BV]
        b_qs = _dot_acc(b_q, b_s, b_qs, DOT_MODE)
        b_qm = _dot_acc(b_q, b_m, b_qm, DOT_MODE)

    p_r = r + base * 6 * C + o_c
    b_sa = tl.load(p_r + 2 * C)
    b_sb = tl.load(p_r + 3 * C)
    b_o = b_sa[:, None] * b_qs - b_sb[:, None] * b_qm                                          # [C, BV]
    b_vt = tl.load(vt + base * C * V + o_c[:, None] * V + o_v[None, :], mask=m_v[None, :], other=0.)
    b_aqk = tl.load(aqk + base * C * C + o_c[:, None] * C + o_c[None, :])                      # [C, C]
    b_o = _dot_acc(b_aqk, b_vt, b_o, DOT_MODE)
    p_o = o + i_c.to(tl.int64) * s_oc + i_h * s_oh + o_c[:, None] * s_ot + o_v[None, :]
    tl.store(p_o, _cast(b_o, o.dtype.element_ty, DOT_MODE), mask=m_v[None, :])


# (BV, num_warps, num_stages) by (operand dtype is fp32). 16-bit: [C, 64] Q sub-tiles and two [64, 64] state
# sub-tiles (24 KB each at C = 64), two [C, 64] fp32 accumulators; fp32 operands take BV 32. Measured (H200, H6
# K256 V512, 32768 tokens, docs/BENCHMARKS.md §1.16): (64, 4) and (128, 8) within 0.03 ms of each other.
OUTPUT_CONFIGS = {False: (64, 4, 1), True: (32, 4, 1)}


def output_config(dtype: torch.dtype) -> tuple[int, int, int]:
    """(BV, num_warps, num_stages) of the output kernel; MDN_FWD_O_CONFIG="BV,warps,stages" overrides (sweeps)."""
    env = os.environ.get("MDN_FWD_O_CONFIG", "")
    if not env:
        return OUTPUT_CONFIGS[dtype == torch.float32]
    try:
        bv, nw, ns = (int(x) for x in env.split(","))
    except ValueError:
        bv = 0
    if bv not in (16, 32, 64, 128) or nw not in (1, 2, 4, 8) or ns not in (1, 2, 3, 4):
        raise ValueError(f"MDN_FWD_O_CONFIG={env!r}: expected 'BV,num_warps,num_stages' with BV in 16/32/64/128, "
                         f"num_warps in 1/2/4/8 and num_stages in 1..4, e.g. '64,4,3'")
    return bv, nw, ns


def output_pqk_triton(q, hc, vt, aqk, r) -> torch.Tensor:
    """O [NC, H, C, V] (token-major memory, chunk_scan._o_like) from the chunk-start states hc [NC, H, 2, K, V]."""
    NC, H, C, K = q.shape
    V = vt.shape[-1]
    if hc.shape != (NC, H, 2, K, V) or hc.dtype != vt.dtype:
        raise ValueError(f"output_pqk_triton: hc {tuple(hc.shape)} {hc.dtype}, expected {(NC, H, 2, K, V)} "
                         f"{vt.dtype}")
    BV, num_warps, num_stages = output_config(vt.dtype)
    BV = max(16, min(BV, triton.next_power_of_2(V)))
    o = _o_like(vt)
    grid = (triton.cdiv(V, BV), NC * H)
    _launch_pipelined(momentum_delta_rule_fwd_kernel_output_pqk, grid,
                      (q, hc, vt, aqk, r, o, H, *o.stride()[:3]),
                      dict(K=K, V=V, C=C, BK=_sub_k(K), BV=BV, DOT_MODE=_dot_mode(vt.dtype)), num_warps, num_stages)
    return o


def output_pqk_torch(q, hc, vt, aqk, r) -> torch.Tensor:
    """The kernel's math in torch (the test reference): O from hc with the fused scan's rounding."""
    bf = vt.dtype != torch.float32
    rf = r.float()
    sa, sb = rf[:, :, 2, :, None], rf[:, :, 3, :, None]
    S, M = hc[:, :, 0].float(), hc[:, :, 1].float()
    o = _o_like(vt)
    o.copy_(sa * _mm(q, S, bf) - sb * _mm(q, M, bf) + _mm(aqk, vt, bf))
    return o
