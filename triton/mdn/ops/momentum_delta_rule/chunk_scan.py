"""Inter-chunk scan of the chunked momentum delta rule (Triton), registered as torch custom ops.

Per sequence and head, with chunk-start states S, M ([K, V], fp32) and the intra-chunk operands of
chunk_intra.py, for every chunk in order:

    Vt = U0 - Y S + Z M                       # [C, V]  pseudo-values
    O  = Qa S - Qb M + Aqk Vt                 # [C, V]
    S' = gS S - gSM M + Ks^T Vt               # [K, V]
    M' = gM M - Km^T Vt

The backward runs the reverse scan in Triton (dVt and the per-chunk end-state gradients), re-computes the
chunk-start states from the saved Vt, and does every reduction over V with batched torch matmuls.

Chunks of all sequences are stored back to back: tensors are [NC, H, C, D] and `chunk_offsets` [N + 1] (int32)
gives the chunk range of each sequence. States are [2, N, H, K, V] (0 = S, 1 = M).
"""
from __future__ import annotations

import os
from typing import Optional

import torch
import triton
import triton.language as tl

from . import _triton_compat  # noqa: F401  (interpreter + NumPy >= 2.4)
from .alloc import poisoning
from .knobs import env_choice


def _use_triton(x: torch.Tensor) -> bool:
    return x.is_cuda or _interpreting()


def _interpreting() -> bool:
    return os.environ.get('TRITON_INTERPRET', '0') == '1'


def _compiled_kernels(x: torch.Tensor) -> bool:
    """Whether kernels for x run compiled on a GPU (not under the interpreter): only then is there an occupancy."""
    return x.is_cuda and not _interpreting()


def _poison() -> bool:
    return poisoning() or os.environ.get('MDN_DEBUG_POISON', '0') == '1'


def _empty(shape, dtype, device) -> torch.Tensor:
    """torch.empty, or NaN-filled when MDN_POISON_OUTPUTS=1 / MDN_DEBUG_POISON=1 (unwritten elements show up;
    int8, the q8 lo planes: -128, a value their encoding never stores)."""
    if _poison():
        return torch.full(shape, -128 if dtype == torch.int8 else float('nan'), dtype=dtype, device=device)
    return torch.empty(shape, dtype=dtype, device=device)


def _o_like(u: torch.Tensor) -> torch.Tensor:
    """The scan's output O for operands like u [NC, H, C, V]: shape [NC, H, C, V], stored token-major ([NC, C, H, V]
    memory, a transposed view), so that the op's [B, T, H, V] output is a view of it (chunk.py::_unpack_dense) and
    the gradient coming back is one too (the reverse scan reads dO through its strides). Chunk-major O cost one
    strided copy in the forward and one in the backward (0.28 + 0.26 ms at H6 K256 V512, 32768 tokens, H200;
    docs/BENCHMARKS.md §1.12)."""
    NC, H, C, V = u.shape
    return _empty((NC, C, H, V), u.dtype, u.device).transpose(1, 2)


def _unit_last(x: torch.Tensor) -> torch.Tensor:
    """x, or a contiguous copy if its last dimension is strided (the scan kernels take any other strides)."""
    return x if x.stride(-1) == 1 else x.contiguous()


def _dot_mode(dtype: torch.dtype) -> int:
    if dtype == torch.float32:
        return 0
    return 2 if os.environ.get('TRITON_INTERPRET', '0') == '1' else 1


def _block_k(K: int) -> int:
    """K rounded up to a power of two (>= 16): the key of SCAN_CONFIGS."""
    return max(16, triton.next_power_of_2(K))


def _sub_k(K: int) -> int:
    """Rows of one K sub-tile in the scan kernels (BK): K is split into up to four of them (K <= 256)."""
    return min(64, _block_k(K))


# Tile configs of the scan, (BV, num_warps), by (BK, operand dtype, phase). S and M are 2 x BK x BV fp32 registers
# per program. "fwd" is the forward scan (with or without O); "bwd" the reverse scan (and the state recompute, when
# one runs). The bf16 K >= 128 entries, (32, 4) in both phases, are the fastest measured on the current kernels (K in
# 64-row sub-tiles, dots accumulating into the states, the pqk form), at the op level on an H200 (docs/BENCHMARKS.md
# §1.30, bench_op.py --env-sets, 32768 tokens, bf16, T = 4096 / 8192, fwd+bwd ms):
#   forward scan without O, K = 256: (32, 4, 2 stages) 9.69-9.75; (16, 4) 10.53-10.57, (16, 8) 11.35-11.39,
#   (32, 8) 10.04-10.07; K = 128: 5.99-6.02; (32, 4, 3 stages) 6.14-6.17, (16, 4) 6.27-6.29, (16, 4, 3
#   stages) 6.54, (64, 8) 6.10-6.12;
#   reverse scan, K = 256: (32, 4) 9.63-9.71; (64, 8) 11.70-11.99, (32, 8) 12.59-12.61; K = 128: 5.96-5.97;
#   (64, 8) 6.51, (32, 8) 7.46, (16, 4) 6.77-6.80.
# Earlier kernels (whole-K state tiles) were swept on H100s and H200s in the first sessions (§1.1-§1.7); those
# numbers do not carry over. The K <= 64 and fp32 entries come from those sweeps and sm_90 compile checks
# (scripts/scan_regs.py); they are checked on the GPU for correctness, not re-timed on the current kernels.
# Shipped configs are exactly the ones here (test_gpu_scan_tile_configs checks each on the GPU;
# test_scan_resources.py compiles each K >= 128 config for sm_90 on the CPU and checks its shared memory and spills).
# Override for sweeps with MDN_SCAN_CONFIG="BV,num_warps" (both phases) or "BV,nw;BV,nw" (fwd;bwd).
SCAN_CONFIGS = {
    # (BK, is_fp32, phase): (BV, num_warps)
    (16, False, "fwd"): (64, 4), (32, False, "fwd"): (64, 4), (64, False, "fwd"): (64, 4),
    (128, False, "fwd"): (32, 4), (256, False, "fwd"): (32, 4),
    (16, True, "fwd"): (64, 4), (32, True, "fwd"): (64, 4), (64, True, "fwd"): (64, 4),
    (128, True, "fwd"): (32, 8), (256, True, "fwd"): (16, 8),
    (16, False, "bwd"): (64, 4), (32, False, "bwd"): (64, 4), (64, False, "bwd"): (32, 4),
    (128, False, "bwd"): (32, 4), (256, False, "bwd"): (32, 4),
    (16, True, "bwd"): (64, 4), (32, True, "bwd"): (64, 4), (64, True, "bwd"): (64, 4),
    (128, True, "bwd"): (32, 8), (256, True, "bwd"): (16, 8),
}


def _parse_config(env: str, text: str) -> tuple[int, int]:
    try:
        bv, nw = (int(x) for x in text.split(','))
    except ValueError:
        raise ValueError(f"MDN_SCAN_CONFIG={env!r}: expected 'BV,num_warps' or 'BV,nw;BV,nw' (fwd;bwd), "
                         f"e.g. '32,8'") from None
    if bv not in (16, 32, 64, 128) or nw not in (1, 2, 4, 8, 16):
        raise ValueError(f"MDN_SCAN_CONFIG={env!r}: BV must be 16/32/64/128 and num_warps 1/2/4/8/16")
    return bv, nw


def scan_config(K: int, V: int, dtype: torch.dtype, phase: str = "fwd") -> tuple[int, int]:
    """(BV, num_warps) for the scan kernels of `phase` ("fwd" or "bwd")."""
    env = os.environ.get('MDN_SCAN_CONFIG')
    if env:
        parts = env.split(';')
        if len(parts) > 2:
            _parse_config(env, 'x')
        bv, nw = _parse_config(env, parts[0] if phase == "fwd" or len(parts) == 1 else parts[1])
    else:
        bv, nw = SCAN_CONFIGS[(_block_k(K), dtype == torch.float32, phase)]
    return max(16, min(bv, triton.next_power_of_2(V))), nw



# Software pipelining of the chunk loops (Triton's num_stages): the [C, K] operand tiles and A of chunk c + 1 are
# loaded while chunk c computes (the loads do not depend on the states). Costs shared memory: bf16 C = 64, (32, 4),
# sm_90 (scripts/scan_regs.py): K = 128 fwd 28 -> 157 (2) / 223 KB (3), reverse 28 -> 153 / 219 KB, recompute
# 16 -> 46 / 67 KB; K = 256 fwd 45 -> 271 KB and reverse 45 -> 267 KB (over Hopper's 227 KB: they cannot be
# pipelined), recompute 16 -> 78 / 116 KB. Phases: "fwd" (forward scan), "rec" (the backward's state recompute),
# "bwd" (reverse scan). Override with MDN_SCAN_STAGES="n" (every phase) or "fwd,rec,bwd", e.g. "1,2,1".
# Measured (one H200, bench_op.py --env-sets, T = 4096, 32768 tokens; docs/BENCHMARKS.md §1.13), fwd+bwd ms:
# H16 K128 V128 1 stage 10.06 / 10.04, "3,3,3" 10.01 (forward scan 1.00 -> 0.86 ms, reverse scan slower),
# "1,2,1" 9.93, "2,2,2" 10.19, "2,1,2" 10.29; H6 K256 V512 1 stage 14.16 / 14.22, "1,2,1" 13.84, "1,3,1" 13.83.
# A GPU whose shared memory cannot hold a config runs the loop unpipelined (_launch_pipelined).
SCAN_STAGES: dict = {  # (BK, is_fp32, phase): num_stages; absent = 1
    (128, False, "fwd"): 3, (128, False, "rec"): 2, (256, False, "rec"): 2,
}
SCAN_PHASES = ("fwd", "rec", "bwd")


_UNPIPELINED: set = set()  # (kernel name, constexprs, num_warps) that did not fit this GPU's shared memory


def _launch_pipelined(kernel, grid, args, consts: dict, num_warps: int, num_stages: int) -> None:
    """kernel[grid](*args, **consts) with num_stages, or with 1 stage where the pipelined kernel needs more shared
    memory than this GPU has (e.g. 223 KB for K = 128 at 3 stages: Hopper has 227 KB, an A100 164 KB). A
    one-stage kernel that does not fit raises as usual."""
    key = (kernel.fn.__name__, tuple(sorted(consts.items())), num_warps)
    if num_stages > 1 and key not in _UNPIPELINED:
        try:
            kernel[grid](*args, **consts, num_warps=num_warps, num_stages=num_stages)
            return
        except Exception as e:  # noqa: BLE001  (triton.runtime.errors.OutOfResources, raised at the first launch)
            if type(e).__name__ != "OutOfResources":
                raise
            _UNPIPELINED.add(key)
    kernel[grid](*args, **consts, num_warps=num_warps, num_stages=1)


def _kernel_stages(kernel, K: int, dtype: torch.dtype, phase: str) -> int:
    """scan_stages for the pqk kernels (where SCAN_STAGES was measured); the six form's take 1 unless
    MDN_SCAN_STAGES says otherwise."""
    if K * torch.finfo(dtype).bits // 8 % 16:
        # [C, K] rows not 16-byte aligned: Triton 3.6 pipelined the Vt-only forward (MDN_FWD_O=kernel) wrongly at
        # K = 253, bf16, 2 stages (wrong Vt, then an illegal address; H200, docs/BENCHMARKS.md §1.16), exact at
        # one stage: such shapes run unpipelined
        return 1
    if kernel.fn.__name__.endswith("_pqk") or os.environ.get("MDN_SCAN_STAGES"):
        return scan_stages(K, dtype, phase)
    return 1


def scan_stages(K: int, dtype: torch.dtype, phase: str) -> int:
    """num_stages of the scan kernel of `phase` ("fwd", "rec" or "bwd")."""
    if phase not in SCAN_PHASES:
        raise ValueError(f"scan_stages: phase={phase!r}; expected one of {SCAN_PHASES}")
    env = os.environ.get("MDN_SCAN_STAGES")
    if not env:
        return SCAN_STAGES.get((_block_k(K), dtype == torch.float32, phase), 1)
    parts = env.split(",")
    try:
        vals = [int(x) for x in parts]
    except ValueError:
        vals = []
    if len(vals) not in (1, 3) or any(v not in (1, 2, 3, 4) for v in vals):
        raise ValueError(f"MDN_SCAN_STAGES={env!r}: expected 'n' or 'fwd,rec,bwd' with each n in 1..4, e.g. '1,2,1'")
    return vals[0] if len(vals) == 1 else vals[SCAN_PHASES.index(phase)]

# How the scan kernels load their six [C, K] operands (Y, Z, Qa, Qb, Ks, Km), one [C, BK] sub-tile at a time:
# "ptr" (default): masked pointer loads; "tma": through tensor descriptors (tl.make_tensor_descriptor, one per
# operand, made on the device; Hopper's copy engine fetches the tiles), an opt-in variant to time against "ptr".
# MDN_SCAN_LOAD selects it; "tma" silently runs the pointer path where descriptors cannot be used (_tma_ok).
SCAN_LOADS = ("ptr", "tma")


def scan_load() -> str:
    """The MDN_SCAN_LOAD setting ("ptr" or "tma"); any other value is a ValueError."""
    return env_choice("MDN_SCAN_LOAD", SCAN_LOADS, "ptr")


def _tma_ok(ops) -> bool:
    """Whether tensor descriptors can load these [NC, H, C, K] operands: 16-bit dtype, contiguous, 16-byte aligned
    base and rows (K * 2 bytes a multiple of 16, so not K = 20), and a Hopper-or-newer GPU or the interpreter
    (which emulates descriptors). fp32 operands keep the pointer path."""
    x = ops[0]
    if x.dtype not in (torch.bfloat16, torch.float16) or (x.shape[-1] * x.element_size()) % 16:
        return False
    if any(t.dtype != x.dtype or not t.is_contiguous() or t.data_ptr() % 16 for t in ops):
        return False
    if os.environ.get('TRITON_INTERPRET', '0') == '1':
        return True
    return x.is_cuda and torch.cuda.get_device_capability(x.device)[0] >= 9


def _tma_alloc(size: int, alignment: int, stream):
    """Global memory for the descriptors the kernels create on the device (triton.set_allocator)."""
    return torch.empty(size, dtype=torch.int8, device='cuda')


def _use_tma(ops) -> bool:
    """MDN_SCAN_LOAD=tma and _tma_ok; sets Triton's allocator (if none is set in this thread's context: it is a
    context variable, and autograd runs the backward in another thread) before a descriptor launch."""
    if scan_load() != "tma" or not _tma_ok(ops):
        return False
    if ops[0].is_cuda:
        try:
            from triton.runtime import _allocation
            unset = isinstance(_allocation._allocator.get(), _allocation.NullAllocator)
        except (ImportError, AttributeError):
            unset = True
        if unset:
            triton.set_allocator(_tma_alloc)
    return True


# ---------------------------------------------------------------------------------------------------------------
# Triton kernels
# ---------------------------------------------------------------------------------------------------------------

@triton.jit
def _rne_bf16(x):
    """fp32 -> nearest bf16 value (ties to even), kept in fp32. The interpreter's fp32->bf16 cast truncates."""
    bits = x.to(tl.uint32, bitcast=True)
    bits = (bits + (((bits >> 16) & 1) + 0x7FFF)) & 0xFFFF0000
    return bits.to(tl.float32, bitcast=True)


@triton.jit
def _cast(x, dtype: tl.constexpr, DOT_MODE: tl.constexpr):
    """x.to(dtype), rounding to nearest in the interpreter too (DOT_MODE 2)."""
    if DOT_MODE == 2:
        return _rne_bf16(x.to(tl.float32)).to(dtype)
    else:
        return x.to(dtype)


@triton.jit
def _dot(a, b, DOT_MODE: tl.constexpr):
    """a @ b with fp32 accumulation. DOT_MODE 0: fp32 operands (ieee); 1: bf16 operands (tensor cores);
    2: bf16-rounded operands multiplied in fp32 (same numbers as 1; for the interpreter, whose bf16 dot is wrong)."""
    if DOT_MODE == 1:
        return tl.dot(a.to(tl.bfloat16), b.to(tl.bfloat16))
    elif DOT_MODE == 2:
        return tl.dot(_rne_bf16(a.to(tl.float32)), _rne_bf16(b.to(tl.float32)), input_precision="ieee")
    else:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")


@triton.jit
def _neg(x, DOT_MODE: tl.constexpr):
    """-x, exact; through fp32 in the interpreter (DOT_MODE 2), whose negation of bf16 tensors is wrong."""
    if DOT_MODE == 2:
        return (-(x.to(tl.float32))).to(x.dtype)
    else:
        return -x


@triton.jit
def _dot_acc(a, b, acc, DOT_MODE: tl.constexpr):
    """acc + a @ b, accumulated in place (no second fp32 tile for the product: the [BK, BV] states are most of
    the registers). Operands as in _dot."""
    if DOT_MODE == 1:
        return tl.dot(a.to(tl.bfloat16), b.to(tl.bfloat16), acc=acc)
    elif DOT_MODE == 2:
        return tl.dot(_rne_bf16(a.to(tl.float32)), _rne_bf16(b.to(tl.float32)), acc=acc, input_precision="ieee")
    else:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), acc=acc, input_precision="ieee")


@triton.jit
def _load_ck(p, t, row, col: tl.constexpr, m_k, LOAD_TMA: tl.constexpr):
    """[C, BK] sub-tile (columns col ...) of a chunk's [C, K] operand. Pointer path: p are the sub-tile's [C, BK]
    pointers, masked by m_k (K columns). LOAD_TMA: t is a tensor descriptor over the operand as [NC * H * C, K]
    with [C, BK] blocks and row the chunk's first row; the copy engine zero-fills columns >= K (p is unused)."""
    if LOAD_TMA:
        return t.load([row, col])
    else:
        return tl.load(p, mask=m_k[None, :], other=0.)


@triton.jit
def _load_state(p, m_k, m_v):
    """[BK, BV] sub-tile of an fp32 state (p: [BK, BV] pointers)."""
    return tl.load(p, mask=m_k[:, None] & m_v[None, :], other=0.).to(tl.float32)


@triton.jit
def _store_state(p, x, m_k, m_v, DOT_MODE: tl.constexpr):
    tl.store(p, _cast(x, p.dtype.element_ty, DOT_MODE), mask=m_k[:, None] & m_v[None, :])


@triton.jit
def _store_grad_state(p, x, m_k, m_v, LO: tl.constexpr, DOT_MODE: tl.constexpr):
    """Store an fp32 state gradient tile. With 16-bit operands (DOT_MODE 1, 2) as two bf16 tiles, hi = bf16(x) at p
    and lo = bf16(x - hi) at p + LO, so that x keeps ~16 bits: rounding the end-state gradients to one bf16 cost
    the gate gradients (dbeta) up to 1.5e-2 relative error at K = 256 (README section 4). fp32 (DOT_MODE 0): x at p."""
    m = m_k[:, None] & m_v[None, :]
    hi = _cast(x, p.dtype.element_ty, DOT_MODE)
    tl.store(p, hi, mask=m)
    if DOT_MODE != 0:
        tl.store(p + LO, _cast(x - hi.to(tl.float32), p.dtype.element_ty, DOT_MODE), mask=m)


@triton.jit
def _load_states(h, st_off, p_st, N, H, m_k, m_v, K: tl.constexpr, V: tl.constexpr, BK: tl.constexpr,
                 BV: tl.constexpr, USE: tl.constexpr):
    """The [BK, BV] fp32 sub-tiles of two [K, V] states S, M, returned as b_s1, b_m1, ..., b_s4, b_m4 (sub-tile j
    holds rows j * BK ...; those at j * BK >= K stay unused zeros): zeros, plus (USE) S = h[0, n, h] and
    M = h[1, n, h] of h [2, N, H, K, V] (st_off: the offset of [n, h]; p_st: [BK, BV] offsets of sub-tile 0; m_k:
    the four row masks). The order of the returned tiles is the order of the kernels' loop-carried states."""
    b_s1 = tl.zeros([BK, BV], dtype=tl.float32)
    b_m1 = tl.zeros([BK, BV], dtype=tl.float32)
    if USE:
        p_h = h + st_off + p_st
        p_hm = p_h + N.to(tl.int64) * H * K * V
        b_s1 += _load_state(p_h, m_k[0], m_v)
        b_m1 += _load_state(p_hm, m_k[0], m_v)
    b_s2 = tl.zeros([BK, BV], dtype=tl.float32)
    b_m2 = tl.zeros([BK, BV], dtype=tl.float32)
    if K > BK and USE:
        b_s2 += _load_state(p_h + BK * V, m_k[1], m_v)
        b_m2 += _load_state(p_hm + BK * V, m_k[1], m_v)
    b_s3 = tl.zeros([BK, BV], dtype=tl.float32)
    b_m3 = tl.zeros([BK, BV], dtype=tl.float32)
    if K > 2 * BK and USE:
        b_s3 += _load_state(p_h + 2 * BK * V, m_k[2], m_v)
        b_m3 += _load_state(p_hm + 2 * BK * V, m_k[2], m_v)
    b_s4 = tl.zeros([BK, BV], dtype=tl.float32)
    b_m4 = tl.zeros([BK, BV], dtype=tl.float32)
    if K > 3 * BK and USE:
        b_s4 += _load_state(p_h + 3 * BK * V, m_k[3], m_v)
        b_m4 += _load_state(p_hm + 3 * BK * V, m_k[3], m_v)
    return b_s1, b_m1, b_s2, b_m2, b_s3, b_m3, b_s4, b_m4


@triton.jit
def _store_states(p_s, p_m, b_s, b_m, m_k, m_v, K: tl.constexpr, V: tl.constexpr, BK: tl.constexpr,
                  DOT_MODE: tl.constexpr):
    """Store the sub-tiles b_s, b_m (tuples of four [BK, BV] tiles) of two [K, V] states at p_s and p_m ([BK, BV]
    pointers of sub-tile 0; sub-tile j at + j * BK * V), cast to the pointers' dtype (_cast; DOT_MODE 0: fp32)."""
    _store_state(p_s, b_s[0], m_k[0], m_v, DOT_MODE)
    _store_state(p_m, b_m[0], m_k[0], m_v, DOT_MODE)
    if K > BK:
        _store_state(p_s + BK * V, b_s[1], m_k[1], m_v, DOT_MODE)
        _store_state(p_m + BK * V, b_m[1], m_k[1], m_v, DOT_MODE)
    if K > 2 * BK:
        _store_state(p_s + 2 * BK * V, b_s[2], m_k[2], m_v, DOT_MODE)
        _store_state(p_m + 2 * BK * V, b_m[2], m_k[2], m_v, DOT_MODE)
    if K > 3 * BK:
        _store_state(p_s + 3 * BK * V, b_s[3], m_k[3], m_v, DOT_MODE)
        _store_state(p_m + 3 * BK * V, b_m[3], m_k[3], m_v, DOT_MODE)


@triton.jit
def _store_grad_states(dhc, p_dhc, b_ds, b_dm, m_k, m_v, K: tl.constexpr, V: tl.constexpr, BK: tl.constexpr,
                       DOT_MODE: tl.constexpr):
    """Store a chunk's end-state gradients dS', dM' (tuples of four [BK, BV] sub-tiles) into its dhc planes
    (p_dhc: offsets of plane 0, sub-tile 0): dS' at + j * BK * V, dM' at + K * V + j * BK * V, each as hi + lo
    (_store_grad_state, lo planes 2 K V further) with 16-bit operands."""
    _store_grad_state(dhc + p_dhc, b_ds[0], m_k[0], m_v, 2 * K * V, DOT_MODE)
    _store_grad_state(dhc + K * V + p_dhc, b_dm[0], m_k[0], m_v, 2 * K * V, DOT_MODE)
    if K > BK:
        _store_grad_state(dhc + BK * V + p_dhc, b_ds[1], m_k[1], m_v, 2 * K * V, DOT_MODE)
        _store_grad_state(dhc + K * V + BK * V + p_dhc, b_dm[1], m_k[1], m_v, 2 * K * V, DOT_MODE)
    if K > 2 * BK:
        _store_grad_state(dhc + 2 * BK * V + p_dhc, b_ds[2], m_k[2], m_v, 2 * K * V, DOT_MODE)
        _store_grad_state(dhc + K * V + 2 * BK * V + p_dhc, b_dm[2], m_k[2], m_v, 2 * K * V, DOT_MODE)
    if K > 3 * BK:
        _store_grad_state(dhc + 3 * BK * V + p_dhc, b_ds[3], m_k[3], m_v, 2 * K * V, DOT_MODE)
        _store_grad_state(dhc + K * V + 3 * BK * V + p_dhc, b_dm[3], m_k[3], m_v, 2 * K * V, DOT_MODE)


@triton.jit
def _ulp254(hi):
    """A 254th of the unit in the last place of the bf16 values hi (kept in fp32): 2^(E - 134) / 254 for biased
    exponent E (clamped to E >= 8: below 2^-119 the lo part is coarser, far below any gradient that matters). The
    exponent is read from the fp32 bits, which the interpreter's bf16 keeps as well."""
    e = (hi.to(tl.float32).to(tl.int32, bitcast=True) >> 23) & 0xFF
    return ((tl.maximum(e, 8) - 7) << 23).to(tl.float32, bitcast=True) / 254.


@triton.jit
def _store_grad_state_q8(p, p_lo, x, m_k, m_v, DOT_MODE: tl.constexpr):
    """Store an fp32 state gradient tile as hi = bf16(x) (rounded to nearest: |x - hi| <= half hi's last place) at
    p and the rest as an int8 count of 254ths of hi's last place at p_lo: 16 bits of x in 3 bytes (MDN_DHC=q8)."""
    m = m_k[:, None] & m_v[None, :]
    hi = _cast(x, tl.bfloat16, DOT_MODE)
    tl.store(p, hi, mask=m)
    tl.store(p_lo, tl.floor((x - hi.to(tl.float32)) / _ulp254(hi) + 0.5).to(tl.int8), mask=m)


@triton.jit
def _grad_state_q8(hi, lo):
    """The fp32 value of a (hi bf16, lo int8) pair of _store_grad_state_q8."""
    return hi.to(tl.float32) + lo.to(tl.float32) * _ulp254(hi)


@triton.jit
def _store_grad_states_q8(dhc, dlo, p_dhc, b_ds, b_dm, m_k, m_v, K: tl.constexpr, V: tl.constexpr, BK: tl.constexpr,
                          DOT_MODE: tl.constexpr):
    """MDN_DHC=q8: a chunk's end-state gradients dS', dM' (tuples of four [BK, BV] sub-tiles) into its two bf16 dhc
    planes and the two int8 planes of dlo at the same offsets (p_dhc: plane 0, sub-tile 0)."""
    _store_grad_state_q8(dhc + p_dhc, dlo + p_dhc, b_ds[0], m_k[0], m_v, DOT_MODE)
    _store_grad_state_q8(dhc + K * V + p_dhc, dlo + K * V + p_dhc, b_dm[0], m_k[0], m_v, DOT_MODE)
    if K > BK:
        _store_grad_state_q8(dhc + BK * V + p_dhc, dlo + BK * V + p_dhc, b_ds[1], m_k[1], m_v, DOT_MODE)
        _store_grad_state_q8(dhc + (K + BK) * V + p_dhc, dlo + (K + BK) * V + p_dhc, b_dm[1], m_k[1], m_v,
                             DOT_MODE)
    if K > 2 * BK:
        _store_grad_state_q8(dhc + 2 * BK * V + p_dhc, dlo + 2 * BK * V + p_dhc, b_ds[2], m_k[2], m_v, DOT_MODE)
        _store_grad_state_q8(dhc + (K + 2 * BK) * V + p_dhc, dlo + (K + 2 * BK) * V + p_dhc, b_dm[2], m_k[2], m_v,
                             DOT_MODE)
    if K > 3 * BK:
        _store_grad_state_q8(dhc + 3 * BK * V + p_dhc, dlo + 3 * BK * V + p_dhc, b_ds[3], m_k[3], m_v, DOT_MODE)
        _store_grad_state_q8(dhc + (K + 3 * BK) * V + p_dhc, dlo + (K + 3 * BK) * V + p_dhc, b_dm[3], m_k[3], m_v,
                             DOT_MODE)


DHC_FORMATS = ("split", "q8")


def dhc_format() -> str:
    """MDN_DHC: how the reverse scan stores the end-state gradients dS', dM' for the fused tail (MDN_BWD_DG=tail,
    bf16 inputs, no MDN_BWD_SEGMENTS; everywhere else "split" runs). "split": two bf16 planes each, hi = bf16(x)
    and lo = bf16(x - hi) (_store_grad_state): 4 bytes per element, written and read again. "q8" (default): hi as
    before and lo as an int8 count of 254ths of hi's last place (_store_grad_state_q8): 3 bytes, the same ~16
    bits; the tail rebuilds x and splits it into hi + lo bf16 in registers for its tensor-core products. Measured
    on one H100 (docs/BENCHMARKS.md §1.17): the same time (13.26-13.35 ms fwd+bwd at H6 K256 V512, 32768 tokens,
    against 13.29-13.36 split) and 0.75 GiB less peak memory (7.07 against 7.82 GiB). One bf16
    plane alone cost dbeta 1.5e-2 relative error at K = 256 (README section 4). (fp16 scaled per column, 2 bytes,
    was tried first and dropped untimed: it keeps 11 bits of a column's largest entry only, fewer for the rest, and
    its accuracy comparison was unseeded, so inconclusive.)"""
    return env_choice("MDN_DHC", DHC_FORMATS, "q8")


@triton.jit
def _bwd_dg_rows(b_ds, b_dm, p_hc, m_k, m_v, KV: tl.constexpr):
    """Row sums (over this V-block) of dS' * S, dS' * M, dM' * M for one [BK, BV] sub-tile: three [BK] vectors.
    Summing only along V keeps the reduction inside each warp (the accumulator layout holds a row's columns in one
    warp); the K rows and the V-blocks are summed afterwards in torch. A full tl.sum to a scalar per sub-tile
    (as before) crossed warps through shared memory twelve times per chunk: the <dS', S> partials cost 2.2 of the
    reverse scan's 6.9 ms on the H100 (bench_scan.py, ABLATE=1; docs/BENCHMARKS.md §1.7)."""
    b_hs = _load_state(p_hc, m_k, m_v)
    b_hm = _load_state(p_hc + KV, m_k, m_v)
    return _dg_row_sums(b_ds, b_dm, b_hs, b_hm)


@triton.jit
def _dg_row_sums(b_ds, b_dm, b_s, b_m):
    """Row sums of dS' * S, dS' * M, dM' * M for one [BK, BV] sub-tile (three [BK] vectors)."""
    return tl.sum(b_ds * b_s, 1), tl.sum(b_ds * b_m, 1), tl.sum(b_dm * b_m, 1)


@triton.jit
def _store_dg_rows(p, d0, d1, d2, o_k, m_k, K: tl.constexpr):
    """Store the three [BK] row sums of _bwd_dg_rows at p (+ o_k), p + K, p + 2K (negating the <dS', M> one)."""
    tl.store(p + o_k, d0, mask=m_k)
    tl.store(p + K + o_k, -d1, mask=m_k)
    tl.store(p + 2 * K + o_k, d2, mask=m_k)


@triton.jit
def _bwd_dg_states(p_dg, hc, p_hc, b_ds, b_dm, o_k, m_k, m_v, K: tl.constexpr, V: tl.constexpr, BK: tl.constexpr):
    """The row sums of <dS', S>, <dS', M>, <dM', M> over this V-block for every sub-tile (b_ds, b_dm: tuples of
    four; S, M the chunk-start states at hc + p_hc, sub-tile j at + j * BK * V), stored at p_dg (+ j * BK)."""
    d0, d1, d2 = _bwd_dg_rows(b_ds[0], b_dm[0], hc + p_hc, m_k[0], m_v, K * V)
    _store_dg_rows(p_dg, d0, d1, d2, o_k, m_k[0], K)
    if K > BK:
        d0, d1, d2 = _bwd_dg_rows(b_ds[1], b_dm[1], hc + BK * V + p_hc, m_k[1], m_v, K * V)
        _store_dg_rows(p_dg + BK, d0, d1, d2, o_k, m_k[1], K)
    if K > 2 * BK:
        d0, d1, d2 = _bwd_dg_rows(b_ds[2], b_dm[2], hc + 2 * BK * V + p_hc, m_k[2], m_v, K * V)
        _store_dg_rows(p_dg + 2 * BK, d0, d1, d2, o_k, m_k[2], K)
    if K > 3 * BK:
        d0, d1, d2 = _bwd_dg_rows(b_ds[3], b_dm[3], hc + 3 * BK * V + p_hc, m_k[3], m_v, K * V)
        _store_dg_rows(p_dg + 3 * BK, d0, d1, d2, o_k, m_k[3], K)


@triton.jit
def _grad_state_tile(p, m_k, m_v, LO: tl.constexpr, DOT_MODE: tl.constexpr):
    """A [BK, BV] end-state gradient tile as _store_grad_state stored it, in fp32 (hi + lo for 16-bit)."""
    x = _load_state(p, m_k, m_v)
    if DOT_MODE != 0:
        x += _load_state(p + LO, m_k, m_v)
    return x


@triton.jit
def _rec_dg_states(p_dg, dhc, p_dhc, b_s, b_m, o_k, m_k, m_v, K: tl.constexpr, V: tl.constexpr, BK: tl.constexpr,
                   DOT_MODE: tl.constexpr):
    """_bwd_dg_states from the other side: the chunk-start states S, M in registers (b_s, b_m: tuples of four
    [BK, BV] fp32 sub-tiles, in the state recompute) and the end-state gradients dS', dM' loaded from the reverse
    scan's dhc planes (p_dhc: plane 0, sub-tile 0): the same row sums, stored at p_dg (+ j * BK)."""
    for j in tl.static_range(4):
        if K > j * BK:
            b_ds = _grad_state_tile(dhc + j * BK * V + p_dhc, m_k[j], m_v, 2 * K * V, DOT_MODE)
            b_dm = _grad_state_tile(dhc + K * V + j * BK * V + p_dhc, m_k[j], m_v, 2 * K * V, DOT_MODE)
            d0, d1, d2 = _dg_row_sums(b_ds, b_dm, b_s[j], b_m[j])
            _store_dg_rows(p_dg + j * BK, d0, d1, d2, o_k, m_k[j], K)


@triton.jit
def _ck_dot(acc, p, t, row, b, m_k, K: tl.constexpr, BK: tl.constexpr, FIRST: tl.constexpr,
            DOT_MODE: tl.constexpr, LOAD_TMA: tl.constexpr):
    """acc + X b = acc + sum_j X_j b[j] over the K sub-tiles of a chunk's [C, K] operand X (X_j: [C, BK], loaded
    right before its dot, _load_ck with p the pointers of sub-tile 0; b: a tuple of four [BK, BV] tiles),
    accumulated in place; FIRST: X b alone (acc unused)."""
    b_x = _load_ck(p, t, row, 0, m_k[0], LOAD_TMA)  # [C, BK]
    if FIRST:
        b_acc = _dot(b_x, b[0], DOT_MODE)
    else:
        b_acc = _dot_acc(b_x, b[0], acc, DOT_MODE)
    if K > BK:
        b_acc = _dot_acc(_load_ck(p + BK, t, row, BK, m_k[1], LOAD_TMA), b[1], b_acc, DOT_MODE)
    if K > 2 * BK:
        b_acc = _dot_acc(_load_ck(p + 2 * BK, t, row, 2 * BK, m_k[2], LOAD_TMA), b[2], b_acc, DOT_MODE)
    if K > 3 * BK:
        b_acc = _dot_acc(_load_ck(p + 3 * BK, t, row, 3 * BK, m_k[3], LOAD_TMA), b[3], b_acc, DOT_MODE)
    return b_acc


@triton.jit
def _fwd_state_update(b_s, b_m, p_ks, p_km, t_ks, t_km, row, col: tl.constexpr, m_k, b_vt, b_nvt,
                      b_g0, b_g1, b_g2, DOT_MODE: tl.constexpr, LOAD_TMA: tl.constexpr):
    """One [BK, BV] sub-tile (K columns col ...) of S' = gS S - gSM M + Ks^T Vt, M' = gM M - Km^T Vt
    (b_nvt = -Vt), accumulated into the states themselves (tl.dot acc=). Operands as in _load_ck."""
    b_s = b_g0 * b_s - b_g1 * b_m
    b_m = b_g2 * b_m
    b_ks = _load_ck(p_ks, t_ks, row, col, m_k, LOAD_TMA)   # [C, BK]
    b_s = _dot_acc(tl.trans(b_ks), b_vt, b_s, DOT_MODE)
    b_km = _load_ck(p_km, t_km, row, col, m_k, LOAD_TMA)
    b_m = _dot_acc(tl.trans(b_km), b_nvt, b_m, DOT_MODE)
    return b_s, b_m


@triton.jit(do_not_specialize=['H'])
def momentum_delta_rule_fwd_kernel_scan(
    u, y, z, qa, qb, aqk, ks, km, g,
    h0, o, vt, ht, hc,
    chunk_offsets,
    H, s_oc, s_oh, s_ot,
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
    """Forward scan over the chunks of one (sequence, head, V-block).

    RECOMPUTE=False: computes Vt and O, stores them and the final state ht [2, N, H, K, V].
    RECOMPUTE=True: reads the saved Vt instead and only advances the states.
    STORE_STATES: stores the chunk-start states into hc [NC, H, 2, K, V] (S then M).

    K is split into up to four sub-tiles of BK (<= 64) rows, each state sub-tile its own variable (b_s1..b_s4,
    b_m1..b_m4), and every [C, K] operand is loaded one [C, BK] sub-tile at a time, right before its dot: a whole
    [C, 256] bf16 tile passes through registers on its way to shared memory and made the kernel spill.
    LOAD_TMA (MDN_SCAN_LOAD=tma): the [C, K] operands are loaded through tensor descriptors (_load_ck) instead.
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
    m_cv = m_v[None, :]
    if LOAD_TMA:
        # one descriptor per [C, K] operand, viewed as [NC * H * C, K] (chunk_offsets[N] = NC)
        NR = (tl.load(chunk_offsets + N) * H * C).to(tl.int32)
        t_y = tl.make_tensor_descriptor(y, [NR, K], [K, 1], [C, BK])
        t_z = tl.make_tensor_descriptor(z, [NR, K], [K, 1], [C, BK])
        t_qa = tl.make_tensor_descriptor(qa, [NR, K], [K, 1], [C, BK])
        t_qb = tl.make_tensor_descriptor(qb, [NR, K], [K, 1], [C, BK])
        t_ks = tl.make_tensor_descriptor(ks, [NR, K], [K, 1], [C, BK])
        t_km = tl.make_tensor_descriptor(km, [NR, K], [K, 1], [C, BK])
    else:
        t_y = y
        t_z = z
        t_qa = qa
        t_qb = qb
        t_ks = ks
        t_km = km

    b_s1, b_m1, b_s2, b_m2, b_s3, b_m3, b_s4, b_m4 = _load_states(h0, st_off, p_st, N, H, m_k, m_v, K, V, BK, BV,
                                                                  USE_H0)

    for i_c in range(c_start, c_end):  # int64: c_start is int64
        base = i_c * H + i_h                  # index of [c, h]
        o_ck = base * C * K                   # offset of [c, h] in [NC, H, C, K]
        row = (base * C).to(tl.int32)         # first row of [c, h] in [NC * H * C, K] (LOAD_TMA)
        o_cv = base * C * V
        b_S, b_M = (b_s1, b_s2, b_s3, b_s4), (b_m1, b_m2, b_m3, b_m4)
        if STORE_STATES:
            p_hc = hc + base * 2 * K * V + p_st
            _store_states(p_hc, p_hc + K * V, b_S, b_M, m_k, m_v, K, V, BK, DOT_MODE)
        if RECOMPUTE:
            b_vt = tl.load(vt + o_cv + p_cv, mask=m_cv, other=0.)
        else:
            # Vt = -(Y S - U0) + Z M, O = -(Qb M) + Qa S + Aqk Vt (the torch scan's rounding for K <= BK): sums
            # over the K sub-tiles accumulate in place, and subtractions negate a [C, BV] tile (exact), never a
            # [C, BK] operand or a state
            b_vt = -tl.load(u + o_cv + p_cv, mask=m_cv, other=0.).to(tl.float32)  # [C, BV]
            b_vt = _ck_dot(b_vt, y + o_ck + p_ck, t_y, row, b_S, m_k, K, BK, False, DOT_MODE, LOAD_TMA)
            b_vt = _ck_dot(-b_vt, z + o_ck + p_ck, t_z, row, b_M, m_k, K, BK, False, DOT_MODE, LOAD_TMA)
            b_vt = _cast(b_vt, vt.dtype.element_ty, DOT_MODE)
            tl.store(vt + o_cv + p_cv, b_vt, mask=m_cv)
            b_o = _ck_dot(None, qb + o_ck + p_ck, t_qb, row, b_M, m_k, K, BK, True, DOT_MODE, LOAD_TMA)
            b_o = _ck_dot(-b_o, qa + o_ck + p_ck, t_qa, row, b_S, m_k, K, BK, False, DOT_MODE, LOAD_TMA)
            b_a = tl.load(aqk + base * C * C + o_c[:, None] * C + o_c[None, :])  # [C, C]
            b_o = _dot_acc(b_a, b_vt, b_o, DOT_MODE)
            p_o = o + i_c * s_oc + i_h * s_oh + o_c[:, None] * s_ot + o_v[None, :]  # o's strides (_o_like)
            tl.store(p_o, _cast(b_o, o.dtype.element_ty, DOT_MODE), mask=m_cv)
        b_g0 = tl.load(g + base * 3).to(tl.float32)
        b_g1 = tl.load(g + base * 3 + 1).to(tl.float32)
        b_g2 = tl.load(g + base * 3 + 2).to(tl.float32)
        b_nvt = _neg(b_vt, DOT_MODE)
        p_ks = ks + o_ck + p_ck
        p_km = km + o_ck + p_ck
        b_s1, b_m1 = _fwd_state_update(b_s1, b_m1, p_ks, p_km, t_ks, t_km, row, 0,
                                       m_k1, b_vt, b_nvt, b_g0, b_g1, b_g2, DOT_MODE, LOAD_TMA)
        if K > BK:
            b_s2, b_m2 = _fwd_state_update(b_s2, b_m2, p_ks + BK, p_km + BK, t_ks, t_km, row, BK,
                                           m_k2, b_vt, b_nvt, b_g0, b_g1, b_g2, DOT_MODE, LOAD_TMA)
        if K > 2 * BK:
            b_s3, b_m3 = _fwd_state_update(b_s3, b_m3, p_ks + 2 * BK, p_km + 2 * BK, t_ks, t_km, row, 2 * BK,
                                           m_k3, b_vt, b_nvt, b_g0, b_g1, b_g2, DOT_MODE, LOAD_TMA)
        if K > 3 * BK:
            b_s4, b_m4 = _fwd_state_update(b_s4, b_m4, p_ks + 3 * BK, p_km + 3 * BK, t_ks, t_km, row, 3 * BK,
                                           m_k4, b_vt, b_nvt, b_g0, b_g1, b_g2, DOT_MODE, LOAD_TMA)

    if not RECOMPUTE:
        p_ht = ht + st_off + p_st
        _store_states(p_ht, p_ht + N.to(tl.int64) * H * K * V, (b_s1, b_s2, b_s3, b_s4),
                      (b_m1, b_m2, b_m3, b_m4), m_k, m_v, K, V, BK, 0)


@triton.jit
def _bwd_state_update(b_ds, b_dm, p_qa, p_y, p_qb, p_z, t_qa, t_y, t_qb, t_z, row, col: tl.constexpr, m_k,
                      b_do, b_ndo, b_dvt, b_ndvt, b_g0, b_g1, b_g2,
                      DOT_MODE: tl.constexpr, LOAD_TMA: tl.constexpr):
    """One [BK, BV] sub-tile (K columns col ...) of dS = gS dS' + Qa^T dO - Y^T dVt,
    dM = -gSM dS' + gM dM' - Qb^T dO + Z^T dVt (b_ndo = -dO, b_ndvt = -dVt), accumulated into the states themselves
    (tl.dot acc=). Operands as in _load_ck."""
    b_dm = b_g2 * b_dm - b_g1 * b_ds
    b_ds = b_g0 * b_ds
    b_qa = _load_ck(p_qa, t_qa, row, col, m_k, LOAD_TMA)   # [C, BK]
    b_ds = _dot_acc(tl.trans(b_qa), b_do, b_ds, DOT_MODE)
    b_y = _load_ck(p_y, t_y, row, col, m_k, LOAD_TMA)
    b_ds = _dot_acc(tl.trans(b_y), b_ndvt, b_ds, DOT_MODE)
    b_qb = _load_ck(p_qb, t_qb, row, col, m_k, LOAD_TMA)
    b_dm = _dot_acc(tl.trans(b_qb), b_ndo, b_dm, DOT_MODE)
    b_z = _load_ck(p_z, t_z, row, col, m_k, LOAD_TMA)
    b_dm = _dot_acc(tl.trans(b_z), b_dvt, b_dm, DOT_MODE)
    return b_ds, b_dm


@triton.jit(do_not_specialize=['H'])
def momentum_delta_rule_bwd_kernel_scan(
    y, z, qa, qb, aqk, ks, km, g,
    do, dht, dh0, dvt, dob, dvs, dhc, hc, dgp,
    chunk_offsets,
    H, s_dc, s_dh, s_dt,
    K: tl.constexpr,
    V: tl.constexpr,
    C: tl.constexpr,
    BK: tl.constexpr,
    BV: tl.constexpr,
    USE_DHT: tl.constexpr,
    DOT_MODE: tl.constexpr,
    LOAD_TMA: tl.constexpr,
    ABLATE: tl.constexpr = 0,
):
    """Reverse scan. Per chunk (last to first) stores the end-state grads dhc [NC, H, 2, K, V] (dS' then dM'),
    dVt into dvt [NC, H, C, V] and a chunk-major copy of dO (read through its strides s_dc, s_dh, s_dt: the op's
    dO arrives token-major, [B, T, H, V]) into dob [NC, H, C, V], for the GEMMs against the states (dY, dZ, dQa,
    dQb) and Aqk's, the partial sums over this V-block of <dS', S>, <dS', M>, <dM', M> into dgp
    (S, M = the chunk-start states hc [NC, H, 2, K, V]; as row sums, dgp [NC, H, NV, 3, K]), then

        dVt = Aqk^T dO + Ks dS' - Km dM'
        dS  = gS dS' + Qa^T dO - Y^T dVt
        dM  = -gSM dS' + gM dM' - Qb^T dO + Z^T dVt

    and finally the initial-state grads dh0 [2, N, H, K, V] (fp32). K is split into sub-tiles of BK (<= 64) rows
    as in the forward kernel (b_ds1..b_ds4, b_dm1..b_dm4).

    ABLATE (timing experiments only, bench_scan.py; any bit set gives WRONG gradients): bit 1 skips the <dS', S>
    partial sums (and their hc loads), bit 2 the lo planes of dhc, bit 4 every dhc store, bit 8 the dVt / dO stores.
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
    st_off = (i_n.to(tl.int64) * H + i_h) * K * V
    p_st = o_k[:, None] * V + o_v[None, :]          # [BK, BV] (sub-tile j: + j * BK * V)
    p_ck = o_c[:, None] * K + o_k[None, :]          # [C, BK]  (sub-tile j: + j * BK)
    p_cv = o_c[:, None] * V + o_v[None, :]          # [C, BV]
    m_cv = m_v[None, :]
    if LOAD_TMA:
        # one descriptor per [C, K] operand, viewed as [NC * H * C, K] (chunk_offsets[N] = NC)
        NR = (tl.load(chunk_offsets + N) * H * C).to(tl.int32)
        t_qa = tl.make_tensor_descriptor(qa, [NR, K], [K, 1], [C, BK])
        t_y = tl.make_tensor_descriptor(y, [NR, K], [K, 1], [C, BK])
        t_qb = tl.make_tensor_descriptor(qb, [NR, K], [K, 1], [C, BK])
        t_z = tl.make_tensor_descriptor(z, [NR, K], [K, 1], [C, BK])
        t_ks = tl.make_tensor_descriptor(ks, [NR, K], [K, 1], [C, BK])
        t_km = tl.make_tensor_descriptor(km, [NR, K], [K, 1], [C, BK])
    else:
        t_qa = qa
        t_y = y
        t_qb = qb
        t_z = z
        t_ks = ks
        t_km = km

    b_ds1, b_dm1, b_ds2, b_dm2, b_ds3, b_dm3, b_ds4, b_dm4 = _load_states(dht, st_off, p_st, N, H, m_k, m_v,
                                                                          K, V, BK, BV, USE_DHT)

    for i in range(0, c_end - c_start):
        i_c = c_end - 1 - i  # int64
        base = i_c * H + i_h
        o_ck = base * C * K
        row = (base * C).to(tl.int32)
        o_cv = base * C * V
        p_hc = base * 2 * K * V + p_st
        # dhc planes: [dS', dM'] (fp32) or [hi(dS'), hi(dM'), lo(dS'), lo(dM')] (16-bit; _store_grad_state)
        p_dhc = base * (2 if DOT_MODE == 0 else 4) * K * V + p_st
        GRAD_MODE: tl.constexpr = DOT_MODE if (ABLATE & 2) == 0 else 0
        b_dS, b_dM = (b_ds1, b_ds2, b_ds3, b_ds4), (b_dm1, b_dm2, b_dm3, b_dm4)
        if (ABLATE & 4) == 0:
            _store_grad_states(dhc, p_dhc, b_dS, b_dM, m_k, m_v, K, V, BK, GRAD_MODE)
        # gradients of the chunk's scalars gS, gSM, gM: row sums over this V-block, dgp [NC, H, NV, 3, K]
        if (ABLATE & 1) == 0:
            p_dg = dgp + (base * tl.num_programs(0) + i_v) * 3 * K
            _bwd_dg_states(p_dg, hc, p_hc, b_dS, b_dM, o_k, m_k, m_v, K, V, BK)

        b_do = tl.load(do + i_c * s_dc + i_h * s_dh + o_c[:, None] * s_dt + o_v[None, :], mask=m_cv, other=0.)
        if (ABLATE & 8) == 0:
            tl.store(dob + o_cv + p_cv, b_do.to(dob.dtype.element_ty), mask=m_cv)
        b_a = tl.load(aqk + base * C * C + o_c[:, None] * C + o_c[None, :])
        b_dvt = _dot(tl.trans(b_a), b_do, DOT_MODE)  # [C, BV]
        # dVt = -(-(Aqk^T dO + Ks dS') + Km dM'): sums over the K sub-tiles accumulate in place, and subtractions
        # negate a [C, BV] tile (exact), never a [C, BK] operand or a state
        b_dvt = _ck_dot(b_dvt, ks + o_ck + p_ck, t_ks, row, b_dS, m_k, K, BK, False, DOT_MODE, LOAD_TMA)
        b_dvt = _ck_dot(-b_dvt, km + o_ck + p_ck, t_km, row, b_dM, m_k, K, BK, False, DOT_MODE, LOAD_TMA)
        b_dvt = _cast(-b_dvt, dvt.dtype.element_ty, DOT_MODE)
        if (ABLATE & 8) == 0:
            tl.store(dvt + o_cv + p_cv, b_dvt, mask=m_cv)

        b_g0 = tl.load(g + base * 3).to(tl.float32)
        b_g1 = tl.load(g + base * 3 + 1).to(tl.float32)
        b_g2 = tl.load(g + base * 3 + 2).to(tl.float32)
        b_ndo = _neg(b_do, DOT_MODE)
        b_ndvt = _neg(b_dvt, DOT_MODE)
        p_qa = qa + o_ck + p_ck
        p_y = y + o_ck + p_ck
        p_qb = qb + o_ck + p_ck
        p_z = z + o_ck + p_ck
        b_ds1, b_dm1 = _bwd_state_update(b_ds1, b_dm1, p_qa, p_y, p_qb, p_z,
                                         t_qa, t_y, t_qb, t_z, row, 0, m_k1, b_do, b_ndo, b_dvt, b_ndvt,
                                         b_g0, b_g1, b_g2, DOT_MODE, LOAD_TMA)
        if K > BK:
            b_ds2, b_dm2 = _bwd_state_update(b_ds2, b_dm2, p_qa + BK, p_y + BK, p_qb + BK, p_z + BK,
                                             t_qa, t_y, t_qb, t_z, row, BK, m_k2, b_do, b_ndo, b_dvt, b_ndvt,
                                             b_g0, b_g1, b_g2, DOT_MODE, LOAD_TMA)
        if K > 2 * BK:
            b_ds3, b_dm3 = _bwd_state_update(b_ds3, b_dm3, p_qa + 2 * BK, p_y + 2 * BK, p_qb + 2 * BK, p_z + 2 * BK,
                                             t_qa, t_y, t_qb, t_z, row, 2 * BK, m_k3, b_do, b_ndo, b_dvt, b_ndvt,
                                             b_g0, b_g1, b_g2, DOT_MODE, LOAD_TMA)
        if K > 3 * BK:
            b_ds4, b_dm4 = _bwd_state_update(b_ds4, b_dm4, p_qa + 3 * BK, p_y + 3 * BK, p_qb + 3 * BK, p_z + 3 * BK,
                                             t_qa, t_y, t_qb, t_z, row, 3 * BK, m_k4, b_do, b_ndo, b_dvt, b_ndvt,
                                             b_g0, b_g1, b_g2, DOT_MODE, LOAD_TMA)

    p_dh0 = dh0 + st_off + p_st
    _store_states(p_dh0, p_dh0 + N.to(tl.int64) * H * K * V, (b_ds1, b_ds2, b_ds3, b_ds4),
                  (b_dm1, b_dm2, b_dm3, b_dm4), m_k, m_v, K, V, BK, 0)


# ---------------------------------------------------------------------------------------------------------------
# launchers (Triton) and torch fallbacks (CPU without the interpreter; also the kernels' test reference)
# ---------------------------------------------------------------------------------------------------------------

def _dims(u, y, chunk_offsets):
    NC, H, C, V = u.shape
    K = y.shape[-1]
    N = chunk_offsets.shape[0] - 1
    return NC, H, C, K, V, N


def launch_scan_fwd(kernel, u, ops, tma, h0, chunk_offsets, *, vt=None, store_states=False, block_v=None,
                    num_warps=None, dg_from=None, seg=None, hc_out=None, bounds=None, write_o=True, v_in=False,
                    v_dots=2):
    """Launch a forward scan kernel of either form: kernel(u, *ops, h0, o, vt, ht, hc, chunk_offsets, H, ...), ops
    being the form's operands after u ([C, K] ones first: ops[0] gives K); tma: LOAD_TMA (_use_tma of the [C, K]
    ones).
    Returns (o, vt, ht, hc); vt given: the state recompute (o, ht None), which takes the backward's tile config.
    dg_from (pqk kernel, state recompute only): the reverse scan's dhc; the recompute then also computes the row sums
    of <dS', S>, <dS', M>, <dM', M> (MDN_BWD_DG=rec) and returns (o, vt, ht, hc, dg [NC, H, 3]).
    pqk kernel, state recompute only (MDN_BWD_SEGMENTS, chunk_scan_pqk.scan_pqk_bwd_segmented): bounds = (hb
    [S, 2, N, H, K, V] fp32, seg_len): store the start states of every seg_len-th chunk into hb (no hc);
    seg = (j0, j1, seg_len) with hc_out [N * seg_len, H, 2, K, V]: only those chunks, from h0, into hc_out.
    write_o=False (pqk kernel, forward with store_states; MDN_FWD_O=kernel): no O in the loop, o is returned None
    (the Vt-only scan takes the state recompute's pipeline stages, "rec": same operands but P and A).
    v_in (pqk kernel, not the recompute; MDN_SCAN_V=v): u holds V, and Vt = A (V - W) (the kernel's V_IN); u may
    then have any strides but a unit last one (chunk.py passes a token-major view of the op's input)."""
    u = _unit_last(u) if v_in and vt is None else u.contiguous()  # the kernel indexes U0 / the recompute's Vt densely
    NC, H, C, K, V, N = _dims(u, ops[0], chunk_offsets)
    recompute = vt is not None
    dev = u.device
    cfg_bv, cfg_nw = scan_config(K, V, u.dtype, "bwd" if recompute else "fwd")
    if not write_o and (recompute or not store_states or not kernel.fn.__name__.endswith("_pqk")):
        raise ValueError("launch_scan_fwd: write_o=False needs the pqk forward with store_states (not the recompute)")
    stages = _kernel_stages(kernel, K, u.dtype, "rec" if recompute or not write_o else "fwd")
    BV = block_v or cfg_bv
    o = None if recompute or not write_o else _o_like(u)
    if not recompute:
        vt = _empty((NC, H, C, V), u.dtype, dev)
    ht = None if recompute else _empty((2, N, H, K, V), torch.float32, dev)
    if hc_out is not None:
        hc = hc_out
    else:
        hc = _empty((NC, H, 2, K, V), u.dtype, dev) if store_states else None
    NV = triton.cdiv(V, BV)
    grid = (NV, N * H)
    consts = dict(K=K, V=V, C=C, BK=_sub_k(K), BV=BV,
                  USE_H0=h0 is not None, RECOMPUTE=recompute, STORE_STATES=store_states,
                  DOT_MODE=_dot_mode(u.dtype), LOAD_TMA=tma)
    dg_ptrs, dgp, seg_args = (), None, ()
    if kernel.fn.__name__.endswith("_pqk"):  # the pqk kernel's (dhc, dgp, hb) and segment arguments
        if (dg_from is not None or seg is not None or bounds is not None) and not recompute:
            raise ValueError("launch_scan_fwd: dg_from, seg and bounds need the state recompute (vt given)")
        if seg is not None and (hc_out is None or not store_states):
            raise ValueError("launch_scan_fwd: seg needs store_states and hc_out (the segment's hc)")
        if dg_from is not None:
            dgp = _empty((NC, H, NV, 3, K), torch.float32, dev)
        dg_ptrs = ((dg_from, dgp) if dgp is not None else (vt, vt)) + ((bounds[0],) if bounds is not None else (vt,))
        consts["DG"] = dgp is not None
        consts["SEGMENTED"] = seg is not None
        consts["STORE_BOUNDS"] = bounds is not None
        consts["WRITE_O"] = write_o
        # 0: U0 (or the recompute's Vt); 1 / 2: V, one or two dots (MDN_SCAN_V_DOTS, chunk_scan_pqk.scan_v_dots)
        consts["V_IN"] = v_dots if v_in and not recompute else 0
        seg_args = (tuple(int(x) for x in seg) if seg is not None
                    else (0, 0, int(bounds[1])) if bounds is not None else (0, 0, 0))
        seg_args += tuple(u.stride()[:3])  # s_uc, s_uh, s_ut: V_IN reads u through them (a view of the input)
    elif dg_from is not None or seg is not None or bounds is not None or v_in:
        raise ValueError(f"launch_scan_fwd: dg_from, seg, bounds and v_in are for the pqk kernel, not "
                         f"{kernel.fn.__name__}")
    _launch_pipelined(
        kernel, grid,
        (u, *ops,
         h0, o if o is not None else vt, vt, ht if ht is not None else vt, hc if hc is not None else vt, *dg_ptrs,
         chunk_offsets, H, *(o.stride()[:3] if o is not None else (0, 0, 0)), *seg_args),
        consts, num_warps or cfg_nw, stages)
    if dgp is not None:
        return o, vt, ht, hc, dgp.sum((2, 4))
    return o, vt, ht, hc


PERSIST_GAIN = 0.9  # the persistent reverse scan runs where it needs at most this share of the waves' chunk steps


def scan_persist() -> Optional[int]:
    """MDN_SCAN_PERSIST: how the pqk reverse scan spreads dense batches over the GPU. "auto" (unset, the default):
    the persistent grid (momentum_delta_rule_bwd_kernel_scan_pqk's PERSIST) where it takes at most PERSIST_GAIN of
    the chunk steps of one program per stream, with the resident programs computed from the compiled (one program
    per stream) kernel's registers and shared memory and the GPU; never under the interpreter. "off": one program
    per stream. A positive integer: the persistent grid planned for that many resident programs, wherever it is
    valid (tests, A/Bs).
    Returns None for "auto", 0 for "off". Anything else is a ValueError."""
    env = (os.environ.get("MDN_SCAN_PERSIST", "") or "auto").strip()
    if env == "auto":
        return None
    if env == "off":
        return 0
    if env.isdigit() and int(env) > 0:
        return int(env)
    raise ValueError(f"MDN_SCAN_PERSIST={env!r}: expected 'auto' (default), 'off' or a positive integer (the "
                     f"resident programs to plan for)")


def persistent_plan(nh: int, n: int, nv: int, slots: int, forced: bool = False) -> Optional[tuple[int, int]]:
    """(groups, chunk steps per group) of the persistent reverse scan for nh streams of n chunks in nv V-blocks
    on `slots` resident programs, or None where it does not apply or (not forced) would not pay. Each group is nv
    programs; the groups share the nh * n steps evenly, at least n each (a stream is cut at most once). One
    program per stream takes ceil(nh * nv / slots) rounds of n steps."""
    groups = slots // nv
    if groups < 1 or nh < 1 or n < 1:
        return None
    length = max(-(-nh * n // groups), n)
    groups = -(-nh * n // length)
    waves = -(-nh * nv // slots) * n
    if not forced and length > PERSIST_GAIN * waves:
        return None
    return groups, length


_RESIDENT: dict = {}  # (kernel, constexprs, warps, stages, device) -> resident programs on the whole GPU


def resident_programs(kernel, grid, args, consts: dict, num_warps: int, num_stages: int, device) -> int:
    """How many programs of this compiled kernel the GPU holds at once: SMs x the blocks per SM that its
    registers, shared memory and threads allow (CUDA's occupancy rules; registers go to warps in units of 256).
    Compiles the kernel (Triton's cache keeps it for the launch). 0 where that fails."""
    key = (kernel.fn.__name__, tuple(sorted(consts.items())), num_warps, num_stages, str(device))
    if key not in _RESIDENT:
        try:
            ck = kernel.warmup(*args, grid=grid, **consts, num_warps=num_warps, num_stages=num_stages)
            ck._init_handles()
            props = torch.cuda.get_device_properties(device)
            warp_regs = -(-max(int(ck.n_regs), 1) * 32 // 256) * 256
            by_regs = getattr(props, "regs_per_multiprocessor", 65536) // warp_regs // num_warps
            shared = int(ck.metadata.shared)
            smem = getattr(props, "shared_memory_per_multiprocessor", 0)
            by_smem = smem // (shared + 1024) if shared and smem else 32
            by_threads = getattr(props, "max_threads_per_multi_processor", 2048) // (32 * num_warps)
            _RESIDENT[key] = max(0, min(by_regs, by_smem, by_threads, 32)) * props.multi_processor_count
        except Exception:  # noqa: BLE001  (no plan then: one program per stream, as before)
            _RESIDENT[key] = 0
    return _RESIDENT[key]


def launch_scan_bwd(kernel, ops, tma, do, dht, hc, chunk_offsets, *, block_v=None, num_warps=None,
                    zero_dg=False, stacked=False, seg=None, bufs=None, dhc_q8=False, dx=None, stream_chunks=None,
                    **consts):
    """Launch a reverse scan kernel of either form: kernel(*ops, do, dht, dh0, dvt, dob, dvs, dhc, hc, dgp,
    chunk_offsets, H, do's strides, ...), ops[0] a [C, K] operand; do [NC, H, C, V] with any strides but a unit last
    one (the op's dO is a token-major view); tma: LOAD_TMA; consts: extra constexprs.
    Returns (dvo, dhc, dh0, dg [NC, H, 3]); dvo = [2, NC, H, C, V] (dVt, dO chunk-major), or with stacked=True (pqk
    kernel only, STACKED) the pair (dVt [NC, H, C, V], [dVt; dO] [NC, H, 2C, V]): dVt written twice, so that du
    needs no copy and the GEMM against the states stays one M = 2C GEMM (scan_bwd_gemms).
    seg = (j0, j1, seg_len) (pqk kernel only, SEGMENTED; chunk_scan_pqk.scan_pqk_bwd_segmented): only the chunks
    j0 <= j < j1 of every sequence (j counted from the sequence's first chunk), their end-state gradients into the
    segment's own dhc [N * seg_len, H, P, K, V] at row n * seg_len + j - j0; bufs = (dvo, dhc, dh0, dgp): the
    outputs, allocated by the caller (dvo, dgp full-size, shared by the segments); then dg is returned None (the
    caller sums dgp once every segment has run).
    dhc_q8 (pqk kernel, hc None, bf16 operands; MDN_DHC=q8): dhc is returned as the pair (hi planes
    [NC, H, 2, K, V] bf16, lo planes [NC, H, 2, K, V] int8) of _store_grad_states_q8.
    dx (pqk kernel; MDN_SCAN_V=v): an [NC, H, C, V] buffer (any strides but a unit last one) the kernel fills with
    X = A^T dVt (STORE_X).
    stream_chunks (pqk kernel, dense batches: every sequence's chunk count): lets the kernel run persistent
    (PERSIST, scan_persist, persistent_plan); None: one program per stream."""
    NC, H, C, V = do.shape
    x = ops[0]
    K = x.shape[-1]
    N = chunk_offsets.shape[0] - 1
    dev = do.device
    cfg_bv, cfg_nw = scan_config(K, V, x.dtype, "bwd")
    stages = _kernel_stages(kernel, K, x.dtype, "bwd")
    BV = block_v or cfg_bv
    NV = triton.cdiv(V, BV)
    do = _unit_last(do)
    if bufs is not None:
        dvo, dhc, dh0, dgp = bufs
    if stacked:
        if bufs is None:
            dvo = (_empty((NC, H, C, V), x.dtype, dev), _empty((NC, H, 2 * C, V), x.dtype, dev))
        dvt, dvs = dvo
        dob = dvt  # unused under STACKED
        consts["STACKED"] = True
    else:
        if bufs is None:
            dvo = _empty((2, NC, H, C, V), x.dtype, dev)
        dvt, dob, dvs = dvo[0], dvo[1], dvo[0]  # dvs: unused
    if dhc_q8 and (hc is not None or bufs is not None or x.dtype != torch.bfloat16):
        raise ValueError("launch_scan_bwd: dhc_q8 is for the tail path (no hc, no segments) with bf16 operands")
    if bufs is None:
        if dhc_q8:  # [dS', dM'] as bf16 hi planes and int8 lo planes (_store_grad_states_q8)
            dhc = (_empty((NC, H, 2, K, V), x.dtype, dev), _empty((NC, H, 2, K, V), torch.int8, dev))
        else:  # [dS', dM'], or for 16-bit operands [hi(dS'), hi(dM'), lo(dS'), lo(dM')] (_store_grad_state)
            dhc = _empty((NC, H, 2 if x.dtype == torch.float32 else 4, K, V), x.dtype, dev)
        dh0 = _empty((2, N, H, K, V), torch.float32, dev)
    # row sums of the <dS', S>, <dS', M>, <dM', M> products per V-block (_bwd_dg_rows); zero_dg: zeros, so that a
    # kernel run that skips them (ABLATE) stays finite. hc None (pqk kernel only): no row sums here (MDN_BWD_DG=rec:
    # the state recompute after this scan computes them, launch_scan_fwd(dg_from=)), dg None
    dg_here = hc is not None
    if not dg_here:
        consts["DG"] = False
        hc = dvt  # unused
    dhc_arg = dhc
    if dhc_q8:  # the pqk kernel takes the lo planes in the slot of hc, which the tail path leaves unused
        dhc_arg, hc = dhc
        consts["DHC_Q8"] = True
    if bufs is None:
        dgp = (torch.zeros if zero_dg else _empty)((NC, H, NV, 3, K) if dg_here else (1,), dtype=torch.float32,
                                                   device=dev)
    elif dg_here and dgp.shape[2] != NV:
        raise ValueError(f"launch_scan_bwd: dgp has {dgp.shape[2]} V-blocks, the kernel runs {NV}")
    seg_args = ()
    if kernel.fn.__name__.endswith("_pqk"):  # the pqk kernel's segment arguments (seg_j0, seg_j1, seg_len), dx
        if dx is not None and dx.stride(-1) != 1:
            raise ValueError(f"launch_scan_bwd: dx needs a unit last stride, got strides {tuple(dx.stride())}")
        x_arg = dx if dx is not None else dvt
        seg_args = ((tuple(int(x) for x in seg) if seg is not None else (0, 0, 0)) + (x_arg,)
                    + tuple(x_arg.stride()[:3]))
        consts["SEGMENTED"] = seg is not None
        consts["STORE_X"] = dx is not None
    elif seg is not None or dx is not None:
        raise ValueError(f"launch_scan_bwd: seg and dx are for the pqk kernel, not {kernel.fn.__name__}")
    grid = (NV, N * H)
    args = (*ops, do, dht, dh0, dvt, dob, dvs, dhc_arg, hc, dgp, chunk_offsets, H, *do.stride()[:3], *seg_args)
    consts = dict(K=K, V=V, C=C, BK=_sub_k(K), BV=BV, USE_DHT=dht is not None, DOT_MODE=_dot_mode(x.dtype),
                  LOAD_TMA=tma, **consts)
    nw = num_warps or cfg_nw
    if seg_args:  # the pqk kernel: one program per stream, or the persistent grid (PERSIST)
        plan = None
        plain_args = args + (chunk_offsets, dh0, N * H, 1, 1, 1)  # sync, carry, pe_*: unused
        if stream_chunks and seg is None and N * H and NC == N * stream_chunks:
            forced = scan_persist()
            slots = forced
            if forced is None and _compiled_kernels(x):
                # the one-program-per-stream kernel's occupancy (compiled for the launch anyway), taken for the
                # persistent kernel's: same registers (255) and shared memory in ptxas at K = 128 and 256 (README
                # §6), and a wrong figure costs only speed (the tickets keep any launch order deadlock-free)
                slots = resident_programs(kernel, grid, plain_args, consts, nw, stages, dev)
            if slots:
                plan = persistent_plan(N * H, stream_chunks, NV, slots, forced=bool(forced))
        if plan is not None:
            groups, length = plan
            sync = torch.zeros((1 + groups) * NV, dtype=torch.int32, device=dev)  # ticket counters, flags
            carry = _empty((2, groups, K, V), torch.float32, dev)
            grid, consts = (groups * NV,), dict(consts, PERSIST=True)
            args = args + (sync, carry, N * H, stream_chunks, length, groups)
        else:
            args = plain_args
    _launch_pipelined(kernel, grid, args, consts, nw, stages)
    if bufs is not None:
        return dvo, dhc, dh0, None
    return dvo, dhc, dh0, dgp.sum((2, 4)) if dg_here else None


def scan_fwd_triton(u, y, z, qa, qb, aqk, ks, km, g, h0, chunk_offsets, *, vt=None, store_states=False,
                    block_v=None, num_warps=None):
    return launch_scan_fwd(momentum_delta_rule_fwd_kernel_scan, u, (y, z, qa, qb, aqk, ks, km, g),
                           _use_tma((y, z, qa, qb, ks, km)), h0, chunk_offsets, vt=vt,
                           store_states=store_states, block_v=block_v, num_warps=num_warps)


def scan_bwd_triton(y, z, qa, qb, aqk, ks, km, g, do, dht, hc, chunk_offsets, *, block_v=None, num_warps=None,
                    ablate=0):
    """Reverse scan. ablate != 0 only for timing experiments (bench_scan.py): it gives wrong gradients."""
    return launch_scan_bwd(momentum_delta_rule_bwd_kernel_scan, (y, z, qa, qb, aqk, ks, km, g),
                           _use_tma((y, z, qa, qb, ks, km)), do, dht, hc, chunk_offsets, block_v=block_v,
                           num_warps=num_warps, zero_dg=bool(ablate & 1), ABLATE=ablate)


def _mm(a, b, dot_bf16):
    """a @ b with the kernels' rounding: bf16 operands (fp32 accumulation) or fp32."""
    if dot_bf16:
        return (a.to(torch.bfloat16).float() @ b.to(torch.bfloat16).float())
    return a.float() @ b.float()


def torch_scan_fwd(u, K, h0, chunk_offsets, vt, store_states, step):
    """The forward scan's chunk loop in torch (either form): per sequence from h0 (or zeros), per chunk c
    hc[c] = (S, M) (store_states) and S, M = step(c, S, M, o, vt, recompute), step filling vt[c] and o[c] unless
    recompute (vt given). Returns (o, vt, ht, hc) as the kernels."""
    NC, H, C, V = u.shape
    N = chunk_offsets.shape[0] - 1
    recompute = vt is not None
    offs = chunk_offsets.tolist()
    o = None if recompute else _o_like(u)
    if not recompute:
        vt = u.new_empty(NC, H, C, V)
    ht = u.new_empty(2, N, H, K, V, dtype=torch.float32)
    hc = u.new_empty(NC, H, 2, K, V) if store_states else None
    for n in range(N):
        if h0 is not None:
            S, M = h0[0, n].float(), h0[1, n].float()  # [H, K, V]
        else:
            S = u.new_zeros(H, K, V, dtype=torch.float32)
            M = torch.zeros_like(S)
        for c in range(offs[n], offs[n + 1]):
            if store_states:
                hc[c, :, 0], hc[c, :, 1] = S, M
            S, M = step(c, S, M, o, vt, recompute)
        ht[0, n], ht[1, n] = S, M
    return o, vt, (None if recompute else ht), hc


def torch_scan_bwd(x, do, dht, hc, chunk_offsets, step):
    """The reverse scan's chunk loop in torch (either form; x: a [C, K] operand): per sequence from dht (or zeros),
    per chunk c (last to first) the end-state grads into dhc (hi + lo planes for 16-bit, _store_grad_state), the
    <dS', S>, -<dS', M>, <dM', M> into dg, and dS, dM = step(c, dS, dM, dvo), step filling dvo[:, c].
    Returns (dvo, dhc, dh0, dg) as the kernels (dg summed)."""
    NC, H, C, V = do.shape
    K = x.shape[-1]
    N = chunk_offsets.shape[0] - 1
    offs = chunk_offsets.tolist()
    dvo = x.new_empty(2, NC, H, C, V)
    dhc = x.new_empty(NC, H, 2 if x.dtype == torch.float32 else 4, K, V)
    dh0 = x.new_empty(2, N, H, K, V, dtype=torch.float32)
    dg = x.new_zeros(NC, H, 3, dtype=torch.float32)
    for n in range(N):
        if dht is not None:
            dS, dM = dht[0, n].float(), dht[1, n].float()
        else:
            dS = x.new_zeros(H, K, V, dtype=torch.float32)
            dM = torch.zeros_like(dS)
        for c in range(offs[n + 1] - 1, offs[n] - 1, -1):
            dhc[c, :, 0], dhc[c, :, 1] = dS, dM
            if dhc.shape[2] == 4:  # lo parts (see _store_grad_state)
                dhc[c, :, 2], dhc[c, :, 3] = dS - dhc[c, :, 0].float(), dM - dhc[c, :, 1].float()
            hs, hm = hc[c, :, 0].float(), hc[c, :, 1].float()
            dg[c, :, 0], dg[c, :, 1], dg[c, :, 2] = ((dS * hs).sum((-1, -2)), -(dS * hm).sum((-1, -2)),
                                                     (dM * hm).sum((-1, -2)))
            dS, dM = step(c, dS, dM, dvo)
        dh0[0, n], dh0[1, n] = dS, dM
    return dvo, dhc, dh0, dg


def _t(x):
    return x.transpose(-1, -2)


def scan_fwd_torch(u, y, z, qa, qb, aqk, ks, km, g, h0, chunk_offsets, *, vt=None, store_states=False):
    bf = u.dtype != torch.float32
    gf = g.float()

    def step(c, S, M, o, vt, recompute):
        if recompute:
            b_vt = vt[c]
        else:
            b_vt = (u[c].float() - _mm(y[c], S, bf) + _mm(z[c], M, bf)).to(vt.dtype)
            vt[c] = b_vt
            o[c] = _mm(qa[c], S, bf) - _mm(qb[c], M, bf) + _mm(aqk[c], b_vt, bf)
        g0, g1, g2 = (gf[c, :, i, None, None] for i in range(3))
        return g0 * S - g1 * M + _mm(_t(ks[c]), b_vt, bf), g2 * M - _mm(_t(km[c]), b_vt, bf)

    return torch_scan_fwd(u, y.shape[-1], h0, chunk_offsets, vt, store_states, step)


def scan_bwd_torch(y, z, qa, qb, aqk, ks, km, g, do, dht, hc, chunk_offsets):
    bf = y.dtype != torch.float32
    gf = g.float()

    def step(c, dS, dM, dvo):
        b_dvt = (_mm(_t(aqk[c]), do[c], bf) + _mm(ks[c], dS, bf) - _mm(km[c], dM, bf)).to(dvo.dtype)
        dvo[0, c] = b_dvt
        dvo[1, c] = do[c]
        g0, g1, g2 = (gf[c, :, i, None, None] for i in range(3))
        return (g0 * dS + _mm(_t(qa[c]), do[c], bf) - _mm(_t(y[c]), b_dvt, bf),
                g2 * dM - g1 * dS - _mm(_t(qb[c]), do[c], bf) + _mm(_t(z[c]), b_dvt, bf))

    return torch_scan_bwd(y, do, dht, hc, chunk_offsets, step)


def scan_fwd_impl(u, y, z, qa, qb, aqk, ks, km, g, h0, chunk_offsets, **kw):
    scan_load()  # reject a bad MDN_SCAN_LOAD on every path
    if _use_triton(u):
        return scan_fwd_triton(u, y, z, qa, qb, aqk, ks, km, g, h0, chunk_offsets, **kw)
    return scan_fwd_torch(u, y, z, qa, qb, aqk, ks, km, g, h0, chunk_offsets, **kw)


def scan_bwd_impl(y, z, qa, qb, aqk, ks, km, g, do, dht, hc, chunk_offsets):
    scan_load()
    if _use_triton(y):
        return scan_bwd_triton(y, z, qa, qb, aqk, ks, km, g, do, dht, hc, chunk_offsets)
    return scan_bwd_torch(y, z, qa, qb, aqk, ks, km, g, do, dht, hc, chunk_offsets)


def scan_bwd_gemms(vt, do, dvo, hc, dhc, dh0, h0, sum_parts: bool = True):
    """The backward's reductions over V (either form), as batched matmuls on dvo [2, NC, H, C, V] = (dVt, dO
    chunk-major, both written by the reverse scan; or the stacked pair of launch_scan_bwd, one GEMM for x): xv = dVt [S; M]^T and xo = dO [S; M]^T, each [NC, H, C, 2K]
    (two GEMMs against both states), r = Vt [dS'; dM']^T [NC, H, C, 2K] (fp32; hi + lo parts summed for 16-bit),
    du = dVt (a view of dvo: no copy), daqk = tril(dO Vt^T), and dh0 (zeros without h0; in h0's dtype).
    sum_parts=False returns r as the GEMM wrote it: for 16-bit inputs [NC, H, C, 4K] (hi parts' products, then lo
    parts'), for the caller to sum inside its compiled graph: on CUDA the strided .float() copies and the add here
    were three elementwise passes over 2.4 GB (0.78 ms of a 16.2 ms fwd+bwd at H6 K256 V512, H200,
    docs/BENCHMARKS.md §1.11). Returns ((xv, xo), r, du, daqk, dh0)."""
    NC, H, C, V = vt.shape
    K = hc.shape[-2]
    hct = _t(hc.view(NC, H, 2 * K, V))
    if isinstance(dvo, tuple):                # stacked (launch_scan_bwd): one M = 2C GEMM, views of its halves
        dvt, dvs = dvo
        x = dvs @ hct                         # [NC, H, 2C, 2K]
        xv, xo = x[..., :C, :], x[..., C:, :]
        dob = dvs[..., C:, :]
    else:
        dvt, dob = dvo[0], dvo[1]
        xv = dvt @ hct                        # [NC, H, C, 2K] = [dVt S^T, dVt M^T]
        xo = dob @ hct                        # [NC, H, C, 2K] = [dO S^T, dO M^T]
    P = dhc.shape[2]
    r = vt @ _t(dhc.view(NC, H, P * K, V))   # [NC, H, C, 2K] = [Vt dS'^T, Vt dM'^T] (+ the lo parts' when P = 4)
    if sum_parts:
        r = r[..., :2 * K].float() + r[..., 2 * K:].float() if P == 4 else r.float()
    daqk = (dob @ _t(vt)).tril()              # [NC, H, C, C]
    du = dvt
    if h0 is None:
        dh0 = torch.zeros_like(dh0)
    return (xv, xo), r, du, daqk, dh0.to(h0.dtype if h0 is not None else torch.float32)


# ---------------------------------------------------------------------------------------------------------------
# custom ops
# ---------------------------------------------------------------------------------------------------------------

@torch.library.custom_op("mdn::scan_fwd", mutates_args=())
def scan_fwd(
    u: torch.Tensor, y: torch.Tensor, z: torch.Tensor, qa: torch.Tensor, qb: torch.Tensor, aqk: torch.Tensor,
    ks: torch.Tensor, km: torch.Tensor, g: torch.Tensor, h0: Optional[torch.Tensor], chunk_offsets: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Returns (o [NC, H, C, V], vt [NC, H, C, V], ht [2, N, H, K, V] fp32)."""
    o, vt, ht, _ = scan_fwd_impl(u, y, z, qa, qb, aqk, ks, km, g, h0, chunk_offsets)
    return o, vt, ht


@scan_fwd.register_fake
def _(u, y, z, qa, qb, aqk, ks, km, g, h0, chunk_offsets):
    NC, H, C, V = u.shape
    K = y.shape[-1]
    N = chunk_offsets.shape[0] - 1
    return _o_like(u), u.new_empty(NC, H, C, V), u.new_empty(2, N, H, K, V, dtype=torch.float32)


@torch.library.custom_op("mdn::scan_bwd", mutates_args=())
def scan_bwd(
    y: torch.Tensor, z: torch.Tensor, qa: torch.Tensor, qb: torch.Tensor, aqk: torch.Tensor,
    ks: torch.Tensor, km: torch.Tensor, g: torch.Tensor, h0: Optional[torch.Tensor], chunk_offsets: torch.Tensor,
    vt: torch.Tensor, do: torch.Tensor, dht: Optional[torch.Tensor],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
           torch.Tensor, torch.Tensor, torch.Tensor]:
    """Returns the grads of (u, y, z, qa, qb, aqk, ks, km, g, h0); dh0 is fp32 [2, N, H, K, V]."""
    NC, H, C, V = vt.shape
    K = y.shape[-1]
    u_dummy = vt  # only the shape/dtype of u are needed by the recompute
    do = do.to(vt.dtype)
    # chunk-start states S, M: [NC, H, 2, K, V] (in the operands' dtype)
    _, _, _, hc = scan_fwd_impl(u_dummy, y, z, qa, qb, aqk, ks, km, g, h0, chunk_offsets, vt=vt,
                                store_states=True)
    # dvo [2, NC, H, C, V] = (dVt, dO); dhc [NC, H, 2 or 4, K, V] = end-state grads (dS', dM'; hi + lo for 16-bit); dg [NC, H, 3]
    dvo, dhc, dh0, dg = scan_bwd_impl(y, z, qa, qb, aqk, ks, km, g, do, dht, hc, chunk_offsets)
    (xv, xo), r, du, daqk, dh0 = scan_bwd_gemms(vt, do, dvo, hc, dhc, dh0, h0)
    dy = -xv[..., :K]
    dz = xv[..., K:].contiguous()
    dqa = xo[..., :K].contiguous()
    dqb = -xo[..., K:]
    dks = r[..., :K].to(ks.dtype).contiguous()
    dkm = (-r[..., K:]).to(km.dtype)
    return du, dy, dz, dqa, dqb, daqk, dks, dkm, dg.to(g.dtype), dh0


@scan_bwd.register_fake
def _(y, z, qa, qb, aqk, ks, km, g, h0, chunk_offsets, vt, do, dht):
    N = chunk_offsets.shape[0] - 1
    NC, H, C, V = vt.shape
    K = y.shape[-1]
    dh0_dtype = h0.dtype if h0 is not None else torch.float32
    return (vt.new_empty(vt.shape), y.new_empty(y.shape), z.new_empty(z.shape), qa.new_empty(qa.shape),
            qb.new_empty(qb.shape), aqk.new_empty(aqk.shape), ks.new_empty(ks.shape), km.new_empty(km.shape),
            g.new_empty(g.shape), vt.new_empty(2, N, H, K, V, dtype=dh0_dtype))


def _scan_setup_context(ctx, inputs, output):
    u, y, z, qa, qb, aqk, ks, km, g, h0, chunk_offsets = inputs
    _, vt, _ = output
    ctx.has_h0 = h0 is not None
    ctx.save_for_backward(y, z, qa, qb, aqk, ks, km, g, h0, chunk_offsets, vt)


def _scan_backward(ctx, do, dvt_unused, dht):
    y, z, qa, qb, aqk, ks, km, g, h0, chunk_offsets, vt = ctx.saved_tensors
    if do is None:
        do = torch.zeros_like(vt)
    grads = scan_bwd(y, z, qa, qb, aqk, ks, km, g, h0, chunk_offsets, vt, _unit_last(do),
                     dht.contiguous() if dht is not None else None)
    du, dy, dz, dqa, dqb, daqk, dks, dkm, dg, dh0 = grads
    return du, dy, dz, dqa, dqb, daqk, dks, dkm, dg, (dh0 if ctx.has_h0 else None), None


scan_fwd.register_autograd(_scan_backward, setup_context=_scan_setup_context)


def chunk_scan(u, y, z, qa, qb, aqk, ks, km, g, h0, chunk_offsets):
    """Differentiable inter-chunk scan. Returns (o [NC, H, C, V], ht [2, N, H, K, V] fp32)."""
    o, _, ht = scan_fwd(u, y, z, qa, qb, aqk, ks, km, g, h0, chunk_offsets)
    return o, ht
