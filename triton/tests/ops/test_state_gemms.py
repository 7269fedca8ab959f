"""The fused backward tail (MDN_BWD_DG=tail; chunk_state_gemms.py): dVt [S; M]^T, dO [S; M]^T, Vt [dS'; dM']^T and
the <dS', S> sums in one kernel.

Checked: the kernel against float64 products of the same tensors (planes and stacked layouts, fp32 and bf16 with
the hi + lo planes, awkward K and V, every chunk size), the op with it against the default and against the fp64
recurrence (dense with an initial state and a final-state gradient, varlen with a length-1 sequence), the
MDN_TAIL_CONFIG check, and on the GPU the shipped tiles (fla issue 640 shows as a wrong dk). Outputs are
NaN-poisoned (MDN_POISON_OUTPUTS=1).
"""
from __future__ import annotations

import pytest
import torch

from conftest import (ALL_GRAD_NAMES, DEV, assert_gpu_knob_matches_and_oracle, assert_rel, assert_same_results,
                      compare_with_oracle as _compare, make_inputs, needs_kernels, run_op_per_env)
from mdn.ops.momentum_delta_rule.chunk import chunk_momentum_delta_rule
from mdn.ops.momentum_delta_rule.chunk_state_gemms import state_gemms_triton, tail_config


@pytest.fixture(autouse=True)
def _pqk(monkeypatch):
    monkeypatch.setenv("MDN_POISON_OUTPUTS", "1")
    monkeypatch.setenv("MDN_SCAN_FORM", "pqk")
    monkeypatch.delenv("MDN_TAIL_CONFIG", raising=False)


def _tail_inputs(NC, H, C, K, V, dtype, stacked):
    """Random vt, dvo, hc, dhc as the reverse scan leaves them (dhc hi + lo for 16-bit), and their fp64 values."""
    vt = torch.randn(NC, H, C, V, device=DEV).to(dtype)
    dvt = torch.randn(NC, H, C, V, device=DEV).to(dtype)
    dob = torch.randn(NC, H, C, V, device=DEV).to(dtype)
    hc = torch.randn(NC, H, 2, K, V, device=DEV).to(dtype)
    dh = torch.randn(NC, H, 2, K, V, device=DEV) * 3
    if dtype == torch.float32:
        dhc, dh64 = dh, dh.double()
    else:
        hi = dh.to(dtype)
        lo = (dh - hi.float()).to(dtype)
        dhc, dh64 = torch.cat([hi, lo], 2), hi.double() + lo.double()
    dvo = (dvt, torch.cat([dvt, dob], 2)) if stacked else torch.stack([dvt, dob])
    return (vt, dvo, hc, dhc), (vt.double(), dvt.double(), dob.double(), hc.double(), dh64)


@needs_kernels
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("C,K,V,stacked", [(16, 32, 24, False), (64, 100, 48, False), (32, 64, 80, True),
                                           (128, 20, 16, False)])
@pytest.mark.parametrize("split", ["0", "1", "gemm"])
def test_state_gemms_match_fp64_products(monkeypatch, dtype, C, K, V, stacked, split):
    """Every MDN_TAIL_SPLIT (one fused launch, two launches of the kernel, cuBLAS for dVt / dO x (S, M))."""
    monkeypatch.setenv("MDN_TAIL_SPLIT", split)
    (vt, dvo, hc, dhc), (vt64, dvt64, do64, hc64, dh64) = _tail_inputs(3, 2, C, K, V, dtype, stacked)
    (xv, xo), rr, dg = state_gemms_triton(vt, dvo, hc, dhc)
    hct = hc64.flatten(2, 3).transpose(-1, -2)                # [V, 2K]
    tol = 1e-6 if dtype == torch.float32 else 8e-3            # xv, xo are stored in bf16
    assert_rel("xv", dvt64 @ hct, xv, tol)
    assert_rel("xo", do64 @ hct, xo, tol)
    assert rr.dtype == torch.float32
    # rr sums the hi and lo products in fp32: as exact as fp32 accumulation, not bf16-rounded
    assert_rel("rr", vt64 @ dh64.flatten(2, 3).transpose(-1, -2), rr, 4e-6)
    S, M, dS, dM = hc64[:, :, 0], hc64[:, :, 1], dh64[:, :, 0], dh64[:, :, 1]
    ref = torch.stack([(dS * S).sum((-1, -2)), -(dS * M).sum((-1, -2)), (dM * M).sum((-1, -2))], -1)
    assert_rel("dg", ref, dg, 1e-6)


def _op_inputs(dtype, varlen):
    if varlen:
        inputs = make_inputs(1, 71, 2, 32, 24, dtype=dtype, device=DEV)
        inputs["cu_seqlens"] = torch.tensor([0, 1, 40, 71], dtype=torch.long, device=DEV)
        return (inputs,
                dict(do=torch.randn(1, 71, 2, 24, dtype=torch.float64, device=DEV),
                     dht=torch.randn(2, 3, 2, 32, 24, dtype=torch.float64, device=DEV)),
                [n for n in ALL_GRAD_NAMES if n != "initial_state"])
    return (make_inputs(2, 100, 2, 32, 24, dtype=dtype, device=DEV, initial_state=True),
            dict(do=torch.randn(2, 100, 2, 24, dtype=torch.float64, device=DEV),
                 dht=torch.randn(2, 2, 2, 32, 24, dtype=torch.float64, device=DEV)),
            ALL_GRAD_NAMES)


@needs_kernels
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 8e-3)])
@pytest.mark.parametrize("varlen", [False, True])
def test_op_tail_equals_reverse_scan_dg(monkeypatch, dtype, tol, varlen):
    """MDN_BWD_DG=tail gives the default's outputs and gradients (bf16: rr keeps the lo parts' products in fp32
    where the cuBLAS path rounds them to bf16, so the gradients differ by that rounding) and meets the fp64
    tolerances."""
    inputs, kw, grads = _op_inputs(dtype, varlen)
    out = run_op_per_env(monkeypatch, "MDN_BWD_DG", ("rev", "tail"), chunk_momentum_delta_rule, inputs,
                         grads=grads, chunk_size=16, **kw)
    assert_same_results(out["rev"], out["tail"], tol)
    monkeypatch.setenv("MDN_BWD_DG", "tail")
    op_kwargs = dict(chunk_size=16)
    if dtype == torch.float32:
        _compare(inputs, dtype=dtype, tol_o=1e-5, tol_grad=1e-5, op_kwargs=op_kwargs)
    else:
        _compare(inputs, dtype=dtype, tol_o=5e-3, tol_grad=1e-2, op_kwargs=op_kwargs)


@needs_kernels
def test_op_tail_with_stacked_gemm_and_saved_states(monkeypatch):
    """MDN_BWD_DG=tail with the stacked [dVt; dO] layout and with the forward's saved states: the same numbers (with
    MDN_SCAN_V=u0, which the stacked layout implies, on both sides of the first comparison)."""
    inputs, kw, grads = _op_inputs(torch.bfloat16, False)
    monkeypatch.setenv("MDN_BWD_DG", "tail")
    monkeypatch.setenv("MDN_SCAN_V", "u0")
    base = run_op_per_env(monkeypatch, "MDN_BWD_GEMM", ("planes", "stacked"), chunk_momentum_delta_rule, inputs,
                          grads=grads, chunk_size=16, **kw)
    assert_same_results(base["planes"], base["stacked"], 1e-6)
    monkeypatch.delenv("MDN_SCAN_V")
    saved = run_op_per_env(monkeypatch, "MDN_SAVE_STATES", ("0", "1"), chunk_momentum_delta_rule, inputs,
                           grads=grads, chunk_size=16, **kw)
    assert_same_results(saved["0"], saved["1"], 1e-6)


@needs_kernels
@pytest.mark.parametrize("split", ["1", "gemm"])
def test_op_tail_split_equals_fused(monkeypatch, split):
    """MDN_TAIL_SPLIT=1 (the same products in two launches) gives the fused tail's numbers exactly; =gemm (cuBLAS
    for dVt / dO x (S, M), bf16 outputs rounded by another GEMM) within bf16 rounding; a bad value is a ValueError
    before any kernel runs."""
    inputs, kw, grads = _op_inputs(torch.bfloat16, False)
    monkeypatch.setenv("MDN_BWD_DG", "tail")
    out = run_op_per_env(monkeypatch, "MDN_TAIL_SPLIT", ("0", split), chunk_momentum_delta_rule, inputs,
                         grads=grads, chunk_size=16, **kw)
    assert_same_results(out["0"], out[split], 1e-6 if split == "1" else 8e-3)
    monkeypatch.setenv("MDN_TAIL_SPLIT", "2")
    with pytest.raises(ValueError, match="MDN_TAIL_SPLIT='2': expected one of"):
        chunk_momentum_delta_rule(**inputs, chunk_size=16)


@needs_kernels
@pytest.mark.parametrize("segments,split", [("2", "0"), ("3", "1"), ("9", "0")])
@pytest.mark.parametrize("varlen", [False, True])
def test_op_segmented_tail_equals_one_pass(monkeypatch, segments, split, varlen):
    """MDN_BWD_SEGMENTS with the tail: the reverse scan without the sums and the tail kernel on each segment's rows
    through a chunk-id index give the one-pass tail's numbers (same arithmetic), dense with an initial state and a
    final-state gradient, and varlen with a length-1 sequence and more segments than a sequence has chunks."""
    inputs, kw, grads = _op_inputs(torch.bfloat16, varlen)
    monkeypatch.setenv("MDN_BWD_DG", "tail")
    monkeypatch.setenv("MDN_DHC", "split")  # what the segments store (q8 runs in one pass only)
    monkeypatch.setenv("MDN_TAIL_SPLIT", split)
    out = run_op_per_env(monkeypatch, "MDN_BWD_SEGMENTS", ("1", segments), chunk_momentum_delta_rule, inputs,
                         grads=grads, chunk_size=16, **kw)
    assert_same_results(out["1"], out[segments], 1e-6)


@needs_kernels
def test_op_segmented_tail_with_saved_states(monkeypatch):
    """MDN_BWD_SEGMENTS with the tail and MDN_SAVE_STATES=1 (the forward's full hc, read by chunk id)."""
    inputs, kw, grads = _op_inputs(torch.bfloat16, False)
    monkeypatch.setenv("MDN_BWD_DG", "tail")
    monkeypatch.setenv("MDN_DHC", "split")  # what the segments store (q8 runs in one pass only)
    monkeypatch.setenv("MDN_SAVE_STATES", "1")
    out = run_op_per_env(monkeypatch, "MDN_BWD_SEGMENTS", ("1", "4"), chunk_momentum_delta_rule, inputs,
                         grads=grads, chunk_size=16, **kw)
    assert_same_results(out["1"], out["4"], 1e-6)


def test_segments_refuse_gemm_split(monkeypatch):
    monkeypatch.setenv("MDN_BWD_SEGMENTS", "2")
    monkeypatch.setenv("MDN_TAIL_SPLIT", "gemm")
    with pytest.raises(ValueError, match="MDN_BWD_SEGMENTS='2' does not combine with MDN_TAIL_SPLIT='gemm'"):
        chunk_momentum_delta_rule(**make_inputs(1, 20, 1, 16, 16), chunk_size=16)


def test_tail_config_knob(monkeypatch):
    """MDN_TAIL_CONFIG overrides the tiles; a malformed value is a ValueError naming it."""
    assert tail_config(256, 512, 64, torch.bfloat16) == (32, 32, 4, 3)
    assert tail_config(256, 512, 64, torch.float32) == (32, 32, 4, 2)
    assert tail_config(128, 128, 64, torch.bfloat16) == (32, 32, 4, 3)
    assert tail_config(256, 96, 64, torch.float16) == (32, 32, 4, 3)
    assert tail_config(16, 16, 32, torch.bfloat16) == (16, 16, 4, 3)
    assert tail_config(20, 24, 128, torch.float32) == (32, 32, 8, 2)
    assert tail_config(20, 24, 128, torch.bfloat16) == (32, 32, 8, 2)
    monkeypatch.setenv("MDN_TAIL_CONFIG", "32,128,4,3")
    assert tail_config(256, 512, 64, torch.bfloat16) == (32, 128, 4, 3)
    for bad in ("64,64,8", "48,64,8,2", "64,64,3,2", "64,64,8,0", "a,b,c,d"):
        monkeypatch.setenv("MDN_TAIL_CONFIG", bad)
        with pytest.raises(ValueError, match=f"MDN_TAIL_CONFIG='{bad}': expected"):
            tail_config(256, 512, 64, torch.bfloat16)
    with pytest.raises(ValueError, match="MDN_TAIL_CONFIG='a,b,c,d': expected"):  # from the op, before any kernel
        chunk_momentum_delta_rule(**make_inputs(1, 20, 1, 16, 16), chunk_size=16)


@needs_kernels
def test_tail_launches_with_its_stages_through_the_fallback(monkeypatch):
    """The tail goes through chunk_scan._launch_pipelined (one stage on a GPU without the shared memory for its
    stages, tested in test_scan_pqk.py) with tail_config's stages: bf16 at C <= 64 3, fp32 2."""
    import mdn.ops.momentum_delta_rule.chunk_state_gemms as tail
    from mdn.ops.momentum_delta_rule.chunk_scan import _launch_pipelined
    seen = []

    def spy(kernel, grid, args, consts, num_warps, num_stages):
        seen.append((kernel.fn.__name__, consts["BV"], num_warps, num_stages))
        _launch_pipelined(kernel, grid, args, consts, num_warps, num_stages)

    monkeypatch.setattr(tail, "_launch_pipelined", spy)
    for dtype, want in ((torch.bfloat16, (32, 4, 3)), (torch.float32, (32, 4, 2))):
        seen.clear()
        (xv, xo), rr, dg = state_gemms_triton(*_tail_inputs(2, 1, 16, 32, 96, dtype, False)[0])
        assert seen == [("momentum_delta_rule_bwd_kernel_state_gemms",) + want], seen
        assert torch.isfinite(rr).all() and torch.isfinite(dg).all()


@pytest.mark.gpu
@pytest.mark.parametrize("K,V", [(256, 512), (128, 128), (64, 48), (100, 200)])
def test_gpu_tail_matches_reverse_scan_dg_and_oracle(monkeypatch, K, V):
    """MDN_BWD_DG=tail on the GPU at the shipped tiles: the default's numbers within bf16 rounding, and the bf16
    tolerances against fp64, forward and backward (fla issue 640 shows as a wrong dk)."""
    monkeypatch.delenv("MDN_SCAN_CONFIG", raising=False)
    monkeypatch.delenv("MDN_SAVE_STATES", raising=False)
    assert_gpu_knob_matches_and_oracle(monkeypatch, "MDN_BWD_DG", "rev", "tail", K, V, 1e-2)


@pytest.mark.gpu
@pytest.mark.parametrize("K,V,segments", [(256, 512, "4"), (128, 128, "3")])
def test_gpu_segmented_tail_matches_one_pass_and_oracle(monkeypatch, K, V, segments):
    """MDN_BWD_SEGMENTS with the tail on the GPU: the one-pass tail's numbers and the bf16 tolerances against fp64."""
    monkeypatch.delenv("MDN_SCAN_CONFIG", raising=False)
    monkeypatch.setenv("MDN_BWD_DG", "tail")
    monkeypatch.setenv("MDN_DHC", "split")  # what the segments store (q8 runs in one pass only)
    # the chain kernel fed by the tail's stored xo, rr in both: one pass would otherwise take the tail's fused
    # epilogue (dQ, dK_w from its fp32 accumulators, not from bf16 xo), 1.4e-3 from the segments' rounding
    monkeypatch.setenv("MDN_BWD_CHAIN", "unfused")
    assert_gpu_knob_matches_and_oracle(monkeypatch, "MDN_BWD_SEGMENTS", "1", segments, K, V, 1e-5)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("C,K,V,stacked", [(64, 256, 512, False), (64, 128, 128, True), (32, 64, 48, False),
                                           (128, 256, 512, False)])
@pytest.mark.parametrize("split", ["0", "1", "gemm"])
def test_gpu_state_gemms_match_fp64_products(monkeypatch, dtype, C, K, V, stacked, split):
    test_state_gemms_match_fp64_products(monkeypatch, dtype, C, K, V, stacked, split)


def _tail_sig(dtype: str) -> dict:
    sig = {n: "*" + dtype for n in ("vt", "dvt", "dob", "hc", "dhc", "xv", "xo")}
    sig.update(dlo="*i8", rr="*fp32", dgp="*fp32", s_dob="i32", idx="*i64", H="i32")
    sig.update({n: "*" + dtype for n in ("q", "kw", "dq", "dkw")}, rsc="*fp32", drp="*fp32")
    return sig


@pytest.mark.parametrize("K,V", [(256, 512), (128, 128)])
def test_tail_loads_whole_tiles_three_ctas_sm90(K, V):
    """The bf16 tail at the shipped tiles and the two benchmark shapes, compiled for sm_90 (in a child without the
    interpreter, so CI runs it too) as the launch specialises it: no 16-bit tile loaded one element a thread at a
    time (dO's tiles were, while its (chunk, head) stride s_dob was not specialised, 23 % of the kernel's stalls),
    and three CTAs fit an SM (registers and shared memory: the occupancy the measured default runs at)."""
    from conftest import compile_sm90_child
    bk, bv, nw, ns = tail_config(K, V, 64, torch.bfloat16)
    res = compile_sm90_child("mdn.ops.momentum_delta_rule.chunk_state_gemms",
                             "momentum_delta_rule_bwd_kernel_state_gemms", _tail_sig("bf16"),
                             dict(K=K, V=V, C=64, BK=bk, BV=bv, NK=-(-K // bk), P=2, DOT_MODE=1, X=True, R=True,
                                  INDEXED=False, HC_GLOBAL=True, LO_Q8=True, FUSE_QK=True),
                             nw, num_stages=ns, divisible=("s_dob",))
    assert res["ld_b16"] == 0, res
    assert 3 * (res["shared"] + 1024) <= 228 * 1024 and 3 * nw * 32 * res["regs"] <= 65536, res
    assert res["spill_st"] == 0 and res["spill_ld"] == 0, res


@pytest.mark.slow
@pytest.mark.parametrize("indexed,fuse", [(False, False), (True, False), (False, True)])
@pytest.mark.parametrize("dtype", ["bf16", "fp32"])
@pytest.mark.parametrize("C,K,V", [(64, 256, 512), (64, 128, 128), (128, 256, 512), (32, 64, 48)])
def test_tail_resources_sm90(monkeypatch, dtype, C, K, V, indexed, fuse):
    """The shipped tiles (tail_config) compiled for sm_90 on the CPU: within Hopper's shared memory, doing the work
    (not an empty kernel), and free of register spills at C <= 64 (the segments' indexed variant: at most 64
    bytes; the q8 variant at C = 32: at most 128), also with the chain rule's epilogue (FUSE_QK, chunk_chain_bwd)."""
    from conftest import HOPPER_SHARED_LIMIT, _have_ptxas, compile_sm90
    from mdn.ops.momentum_delta_rule.chunk_state_gemms import momentum_delta_rule_bwd_kernel_state_gemms as kernel
    if not _have_ptxas():
        pytest.skip("needs Triton's NVIDIA backend (ptxas)")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    import triton
    if triton.knobs.runtime.interpret:
        pytest.skip("compiling needs the interpreter off (run without TRITON_INTERPRET=1)")
    bk, bv, nw, ns = tail_config(K, V, C, torch.float32 if dtype == "fp32" else torch.bfloat16)
    sig = _tail_sig(dtype)
    q8 = dtype == "bf16" and not indexed  # MDN_DHC=q8, the default for bf16 (not per segment)
    res = compile_sm90(kernel, sig, dict(K=K, V=V, C=C, BK=bk, BV=bv, NK=triton.cdiv(K, bk),
                                         P=2 if dtype == "fp32" or q8 else 4, DOT_MODE=1 if dtype == "bf16" else 0,
                                         INDEXED=indexed, HC_GLOBAL=not indexed, LO_Q8=q8, FUSE_QK=fuse),
                       nw, num_stages=ns, divisible=("s_dob",))
    assert 0 < res["shared"] <= HOPPER_SHARED_LIMIT and res["regs"] > 64, res
    assert res["ld_b16"] == 0, res  # every 16-bit tile loaded whole (vectorised / cp.async), none a bf16 at a time
    if C <= 64:
        # the segments' indexed variant: at most 64 bytes; q8's rebuild of dS', dM' (hi + int8 lo -> fp32 -> hi +
        # lo bf16) at C = 32, K = 64, V = 48: 116 bytes (255 registers; none at the C = 64 shapes); the fp32
        # epilogue of FUSE_QK (MDN_BWD_CHAIN=kernel only; auto fuses 16-bit operands): 104-108 bytes
        limit = 64 if indexed else (128 if (q8 and C < 64) or (fuse and dtype == "fp32") else 0)
        assert res["spill_st"] <= limit and res["spill_ld"] <= limit, res
