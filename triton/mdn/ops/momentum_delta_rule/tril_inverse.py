"""A = (I + N)^-1 for a batch of strictly lower triangular [C, C] matrices N (the intra part's triangular system,
README §2), as one Triton kernel: the default on CUDA (MDN_TRIL_INV=auto) in place of torch.linalg.solve_triangular,
whose batched cuBLAS trsm took 0.82 + 0.81 ms (forward + backward) of a 13.1 ms fwd+bwd at H16 K128 V128 on the
H200 (docs/BENCHMARKS.md §1.11). Same call, H200 (§1.12): fwd+bwd 13.08 -> 11.82 ms at H16 K128 V128 and
17.08 -> 16.57 ms at H6 K256 V512; training mdn-1.3b 18.8k -> 19.1k tokens/s.

One program inverts one matrix, bottom-up by blocks, in fp32:

    level 0   every diagonal 16 x 16 block by forward substitution in registers, all blocks at once:
              X[i, :] = e_i - N[i, :i] X[:i, :]   (row i of a unit lower triangular inverse)
    level l   pairs of inverted diagonal blocks of size S = 16 * 2^(l-1) merge into one of size 2S:
              [[X11, 0], [X21, X22]] with X21 = -X22 (N21 X11)   (two S-wide dots)

Each level writes its blocks to the output and the next reads them back (same program, after a barrier), so no
tile has to be assembled in registers. Same operations as a blocked triangular solve: no powers of N, nothing that
cancels. The backward is two batched GEMMs: dN = -tril(A^T dA A^T, -1).
"""
from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from . import _triton_compat  # noqa: F401  (interpreter + NumPy >= 2.4)
from .alloc import empty
from .knobs import env_choice

TRIL_INV_MODES = ("auto", "solve", "triton")


def tril_inv_mode() -> str:
    """MDN_TRIL_INV: "auto" (default: this file's kernel on CUDA, the solve elsewhere, the CPU interpreter included,
    where the kernel is slow), "solve" (torch.linalg.solve_triangular) or "triton" (the kernel wherever it can run)."""
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


def tril_inverse_triton(n: torch.Tensor) -> torch.Tensor:
    """(I + n)^-1 for n [..., C, C] strictly lower triangular (only the strictly lower part is read), fp32, with
    C in {16, 32, 64, 128}."""
    C = n.shape[-1]
    if n.shape[-2] != C or C not in (16, 32, 64, 128):
        raise ValueError(f"tril_inverse: expected [..., C, C] with C in 16, 32, 64, 128, got {tuple(n.shape)}")
    if n.dtype != torch.float32:
        raise ValueError(f"tril_inverse: expected float32, got {n.dtype}")
    nf = n.reshape(-1, C, C).contiguous()
    a = empty(*nf.shape, dtype=torch.float32, device=nf.device)  # NaN under MDN_POISON_OUTPUTS=1
    if nf.shape[0]:
        levels = {16: 1, 32: 2, 64: 3, 128: 4}[C]
        momentum_delta_rule_fwd_kernel_tril_inverse[(nf.shape[0],)](nf, a, C=C, LEVELS=levels, NB=C // 16,
                                                                  num_warps=8 if C == 128 else 4)
    return a.view(n.shape)


@torch.library.custom_op("mdn::tril_inverse", mutates_args=())
def tril_inverse_op(n: torch.Tensor) -> torch.Tensor:
    """(I + n)^-1, n [..., C, C] strictly lower triangular, fp32 (see tril_inverse_triton)."""
    return tril_inverse_triton(n)


@tril_inverse_op.register_fake
def _(n):
    return torch.empty_like(n)


def _setup_context(ctx, inputs, output):
    ctx.save_for_backward(output)


def _backward(ctx, da):
    (a,) = ctx.saved_tensors
    at = a.transpose(-1, -2)
    # d(A) = -A dN A  =>  dN = -A^T dA A^T, of which only the strictly lower part is an input
    return -(at @ da @ at).tril(-1)


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
        return tril_inverse_op(lmat)
    eye = torch.eye(C, dtype=lmat.dtype, device=lmat.device)
    return torch.linalg.solve_triangular(lmat, eye, upper=False, unitriangular=True)
