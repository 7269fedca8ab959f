"""The fused Triton intra-chunk backward of the pqk form (chunk_intra_bwd.py) vs torch autograd of the torch intra
(chunk_intra_pqk.chunk_mdn_intra_pqk), and the op with MDN_INTRA=triton (Triton intra forward and backward, pqk
scan) vs the fp64 recurrence: outputs, final states and every gradient.

On the CPU the kernels run under TRITON_INTERPRET=1 (small shapes); outputs are NaN-poisoned (MDN_POISON_OUTPUTS=1).
"""
from __future__ import annotations

import pytest
import torch

from conftest import (DEV, assert_rel, compare_with_oracle as _compare, constant_gates, gap_gates, make_inputs,
                      needs_kernels)
from mdn.ops.momentum_delta_rule.chunk import chunk_momentum_delta_rule
from mdn.ops.momentum_delta_rule.chunk_intra_bwd import chunk_mdn_intra_pqk_bwd_triton, intra_pqk_fwd
from mdn.ops.momentum_delta_rule.chunk_intra_pqk import chunk_mdn_intra_pqk

FP32_TOL = 1e-5
GRAD_NAMES = ("dq", "dk", "dv", "dlog_alpha", "dbeta", "dlog_mu", "deta")
pytestmark = needs_kernels


def _chunk_inputs(NC, H, C, K, V, *, dtype=torch.float32, gates=None):
    x = make_inputs(NC, C, H, K, V, dtype=dtype, device=DEV, gates=gates if gates is not None else "spec")
    tr = lambda t: t.transpose(1, 2).contiguous()  # noqa: E731  [NC, C, H, ...] -> [NC, H, C, ...]
    return [tr(x[n]) for n in ("q", "k", "v", "log_alpha", "beta", "log_mu", "eta")]


def _torch_grads(args, out_grads, scale, dtype=None, **kw):
    """Autograd of the torch intra (inputs cast to dtype when given) for the given output gradients."""
    leaves = [(a.to(dtype) if dtype is not None else a).detach().requires_grad_(True) for a in args]
    out = chunk_mdn_intra_pqk(*leaves, scale, **kw)
    torch.autograd.backward(list(out), [g.to(o.dtype) for g, o in zip(out_grads, out)])
    return [x.grad for x in leaves]


def _out_grads(args, scale, seed=0, **kw):
    """Random gradients for every output of the intra part (never zeros)."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    with torch.no_grad():
        out = chunk_mdn_intra_pqk(*args, scale, **kw)
    return [torch.randn(o.shape, generator=gen, dtype=torch.float32).to(o.device) for o in out]


# ------------------------------------------------------------------------------------------------------ kernel alone
@pytest.mark.parametrize("C", [16, 32, 64])
@pytest.mark.parametrize("K,V", [(16, 24), (20, 16), (100, 40)])
def test_fp32_matches_torch_autograd(C, K, V):
    args = _chunk_inputs(2, 2, C, K, V)
    scale = K ** -0.5
    grads = _out_grads(args, scale)
    got = chunk_mdn_intra_pqk_bwd_triton(*args, grads, scale)
    ref = _torch_grads(args, grads, scale)
    ref64 = _torch_grads(args, grads, scale, dtype=torch.float64)
    for name, g, r, r64 in zip(GRAD_NAMES, got, ref, ref64):
        assert g.dtype == torch.float32 and g.shape == r.shape and torch.isfinite(g).all(), name
        assert_rel(name, r, g, FP32_TOL)
        assert_rel(name + " vs fp64", r64, g, FP32_TOL)


@pytest.mark.parametrize("use_p_times_alpha,use_l2norm", [(False, True), (True, False), (False, False)])
def test_read_key_and_no_l2norm_variants(use_p_times_alpha, use_l2norm):
    args = _chunk_inputs(2, 2, 32, 16, 24)
    kw = dict(use_qk_l2norm_in_kernel=use_l2norm, use_p_times_alpha=use_p_times_alpha)
    grads = _out_grads(args, 0.25, **kw)
    got = chunk_mdn_intra_pqk_bwd_triton(*args, grads, 0.25, use_l2norm, use_p_times_alpha)
    for name, g, r in zip(GRAD_NAMES, got, _torch_grads(args, grads, 0.25, **kw)):
        assert_rel(name, r, g, FP32_TOL)


@pytest.mark.parametrize("gates", [
    dict(kind="gap", gap=1.0),                                   # log_alpha - log_mu = 1 per step
    dict(kind="const", log_alpha=-0.001, log_mu=-3.0),           # m_t underflows within the chunk
    dict(kind="const", log_alpha=-3.0, log_mu=-0.001),
])
def test_extreme_gates(gates):
    gates = dict(gates)
    kind = gates.pop("kind")
    g = (gap_gates(2, 64, 2, device=DEV, **gates) if kind == "gap"
         else constant_gates(2, 64, 2, beta=0.4, eta=1.0, device=DEV, **gates))
    args = _chunk_inputs(2, 2, 64, 16, 24, gates=g)
    grads = _out_grads(args, 0.25)
    got = chunk_mdn_intra_pqk_bwd_triton(*args, grads, 0.25)
    for name, g_, r in zip(GRAD_NAMES, got, _torch_grads(args, grads, 0.25, dtype=torch.float64)):
        assert_rel(name, r, g_, FP32_TOL)


def test_bf16_gemm_close_to_torch_bf16_gemm():
    """bf16 operands for P K_w^T, Q K_w^T, A V and their gradients, in both: a few bf16 roundings apart, and each
    within the op's bf16 gradient tolerance of the fp64 autograd."""
    args = _chunk_inputs(2, 2, 64, 100, 40, dtype=torch.bfloat16)
    grads = _out_grads(args, 0.1)
    got = chunk_mdn_intra_pqk_bwd_triton(*args, grads, 0.1, bf16_gemm=True)
    ref = _torch_grads(args, grads, 0.1, dtype=torch.float32, bf16_gemm=True)
    ref64 = _torch_grads(args, grads, 0.1, dtype=torch.float64)
    for name, g, r, r64 in zip(GRAD_NAMES, got, ref, ref64):
        assert_rel(name, r, g, 1e-2)
        assert_rel(name + " vs fp64", r64, g, 1e-2)


def test_custom_op_autograd_and_fake():
    """mdn::intra_pqk_fwd: its autograd matches torch's, and its fake implementation gives the real shapes."""
    args = [a.requires_grad_(True) for a in _chunk_inputs(1, 2, 16, 16, 24)]
    out = intra_pqk_fwd(*args, 0.25, True, True, False, False)
    grads = _out_grads([a.detach() for a in args], 0.25)
    torch.autograd.backward(list(out), grads)
    ref = _torch_grads([a.detach() for a in args], grads, 0.25)
    for name, a, r in zip(GRAD_NAMES, args, ref):
        assert a.grad is not None and a.grad.dtype == a.dtype, name
        assert_rel(name, r, a.grad, FP32_TOL)
    from torch._subclasses.fake_tensor import FakeTensorMode
    detached = [a.detach() for a in args]
    with FakeTensorMode() as mode:
        fake = intra_pqk_fwd(*[mode.from_tensor(a) for a in detached], 0.25, True, True, True, True)
    assert [tuple(f.shape) for f in fake] == [tuple(o.shape) for o in out]
    assert [f.dtype for f in fake] == [torch.bfloat16] * 6 + [torch.float32] * 2


# ------------------------------------------------------------------------------------------------------ the op
@pytest.mark.parametrize("dtype,tol_o,tol_grad", [(torch.float32, FP32_TOL, FP32_TOL), (torch.bfloat16, 5e-3, 1e-2)])
@pytest.mark.parametrize("T,C,K,V,lengths", [(65, 16, 16, 24, None), (70, 64, 20, 16, None),
                                             (58, 32, 16, 24, [1, 40, 17])])
def test_op_with_triton_intra_gradients_match_oracle(monkeypatch, dtype, tol_o, tol_grad, T, C, K, V, lengths):
    monkeypatch.setenv("MDN_INTRA", "triton")
    monkeypatch.setenv("MDN_SCAN_FORM", "pqk")
    calls = []
    import mdn.ops.momentum_delta_rule.chunk_intra_fwd as fwd_mod
    kernel = fwd_mod.chunk_mdn_intra_pqk_fwd_triton
    monkeypatch.setattr(fwd_mod, "chunk_mdn_intra_pqk_fwd_triton", lambda *a, **k: calls.append(1) or kernel(*a, **k))
    B = 2 if lengths is None else 1
    inputs = make_inputs(B, T, 2, K, V, dtype=dtype, device=DEV, initial_state=True, lengths=lengths,
                         gates="layer" if dtype != torch.float32 else "spec")
    _compare(inputs, dtype=dtype, tol_o=tol_o, tol_grad=tol_grad, tol_state=tol_o if dtype == torch.float32 else 1e-2,
             op_kwargs=dict(chunk_size=C))
    assert calls, "MDN_INTRA=triton did not run the Triton intra kernel"


# ------------------------------------------------------------------------------------------------------ GPU only
@pytest.mark.gpu
@pytest.mark.parametrize("C,K,V", [(64, 128, 128), (64, 256, 512), (32, 100, 72)])
def test_gpu_shapes(C, K, V):
    """The compiled backward at the model shapes (fp32 vs torch autograd; bf16 wide products vs fp64)."""
    args = _chunk_inputs(4, 2, C, K, V)
    grads = _out_grads(args, K ** -0.5)
    got = chunk_mdn_intra_pqk_bwd_triton(*args, grads, K ** -0.5)
    for name, g, r in zip(GRAD_NAMES, got, _torch_grads(args, grads, K ** -0.5, dtype=torch.float64)):
        assert_rel(name, r, g, FP32_TOL)
    args16 = [a.to(torch.bfloat16) if i < 3 else a for i, a in enumerate(args)]
    got = chunk_mdn_intra_pqk_bwd_triton(*args16, grads, K ** -0.5, bf16_gemm=True)
    for name, g, r in zip(GRAD_NAMES, got, _torch_grads(args16, grads, K ** -0.5, dtype=torch.float64)):
        assert_rel(name, r, g, 1e-2)


@pytest.mark.gpu
def test_gpu_op_with_triton_intra_bf16(monkeypatch):
    monkeypatch.setenv("MDN_INTRA", "triton")
    monkeypatch.setenv("MDN_SCAN_FORM", "pqk")
    inputs = make_inputs(1, 1000, 2, 256, 512, dtype=torch.bfloat16, device="cuda", gates="layer",
                         initial_state=True)
    _compare(inputs, dtype=torch.bfloat16, tol_o=5e-3, tol_grad=1e-2, tol_state=1e-2, op_kwargs=dict(chunk_size=64))


def test_op_compiles_the_packing_around_the_triton_intra(monkeypatch, recwarn):
    """On CUDA the packing and the Triton intra's custom ops go through torch.compile together (chunk._run_intra,
    form "pqk_triton"); forced here with the aot_eager backend: no fallback warning, same gradients as eager."""
    import mdn.ops.momentum_delta_rule.chunk as chunk_mod
    import mdn.ops.momentum_delta_rule.chunk_intra_bwd as bwd_mod

    monkeypatch.setenv("MDN_INTRA", "triton")
    monkeypatch.setenv("MDN_SCAN_FORM", "pqk")
    calls = []
    real = bwd_mod.chunk_mdn_intra_pqk_bwd_triton
    monkeypatch.setattr(bwd_mod, "chunk_mdn_intra_pqk_bwd_triton", lambda *a, **k: calls.append(1) or real(*a, **k))
    inputs = make_inputs(2, 40, 2, 16, 24, device=DEV, initial_state=True)
    eager = _compare(inputs, dtype=torch.float32, tol_o=FP32_TOL, tol_grad=FP32_TOL, op_kwargs=dict(chunk_size=16))
    monkeypatch.setenv("MDN_CHUNK_COMPILE", "1")
    monkeypatch.setenv("MDN_CHUNK_COMPILE_BACKEND", "aot_eager")
    monkeypatch.setattr(chunk_mod, "_compiled_intra", {})
    monkeypatch.setattr(chunk_mod, "_compile_failed", False)
    torch._dynamo.reset()
    compiled = _compare(inputs, dtype=torch.float32, tol_o=FP32_TOL, tol_grad=FP32_TOL, op_kwargs=dict(chunk_size=16))
    assert not chunk_mod._compile_failed and "dense" in chunk_mod._compiled_intra
    assert not [w for w in recwarn if issubclass(w.category, RuntimeWarning)]
    assert len(calls) == 2 and eager.keys() == compiled.keys()
