"""The intra part's key/query work as one Triton kernel per direction (MDN_INTRA_QK=auto: CUDA, 16-bit inputs,
C <= 64), a custom op with its own backward, in place of inductor's packing copies, L2 norms and elementwise
kernels around two batched bf16 cuBLAS GEMMs (and four more in the backward). Per (chunk, head), reading q and k
in the caller's [B * T, H, K] layout through a chunk table (first row, length), so that neither the packing nor
its gradient's unpacking is a separate copy:

    q^ = q / |q|,  k^ = k / |k|           (when use_qk_l2norm_in_kernel; eps as chunk_intra.l2norm)
    P = D(alpha) k^ (or k^),  K_w = D(eta) k^
    Lmat = (P K_w^T) * Gamma^-            (Gamma^- = Gamma shifted down one row: strictly lower)
    Aqk = s (Q^ K_w^T) * Gamma            (lower including the diagonal)

It stores P, Q^, K_w [NC, H, C, K] (the pqk scan's operands, zero on padded rows), Lmat [NC, H, C, C] in fp32 (the
triangular inverse's input) and Aqk. The products take the operands as stored (bf16 for 16-bit inputs: exactly
the rounding the torch graph's bf16 GEMMs apply; ieee fp32 dots for fp32 inputs). The backward, given dP, dQ^,
dK_w, dLmat, dAqk:

    Gamma = L_a D(beta) L_m again from the gates (intra_gates._gate_matrices; not kept from the forward)
    dPK = dLmat * Gamma^-,  dQK = s dAqk * Gamma
    dGamma = s dAqk * (Q^ K_w^T) + shift_up(dLmat * (P K_w^T))
    dP += dPK K_w,  dK_w += dPK^T P + dQK^T Q^,  dQ^ += dQK K_w
    dk^ = alpha dP + eta dK_w,  dlog_alpha = rowsum(dP * P),  deta = rowsum(dK_w * k^)
    dx = (dx^ - x^ rowsum(dx^ * x^)) / |x|      (L2 norm, for q and k)

rowsum(dx^ * x^) needs whole rows, so for K > BK the backward makes a second pass over the K blocks that
recomputes dx^ (its dots read L2-resident tiles) rather than keeping [C, K] fp32 tiles in registers.
Checked against torch autograd of the torch graph and the fp64 recurrence in tests/ops/test_chunk_intra_qk.py.
"""
from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from . import _triton_compat  # noqa: F401  (interpreter + NumPy >= 2.4)
from .alloc import empty
from .chunk_intra import L2NORM_EPS
from .chunk_scan import _cast, _dot_acc, _dot_mode
from .intra_gates import _gate_matrices
from .knobs import env_choice
from .oplib import kernel_op, wrap_triton

INTRA_QK_MODES = ("auto", "torch", "kernel")


def intra_qk_mode() -> str:
    """MDN_INTRA_QK: "auto" (default: the kernels for 16-bit CUDA inputs of the pqk form at C <= 64, the torch graph
    elsewhere, the CPU interpreter included), "torch" or "kernel" (the kernels wherever they can run: C <= 64, any
    input dtype, CUDA or the interpreter). Read when the intra part is traced: one value per process under
    torch.compile."""
    return env_choice("MDN_INTRA_QK", INTRA_QK_MODES, "auto")


def qk_kernel_applies(q: torch.Tensor, mode: str, chunk_size: int, bf16_gemm: bool) -> bool:
    """Whether the intra part of q ([B, T, H, K]) takes the kernels under ``mode``; ``bf16_gemm``: 16-bit inputs
    with bf16 products (auto takes the kernels only then)."""
    runs = chunk_size in (16, 32, 64)
    if mode == "auto":
        return runs and q.is_cuda and bf16_gemm
    return runs and mode == "kernel" and (q.is_cuda or os.environ.get("TRITON_INTERPRET", "0") == "1")


def chunk_table(B: int, T: int, C: int, device, cu_seqlens: torch.Tensor | None = None,
                NC: int | None = None) -> torch.Tensor:
    """[NC, 2] int32: (first row in [B * T], number of tokens) of every chunk, in the packing order of chunk.py
    (dense: batch-major, NT = ceil(T / C) chunks each; varlen: chunk-aligned sequences back to back; NC, the number
    of chunks, when the caller knows it: no second device-to-host read)."""
    if cu_seqlens is None:
        NT = -(-T // C)
        j = torch.arange(NT, device=device, dtype=torch.int64)
        start = (torch.arange(B, device=device, dtype=torch.int64)[:, None] * T + j * C).reshape(-1)
        length = (T - j * C).clamp(max=C).repeat(B)
    else:
        cu = cu_seqlens.to(device=device, dtype=torch.int64)
        lens = cu[1:] - cu[:-1]
        nchunks = (lens + C - 1) // C
        NC = int(nchunks.sum().item()) if NC is None else NC
        seq = torch.repeat_interleave(torch.arange(lens.numel(), device=device), nchunks, output_size=NC)
        first = torch.cumsum(nchunks, 0) - nchunks  # [N] index of each sequence's first chunk
        j = torch.arange(NC, device=device) - first[seq]
        start = cu[seq] + j * C
        length = (cu[seq + 1] - start).clamp(max=C)
    return torch.stack([start, length], -1).to(torch.int32).contiguous()


@triton.jit
def _load_rows(x, rows, i_h, H, m_c, o_k, K: tl.constexpr):
    """[C, BK] fp32 tile of x [B * T, H, K] at the chunk's rows (int64 [C]) and columns o_k; zero outside."""
    p = x + (rows[:, None] * H + i_h) * K + o_k[None, :]
    return tl.load(p, mask=m_c[:, None] & (o_k[None, :] < K), other=0.).to(tl.float32)


@triton.jit
def _store_rows(x, val, rows, i_h, H, m_c, o_k, K: tl.constexpr):
    p = x + (rows[:, None] * H + i_h) * K + o_k[None, :]
    tl.store(p, val.to(x.dtype.element_ty), mask=m_c[:, None] & (o_k[None, :] < K))


@triton.jit
def _row_rstd(x, rows, i_h, H, m_c, C: tl.constexpr, K: tl.constexpr, BK: tl.constexpr, EPS: tl.constexpr):
    """1 / sqrt(|x_t|^2 + eps) for the chunk's rows [C] (fp32)."""
    ssq = tl.zeros([C], dtype=tl.float32)
    for i_k in tl.static_range(0, (K + BK - 1) // BK):
        b_x = _load_rows(x, rows, i_h, H, m_c, i_k * BK + tl.arange(0, BK), K)
        ssq += tl.sum(b_x * b_x, 1)
    return tl.rsqrt(ssq + EPS)


@triton.jit
def _chunk_setup(chunks, la, eta, i_ch, H, C: tl.constexpr, P_ALPHA: tl.constexpr):
    """(head, [c, h] index, the chunk's rows in [B * T] (int64 [C]), their mask, alpha (or 1), eta [C])."""
    i_c, i_h = i_ch // H, i_ch % H
    base = i_ch.to(tl.int64)                                   # index of [c, h] in [NC, H]
    bos = tl.load(chunks + i_c * 2).to(tl.int64)
    n = tl.load(chunks + i_c * 2 + 1)
    o_c = tl.arange(0, C)
    b_eta = tl.load(eta + base * C + o_c)
    if P_ALPHA:
        b_ea = tl.exp(tl.load(la + base * C + o_c))
    else:
        b_ea = tl.full([C], 1., tl.float32)
    return i_h, base, bos + o_c, o_c < n, b_ea, b_eta


@triton.jit
def _operands(q, k, rows, i_h, H, m_c, o_k, b_rq, b_rk, b_ea, b_eta, K: tl.constexpr, dtype: tl.constexpr,
              DOT_MODE: tl.constexpr):
    """One K block: q^, k^ [C, BK] in fp32 and P, Q^, K_w in the operand dtype, computed exactly as the forward
    stores them (the backward recomputes rather than reloads them)."""
    b_qh = _load_rows(q, rows, i_h, H, m_c, o_k, K) * b_rq[:, None]
    b_kh = _load_rows(k, rows, i_h, H, m_c, o_k, K) * b_rk[:, None]
    b_p = _cast(b_kh * b_ea[:, None], dtype, DOT_MODE)
    b_kw = _cast(b_kh * b_eta[:, None], dtype, DOT_MODE)
    return b_qh, b_kh, b_p, _cast(b_qh, dtype, DOT_MODE), b_kw


@triton.jit(do_not_specialize=['H'])
def momentum_delta_rule_fwd_kernel_intra_qk(
    q, k, la, eta, gam, chunks,
    p, qn, kw, lmat, aqk, rstd,
    H, scale,
    K: tl.constexpr,
    C: tl.constexpr,
    BK: tl.constexpr,
    L2NORM: tl.constexpr,
    P_ALPHA: tl.constexpr,
    DOT_MODE: tl.constexpr,
    EPS: tl.constexpr,
):
    """One (chunk, head): q, k [B * T, H, K]; la, eta [NC, H, C] fp32; gam [NC, H, C, C] fp32; chunks [NC, 2]
    int32 (first row, length). Writes p, qn, kw [NC, H, C, K], lmat [NC, H, C, C] fp32, aqk [NC, H, C, C] and
    rstd [NC, H, 2, C] fp32 (the inverse norms of q and k, for the backward; 1 without L2NORM)."""
    i_h, base, rows, m_c, b_ea, b_eta = _chunk_setup(chunks, la, eta, tl.program_id(0), H, C, P_ALPHA)
    o_c = tl.arange(0, C)
    if L2NORM:
        b_rq = _row_rstd(q, rows, i_h, H, m_c, C, K, BK, EPS)
        b_rk = _row_rstd(k, rows, i_h, H, m_c, C, K, BK, EPS)
    else:
        b_rq = tl.full([C], 1., tl.float32)
        b_rk = tl.full([C], 1., tl.float32)
    tl.store(rstd + base * 2 * C + o_c, b_rq)
    tl.store(rstd + base * 2 * C + C + o_c, b_rk)

    b_pk = tl.zeros([C, C], dtype=tl.float32)                  # P K_w^T
    b_qk = tl.zeros([C, C], dtype=tl.float32)                  # Q^ K_w^T
    for i_k in tl.static_range(0, (K + BK - 1) // BK):
        o_k = i_k * BK + tl.arange(0, BK)
        _, _, b_p, b_q, b_kw = _operands(q, k, rows, i_h, H, m_c, o_k, b_rq, b_rk, b_ea, b_eta, K,
                                         p.dtype.element_ty, DOT_MODE)
        p_out = base * C * K + o_c[:, None] * K + o_k[None, :]
        m_out = o_k[None, :] < K
        tl.store(p + p_out, b_p, mask=m_out)
        tl.store(kw + p_out, b_kw, mask=m_out)
        tl.store(qn + p_out, b_q, mask=m_out)
        b_pk = _dot_acc(b_p, tl.trans(b_kw), b_pk, DOT_MODE)
        b_qk = _dot_acc(b_q, tl.trans(b_kw), b_qk, DOT_MODE)

    m_strict = o_c[:, None] > o_c[None, :]
    m_lower = o_c[:, None] >= o_c[None, :]
    p_cc = base * C * C + o_c[:, None] * C + o_c[None, :]
    b_g = tl.load(gam + p_cc)                                  # [C, C] Gamma
    b_gp = tl.load(gam + p_cc - C, mask=m_strict, other=0.)    # [C, C] Gamma^- (row t: Gamma's row t - 1)
    tl.store(lmat + p_cc, tl.where(m_strict, b_pk * b_gp, 0.))
    tl.store(aqk + p_cc, _cast(tl.where(m_lower, scale * b_qk * b_g, 0.), aqk.dtype.element_ty, DOT_MODE))


@triton.jit(do_not_specialize=['H'])
def momentum_delta_rule_bwd_kernel_intra_qk_cc(
    q, k, la, beta, lm, eta, chunks, rstd, dlmat, daqk,
    dgam, dpk, dqk,
    H, scale,
    K: tl.constexpr,
    C: tl.constexpr,
    BK: tl.constexpr,
    P_ALPHA: tl.constexpr,
    DOT_MODE: tl.constexpr,
    GAM_PREC: tl.constexpr,
):
    """The backward's [C, C] part for one (chunk, head): Gamma = L_a D(beta) L_m again from the gates (as
    intra_gates.py computes it, ``GAM_PREC`` products: not kept from the forward, 16 KB per (chunk, head) less at
    the memory peak), the forward's products again (operands recomputed from q, k and rstd), then from dLmat and
    dAqk [NC, H, C, C]: dGamma (fp32) and dPK, dQK in the operand dtype (dpk's). A kernel of its own: its [C, C]
    fp32 tiles took every register of a one-kernel backward."""
    i_h, base, rows, m_c, b_ea, b_eta = _chunk_setup(chunks, la, eta, tl.program_id(0), H, C, P_ALPHA)
    o_c = tl.arange(0, C)
    m_strict = o_c[:, None] > o_c[None, :]
    m_lower = o_c[:, None] >= o_c[None, :]
    p_cc = base * C * C + o_c[:, None] * C + o_c[None, :]
    _, b_beta, _, _, b_La, b_Lm = _gate_matrices(la, beta, lm, base * C + o_c, C)
    b_g = tl.dot(b_La * b_beta[None, :], b_Lm, input_precision=GAM_PREC)   # [C, C] Gamma
    idx = tl.maximum(o_c[:, None] - 1, 0) + tl.zeros([C, C], dtype=tl.int32)
    b_gp = tl.where(m_strict, tl.gather(b_g, idx, 0), 0.)                  # [C, C] Gamma^- (Gamma's row t - 1)
    b_da = scale * tl.where(m_lower, tl.load(daqk + p_cc).to(tl.float32), 0.)
    tl.store(dqk + p_cc, _cast(b_da * b_g, dqk.dtype.element_ty, DOT_MODE))
    b_dl = tl.where(m_strict, tl.load(dlmat + p_cc).to(tl.float32), 0.)
    tl.store(dpk + p_cc, _cast(b_dl * b_gp, dpk.dtype.element_ty, DOT_MODE))

    b_rq = tl.load(rstd + base * 2 * C + o_c)
    b_rk = tl.load(rstd + base * 2 * C + C + o_c)
    b_pk = tl.zeros([C, C], dtype=tl.float32)
    b_qk = tl.zeros([C, C], dtype=tl.float32)
    for i_k in tl.static_range(0, (K + BK - 1) // BK):
        o_k = i_k * BK + tl.arange(0, BK)
        _, _, b_p, b_q, b_kw = _operands(q, k, rows, i_h, H, m_c, o_k, b_rq, b_rk, b_ea, b_eta, K,
                                         dpk.dtype.element_ty, DOT_MODE)
        b_pk = _dot_acc(b_p, tl.trans(b_kw), b_pk, DOT_MODE)
        b_qk = _dot_acc(b_q, tl.trans(b_kw), b_qk, DOT_MODE)
    # dGamma: Aqk's part in place, Lmat's (its row t belongs to Gamma's row t - 1) shifted up one row
    idx = tl.minimum(o_c[:, None] + 1, C - 1) + tl.zeros([C, C], dtype=tl.int32)
    b_xl = tl.where(o_c[:, None] < C - 1, tl.gather(b_dl * b_pk, idx, 0), 0.)
    tl.store(dgam + p_cc, b_da * b_qk + b_xl)


@triton.jit
def _dx_block(q, k, dp, dqn, dkw, rows, i_h, H, m_c, base, i_k, b_dpk, b_dqk, b_rq, b_rk, b_ea, b_eta,
              K: tl.constexpr, C: tl.constexpr, BK: tl.constexpr, DOT_MODE: tl.constexpr):
    """One K block of the backward: (dk^, dq^, k^, q^ [C, BK] fp32, rowsum(dP * P), rowsum(dK_w * k^) [C])."""
    o_c = tl.arange(0, C)
    o_k = i_k * BK + tl.arange(0, BK)
    m_k = o_k[None, :] < K
    b_qh, b_kh, b_p, b_q, b_kw = _operands(q, k, rows, i_h, H, m_c, o_k, b_rq, b_rk, b_ea, b_eta, K,
                                           b_dpk.dtype, DOT_MODE)
    p_in = base * C * K + o_c[:, None] * K + o_k[None, :]
    b_dp = _dot_acc(b_dpk, b_kw, tl.load(dp + p_in, mask=m_k, other=0.).to(tl.float32), DOT_MODE)
    b_dkw = _dot_acc(tl.trans(b_dpk), b_p, tl.load(dkw + p_in, mask=m_k, other=0.).to(tl.float32), DOT_MODE)
    b_dkw = _dot_acc(tl.trans(b_dqk), b_q, b_dkw, DOT_MODE)
    b_dq = _dot_acc(b_dqk, b_kw, tl.load(dqn + p_in, mask=m_k, other=0.).to(tl.float32), DOT_MODE)
    b_dkh = b_ea[:, None] * b_dp + b_eta[:, None] * b_dkw
    return b_dkh, b_dq, b_kh, b_qh, tl.sum(b_dp * b_kh, 1) * b_ea, tl.sum(b_dkw * b_kh, 1)


@triton.jit(do_not_specialize=['H'])
def momentum_delta_rule_bwd_kernel_intra_qk(
    q, k, la, eta, chunks, rstd,
    dp, dqn, dkw, dpk, dqk,
    dq, dk, dla, deta,
    H,
    K: tl.constexpr,
    C: tl.constexpr,
    BK: tl.constexpr,
    L2NORM: tl.constexpr,
    P_ALPHA: tl.constexpr,
    DOT_MODE: tl.constexpr,
):
    """The backward's [C, K] part for one (chunk, head) (module docstring): from the forward's inputs and rstd, the
    gradients dp, dqn, dkw [NC, H, C, K] and dPK, dQK [NC, H, C, C] (the [C, C] kernel's), writes dq, dk
    [B * T, H, K] (the chunk's rows only) and dla, deta [NC, H, C] (fp32)."""
    i_h, base, rows, m_c, b_ea, b_eta = _chunk_setup(chunks, la, eta, tl.program_id(0), H, C, P_ALPHA)
    o_c = tl.arange(0, C)
    b_rq = tl.load(rstd + base * 2 * C + o_c)
    b_rk = tl.load(rstd + base * 2 * C + C + o_c)
    p_cc = base * C * C + o_c[:, None] * C + o_c[None, :]
    b_dpk = tl.load(dpk + p_cc)                                 # [C, C] d(P K_w^T), as the dots take it
    b_dqk = tl.load(dqk + p_cc)                                 # [C, C] d(Q^ K_w^T)

    b_dla = tl.zeros([C], dtype=tl.float32)
    b_deta = tl.zeros([C], dtype=tl.float32)
    b_sk = tl.zeros([C], dtype=tl.float32)                      # rowsum(dk^ * k^)
    b_sq = tl.zeros([C], dtype=tl.float32)
    NK: tl.constexpr = (K + BK - 1) // BK
    for i_k in range(0, NK):
        b_dkh, b_dqh, b_kh, b_qh, b_dla_k, b_deta_k = _dx_block(
            q, k, dp, dqn, dkw, rows, i_h, H, m_c, base, i_k, b_dpk, b_dqk, b_rq, b_rk, b_ea, b_eta, K, C, BK,
            DOT_MODE)
        b_dla += b_dla_k
        b_deta += b_deta_k
        o_k = i_k * BK + tl.arange(0, BK)
        if L2NORM:
            b_sk += tl.sum(b_dkh * b_kh, 1)
            b_sq += tl.sum(b_dqh * b_qh, 1)
            if NK == 1:
                _store_rows(dk, (b_dkh - b_kh * b_sk[:, None]) * b_rk[:, None], rows, i_h, H, m_c, o_k, K)
                _store_rows(dq, (b_dqh - b_qh * b_sq[:, None]) * b_rq[:, None], rows, i_h, H, m_c, o_k, K)
        else:
            _store_rows(dk, b_dkh, rows, i_h, H, m_c, o_k, K)
            _store_rows(dq, b_dqh, rows, i_h, H, m_c, o_k, K)
    if L2NORM and NK > 1:
        # rowsum(dx^ * x^) needs whole rows: a second pass recomputes dx^ (L2-resident tiles, four dots per block)
        for i_k in range(0, NK):
            b_dkh, b_dqh, b_kh, b_qh, b_dla_k, b_deta_k = _dx_block(
                q, k, dp, dqn, dkw, rows, i_h, H, m_c, base, i_k, b_dpk, b_dqk, b_rq, b_rk, b_ea, b_eta, K, C, BK,
                DOT_MODE)
            o_k = i_k * BK + tl.arange(0, BK)
            _store_rows(dk, (b_dkh - b_kh * b_sk[:, None]) * b_rk[:, None], rows, i_h, H, m_c, o_k, K)
            _store_rows(dq, (b_dqh - b_qh * b_sq[:, None]) * b_rq[:, None], rows, i_h, H, m_c, o_k, K)
    if P_ALPHA:
        tl.store(dla + base * C + o_c, b_dla)
    else:
        tl.store(dla + base * C + o_c, tl.zeros([C], dtype=tl.float32))
    tl.store(deta + base * C + o_c, b_deta)


# (BK, num_warps) of the forward kernel and the backward's [C, C] and [C, K] kernels. Measured (H200, bf16, 32768
# tokens, T = 4096, same process; docs/BENCHMARKS.md §1.21), op fwd+bwd ms at H16 K128 V128 / H6 K256 V512 by the
# [C, K] kernel's (BK, warps): (16, 4) 7.69 / 11.03, (32, 4) 7.47 / 10.82-10.86, (64, 4) 7.37 / 10.81, (32, 8) 7.79 /
# 11.21, (64, 8) 7.82 / 11.07, (128, 8) 7.32 / 10.90; the [C, C] kernel at (64, 8) or (32, 8) and the forward at
# (32, 4) or (32, 8) were no faster. sm_90a (ptxas -v, C = 64, bf16): none spills; registers at K 128 / 256: the
# [C, K] kernel 239 / 238, the [C, C] one (which recomputes Gamma from the gates) 236 / 251, the forward 190 / 210.
# These are the tiles for K > 128 (the 1.3B layer's 256) and K <= 64 (one K block of at most 64 already).
QK_CONFIGS = {"fwd": (64, 4), "bwd_cc": (64, 4), "bwd": (64, 4)}
# For 64 < K <= 128 the backward kernels take one K block of 128: the [C, K] one then needs no second pass for the
# L2 norm's row sums. The kernels alone at H16 K128 (§1.29, against the table above in one process): the [C, K]
# backward at (128, 8) 0.956 against 1.015-1.020 ms with (64, 4) and 1.117 at (128, 4); the [C, C] at (128, 4) 0.982
# against 1.017 (1.243 at (128, 8)). The forward at (128, 8) was faster alone (0.320 against 0.331) but slower inside
# the op, launched from inductor's code (0.428 against 0.317 ms, torch profiler; op forward 1.526-1.533 against
# 1.408-1.418, a process each, §1.29), so it stays at (64, 4). The op with these tiles: fwd+bwd 5.951-5.960 against
# 6.035-6.057 ms at H16 K128 V128, T 2048-8192. At K 256 (four blocks of 64) the 128 tiles were slower: [C, K]
# (128, 8) 0.811-0.814 against 0.719-0.720.
QK_CONFIGS_K128 = {"fwd": (64, 4), "bwd_cc": (128, 4), "bwd": (128, 8)}
QK_DIRECTIONS = tuple(QK_CONFIGS)


def shipped_tiles(direction: str, K: int) -> tuple[int, int]:
    """(BK, num_warps) the op ships for one kernel at head dim K: QK_CONFIGS_K128 for 64 < K <= 128, else QK_CONFIGS."""
    return (QK_CONFIGS_K128 if 64 < K <= 128 else QK_CONFIGS)[direction]


def _env_tiles(direction: str) -> tuple[int, int, int] | None:
    """(BK, num_warps, num_stages) of one kernel from MDN_INTRA_QK_CONFIG; None when it is unset."""
    env = os.environ.get("MDN_INTRA_QK_CONFIG", "")
    if not env:
        return None
    try:
        parts = [tuple(int(x) for x in part.split(",")) for part in env.split(";")]
        ok = (len(parts) == 3 and all(p[0] in (16, 32, 64, 128) and p[1] in (1, 2, 4, 8) for p in parts)
              and len(parts[0]) == len(parts[1]) == 2 and parts[2][2:] in ((), (1,), (2,), (3,)))
    except (ValueError, IndexError):
        ok = False
    if not ok:
        raise ValueError(f"MDN_INTRA_QK_CONFIG={env!r}: expected 'BK,warps;BK,warps;BK,warps[,stages]' (forward; "
                         f"backward [C, C]; backward [C, K]) with BK in 16/32/64/128, warps in 1/2/4/8 and stages in "
                         f"1/2/3 (default 1; the [C, K] backward only: the other two unroll their K loops), e.g. "
                         f"'64,4;64,4;32,4,2'")
    bk, nw, *st = parts[QK_DIRECTIONS.index(direction)]
    return bk, nw, (st or [1])[0]


def qk_config(direction: str, K: int) -> tuple[int, int]:
    """(BK, num_warps) of one kernel ("fwd", "bwd_cc" or "bwd") for head dim K (shipped_tiles); MDN_INTRA_QK_CONFIG=
    "BK,warps;BK,warps;BK,warps[,stages]" (in that order, for every K) overrides, for sweeps."""
    bk, nw, _ = _env_tiles(direction) or (*shipped_tiles(direction, K), 1)
    return min(bk, max(16, triton.next_power_of_2(K))), nw


def qk_stages() -> int:
    """num_stages of the [C, K] backward kernel, whose K-block loops are runtime loops (the forward and [C, C] kernels
    unroll theirs, so stages would change nothing there): 1, unpipelined (the tiles are most of its registers),
    unless MDN_INTRA_QK_CONFIG's third field says otherwise. Pipelining did not pay (H200, the backward op alone,
    docs/BENCHMARKS.md §1.29): at H16 K128 (32, 4, 2) 1.089 and (64, 4, 2) 1.123 ms against 1.020 at (64, 4, 1); at
    H6 K256 0.789 / 0.730 against 0.720."""
    tiles = _env_tiles("bwd")
    return tiles[2] if tiles else 1


def _checked(name: str, t: torch.Tensor, shape: tuple, dtype: torch.dtype | None = None) -> torch.Tensor:
    if tuple(t.shape) != shape or (dtype is not None and t.dtype != dtype):
        raise ValueError(f"intra_qk: {name} is {tuple(t.shape)} {t.dtype}; expected {shape}"
                         + (f" {dtype}" if dtype is not None else ""))
    return t.contiguous()


def _intra_qk_fake(q, k, log_alpha, beta, log_mu, eta, gam, chunks, scale, l2norm, p_times_alpha, out_bf16,
                   block_k=0, num_warps=0):
    NC, H, C = log_alpha.shape
    K = q.shape[-1]
    dt = torch.bfloat16 if out_bf16 else torch.float32
    return (*(q.new_empty(NC, H, C, K, dtype=dt) for _ in range(3)), q.new_empty(NC, H, C, C, dtype=torch.float32),
            q.new_empty(NC, H, C, C, dtype=dt), q.new_empty(NC, H, 2, C, dtype=torch.float32))


@kernel_op("mdn::intra_qk", _intra_qk_fake)
def intra_qk_op(q: torch.Tensor, k: torch.Tensor, log_alpha: torch.Tensor, beta: torch.Tensor, log_mu: torch.Tensor,
                eta: torch.Tensor, gam: torch.Tensor, chunks: torch.Tensor, scale: float, l2norm: bool,
                p_times_alpha: bool, out_bf16: bool, block_k: int = 0, num_warps: int = 0) -> tuple[
        torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(P, Q^, K_w, Lmat, Aqk, rstd) of the module docstring from q, k [B, T, H, K] (or [1, T, H, K] for varlen),
    the packed gates log_alpha, beta, log_mu, eta [NC, H, C] (fp32), Gamma [NC, H, C, C] (fp32; the backward
    recomputes it from the gates) and the chunk table [NC, 2] (chunk_table). P, Q^, K_w, Aqk in bf16 (``out_bf16``, bf16 products) or fp32 (ieee products); rstd [NC, H, 2,
    C] fp32 (1 / |q|, 1 / |k|; ones without ``l2norm``) is for the backward and has no gradient. block_k,
    num_warps: the forward kernel's (BK, warps); 0 reads qk_config("fwd", K) here (callers inside torch.compile
    pass them: the body's environment reads are not guarded there, oplib.py)."""
    B, T, H, K = q.shape
    NC, _, C = log_alpha.shape
    if C not in (16, 32, 64):
        raise ValueError(f"intra_qk: chunk size {C}; expected 16, 32 or 64")
    q, k = _checked("q", q, (B, T, H, K)), _checked("k", k, (B, T, H, K))
    la, et = (_checked(nm, t, (NC, H, C), torch.float32) for nm, t in (("log_alpha", log_alpha), ("eta", eta)))
    _checked("beta", beta, (NC, H, C), torch.float32), _checked("log_mu", log_mu, (NC, H, C), torch.float32)
    gam = _checked("gam", gam, (NC, H, C, C), torch.float32)
    chunks = _checked("chunks", chunks, (NC, 2), torch.int32)
    dt = torch.bfloat16 if out_bf16 else torch.float32
    p, qn, kw = (empty(NC, H, C, K, dtype=dt, device=q.device) for _ in range(3))
    lmat = empty(NC, H, C, C, dtype=torch.float32, device=q.device)
    aqk = empty(NC, H, C, C, dtype=dt, device=q.device)
    rstd = empty(NC, H, 2, C, dtype=torch.float32, device=q.device)
    if NC * H:
        BK, num_warps = (block_k, num_warps) if block_k else qk_config("fwd", K)
        wrap_triton(momentum_delta_rule_fwd_kernel_intra_qk)[(NC * H,)](
            q, k, la, et, gam, chunks, p, qn, kw, lmat, aqk, rstd, H, float(scale), K=K, C=C, BK=BK,
            L2NORM=l2norm, P_ALPHA=p_times_alpha, DOT_MODE=_dot_mode(dt), EPS=L2NORM_EPS, num_warps=num_warps,
            num_stages=1)
    return p, qn, kw, lmat, aqk, rstd


@torch.library.custom_op("mdn::intra_qk_grad", mutates_args=())
def intra_qk_grad_op(q: torch.Tensor, k: torch.Tensor, log_alpha: torch.Tensor, beta: torch.Tensor,
                     log_mu: torch.Tensor, eta: torch.Tensor, chunks: torch.Tensor, rstd: torch.Tensor, dp: torch.Tensor,
                     dqn: torch.Tensor, dkw: torch.Tensor, dlmat: torch.Tensor, daqk: torch.Tensor, scale: float,
                     l2norm: bool, p_times_alpha: bool, out_bf16: bool) -> tuple[
        torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dq, dk, dlog_alpha, deta, dGamma) of intra_qk_op (module docstring), from its inputs, its rstd and the
    gradients of P, Q^, K_w, Lmat, Aqk (P, Q^, K_w are recomputed exactly as the forward rounded them, Gamma from
    the gates with TF32 products for bf16 operands, 3xTF32 for fp32)."""
    B, T, H, K = q.shape
    NC, _, C = log_alpha.shape
    ck, cc = (NC, H, C, K), (NC, H, C, C)
    q, k = _checked("q", q, (B, T, H, K)), _checked("k", k, (B, T, H, K))
    la, be, lm, et = (_checked(nm, t, (NC, H, C), torch.float32) for nm, t in (
        ("log_alpha", log_alpha), ("beta", beta), ("log_mu", log_mu), ("eta", eta)))
    chunks = _checked("chunks", chunks, (NC, 2), torch.int32)
    rstd = _checked("rstd", rstd, (NC, H, 2, C), torch.float32)
    dp, dqn, dkw = (_checked(nm, t, ck) for nm, t in (("dp", dp), ("dqn", dqn), ("dkw", dkw)))
    dlmat, daqk = _checked("dlmat", dlmat, cc), _checked("daqk", daqk, cc)
    dt = torch.bfloat16 if out_bf16 else torch.float32
    dq, dk = (empty(B, T, H, K, dtype=q.dtype, device=q.device) for _ in range(2))
    dla, deta = (empty(NC, H, C, dtype=torch.float32, device=q.device) for _ in range(2))
    dgam = empty(NC, H, C, C, dtype=torch.float32, device=q.device)
    dpk, dqk = (empty(NC, H, C, C, dtype=dt, device=q.device) for _ in range(2))  # the dots' operands
    if NC * H:
        dot_mode = _dot_mode(dt)
        BK, num_warps = qk_config("bwd_cc", K)
        momentum_delta_rule_bwd_kernel_intra_qk_cc[(NC * H,)](
            q, k, la, be, lm, et, chunks, rstd, dlmat, daqk, dgam, dpk, dqk, H, float(scale), K=K, C=C, BK=BK,
            P_ALPHA=p_times_alpha, DOT_MODE=dot_mode, GAM_PREC="tf32" if out_bf16 else "tf32x3", num_warps=num_warps,
            num_stages=1)
        BK, num_warps = qk_config("bwd", K)
        momentum_delta_rule_bwd_kernel_intra_qk[(NC * H,)](
            q, k, la, et, chunks, rstd, dp, dqn, dkw, dpk, dqk, dq, dk, dla, deta, H, K=K, C=C, BK=BK,
            L2NORM=l2norm, P_ALPHA=p_times_alpha, DOT_MODE=dot_mode, num_warps=num_warps,
            num_stages=qk_stages())
    return dq, dk, dla, deta, dgam


@intra_qk_grad_op.register_fake
def _(q, k, log_alpha, beta, log_mu, eta, chunks, rstd, dp, dqn, dkw, dlmat, daqk, scale, l2norm, p_times_alpha,
      out_bf16):
    return (torch.empty_like(q), torch.empty_like(q), torch.empty_like(log_alpha), torch.empty_like(log_alpha),
            torch.empty_like(dlmat, dtype=torch.float32))


def _setup_context(ctx, inputs, output):
    q, k, la, be, lm, eta, gam, chunks, scale, l2norm, p_alpha, out_bf16 = inputs[:12]
    ctx.save_for_backward(q, k, la, be, lm, eta, chunks, output[5])  # not Gamma: the backward recomputes it
    ctx.args = (scale, l2norm, p_alpha, out_bf16)
    ctx.ck = (*la.shape, q.shape[-1])
    ctx.dt = torch.bfloat16 if out_bf16 else torch.float32


def _backward(ctx, dp, dqn, dkw, dlmat, daqk, _drstd):
    q, k, la, be, lm, eta, chunks, rstd = ctx.saved_tensors
    # outputs that took no part in the loss come back as None
    dp, dqn, dkw = (torch.zeros(ctx.ck, dtype=ctx.dt, device=q.device) if g is None else g for g in (dp, dqn, dkw))
    cc = (*la.shape, la.shape[-1])
    dlmat, daqk = (torch.zeros(cc, dtype=torch.float32, device=q.device) if g is None else g for g in (dlmat, daqk))
    dq, dk, dla, deta, dgam = intra_qk_grad_op(q, k, la, be, lm, eta, chunks, rstd, dp, dqn, dkw, dlmat, daqk,
                                               *ctx.args)
    return dq, dk, dla, None, None, deta, dgam, None, None, None, None, None, None, None


intra_qk_op.register_autograd(_backward, setup_context=_setup_context)
