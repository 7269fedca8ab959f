"""A = (I + N)^-1 for a batch of strictly lower triangular [C, C] matrices N (the intra part's triangular system,
README §2), and its backward, as Triton kernels: the default on CUDA (MDN_TRIL_INV=auto) in place of
torch.linalg.solve_triangular, whose batched cuBLAS trsm took 0.82 + 0.81 ms (forward + backward) of a 13.1 ms
fwd+bwd at H16 K128 V128 on the H200 (docs/BENCHMARKS.md §1.11).

One program inverts one matrix, in fp32, by the operations of a blocked triangular solve (no powers of N, nothing
that cancels). Two forms (MDN_TRIL_INV_FWD):

    blocks (C <= 64, default)  the C / 16 diagonal 16 x 16 blocks by forward substitution, their chains interleaved
              in one loop, X[i, :] = e_i - N[i, :i] X[:i, :] (row i of N read from memory), then the blocks below
              by block forward substitution X_ij = -X_ii sum_{j<=k<i} N_ik X_kj, all in registers, one store
    levels    all diagonal blocks as one [C / 16, 16, 16] tensor, then pairs of inverted blocks of size S merged
              level by level into 2S, X21 = -X22 (N21 X11), each level written out and read back (every C;
              the only form at C = 128)

H100, 8192 matrices (H16 heads at 32768 tokens), C = 64: blocks 0.171 ms, levels 0.438 (§1.20).
The backward, dN = -tril(A^T dA A^T, -1) (MDN_TRIL_INV_BWD): one kernel with 3xTF32 dots (C <= 64, default;
0.350 ms against 0.567 for two batched fp32 cuBLAS GEMMs at 8192 matrices), or the GEMMs. Both run as custom ops,
opaque to torch.compile, so their knobs are read when they run.
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

TRIL_INV_MODES = ("auto", "solve", "triton")
TRIL_INV_FWD = ("auto", "blocks", "levels")
TRIL_INV_BWD = ("auto", "gemm", "kernel")


def tril_inv_mode() -> str:
    """MDN_TRIL_INV: "auto" (default: this file's kernel on CUDA, the solve elsewhere, the CPU interpreter included,
    where the kernel is slow), "solve" (torch.linalg.solve_triangular) or "triton" (the kernel wherever it can run).
    Also checks the kernel's own knobs, MDN_TRIL_INV_FWD and MDN_TRIL_INV_BWD, so that a bad value fails before
    anything runs (they are read again when the kernels launch)."""
    env_choice("MDN_TRIL_INV_FWD", TRIL_INV_FWD, "auto")
    env_choice("MDN_TRIL_INV_BWD", TRIL_INV_BWD, "auto")
    return env_choice("MDN_TRIL_INV", TRIL_INV_MODES, "auto")


@triton.jit
def _merge_level(n, a, base, C: tl.constexpr, S: tl.constexpr):
    """One merge level: for every pair of inverted diagonal S x S blocks X11, X22 of a, the block below them,
    X21 = -X22 (N21 X11), completing the 2S x 2S inverse."""
    o_s = tl.arange(0, S)
    for pr in tl.static_range(C // (2 * S)):
        r0 = pr * 2 * S
        b_x11 = tl.load(a + base + (r0 + o_s[:, None]) * C + r0 + o_s[None, :])              # [S, S]
        b_x22 = tl.load(a + base + (r0 + S + o_s[:, None]) * C + r0 + S + o_s[None, :])      # [S, S]
        b_n21 = tl.load(n + base + (r0 + S + o_s[:, None]) * C + r0 + o_s[None, :]).to(tl.float32)
        b_t = tl.dot(b_n21, b_x11, input_precision="ieee")
        b_x21 = -tl.dot(b_x22, b_t, input_precision="ieee")
        tl.store(a + base + (r0 + S + o_s[:, None]) * C + r0 + o_s[None, :], b_x21)


@triton.jit
def momentum_delta_rule_fwd_kernel_tril_inverse(
    n, a,
    C: tl.constexpr,
    LEVELS: tl.constexpr,
    NB: tl.constexpr,  # C // 16 diagonal blocks
):
    """a[i] = (I + n[i])^-1 for one [C, C] matrix per program (n strictly lower; a's upper triangle zeroed)."""
    i_b = tl.program_id(0).to(tl.int64)
    base = i_b * C * C
    o16 = tl.arange(0, 16)
    # the upper triangle of a is zero: every block above the diagonal blocks of level 0
    o_c = tl.arange(0, C)
    upper = o_c[:, None] < o_c[None, :]
    tl.store(a + base + o_c[:, None] * C + o_c[None, :], tl.zeros([C, C], dtype=tl.float32),
             mask=upper & ((o_c[:, None] // 16) != (o_c[None, :] // 16)))
    # level 0: all C / 16 diagonal 16 x 16 blocks at once, as one [NB, 16, 16] tensor, by forward substitution:
    # 15 dependent steps per matrix instead of 15 per block (one block after the other took 0.53 ms for 8192
    # matrices at C = 64 on an H200, the kernel's whole time being these latency-bound steps)
    o_b = tl.arange(0, NB)
    rows = o_b[:, None, None] * 16 + o16[None, :, None]  # [NB, 16, 1]
    cols = o_b[:, None, None] * 16 + o16[None, None, :]  # [NB, 1, 16]
    i_row = o16[None, :, None] + o_b[:, None, None] * 0  # [NB, 16, 1] row index inside the block
    b_d = tl.load(n + base + rows * C + cols, mask=i_row > o16[None, None, :], other=0.).to(tl.float32)
    b_x = (i_row == o16[None, None, :]).to(tl.float32)   # [NB, 16, 16] identity blocks
    for i in tl.static_range(1, 16):
        # row i of every block D, as vectors over the columns l, then -sum_l D[i, l] X[l, :]
        b_di = tl.sum(tl.where(i_row == i, b_d, 0.), 1)      # [NB, 16] over l
        b_row = -tl.sum(b_di[:, :, None] * b_x, 1)           # [NB, 16] over columns
        b_x = tl.where(i_row == i, b_x + b_row[:, None, :], b_x)
    tl.store(a + base + rows * C + cols, b_x)
    # levels 1..: merge pairs of inverted diagonal blocks of size S into blocks of size 2S
    for lev in tl.static_range(1, LEVELS):
        tl.debug_barrier()  # the previous level's stores are read back
        _merge_level(n, a, base, C, 16 * (1 << (lev - 1)))


@triton.jit
def _diag_row(n, base, Y, r0, i, C: tl.constexpr):
    """Row i of the inverted diagonal block at (r0, r0), minus the identity: -N[i, :i] X[:i, :] with X = I + Y."""
    o16 = tl.arange(0, 16)
    b_r = -tl.load(n + base + (r0 + i) * C + r0 + o16, mask=o16 < i, other=0.).to(tl.float32)  # [16] -N[i, l]
    b_r += tl.sum(b_r[:, None] * Y, 0)                                                        # [16] -N[i] X
    return tl.where((o16 == i)[:, None], b_r[None, :], Y)


@triton.jit
def _load_block(n, base, r0, c0, C: tl.constexpr):
    o16 = tl.arange(0, 16)
    return tl.load(n + base + (r0 + o16[:, None]) * C + c0 + o16[None, :]).to(tl.float32)  # [16, 16]


@triton.jit
def _store_block(a, base, r0, c0, x, C: tl.constexpr):
    o16 = tl.arange(0, 16)
    tl.store(a + base + (r0 + o16[:, None]) * C + c0 + o16[None, :], x)


@triton.jit
def momentum_delta_rule_fwd_kernel_tril_inverse_blocks(
    n, a,
    C: tl.constexpr,
    NB: tl.constexpr,  # C // 16 diagonal blocks: 1, 2 or 4
):
    """a[i] = (I + n[i])^-1 for one [C, C] matrix per program (C <= 64), every block in registers.

    The NB diagonal 16 x 16 blocks X_bb = (I + N_bb)^-1 by forward substitution, the NB chains interleaved in one
    loop (one [16]-row load and one reduction per row and block; the rows are read from memory, not extracted
    from a register tile); then the blocks below by block forward substitution, X_ij = -X_ii sum_{j<=k<i} N_ik
    X_kj (16-wide fp32 dots), and one store of every block: no level is written out and read back."""
    i_b = tl.program_id(0).to(tl.int64)
    base = i_b * C * C
    o16 = tl.arange(0, 16)
    strict = o16[:, None] > o16[None, :]
    eye = (o16[:, None] == o16[None, :]).to(tl.float32)
    zero = tl.zeros([16, 16], dtype=tl.float32)
    # Y_bb = X_bb - I, started as -N_bb (rows 0 and 1 are final: X_1 = e_1 - N_10 e_0)
    y1 = -tl.where(strict, _load_block(n, base, 0, 0, C), 0.)
    if NB >= 2:
        y2 = -tl.where(strict, _load_block(n, base, 16, 16, C), 0.)
    if NB >= 4:
        y3 = -tl.where(strict, _load_block(n, base, 32, 32, C), 0.)
        y4 = -tl.where(strict, _load_block(n, base, 48, 48, C), 0.)
    for i in range(2, 16):
        y1 = _diag_row(n, base, y1, 0, i, C)
        if NB >= 2:
            y2 = _diag_row(n, base, y2, 16, i, C)
        if NB >= 4:
            y3 = _diag_row(n, base, y3, 32, i, C)
            y4 = _diag_row(n, base, y4, 48, i, C)
    x11 = y1 + eye
    _store_block(a, base, 0, 0, x11, C)
    if NB >= 2:
        x22 = y2 + eye
        x21 = -tl.dot(x22, tl.dot(_load_block(n, base, 16, 0, C), x11, input_precision="ieee"),
                      input_precision="ieee")
        _store_block(a, base, 0, 16, zero, C)
        _store_block(a, base, 16, 0, x21, C)
        _store_block(a, base, 16, 16, x22, C)
    if NB >= 4:
        x33 = y3 + eye
        x44 = y4 + eye
        n31 = _load_block(n, base, 32, 0, C)
        n32 = _load_block(n, base, 32, 16, C)
        x32 = -tl.dot(x33, tl.dot(n32, x22, input_precision="ieee"), input_precision="ieee")
        x31 = -tl.dot(x33, tl.dot(n31, x11, input_precision="ieee") + tl.dot(n32, x21, input_precision="ieee"),
                      input_precision="ieee")
        n41 = _load_block(n, base, 48, 0, C)
        n42 = _load_block(n, base, 48, 16, C)
        n43 = _load_block(n, base, 48, 32, C)
        x43 = -tl.dot(x44, tl.dot(n43, x33, input_precision="ieee"), input_precision="ieee")
        x42 = -tl.dot(x44, tl.dot(n42, x22, input_precision="ieee") + tl.dot(n43, x32, input_precision="ieee"),
                      input_precision="ieee")
        x41 = -tl.dot(x44, tl.dot(n41, x11, input_precision="ieee") + tl.dot(n42, x21, input_precision="ieee")
                      + tl.dot(n43, x31, input_precision="ieee"), input_precision="ieee")
        for c0 in tl.static_range(32, 64, 16):
            _store_block(a, base, 0, c0, zero, C)
            _store_block(a, base, 16, c0, zero, C)
        _store_block(a, base, 32, 48, zero, C)
        _store_block(a, base, 32, 0, x31, C)
        _store_block(a, base, 32, 16, x32, C)
        _store_block(a, base, 32, 32, x33, C)
        _store_block(a, base, 48, 0, x41, C)
        _store_block(a, base, 48, 16, x42, C)
        _store_block(a, base, 48, 32, x43, C)
        _store_block(a, base, 48, 48, x44, C)


@triton.jit
def momentum_delta_rule_bwd_kernel_tril_inverse(
    a, da, dn,
    C: tl.constexpr,
):
    """dn[i] = -tril(A^T dA A^T, -1) for one [C, C] matrix per program (C <= 64): both products in registers with
    3xTF32 dots (tensor cores, ~fp32 accuracy: 2.2e-7 relative to fp64 at C = 64), only the strictly lower part
    stored (zeros above). fp32 FMA dots ("ieee") spill at any num_warps and were slower than cuBLAS on an H100
    (docs/BENCHMARKS.md §1.20)."""
    i_b = tl.program_id(0).to(tl.int64)
    base = i_b * C * C
    o_c = tl.arange(0, C)
    p = base + o_c[:, None] * C + o_c[None, :]
    b_at = tl.trans(tl.load(a + p).to(tl.float32))                     # [C, C] A^T
    b_da = tl.load(da + p).to(tl.float32)                              # [C, C]
    b_g = tl.dot(b_at, b_da, input_precision="tf32x3")                 # [C, C] A^T dA
    b_dn = -tl.dot(b_g, b_at, input_precision="tf32x3")                # [C, C] -A^T dA A^T
    tl.store(dn + p, tl.where(o_c[:, None] > o_c[None, :], b_dn, 0.))


def _fwd_variant(C: int) -> str:
    """MDN_TRIL_INV_FWD: "blocks" (every block in registers; C <= 64), "levels" (merge levels through memory;
    every C); "auto" (default): blocks where it applies."""
    v = env_choice("MDN_TRIL_INV_FWD", TRIL_INV_FWD, "auto")
    return "levels" if C > 64 else ("blocks" if v == "auto" else v)


def _bwd_variant(C: int) -> str:
    """MDN_TRIL_INV_BWD: "kernel" (one Triton kernel, 3xTF32 dots; C <= 64), "gemm" (two batched cuBLAS fp32
    GEMMs); "auto" (default): the kernel where it applies."""
    v = env_choice("MDN_TRIL_INV_BWD", TRIL_INV_BWD, "auto")
    return "gemm" if C > 64 else ("kernel" if v == "auto" else v)


# num_warps of the "blocks" inverse: one warp per matrix was fastest on an H100 at C = 64 and 32 (8192 matrices:
# 0.171 ms at 1 warp, 0.287 at 2, 0.326 at 4, against 0.438 for "levels"; docs/BENCHMARKS.md §1.20), although
# ptxas spills ~0.5 KB at C = 64 and one warp
BLOCKS_WARPS = 1


def tril_inverse_triton(n: torch.Tensor, variant: str | None = None, num_warps: int | None = None) -> torch.Tensor:
    """(I + n)^-1 for n [..., C, C] strictly lower triangular (only the strictly lower part is read), fp32, with
    C in {16, 32, 64, 128}. ``variant``: "blocks" or "levels" (default: MDN_TRIL_INV_FWD)."""
    C = n.shape[-1]
    if n.shape[-2] != C or C not in (16, 32, 64, 128):
        raise ValueError(f"tril_inverse: expected [..., C, C] with C in 16, 32, 64, 128, got {tuple(n.shape)}")
    if n.dtype != torch.float32:
        raise ValueError(f"tril_inverse: expected float32, got {n.dtype}")
    variant = variant or _fwd_variant(C)
    nf = n.reshape(-1, C, C).contiguous()
    a = empty(*nf.shape, dtype=torch.float32, device=nf.device)  # NaN under MDN_POISON_OUTPUTS=1
    if nf.shape[0]:
        if variant == "blocks" and C <= 64:
            wrap_triton(momentum_delta_rule_fwd_kernel_tril_inverse_blocks)[(nf.shape[0],)](
                nf, a, C=C, NB=C // 16, num_warps=num_warps or BLOCKS_WARPS)
        else:
            levels = {16: 1, 32: 2, 64: 3, 128: 4}[C]
            wrap_triton(momentum_delta_rule_fwd_kernel_tril_inverse)[(nf.shape[0],)](
                nf, a, C=C, LEVELS=levels, NB=C // 16, num_warps=num_warps or (8 if C == 128 else 4))
    return a.view(n.shape)


def tril_inverse_grad(a: torch.Tensor, da: torch.Tensor, variant: str | None = None,
                      num_warps: int | None = None) -> torch.Tensor:
    """dN = -tril(A^T dA A^T, -1) for A = (I + N)^-1 (fp32 [..., C, C]) and its gradient dA. ``variant``: "kernel"
    or "gemm" (default: MDN_TRIL_INV_BWD); the GEMMs where the kernel cannot run (C = 128, or a CPU tensor without
    the interpreter)."""
    C = a.shape[-1]
    variant = variant or _bwd_variant(C)
    if variant == "gemm" or C > 64 or not (a.is_cuda or os.environ.get("TRITON_INTERPRET", "0") == "1"):
        at = a.transpose(-1, -2)
        return -(at @ da.to(a.dtype) @ at).tril(-1)
    af, daf = a.reshape(-1, C, C).contiguous(), da.reshape(-1, C, C).contiguous()
    dn = empty(*af.shape, dtype=torch.float32, device=af.device)
    if af.shape[0]:
        momentum_delta_rule_bwd_kernel_tril_inverse[(af.shape[0],)](af, daf, dn, C=C, num_warps=num_warps or 4)
    return dn.view(a.shape)


def _tril_inverse_fake(n, variant=""):
    return torch.empty_like(n)


@kernel_op("mdn::tril_inverse", _tril_inverse_fake)
def tril_inverse_op(n: torch.Tensor, variant: str = "") -> torch.Tensor:
    """(I + n)^-1, n [..., C, C] strictly lower triangular, fp32 (see tril_inverse_triton). variant: "blocks" or
    "levels"; "" reads MDN_TRIL_INV_FWD here (callers inside torch.compile pass it, oplib.py)."""
    return tril_inverse_triton(n, variant or None)


@torch.library.custom_op("mdn::tril_inverse_grad", mutates_args=())
def tril_inverse_grad_op(a: torch.Tensor, da: torch.Tensor) -> torch.Tensor:
    """The backward of tril_inverse_op (see tril_inverse_grad); a custom op so that MDN_TRIL_INV_BWD is read at
    run time, not when a compiled backward is traced."""
    return tril_inverse_grad(a, da)


@tril_inverse_grad_op.register_fake
def _(a, da):
    return torch.empty_like(a)


def _setup_context(ctx, inputs, output):
    ctx.save_for_backward(output)


def _backward(ctx, da):
    (a,) = ctx.saved_tensors
    # d(A) = -A dN A  =>  dN = -A^T dA A^T, of which only the strictly lower part is an input
    return tril_inverse_grad_op(a, da), None


tril_inverse_op.register_autograd(_backward, setup_context=_setup_context)


def unit_lower_inverse(lmat: torch.Tensor, mode: str = "solve") -> torch.Tensor:
    """A = (I + lmat)^-1 for strictly lower triangular lmat [..., C, C]: torch.linalg.solve_triangular ("solve"),
    or the Triton kernel above ("triton": fp32 on a GPU or the interpreter; other dtypes and devices take the
    solve); "auto": "triton" for CUDA tensors, else "solve"."""
    if mode not in TRIL_INV_MODES:
        raise ValueError(f"tril_inv={mode!r}: expected one of {', '.join(TRIL_INV_MODES)}")
    if mode == "auto":
        mode = "triton" if lmat.is_cuda else "solve"
    C = lmat.shape[-1]
    if (mode == "triton" and lmat.dtype == torch.float32 and C in (16, 32, 64, 128)
            and (lmat.is_cuda or os.environ.get("TRITON_INTERPRET", "0") == "1")):
        return tril_inverse_op(lmat, _fwd_variant(C))
    eye = torch.eye(C, dtype=lmat.dtype, device=lmat.device)
    return torch.linalg.solve_triangular(lmat, eye, upper=False, unitriangular=True)
