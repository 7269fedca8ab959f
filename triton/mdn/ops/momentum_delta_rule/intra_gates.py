"""The intra part's gate coefficients (README §1) as one Triton kernel per direction, a custom op with its own
backward, in place of the torch graph of cumsums, masked segment sums, exps and the fp32 [C, C] GEMM (default on
CUDA at C <= 64, MDN_INTRA_GATES=auto). Per (chunk, head), from log alpha, beta, log mu [C]:

    a = exp(cumsum la),  m = exp(cumsum lm)
    L_a = exp(segsum la),  L_m = exp(segsum lm)            (masked BEFORE exp: every entry in [0, 1])
    Gamma = (L_a D(beta)) L_m,  b = L_a (beta m),  l_m = L_m[C-1, :]

Only a, m, b, l_m [C] and Gamma [C, C] are stored (the intra part reads L_m's last row only). The backward
recomputes L_a, L_m from the gates and, given da, dm, db, dl_m and dGamma:

    X = L_a D(beta):  dX = dGamma L_m^T,  dL_m = X^T dGamma + e_{C-1} dl_m^T
    dL_a = dX D(beta) + db (beta m)^T,  dbeta = colsum(dX * L_a) + m * (L_a^T db),  dm += beta * (L_a^T db)
    segsum: dla[l] += sum_{t >= l} sum_{i < l} (dL_a * L_a)[t, i]   (and lm from L_m)
    cumsum: dla[l] += sum_{t >= l} da[t] a[t]                        (and lm from dm m)

The two [C, C] products of the backward and Gamma take 3xTF32 dots (tensor cores, ~fp32 accuracy), as the
triangular inverse's backward does (tril_inverse.py), or TF32 for 16-bit inputs. The backward also forms the
segment sums and their gradients' row prefix sums as products with 0/1 triangles (MDN_GATES_SEGSUM, segsum_dot), in
two TF32 parts that keep ~22 bits (_dot_exact_b); the forward keeps cumulative sums, which were faster there.
Checked against torch autograd of the torch graph in tests/ops/test_intra_gates.py.
"""
from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from . import _triton_compat  # noqa: F401  (interpreter + NumPy >= 2.4)
from .alloc import empty
from .knobs import env_choice
from .oplib import kernel_op, wrap_triton

INTRA_GATES_MODES = ("auto", "torch", "kernel")
SEGSUM_MODES = ("auto", "cumsum", "dot")


def intra_gates_mode() -> str:
    """MDN_INTRA_GATES: "auto" (default: the kernels for fp32 CUDA tensors at C <= 64, the torch graph elsewhere,
    the CPU interpreter included), "torch" or "kernel" (the kernels wherever they can run: fp32, C <= 64, CUDA or
    the interpreter). Read when the intra part is traced: one value per process under torch.compile."""
    return env_choice("MDN_INTRA_GATES", INTRA_GATES_MODES, "auto")


def segsum_dot(direction: str) -> bool:
    """MDN_GATES_SEGSUM: whether the gate kernel of ``direction`` ("fwd" or "bwd") forms the [C, C] segment sums
    (and, backward, their gradients' row prefix sums) as products with 0/1 triangles on tensor cores (_segsum_dot,
    _dot_exact_b) instead of cumulative sums over the tile's rows or columns. "auto" (default): the backward only;
    "cumsum": neither; "dot": both. Measured alone (one H200, C = 64, TF32, docs/BENCHMARKS.md §1.27), ms at the
    shipped warps: backward 0.481 -> 0.422 (8192 programs) and 0.184 -> 0.164 (3072), forward 0.119 -> 0.152 (slower:
    its two cumsums cost less than the products' layout changes). Read at each launch of the backward and when the
    forward is traced (one value per process under torch.compile)."""
    mode = env_choice("MDN_GATES_SEGSUM", SEGSUM_MODES, "auto")
    return mode == "dot" or (mode == "auto" and direction == "bwd")


def kernel_applies(x: torch.Tensor, mode: str, tf32: bool) -> bool:
    """Whether the gate coefficients of x ([..., C] fp32 gates) take the kernels under ``mode``; ``tf32``: the op's
    inputs are 16-bit, so that TF32 products are good enough (auto takes the kernels only then)."""
    C = x.shape[-1]
    runs = x.dtype == torch.float32 and C in (16, 32, 64)  # (== rather than !=: dynamo traces dtype equality)
    if mode == "auto":
        return runs and x.is_cuda and tf32
    return runs and mode == "kernel" and (x.is_cuda or os.environ.get("TRITON_INTERPRET", "0") == "1")


@triton.jit
def _gate_matrices(log_alpha, beta, log_mu, p_g, C: tl.constexpr, SEGSUM_DOT: tl.constexpr = False):
    """From one (chunk, head)'s gates at p_g ([C] pointers): la, beta, a, m [C] and L_a, L_m [C, C] (fp32). Shared
    with the fused intra kernels (chunk_intra_fwd._intra_gates). SEGSUM_DOT: the segment sums as products on tensor
    cores (_segsum_dot) instead of [C, C] cumulative sums."""
    o_c = tl.arange(0, C)
    m_lower = o_c[:, None] >= o_c[None, :]                   # [C(t), C(i)] t >= i
    m_strict = o_c[:, None] > o_c[None, :]
    b_la = tl.load(log_alpha + p_g).to(tl.float32)           # [C]
    b_lm = tl.load(log_mu + p_g).to(tl.float32)
    b_beta = tl.load(beta + p_g).to(tl.float32)
    b_a = tl.exp(tl.cumsum(b_la, 0))                         # [C] a_t
    b_m = tl.exp(tl.cumsum(b_lm, 0))                         # [C] m_t
    # segment sums out[t, i] = sum_{i < l <= t} x_l, masked before exp (every entry of L in [0, 1])
    if SEGSUM_DOT:
        s_a = _segsum_dot(b_la, C)
        s_m = _segsum_dot(b_lm, C)
    else:  # masked cumulative sum over l (rows)
        zero_cc = tl.zeros([C, C], dtype=tl.float32)
        s_a = tl.cumsum(tl.where(m_strict, b_la[:, None] + zero_cc, 0.), 0)   # [C(t), C(i)]
        s_m = tl.cumsum(tl.where(m_strict, b_lm[:, None] + zero_cc, 0.), 0)
    b_La = tl.exp(tl.where(m_lower, s_a, float('-inf')))    # [C, C] a_t / a_i, t >= i
    b_Lm = tl.exp(tl.where(m_lower, s_m, float('-inf')))    # [C, C] m_i / m_j, i >= j
    return b_la, b_beta, b_a, b_m, b_La, b_Lm


@triton.jit
def _dot_exact_b(a, b):
    """a b for fp32 a and a b exact in TF32 (here 0/1 triangles) in two TF32 products: a = a_hi + a_lo with a_hi
    a's top 11 mantissa bits (exact in TF32) and a_lo = a - a_hi (exact in fp32), so each term keeps ~22 of fp32's
    24 bits. Triton's "tf32x3" does the same in three products, but holds more [C, C] tiles: at C = 64 it spilled
    1.2-3.9 KB per thread on sm_90 (4 warps), this 0 (forward) and 144 bytes (backward)."""
    a_hi = (a.to(tl.int32, bitcast=True) & -8192).to(tl.float32, bitcast=True)   # clear the low 13 bits
    acc = tl.dot(a - a_hi, b, input_precision="tf32")
    return tl.dot(a_hi, b, acc, input_precision="tf32")


@triton.jit
def _segsum_dot(x, C: tl.constexpr):
    """[C, C] segment sums s[t, i] = sum_{i < l <= t} x_l (t > i; the rest is masked by the caller) as one product
    (D-scaled lower triangle) x (strict lower 0/1 triangle): s = (T_incl D(x)) T_strict, on tensor cores
    (_dot_exact_b: ~22 of fp32's 24 bits per term, summed in fp32; the layer's log-gates are <= 0, so the terms of a
    sum share their sign and nothing cancels). A [C, C] cumsum over rows (the other form) runs as warp shuffles and
    shared-memory passes on the CUDA cores instead."""
    o_c = tl.arange(0, C)
    # log-gates of -inf (a gate of exactly 0: mu = 0 is the gated delta rule) would make -inf * 0 = NaN in the
    # product; below -1e4 every sum holding the term underflows exp() to 0 as the cumsum's -inf does
    x = tl.where(x < -1e4, -1e4, x)
    b_lx = tl.where(o_c[:, None] >= o_c[None, :], x[None, :], 0.)      # [C(t), C(l)] x_l, l <= t
    b_tri = tl.where(o_c[:, None] > o_c[None, :], 1., 0.)              # [C(l), C(i)] l > i
    return _dot_exact_b(b_lx, b_tri)


@triton.jit
def momentum_delta_rule_fwd_kernel_intra_gates(
    log_alpha, beta, log_mu,       # [NC * H, C]
    a, m, b, lm_last,              # [NC * H, C]
    gam,                           # [NC * H, C, C]
    C: tl.constexpr,
    PREC: tl.constexpr,            # input_precision of the [C, C] product: "tf32" or "tf32x3"
    SEGSUM_DOT: tl.constexpr = False,  # the segment sums as products (_segsum_dot; MDN_GATES_SEGSUM)
):
    """a, m, b, L_m[C-1] and Gamma of one (chunk, head) per program."""
    i_n = tl.program_id(0).to(tl.int64)
    o_c = tl.arange(0, C)
    p_g = i_n * C + o_c
    _, b_beta, b_a, b_m, b_La, b_Lm = _gate_matrices(log_alpha, beta, log_mu, p_g, C, SEGSUM_DOT)
    b_gam = tl.dot(b_La * b_beta[None, :], b_Lm, input_precision=PREC)   # [C, C] Gamma = L_a D(beta) L_m
    b_b = tl.sum(b_La * (b_beta * b_m)[None, :], 1)                           # [C] b = L_a (beta m)
    tl.store(a + p_g, b_a)
    tl.store(m + p_g, b_m)
    tl.store(b + p_g, b_b)
    tl.store(lm_last + p_g, tl.sum(tl.where(o_c[:, None] == C - 1, b_Lm, 0.), 0))
    tl.store(gam + i_n * C * C + o_c[:, None] * C + o_c[None, :], b_gam)


@triton.jit
def momentum_delta_rule_bwd_kernel_intra_gates(
    log_alpha, beta, log_mu,       # [NC * H, C]
    da, dm, db, dlm_last,          # [NC * H, C]
    dgam,                          # [NC * H, C, C]
    dlog_alpha, dbeta, dlog_mu,    # [NC * H, C]
    C: tl.constexpr,
    PREC: tl.constexpr,            # input_precision of the [C, C] products: "tf32" or "tf32x3"
    SEGSUM_DOT: tl.constexpr = False,  # the segment sums and their gradients as products (MDN_GATES_SEGSUM)
):
    """The gates' gradients of one (chunk, head) per program (module docstring)."""
    i_n = tl.program_id(0).to(tl.int64)
    o_c = tl.arange(0, C)
    m_lower = o_c[:, None] >= o_c[None, :]
    p_g = i_n * C + o_c
    _, b_beta, b_a, b_m, b_La, b_Lm = _gate_matrices(log_alpha, beta, log_mu, p_g, C, SEGSUM_DOT)
    b_dgam = tl.load(dgam + i_n * C * C + o_c[:, None] * C + o_c[None, :]).to(tl.float32)   # [C, C]
    b_db = tl.load(db + p_g).to(tl.float32)                                                 # [C]
    b_X = b_La * b_beta[None, :]                                                            # [C, C]
    b_dX = tl.dot(b_dgam, tl.trans(b_Lm), input_precision=PREC)                         # [C, C]
    b_dLm = tl.dot(tl.trans(b_X), b_dgam, input_precision=PREC)                         # [C, C]
    b_dLm += tl.where(o_c[:, None] == C - 1, tl.load(dlm_last + p_g).to(tl.float32)[None, :], 0.)
    b_y = tl.sum(b_db[:, None] * b_La, 0)                                                   # [C] L_a^T db
    b_dm = tl.load(dm + p_g).to(tl.float32) + b_beta * b_y
    b_da = tl.load(da + p_g).to(tl.float32)
    # segment sums: d x[l] = sum_{t >= l} sum_{i < l} dS[t, i] with dS = dL * L (zero above the diagonal), and
    # the cumsums: d x[l] += sum_{t >= l} d(exp(cumsum x))[t] exp(cumsum x)[t]
    if SEGSUM_DOT:  # the row prefix sums sum_{i < l} dS[t, i] as dS T_upper (strict upper 0/1), _dot_exact_b;
        # the L_m branch to its end first, so that fewer [C, C] tiles are live at once
        b_triu = tl.where(o_c[:, None] < o_c[None, :], 1., 0.)                              # [C(i), C(l)] i < l
        b_pm = _dot_exact_b(b_dLm * b_Lm, b_triu) + (b_dm * b_m)[:, None]                   # [C(t), C(l)]
        b_dlm = tl.sum(tl.where(m_lower, b_pm, 0.), 0)
        b_dLa = b_dX * b_beta[None, :] + b_db[:, None] * (b_beta * b_m)[None, :]
        b_dbeta = tl.sum(b_dX * b_La, 0) + b_m * b_y
        b_pa = _dot_exact_b(b_dLa * b_La, b_triu) + (b_da * b_a)[:, None]
        b_dla = tl.sum(tl.where(m_lower, b_pa, 0.), 0)
    else:
        b_dLa = b_dX * b_beta[None, :] + b_db[:, None] * (b_beta * b_m)[None, :]
        b_dbeta = tl.sum(b_dX * b_La, 0) + b_m * b_y
        b_dSa = b_dLa * b_La
        b_dSm = b_dLm * b_Lm
        b_dla = tl.sum(tl.where(m_lower, tl.cumsum(b_dSa, 1) - b_dSa, 0.), 0)
        b_dlm = tl.sum(tl.where(m_lower, tl.cumsum(b_dSm, 1) - b_dSm, 0.), 0)
        b_dla += tl.sum(tl.where(m_lower, (b_da * b_a)[:, None], 0.), 0)
        b_dlm += tl.sum(tl.where(m_lower, (b_dm * b_m)[:, None], 0.), 0)
    tl.store(dlog_alpha + p_g, b_dla)
    tl.store(dbeta + p_g, b_dbeta)
    tl.store(dlog_mu + p_g, b_dlm)


# Warps per (chunk, head) program, forward and backward. Measured alone (one H200, C = 64, TF32, 8192 programs as at
# H16 K128 V128 and 32768 tokens; docs/BENCHMARKS.md §1.23), us at 2 / 4 / 8 warps: forward 120 / 164 / 211,
# backward 713 / 484 / 576 (3072 programs, H6 K256 V512: 51 / 66 / 84 and 280 / 185 / 223). 8 before.
GATE_WARPS = {"fwd": 2, "bwd": 4}


def _prec(tf32: bool) -> str:
    return "tf32" if tf32 else "tf32x3"


def _check(name: str, t: torch.Tensor, shape: tuple) -> torch.Tensor:
    if t.shape != shape or t.dtype != torch.float32:
        raise ValueError(f"intra_gates: {name} is {tuple(t.shape)} {t.dtype}; expected {shape} torch.float32")
    return t.contiguous()


def _intra_gates_fake(log_alpha, beta, log_mu, tf32):
    return (*(torch.empty_like(log_alpha) for _ in range(4)),
            log_alpha.new_empty(*log_alpha.shape, log_alpha.shape[-1]))


@kernel_op("mdn::intra_gates", _intra_gates_fake)
def intra_gates_op(log_alpha: torch.Tensor, beta: torch.Tensor, log_mu: torch.Tensor, tf32: bool) -> tuple[
        torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(a, m, b, L_m[C-1], Gamma) from fp32 gates [..., C], C in 16, 32, 64 (module docstring); the [C, C]
    products in TF32 (``tf32``) or 3xTF32."""
    shape = tuple(log_alpha.shape)
    C = shape[-1]
    if C not in (16, 32, 64):
        raise ValueError(f"intra_gates: chunk size {C}; expected 16, 32 or 64")
    la, be, lm = (_check(n, t, shape) for n, t in (("log_alpha", log_alpha), ("beta", beta), ("log_mu", log_mu)))
    a, m, b, lm_last = (empty(*shape, dtype=torch.float32, device=la.device) for _ in range(4))
    gam = empty(*shape, C, dtype=torch.float32, device=la.device)
    n = la.numel() // C
    if n:
        wrap_triton(momentum_delta_rule_fwd_kernel_intra_gates)[(n,)](
            la, be, lm, a, m, b, lm_last, gam, C=C, PREC=_prec(tf32), SEGSUM_DOT=segsum_dot("fwd"),
            num_warps=GATE_WARPS["fwd"])
    return a, m, b, lm_last, gam


@torch.library.custom_op("mdn::intra_gates_grad", mutates_args=())
def intra_gates_grad_op(log_alpha: torch.Tensor, beta: torch.Tensor, log_mu: torch.Tensor, da: torch.Tensor,
                        dm: torch.Tensor, db: torch.Tensor, dlm_last: torch.Tensor, dgam: torch.Tensor,
                        tf32: bool) -> tuple[
        torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dlog_alpha, dbeta, dlog_mu) of intra_gates_op (module docstring)."""
    shape = tuple(log_alpha.shape)
    C = shape[-1]
    args = [_check(n, t, shape) for n, t in (("log_alpha", log_alpha), ("beta", beta), ("log_mu", log_mu),
                                              ("da", da), ("dm", dm), ("db", db), ("dlm_last", dlm_last))]
    dgam = _check("dgam", dgam, shape + (C,))
    outs = [empty(*shape, dtype=torch.float32, device=log_alpha.device) for _ in range(3)]
    n = log_alpha.numel() // C
    if n:
        momentum_delta_rule_bwd_kernel_intra_gates[(n,)](*args, dgam, *outs, C=C, PREC=_prec(tf32),
                                                         SEGSUM_DOT=segsum_dot("bwd"),
                                                         num_warps=GATE_WARPS["bwd"])
    return tuple(outs)


@intra_gates_grad_op.register_fake
def _(log_alpha, beta, log_mu, da, dm, db, dlm_last, dgam, tf32):
    return tuple(torch.empty_like(log_alpha) for _ in range(3))


def _setup_context(ctx, inputs, output):
    ctx.save_for_backward(*inputs[:3])
    ctx.tf32 = inputs[3]


def _backward(ctx, da, dm, db, dlm_last, dgam):
    la, be, lm = ctx.saved_tensors
    # outputs that took no part in the loss come back as None
    da, dm, db, dlm_last = (torch.zeros_like(la) if g is None else g.float() for g in (da, dm, db, dlm_last))
    dgam = torch.zeros(*la.shape, la.shape[-1], dtype=torch.float32, device=la.device) if dgam is None else dgam.float()
    return (*intra_gates_grad_op(la, be, lm, da, dm, db, dlm_last, dgam, ctx.tf32), None)


intra_gates_op.register_autograd(_backward, setup_context=_setup_context)
