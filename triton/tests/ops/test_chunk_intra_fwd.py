"""The fused Triton intra-chunk forwards (chunk_intra_fwd.py: the six-form and the pqk-form kernel) vs the torch
intra parts (chunk_intra.py, chunk_intra_pqk.py), and the op with MDN_INTRA=triton (in both scan forms) vs the fp64
recurrence.

Every IntraChunk field must have the torch intra's shape and dtype and match it to fp32 round-off for fp32
inputs (rel RMS <= 1e-5; each field is also checked against the fp64 torch intra) and to bf16 rounding for bf16
inputs / bf16 outputs. Outputs are NaN-poisoned (MDN_POISON_OUTPUTS=1), so an unwritten element fails.
On the CPU the kernel runs under TRITON_INTERPRET=1 (small shapes).
"""
from __future__ import annotations

import pytest
import torch

from conftest import DEV, assert_rel, constant_gates, gap_gates, make_inputs, needs_kernels, run_op, to_fp64
from mdn.ops.momentum_delta_rule import chunk as chunk_mod
from mdn.ops.momentum_delta_rule import chunk_intra_fwd as intra_fwd_mod
from mdn.ops.momentum_delta_rule.chunk import chunk_momentum_delta_rule
from mdn.ops.momentum_delta_rule.chunk_intra import chunk_mdn_intra
from mdn.ops.momentum_delta_rule.chunk_intra_fwd import (chunk_mdn_intra_fwd_triton, chunk_mdn_intra_pqk_fwd_triton,
                                                         fits, shared_bytes_estimate)
from mdn.ops.momentum_delta_rule.chunk_intra_pqk import chunk_mdn_intra_pqk
from mdn.ops.naive import naive_recurrent_momentum_delta_rule

FP32_TOL = 1e-5
pytestmark = needs_kernels


def _chunk_inputs(NC, H, C, K, V, *, dtype=torch.float32, gates=None):
    """Random chunked inputs [NC, H, C, D] and gates [NC, H, C] (spec gates unless given)."""
    x = make_inputs(NC, C, H, K, V, dtype=dtype, device=DEV, gates=gates if gates is not None else "spec")
    tr = lambda t: t.transpose(1, 2).contiguous()  # noqa: E731  [NC, C, H, ...] -> [NC, H, C, ...]
    return [tr(x[n]) for n in ("q", "k", "v", "log_alpha", "beta", "log_mu", "eta")]


FORMS = {"six": (chunk_mdn_intra_fwd_triton, chunk_mdn_intra),
         "pqk": (chunk_mdn_intra_pqk_fwd_triton, chunk_mdn_intra_pqk)}  # scan form -> (kernel, torch intra)
FP32_FIELDS = ("g", "r")  # stay fp32 whatever out_dtype is


def _compare_intra(args, *, tol, out_dtype=None, ref_dtype=None, form="six", **kw):
    """Kernel vs torch intra of a scan form (same inputs, computed in ref_dtype when given); returns {field: rel
    error}."""
    kernel, torch_intra = FORMS[form]
    scale = args[0].shape[-1] ** -0.5
    out = kernel(*args, scale, out_dtype=out_dtype, **kw)
    ref_args = [a.to(ref_dtype) for a in args] if ref_dtype is not None else args
    ref = torch_intra(*ref_args, scale, out_dtype=out_dtype if ref_dtype is None else None, **kw)
    assert out._fields == ref._fields
    errs = {}
    for name, o, r in zip(out._fields, out, ref):
        want_dtype = torch.float32 if name in FP32_FIELDS else (out_dtype or torch.float32)
        assert o.dtype == want_dtype, f"{name}: dtype {o.dtype}, expected {want_dtype}"
        assert o.shape == r.shape and o.is_contiguous(), f"{name}: shape {tuple(o.shape)} vs {tuple(r.shape)}"
        assert torch.isfinite(o).all(), f"{name}: non-finite (unwritten?)"
        errs[name] = assert_rel(name, r, o, tol)
    return errs


# ------------------------------------------------------------------------------------------------------ kernel alone
@pytest.mark.parametrize("form", ["six", "pqk"])
@pytest.mark.parametrize("C", [16, 32, 64])
@pytest.mark.parametrize("K,V", [(16, 24), (32, 20), (100, 40)])
def test_fp32_matches_torch_intra(C, K, V, form):
    args = _chunk_inputs(2, 2, C, K, V)
    _compare_intra(args, tol=FP32_TOL, form=form)                             # vs the fp32 torch intra
    _compare_intra(args, tol=FP32_TOL, ref_dtype=torch.float64, form=form)    # and vs the same math in fp64


@pytest.mark.parametrize("form", ["six", "pqk"])
@pytest.mark.parametrize("C,K,V", [(16, 32, 48), (64, 100, 40)])
def test_bf16_matches_torch_intra(C, K, V, form):
    args = _chunk_inputs(2, 2, C, K, V, dtype=torch.bfloat16)
    # bf16 inputs, bf16 operands out (as chunk.py runs it): both round the same fp32 values to nearest bf16
    _compare_intra(args, tol=4e-3, out_dtype=torch.bfloat16, form=form)


@pytest.mark.parametrize("form", ["six", "pqk"])
@pytest.mark.parametrize("C,K,V", [(16, 32, 48), (64, 100, 40)])
def test_bf16_gemm_matches_torch_intra(C, K, V, form):
    """bf16_gemm (the default for 16-bit inputs): the wide products take bf16 operands in both. The torch intra
    also rounds their results to bf16 (a bf16 matmul's output), the kernel keeps fp32 accumulators, so they agree
    to a few bf16 roundings (measured <= 2.7e-3); against the fp64 intra the kernel stays within 5e-3 (<= 3.1e-3)."""
    args = _chunk_inputs(2, 2, C, K, V, dtype=torch.bfloat16)
    errs = _compare_intra(args, tol=5e-3, out_dtype=torch.bfloat16, form=form, bf16_gemm=True)
    assert max(errs.values()) > 0  # not trivially equal: the rounding differs somewhere
    kernel, torch_intra = FORMS[form]
    out = kernel(*args, K ** -0.5, out_dtype=torch.bfloat16, bf16_gemm=True)
    ref = torch_intra(*[a.to(torch.float64) for a in args], K ** -0.5)
    for name, o, r in zip(out._fields, out, ref):
        assert_rel(name, r, o, 5e-3)


@pytest.mark.parametrize("form", ["six", "pqk"])
@pytest.mark.parametrize("use_p_times_alpha,use_l2norm", [(False, True), (True, False)])
def test_read_key_and_no_l2norm_variants(use_p_times_alpha, use_l2norm, form):
    args = _chunk_inputs(2, 2, 32, 16, 24)
    _compare_intra(args, tol=FP32_TOL, use_p_times_alpha=use_p_times_alpha, use_qk_l2norm_in_kernel=use_l2norm,
                   form=form)


@pytest.mark.parametrize("gates", [
    dict(kind="gap", gap=1.0),                                   # log_alpha - log_mu = 1 per step
    dict(kind="const", log_alpha=-0.001, log_mu=-3.0),           # m_t underflows within the chunk
    dict(kind="const", log_alpha=-3.0, log_mu=-0.001),
])
@pytest.mark.parametrize("form", ["six", "pqk"])
def test_extreme_gates(gates, form):
    gates = dict(gates)
    kind = gates.pop("kind")
    g = (gap_gates(2, 64, 2, device=DEV, **gates) if kind == "gap"
         else constant_gates(2, 64, 2, beta=0.4, eta=1.0, device=DEV, **gates))
    args = _chunk_inputs(2, 2, 64, 16, 24, gates=g)
    _compare_intra(args, tol=FP32_TOL, form=form)
    _compare_intra(args, tol=FP32_TOL, ref_dtype=torch.float64, form=form)


@pytest.mark.parametrize("form", ["six", "pqk"])
def test_padded_identity_rows_and_empty(form):
    """Identity-gate, zero rows (how chunk.py pads) stay finite and match; NC = 0 returns empty operands."""
    args = _chunk_inputs(2, 1, 16, 16, 16)
    for a in args[:3]:
        a[:, :, 9:] = 0
    args[3][:, :, 9:] = 0   # log_alpha
    args[4][:, :, 9:] = 0   # beta
    args[5][:, :, 9:] = 0   # log_mu
    args[6][:, :, 9:] = 0   # eta
    _compare_intra(args, tol=FP32_TOL, form=form)
    empty = [a[:0] for a in args]
    out = FORMS[form][0](*empty, 0.25)
    assert out.u.shape == (0, 1, 16, 16) and out.g.shape == (0, 1, 3)


# ------------------------------------------------------------------------------------------------------ the op
def _spy(monkeypatch):
    """Records which Triton intra kernel the op called: "six" or "pqk" per call (the pqk kernel is reached through
    the mdn::intra_pqk_fwd custom op, which looks it up in chunk_intra_fwd at each call)."""
    calls = []
    for form, module, name in (("six", chunk_mod, "chunk_mdn_intra_fwd_triton"),
                               ("pqk", intra_fwd_mod, "chunk_mdn_intra_pqk_fwd_triton")):
        real = getattr(module, name)

        def spy(*a, _real=real, _form=form, **k):
            calls.append(_form)
            return _real(*a, **k)

        monkeypatch.setattr(module, name, spy)
    return calls


@pytest.fixture(params=["pqk", "six"])
def scan_form(request, monkeypatch):
    """Runs an op test in each scan form (MDN_SCAN_FORM); the Triton intra kernel must follow it."""
    monkeypatch.setenv("MDN_SCAN_FORM", request.param)
    return request.param


@pytest.mark.parametrize("dtype,tol_o,tol_state", [(torch.float32, FP32_TOL, FP32_TOL), (torch.bfloat16, 5e-3, 1e-2)])
@pytest.mark.parametrize("T,C,lengths", [(65, 16, None), (70, 64, None), (58, 32, [1, 40, 17])])
def test_op_with_triton_intra_matches_oracle(monkeypatch, scan_form, dtype, tol_o, tol_state, T, C, lengths):
    monkeypatch.setenv("MDN_INTRA", "triton")
    calls = _spy(monkeypatch)
    B = 2 if lengths is None else 1
    inputs = make_inputs(B, T, 2, 16, 24, dtype=dtype, device=DEV, initial_state=True, lengths=lengths,
                         gates="layer" if dtype != torch.float32 else "spec")
    with torch.no_grad():
        o, ht = chunk_momentum_delta_rule(**inputs, output_final_state=True, chunk_size=C)
        ro, rht = naive_recurrent_momentum_delta_rule(**to_fp64(inputs), output_final_state=True)
    assert calls and set(calls) == {scan_form}, f"MDN_INTRA=triton used {calls}, expected the {scan_form} kernel"
    assert o.dtype == dtype
    assert_rel("o", ro, o, tol_o)
    assert_rel("S_T", rht[0], ht[0], tol_state)
    assert_rel("M_T", rht[1], ht[1], tol_state)


def test_op_extreme_gates_with_triton_intra(monkeypatch, scan_form):
    monkeypatch.setenv("MDN_INTRA", "triton")
    for g in (gap_gates(1, 80, 1, gap=1.0, device=DEV),
              constant_gates(1, 80, 1, log_alpha=-0.001, log_mu=-3.0, beta=0.4, device=DEV)):
        inputs = make_inputs(1, 80, 1, 16, 24, device=DEV, initial_state=True, gates=g)
        with torch.no_grad():
            o, ht = chunk_momentum_delta_rule(**inputs, output_final_state=True, chunk_size=64)
            ro, rht = naive_recurrent_momentum_delta_rule(**to_fp64(inputs), output_final_state=True)
        assert_rel("o", ro, o, FP32_TOL)
        assert_rel("state", rht, ht, FP32_TOL)


def test_triton_intra_equals_torch_intra_in_the_op(monkeypatch, scan_form):
    inputs = make_inputs(1, 50, 2, 16, 24, device=DEV, initial_state=True)
    with torch.no_grad():
        o_ref, h_ref = chunk_momentum_delta_rule(**inputs, output_final_state=True, chunk_size=16)
        monkeypatch.setenv("MDN_INTRA", "triton")
        o, h = chunk_momentum_delta_rule(**inputs, output_final_state=True, chunk_size=16)
    assert_rel("o", o_ref, o, FP32_TOL)
    assert_rel("state", h_ref, h, FP32_TOL)


def test_grad_required_keeps_the_torch_intra_in_the_six_form(monkeypatch):
    """The six form's Triton intra is forward-only: with a gradient required the op uses the torch intra there
    (the pqk form's has a backward: tests/ops/test_chunk_intra_bwd.py)."""
    monkeypatch.setenv("MDN_INTRA", "triton")
    monkeypatch.setenv("MDN_SCAN_FORM", "six")
    calls = _spy(monkeypatch)
    inputs = make_inputs(1, 20, 1, 16, 16, device=DEV)
    o, _, g = run_op(chunk_momentum_delta_rule, inputs, grads=("q", "log_mu"), chunk_size=16)
    assert not calls
    assert g["q"] is not None and g["log_mu"] is not None
    with torch.no_grad():
        chunk_momentum_delta_rule(**inputs, chunk_size=16)
    assert calls


def test_shared_memory_fallback(monkeypatch):
    """C = 128 does not fit Hopper's shared memory (sm_90 compiles: 262144 bytes at K = 256 with fp32 products,
    229376 at K = 128 with bf16 ones), nor tf32x3 at C = 64 K = 256: the op keeps the torch intra there. The estimate
    reproduces the measured fp32 compiles."""
    assert shared_bytes_estimate(64, 128, "ieee") == 65536 and shared_bytes_estimate(64, 128, "tf32x3") == 131072
    assert shared_bytes_estimate(64, 256, "ieee") == 131072 and shared_bytes_estimate(128, 256, "ieee") == 262144
    monkeypatch.delenv("MDN_INTRA_DOT", raising=False)
    assert fits(64, 256) and fits(32, 256) and not fits(128, 64) and not fits(128, 256) and not fits(128, 200)
    monkeypatch.setenv("MDN_INTRA_DOT", "tf32x3")
    assert fits(64, 128) and not fits(64, 256)
    assert fits(64, 256, bf16_gemm=True) and not fits(128, 128, bf16_gemm=True)  # bf16 wide products: less shared
    monkeypatch.setenv("MDN_INTRA", "triton")
    monkeypatch.setattr(chunk_mod, "intra_fwd_fits", lambda C, K, bf16_gemm: False)
    calls = _spy(monkeypatch)
    inputs = make_inputs(1, 20, 1, 16, 16, device=DEV)
    with torch.no_grad():
        chunk_momentum_delta_rule(**inputs, chunk_size=16)
    assert not calls


def test_default_is_torch_intra_and_bad_value_raises(monkeypatch):
    monkeypatch.delenv("MDN_INTRA", raising=False)
    calls = _spy(monkeypatch)
    inputs = make_inputs(1, 20, 1, 16, 16, device=DEV)
    with torch.no_grad():
        chunk_momentum_delta_rule(**inputs, chunk_size=16)
    assert not calls
    monkeypatch.setenv("MDN_INTRA", "cuda")
    with pytest.raises(ValueError, match="MDN_INTRA"):
        chunk_momentum_delta_rule(**inputs, chunk_size=16)


# ------------------------------------------------------------------------------------------------------ GPU only
@pytest.mark.gpu
@pytest.mark.parametrize("dot", ["ieee", "tf32x3"])
@pytest.mark.parametrize("warps", ["4", "8"])
@pytest.mark.parametrize("C,K,V", [(64, 128, 128), (64, 256, 512), (128, 128, 128), (32, 100, 72)])
@pytest.mark.parametrize("form", ["six", "pqk"])
def test_gpu_shapes(monkeypatch, dot, warps, C, K, V, form):
    """The compiled kernels at the model shapes, both dot precisions and warp counts, fp32 and bf16."""
    monkeypatch.setenv("MDN_INTRA_DOT", dot)
    monkeypatch.setenv("MDN_INTRA_WARPS", warps)
    if not fits(C, K):
        pytest.skip(f"C={C} K={K} {dot}: over Hopper's shared memory (chunk.py uses the torch intra)")
    args = _chunk_inputs(4, 2, C, K, V)
    _compare_intra(args, tol=FP32_TOL, form=form)
    _compare_intra(args, tol=FP32_TOL, ref_dtype=torch.float64, form=form)
    args16 = [a.to(torch.bfloat16) if i < 3 else a for i, a in enumerate(args)]
    _compare_intra(args16, tol=4e-3, out_dtype=torch.bfloat16, form=form)


@pytest.mark.gpu
def test_gpu_op_with_triton_intra_bf16(monkeypatch, scan_form):
    monkeypatch.setenv("MDN_INTRA", "triton")
    calls = _spy(monkeypatch)
    inputs = make_inputs(1, 1000, 2, 128, 128, dtype=torch.bfloat16, device="cuda", gates="layer",
                         initial_state=True)
    with torch.no_grad():
        o, ht = chunk_momentum_delta_rule(**inputs, output_final_state=True)
        ro, rht = naive_recurrent_momentum_delta_rule(**to_fp64(inputs), output_final_state=True)
    assert calls
    assert_rel("o", ro, o, 5e-3)
    assert_rel("state", rht, ht, 1e-2)


@pytest.mark.parametrize("form", ["six", "pqk"])
def test_kernel_wrappers_reject_fp64_and_odd_chunks(form):
    kernel = FORMS[form][0]
    args = _chunk_inputs(1, 1, 16, 16, 16)
    with pytest.raises(ValueError, match="float64"):
        kernel(*[a.double() for a in args], 0.25)
    odd = _chunk_inputs(1, 1, 24, 16, 16)
    with pytest.raises(ValueError, match="chunk size 24"):
        kernel(*odd, 0.25)
