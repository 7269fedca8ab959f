"""Chunkwise-parallel momentum delta rule (forward and backward).

Pipeline (see README.md in this folder for the math):
1. pack: pad every sequence to a multiple of the chunk size with identity gates and zero q/k/v, and lay all
   chunks out back to back as [NC, H, C, D] (varlen sequences are chunk-aligned, so no chunk straddles two);
2. intra-chunk coefficients, triangular solve and operands in differentiable torch (chunk_intra_pqk.py; the
   MDN_SCAN_FORM=six form: chunk_intra.py), with Triton kernels for the gate coefficients (intra_gates.py), the
   triangular inverse (tril_inverse.py) and the key/query work (chunk_intra_qk.py, which reads q and k unpacked)
   where they apply: torch.library triton_ops forward (inductor launches them inside the compiled intra part,
   oplib.py), custom ops backward;
3. inter-chunk scan in Triton, a torch custom op with its own backward (chunk_scan_pqk.py; six: chunk_scan.py);
4. unpack the output.
"""
from __future__ import annotations

import os
import warnings
from collections import OrderedDict
from typing import Optional, Tuple

import torch
import torch.nn.functional as F

from .chunk_intra import chunk_mdn_intra
from .chunk_intra_pqk import chunk_mdn_intra_pqk, chunk_mdn_intra_pqk_qk
from .chunk_intra_qk import chunk_table, intra_qk_mode, qk_kernel_applies
from .chunk_intra_bwd import intra_pqk_fwd
from .chunk_intra_fwd import chunk_mdn_intra_fwd_triton
from .chunk_intra_fwd import fits as intra_fwd_fits
from .chunk_scan import chunk_scan, scan_persist, scan_stages
from .chunk_scan_pqk import (bwd_dg, bwd_gemm, bwd_segments, chunk_scan_pqk, fwd_o, save_states, scan_v,
                             scan_v_dots)
from .chunk_state_gemms import tail_config, tail_split
from .knobs import compile_mode, env_choice
from .intra_gates import intra_gates_mode
from .tril_inverse import tril_inv_mode
from .validation import check_inputs
from .autocast import no_autocast

# ---------------------------------------------------------------------------------------------------------------
# packing: [B, T, H, D] <-> chunks [NC, H, C, D]
# ---------------------------------------------------------------------------------------------------------------

def _pack_dense(x: torch.Tensor, C: int) -> torch.Tensor:
    """[B, T, H, *D] -> [B * NT, H, C, *D], zero padded at the end of T."""
    B, T = x.shape[:2]
    NT = -(-T // C)
    pad = NT * C - T
    if pad:
        x = F.pad(x, [0, 0] * (x.dim() - 2) + [0, pad])
    x = x.reshape(B * NT, C, *x.shape[2:])
    return x.transpose(1, 2).contiguous()


def _unpack_dense(x: torch.Tensor, B: int, T: int) -> torch.Tensor:
    """[B * NT, H, C, D] -> [B, T, H, D]."""
    NC, H, C = x.shape[:3]
    x = x.transpose(1, 2).reshape(B, NC // B * C, H, *x.shape[3:])
    return x[:, :T]


def _varlen_positions(cu_seqlens: torch.Tensor, T: int, C: int):
    """Padded position of every token, and chunk offsets, for chunk-aligned packing of varlen sequences."""
    cu = cu_seqlens.to(torch.int64)
    lens = cu[1:] - cu[:-1]
    nchunks = (lens + C - 1) // C
    chunk_offsets = F.pad(nchunks.cumsum(0), [1, 0])  # [N + 1]
    N = lens.numel()
    seq = torch.repeat_interleave(torch.arange(N, device=cu.device), lens, output_size=T)  # [T]
    pos = chunk_offsets[seq] * C + torch.arange(T, device=cu.device) - cu[seq]
    NC = int(chunk_offsets[-1].item())
    return pos, chunk_offsets.to(torch.int32), NC


def _pack_varlen(x: torch.Tensor, pos: torch.Tensor, NC: int, C: int) -> torch.Tensor:
    """[1, T, H, *D] -> [NC, H, C, *D] (differentiable; padding is zero)."""
    x = x[0]
    out = x.new_zeros(NC * C, *x.shape[1:]).index_copy(0, pos, x)
    return out.reshape(NC, C, *x.shape[1:]).transpose(1, 2).contiguous()


def _unpack_varlen(x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """[NC, H, C, D] -> [1, T, H, D]."""
    NC, H, C = x.shape[:3]
    x = x.transpose(1, 2).reshape(NC * C, H, *x.shape[3:])
    return x.index_select(0, pos).unsqueeze(0)


def _packed_intra(q, k, v, log_alpha, beta, log_mu, eta, pos: Optional[torch.Tensor], NC: int, C: int, scale: float,
                  use_qk_l2norm_in_kernel: bool, use_p_times_alpha: bool, out_dtype: torch.dtype, bf16_gemm: bool,
                  form: str = "six", tril_inv: str = "solve", v_in: bool = False, gates_mode: str = "torch",
                  chunks: Optional[torch.Tensor] = None):
    """Packing ([B, T, H, D] -> [NC, H, C, D]; dense when pos is None, else varlen) and the intra part in one
    function, so that under torch.compile the transposes fuse into the intra kernels and their gradients into its
    backward instead of being separate strided copies (2.4 ms of a 24 ms fwd+bwd at H6 K256 V512 on the H100).
    form: the scan form (MDN_SCAN_FORM): "six" -> chunk_mdn_intra, "pqk" -> chunk_mdn_intra_pqk; "pqk_triton" -> the
    fused Triton kernels of the pqk form (MDN_INTRA=triton; custom ops mdn::intra_pqk_fwd/bwd). v_in (pqk only,
    MDN_SCAN_V=v): no U0 = A V (u is None); the scan takes V from _v_chunks. gates_mode: MDN_INTRA_GATES
    (chunk_intra.gate_coefficients). chunks (pqk only): the chunk table of chunk_intra_qk.chunk_table when the
    key/query kernels run (MDN_INTRA_QK): they read q and k unpacked."""
    pack = (lambda x: _pack_dense(x, C)) if pos is None else (lambda x: _pack_varlen(x, pos, NC, C))  # noqa: E731
    if chunks is not None:
        gates = pack(torch.stack([x.float() for x in (log_alpha, beta, log_mu, eta)], -1))  # [NC, H, C, 4]
        return chunk_mdn_intra_pqk_qk(q, k, None if v_in else pack(v), gates[..., 0], gates[..., 1], gates[..., 2],
                                      gates[..., 3], chunks, scale, use_qk_l2norm_in_kernel, use_p_times_alpha,
                                      out_dtype, bf16_gemm, tril_inv, v_in, gates_mode)
    qc, kc = pack(q), pack(k)
    vc = None if v_in else pack(v)  # v_in: the scan reads V itself (_v_chunks), the intra part needs no V
    gates = pack(torch.stack([x.float() for x in (log_alpha, beta, log_mu, eta)], -1))  # [NC, H, C, 4]
    args = (qc, kc, vc, gates[..., 0], gates[..., 1], gates[..., 2], gates[..., 3], scale, use_qk_l2norm_in_kernel,
            use_p_times_alpha)
    if form == "pqk_triton":  # the fused Triton kernels (custom ops, forward and backward): the packing fuses around
        return intra_pqk_fwd(*[a.contiguous() if isinstance(a, torch.Tensor) else a for a in args],
                             out_dtype == torch.bfloat16, bf16_gemm)
    if form == "pqk":
        return chunk_mdn_intra_pqk(*args, out_dtype=out_dtype, bf16_gemm=bf16_gemm, tril_inv=tril_inv, v_in=v_in,
                                   gates=gates_mode)
    return chunk_mdn_intra(*args, out_dtype=out_dtype, bf16_gemm=bf16_gemm, tril_inv=tril_inv, gates=gates_mode)


def _v_chunks(v: torch.Tensor, pos: Optional[torch.Tensor], NC: int, C: int, dtype: torch.dtype) -> torch.Tensor:
    """V as the pqk scan's [NC, H, C, V] operand for MDN_SCAN_V=v, token-major ([NC, C, H, V] memory, as the scan's
    O): for a dense batch with T a multiple of C a view of v itself, so neither V nor its gradient (the reverse
    scan's dx, laid out the same way) is copied; otherwise one zero-padded, chunk-aligned copy. The transposing
    copy this replaces, and its gradient's, took ~0.17 ms each at H6 K256 V512, 32768 tokens (H100)."""
    v = v.to(dtype)
    if pos is None:
        B, T = v.shape[:2]
        NT = -(-T // C)
        if NT * C != T:
            v = F.pad(v, [0, 0, 0, 0, 0, NT * C - T])
        x = v.reshape(B * NT, C, *v.shape[2:])
    else:
        x = v[0].new_zeros(NC * C, *v.shape[2:]).index_copy(0, pos, v[0]).view(NC, C, *v.shape[2:])
    return x.transpose(1, 2)


_DENSE_TABLES: "OrderedDict[tuple, tuple]" = OrderedDict()
_DENSE_TABLES_MAX = 32


def _dense_tables(B: int, T: int, C: int, device: torch.device):
    """(chunk_offsets [B + 1] int32, chunk table [NC, 2] int32 (chunk_intra_qk.chunk_table)) of a dense batch.
    Building them takes a dozen small launches: 0.30 ms of host time per forward call at H16 K128 V128, T = 2048
    (one H200; the forward's kernels take 1.47 ms and it was host-bound; docs/BENCHMARKS.md §1.24), so they are
    cached, per (B, T, C, device, stream) for the last _DENSE_TABLES_MAX keys: a table is only reused on the stream
    that made it. Not while torch.compile traces (the graph makes its own) or a CUDA graph is captured. Nothing
    writes them after they are built."""
    cuda = device.type == "cuda"
    key = None
    if not (torch.compiler.is_compiling() or (cuda and torch.cuda.is_current_stream_capturing())):
        key = (B, T, C, device, torch.cuda.current_stream(device).stream_id if cuda else 0)
        hit = _DENSE_TABLES.get(key)
        if hit is not None:
            _DENSE_TABLES.move_to_end(key)
            return hit
    NT = -(-T // C)
    tables = (torch.arange(B + 1, device=device, dtype=torch.int32) * NT, chunk_table(B, T, C, device, None, B * NT))
    if key is not None:
        _DENSE_TABLES[key] = tables
        while len(_DENSE_TABLES) > _DENSE_TABLES_MAX:
            _DENSE_TABLES.popitem(last=False)
    return tables


_compiled_intra: dict = {}  # "dense" / "varlen" -> the torch.compile'd wrapper (_run_intra)
_RECOMPILE_LIMIT = 64        # static graphs of the dense intra part per process (_run_intra)
_compile_failed = False


def _packed_intra_dense(*args, **kwargs):
    """_packed_intra for dense batches. Its own code object, so that its compile (static shapes, _run_intra) keeps
    its own cache and recompile state apart from the varlen one's."""
    return _packed_intra(*args, **kwargs)


def _packed_intra_varlen(*args, **kwargs):
    """_packed_intra for varlen batches (automatic dynamic shapes: NC and T change with every batch)."""
    return _packed_intra(*args, **kwargs)


def _compile_wanted(q: torch.Tensor) -> bool:
    """MDN_CHUNK_COMPILE=1: always, =0: never; unset: on CUDA only (never on the CPU / interpreter by default)."""
    env = os.environ.get("MDN_CHUNK_COMPILE", "")
    if env in ("0", "1"):
        return env == "1"
    return q.is_cuda and os.environ.get("TRITON_INTERPRET", "0") != "1"


def _bf16_gemm_wanted(op_dtype: torch.dtype) -> bool:
    """bf16 GEMMs in the intra part for 16-bit inputs (chunk_intra.py), as the official kernels do: the default
    since it was measured (H100, H6 K256 V512, T=4096: fwd+bwd 24.4 -> 20.3 ms, every error vs fp64 <= 5e-3;
    docs/BENCHMARKS.md). MDN_INTRA_GEMM=fp32 keeps those GEMMs in fp32 (slower, for accuracy studies)."""
    env = os.environ.get("MDN_INTRA_GEMM", "")
    if env not in ("", "bf16", "fp32"):
        raise ValueError(f"MDN_INTRA_GEMM={env!r}: expected 'bf16' (default for 16-bit inputs) or 'fp32'")
    return op_dtype == torch.bfloat16 and env != "fp32"


SCAN_FORMS = ("six", "pqk")


def scan_form() -> str:
    """MDN_SCAN_FORM: "pqk" (default; chunk_scan_pqk.py loads P, Q, K_w and rebuilds the six operands in registers)
    or "six" (chunk_scan.py loads Y, Z, Qa, Qb, Ks, Km; README §6). pqk is the default since it was measured: H100,
    H6 K256 V512, T = 4096, same call: fwd 5.08 vs 6.63 ms, fwd+bwd 22.2 vs 24.8 ms, peak 8.9 vs 9.8 GiB, every error
    vs fp64 <= 4.6e-3 (docs/BENCHMARKS.md §1.8). Any other value is a ValueError, on every call."""
    return env_choice("MDN_SCAN_FORM", SCAN_FORMS, "pqk")


def _triton_intra_wanted(*xs: torch.Tensor, chunk_size: int, form: str) -> bool:
    """MDN_INTRA=triton (opt-in, default off): the fused Triton intra part (chunk_intra_fwd.py; the kernel of the
    scan form in use). The pqk form has a Triton backward too (chunk_intra_bwd.py, custom ops that torch.compile
    keeps whole); the six form's kernel is used only when no gradient is required. On CUDA or under
    TRITON_INTERPRET=1, and only where it fits in shared memory (chunk_intra_fwd.fits: C <= 64; with fp32 inputs
    not K = 256 at tf32x3)."""
    env = os.environ.get("MDN_INTRA", "")
    if env not in ("", "torch", "triton"):
        raise ValueError(f"MDN_INTRA={env!r}: expected 'torch' (default) or 'triton'")
    if env != "triton":
        return False
    grad = torch.is_grad_enabled() and any(x.requires_grad for x in xs)
    if form != "pqk" and (grad or torch.compiler.is_compiling()):
        return False
    op_dtype = torch.float32 if xs[0].dtype == torch.float32 else torch.bfloat16
    if not intra_fwd_fits(chunk_size, xs[0].shape[-1], _bf16_gemm_wanted(op_dtype)):
        return False
    return xs[0].is_cuda or os.environ.get("TRITON_INTERPRET", "0") == "1"


def _run_intra(q, *args, **kwargs):
    """_packed_intra (packing + chunk_mdn_intra) through torch.compile (default on CUDA), else eager.

    Inside a torch.compile'd caller (is_compiling) the eager function is traced into the caller's graph instead
    of nesting a second compile. If compiling or running the compiled function raises (anything but OOM), a
    warning is printed once and the eager function is used from then on. MDN_CHUNK_COMPILE_BACKEND picks the
    backend (default inductor; tests use aot_eager).
    """
    global _compile_failed
    if torch.compiler.is_compiling() or _compile_failed or not _compile_wanted(q):
        return _packed_intra(q, *args, **kwargs)
    dense = args[6] is None  # pos
    try:
        fn = _compiled_intra.get("dense" if dense else "varlen")
        if fn is None:
            backend = os.environ.get("MDN_CHUNK_COMPILE_BACKEND", "inductor")
            # Dense: static shapes, one graph per (B, T, H, K, V, dtype, ...). Automatic dynamic shapes made a
            # second head shape in one process (a correctness check at a small size, a sweep over shapes)
            # symbolic in H, K and V: one H100 call timed the op's forward at 7.6 ms after such a check and 5.6 ms
            # without. Marking only B and T dynamic was slower still (H100, H6 K256 V512, T = 4096, same call as a
            # static run of the same code a call earlier: intra fwd 2.78 vs 1.85 ms, intra fwd+bwd 7.94 vs 5.06 ms;
            # docs/BENCHMARKS.md §1.8). Varlen batches change NC with every batch: automatic dynamic there.
            fn = torch.compile(_packed_intra_dense if dense else _packed_intra_varlen,
                               dynamic=False if dense else None, backend=backend,
                               **({"mode": compile_mode()} if backend == "inductor" else {}))
            _compiled_intra["dense" if dense else "varlen"] = fn
        if dense:
            args = args[:7] + (0,) + args[8:]  # NC is unused when dense: no guard on its value
            # one static graph per shape: allow more of them than dynamo's default 8 per function (a sweep times
            # a dozen shapes in one worker) before it would silently run this part eagerly
            with torch._dynamo.config.patch(recompile_limit=max(_RECOMPILE_LIMIT,
                                                                torch._dynamo.config.recompile_limit)):
                return fn(q, *args, **kwargs)
        return fn(q, *args, **kwargs)
    except torch.cuda.OutOfMemoryError:
        raise
    except Exception as e:  # noqa: BLE001  (any compiler failure: fall back, never fail the op)
        _compile_failed = True
        warnings.warn(f"mdn chunk op: torch.compile of the intra-chunk part failed ({type(e).__name__}: "
                      f"{str(e)[:300]}); using eager torch from now on (MDN_CHUNK_COMPILE=0 silences this)",
                      RuntimeWarning, stacklevel=3)
        return _packed_intra(q, *args, **kwargs)


# ---------------------------------------------------------------------------------------------------------------
# public op
# ---------------------------------------------------------------------------------------------------------------

@no_autocast
def chunk_momentum_delta_rule(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    log_alpha: torch.Tensor,
    beta: torch.Tensor,
    log_mu: torch.Tensor,
    eta: torch.Tensor,
    scale: Optional[float] = None,
    initial_state: Optional[torch.Tensor] = None,
    output_final_state: bool = False,
    cu_seqlens: Optional[torch.Tensor] = None,
    use_qk_l2norm_in_kernel: bool = True,
    use_p_times_alpha: bool = True,
    chunk_size: int = 64,
) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    r"""
    Chunkwise momentum delta rule (MDN). Per sequence and head, with states S, M of shape [K, V]:

        r_t = S_{t-1}^T p_t - v_t
        M_t = mu_t M_{t-1} + (eta_t k_t) r_t^T
        S_t = alpha_t S_{t-1} - beta_t M_t
        o_t = scale * S_t^T q_t

    Args:
        q (torch.Tensor):
            queries of shape `[B, T, H, K]`.
        k (torch.Tensor):
            keys of shape `[B, T, H, K]`.
        v (torch.Tensor):
            values of shape `[B, T, H, V]`.
        log_alpha (torch.Tensor):
            log of the state decay alpha in (0, 1], shape `[B, T, H]`.
        beta (torch.Tensor):
            step size applied to the momentum when updating S, shape `[B, T, H]`.
        log_mu (torch.Tensor):
            log of the momentum decay mu in (0, 1], shape `[B, T, H]`. Any value is accurate (overflow-free
            coefficients), including log_mu far below log_alpha.
        eta (torch.Tensor):
            gain on the gradient written into the momentum, shape `[B, T, H]`.
        scale (Optional[float]):
            scale of the output. Default: `K ** -0.5`.
        initial_state (Optional[torch.Tensor]):
            initial states `[2, N, H, K, V]` (0 = S, 1 = M); promoted to fp32. Default: zeros.
        output_final_state (Optional[bool]):
            whether to return the final states `[2, N, H, K, V]` (fp32). Default: `False`.
        cu_seqlens (torch.LongTensor):
            cumulative sequence lengths `[N + 1]` for variable-length inputs packed along T (requires B = 1).
        use_qk_l2norm_in_kernel (bool):
            L2-normalise q and k (hence the read key) inside the op. Default: `True`.
        use_p_times_alpha (bool):
            read key p_t = alpha_t k_t (else p_t = k_t). Default: `True`.
        chunk_size (int):
            one of 16, 32, 64, 128. Default: 64.

    Returns:
        o (torch.Tensor):
            outputs of shape `[B, T, H, V]`, in q's dtype.
        final_state (Optional[torch.Tensor]):
            final states `[2, N, H, K, V]` in fp32 if `output_final_state=True`, else `None`.

    Raises:
        ValueError: for a wrong rank, shape, dtype, device, chunk size, head dimension, `cu_seqlens` or state
            shape, before anything runs.

    Examples::
        >>> B, T, H, K, V = 2, 300, 4, 64, 128
        >>> q, k = torch.randn(B, T, H, K), torch.randn(B, T, H, K)
        >>> v = torch.randn(B, T, H, V)
        >>> log_alpha = F.logsigmoid(torch.randn(B, T, H))
        >>> log_mu = F.logsigmoid(torch.randn(B, T, H) + 2)
        >>> beta, eta = torch.rand(B, T, H) * 0.1, torch.rand(B, T, H)
        >>> o, ht = chunk_momentum_delta_rule(q, k, v, log_alpha, beta, log_mu, eta, output_final_state=True)
    """
    _, scale = check_inputs(q, k, v, log_alpha, beta, log_mu, eta, scale=scale, initial_state=initial_state,
                            cu_seqlens=cu_seqlens, chunk_size=chunk_size,
                            check_values=not torch.compiler.is_compiling())
    form = scan_form()
    save_states()  # a bad MDN_SAVE_STATES fails here, before any kernel runs
    tril_inv = tril_inv_mode()  # MDN_TRIL_INV, likewise
    gates_mode = intra_gates_mode()  # MDN_INTRA_GATES, likewise
    qk_mode = intra_qk_mode()  # MDN_INTRA_QK, likewise
    bwd_gemm()  # MDN_BWD_GEMM, likewise
    compile_mode()  # MDN_CHUNK_COMPILE_MODE, likewise
    bwd_dg()  # MDN_BWD_DG, likewise
    bwd_segments()  # MDN_BWD_SEGMENTS, likewise (and its pairing with MDN_BWD_DG)
    tail_split()  # MDN_TAIL_SPLIT, likewise
    fwd_o()  # MDN_FWD_O, likewise
    v_mode = scan_v()  # MDN_SCAN_V, likewise
    scan_v_dots()  # MDN_SCAN_V_DOTS, likewise
    tail_config(q.shape[-1], v.shape[-1], int(chunk_size), q.dtype)  # and MDN_TAIL_CONFIG
    scan_stages(q.shape[-1], q.dtype, "fwd")  # MDN_SCAN_STAGES, likewise
    scan_persist()  # MDN_SCAN_PERSIST, likewise
    B, T, H, K = q.shape
    C = int(chunk_size)
    # operands of the scan (and its stored states): bf16 for 16-bit inputs, fp32 for fp32 inputs
    op_dtype = torch.float32 if q.dtype == torch.float32 else torch.bfloat16

    if cu_seqlens is None:
        NT = -(-T // C)
        pos, NC = None, B * NT
        chunk_offsets, dense_chunks = _dense_tables(B, T, C, q.device)
    else:
        pos, chunk_offsets, NC = _varlen_positions(cu_seqlens, T, C)
        dense_chunks = None

    h0 = initial_state.float().contiguous() if initial_state is not None else None
    triton_intra = _triton_intra_wanted(q, k, v, log_alpha, beta, log_mu, eta, chunk_size=C, form=form)
    if triton_intra and form == "six":
        # the six form's fused Triton intra forward (no gradient required)
        pack = (lambda x: _pack_dense(x, C)) if pos is None else (lambda x: _pack_varlen(x, pos, NC, C))  # noqa: E731
        gates = pack(torch.stack([x.float() for x in (log_alpha, beta, log_mu, eta)], -1))  # [NC, H, C, 4]
        args = (pack(q), pack(k), pack(v), gates[..., 0], gates[..., 1], gates[..., 2], gates[..., 3], scale,
                use_qk_l2norm_in_kernel, use_p_times_alpha)
        intra = chunk_mdn_intra_fwd_triton(*args, out_dtype=op_dtype, bf16_gemm=_bf16_gemm_wanted(op_dtype))
        oc, ht = chunk_scan(*intra, h0, chunk_offsets)
    else:
        # the torch intra part, or the pqk form's fused Triton kernels ("pqk_triton"), with the packing, through
        # torch.compile on CUDA (_run_intra)
        # MDN_SCAN_V=v: the pqk scan takes V and computes Vt = A (V - W) itself (not with the Triton intra kernels,
        # which compute U0 = A V)
        v_in = form == "pqk" and not triton_intra and v_mode == "v"
        # MDN_INTRA_QK: the key/query kernels read q and k through a chunk table instead of packed copies
        qk = form == "pqk" and not triton_intra and qk_kernel_applies(q, qk_mode, C, _bf16_gemm_wanted(op_dtype))
        if not qk:
            chunks = None
        else:
            chunks = dense_chunks if cu_seqlens is None else chunk_table(B, T, C, q.device, cu_seqlens, NC)
        intra = _run_intra(q, k, v, log_alpha, beta, log_mu, eta, pos, NC, C, scale, use_qk_l2norm_in_kernel,
                           use_p_times_alpha, op_dtype, _bf16_gemm_wanted(op_dtype),
                           "pqk_triton" if triton_intra else form, tril_inv=tril_inv, v_in=v_in,
                           gates_mode=gates_mode, chunks=chunks)
        if form == "pqk":
            u = _v_chunks(v, pos, NC, C, op_dtype) if v_in else intra[0]  # intra: a tuple (MDN_INTRA=triton)
            oc, ht = chunk_scan_pqk(u, *intra[1:], h0, chunk_offsets, cu_seqlens is None, v_in)
        else:
            oc, ht = chunk_scan(*intra, h0, chunk_offsets)

    o = _unpack_dense(oc, B, T) if cu_seqlens is None else _unpack_varlen(oc, pos)
    return o.to(q.dtype), (ht if output_final_state else None)
