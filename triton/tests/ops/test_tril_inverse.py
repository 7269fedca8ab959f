"""MDN_TRIL_INV=triton: A = (I + N)^-1 of the intra part by one Triton kernel (tril_inverse.py) instead of
torch.linalg.solve_triangular. Both forward forms (blocks, levels) against the float64 solve (every chunk size,
outputs poisoned with NaN), both backward forms (kernel, GEMMs) against autograd through the solve, the op with
them against the fp64 recurrence (dense, varlen, bf16), the plumbing (custom ops under torch.compile, bad values)
and the kernels' sm_90 resources."""
from __future__ import annotations

import pytest
import torch

from conftest import (DEV, HAS_CUDA, assert_compiled_op_matches_eager, assert_knob_values_agree,
                      compare_with_oracle, compile_sm90_child, _have_ptxas, make_inputs, needs_kernels, rel_rms)
from mdn.ops.momentum_delta_rule import tril_inverse as ti
from mdn.ops.momentum_delta_rule.chunk import chunk_momentum_delta_rule


@pytest.fixture(autouse=True)
def _poison(monkeypatch):
    monkeypatch.setenv("MDN_POISON_OUTPUTS", "1")


def _strict_lower(*shape, scale=0.3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).tril(-1)


def _solve64(n):
    eye = torch.eye(n.shape[-1], dtype=torch.float64)
    return torch.linalg.solve_triangular(n.double().cpu(), eye, upper=False, unitriangular=True)


@needs_kernels
@pytest.mark.parametrize("variant", ["blocks", "levels"])
@pytest.mark.parametrize("C", [16, 32, 64, 128])
@pytest.mark.parametrize("scale", [0.05, 0.3, 1.0])
def test_kernel_matches_the_fp64_solve(C, scale, variant):
    n = _strict_lower(3, 2, C, C, scale=scale, seed=C)
    # garbage above the diagonal must be ignored (the intra part's Lmat is strictly lower, but nothing relies on it)
    n_in = (n + torch.triu(torch.full_like(n, 7.0))).float().to(DEV)
    a = ti.tril_inverse_triton(n_in, variant=variant).cpu()
    assert torch.isfinite(a).all(), "an element was left unwritten (poisoned output)"
    assert (a.triu(1) == 0).all() and (a.diagonal(dim1=-2, dim2=-1) == 1).all()
    ref = _solve64(n)
    err = rel_rms(ref, a.double())
    assert err <= 1e-6 * max(1.0, ref.abs().max().item()), err


@needs_kernels
def test_kernel_on_the_intra_parts_own_matrices():
    """Lmat as the op builds it (layer-like gates, L2-normalised keys): the kernel equals the fp64 solve."""
    from mdn.ops.momentum_delta_rule.chunk import _pack_dense
    from mdn.ops.momentum_delta_rule.chunk_intra import intra_coefficients

    x = make_inputs(2, 128, 2, 64, 32, gates="layer")
    pk = [_pack_dense(x[n], 64) for n in ("q", "k", "v", "log_alpha", "beta", "log_mu", "eta")]
    c = intra_coefficients(*pk, True, True, False, tril_inv="solve")
    a_solve = c.A.double()
    lmat = torch.linalg.inv(c.A.double()) - torch.eye(64, dtype=torch.float64)  # back to I + Lmat
    a = ti.tril_inverse_triton(lmat.tril(-1).float().to(DEV)).cpu()
    assert rel_rms(a_solve, a.double()) <= 1e-6


@needs_kernels
@pytest.mark.parametrize("variant", ["kernel", "gemm"])
@pytest.mark.parametrize("C", [16, 32, 64, 128])
def test_backward_matches_autograd_through_the_solve(monkeypatch, C, variant):
    """Both backward forms (C = 128 always takes the GEMMs) against fp64 autograd, outputs poisoned with NaN."""
    monkeypatch.setenv("MDN_TRIL_INV_BWD", variant)
    n = _strict_lower(2, C, C, scale=0.3, seed=1)
    da = torch.randn(2, C, C, dtype=torch.float64)
    n64 = n.clone().requires_grad_()
    (_solve64(n64) * da).sum().backward()
    n32 = n.float().to(DEV).requires_grad_()
    (ti.tril_inverse_op(n32) * da.float().to(DEV)).sum().backward()
    assert torch.isfinite(n32.grad).all(), "an element was left unwritten (poisoned output)"
    assert rel_rms(n64.grad.tril(-1), n32.grad.double().cpu()) <= 1e-5
    assert (n32.grad.cpu().triu() == 0).all(), "only the strictly lower part of N is an input"


def test_variant_defaults():
    """auto: the register-blocked inverse and the backward kernel where they apply (C <= 64), levels and the
    GEMMs at C = 128."""
    assert [ti._fwd_variant(C) for C in (16, 32, 64, 128)] == ["blocks"] * 3 + ["levels"]
    assert [ti._bwd_variant(C) for C in (16, 32, 64, 128)] == ["kernel"] * 3 + ["gemm"]


@needs_kernels
@pytest.mark.parametrize("dtype,T,C,K,V,lengths", [
    (torch.float32, 100, 32, 32, 40, None),
    (torch.float32, 70, 16, 100, 20, [1, 50, 19]),
    (torch.float32, 130, 128, 16, 16, None),
    (torch.bfloat16, 81, 64, 64, 48, None),
])
def test_op_with_the_kernel_matches_the_fp64_recurrence(monkeypatch, dtype, T, C, K, V, lengths):
    monkeypatch.setenv("MDN_TRIL_INV", "triton")
    inputs = make_inputs(1 if lengths else 2, T, 2, K, V, dtype=dtype, device=DEV, gates="layer",
                         initial_state=True, lengths=lengths)
    if dtype == torch.float32:
        compare_with_oracle(inputs, dtype=dtype, tol_o=1e-5, tol_grad=1e-5, op_kwargs={"chunk_size": C})
    else:
        compare_with_oracle(inputs, dtype=dtype, tol_o=5e-3, tol_grad=1e-2, tol_state=1e-2,
                            op_kwargs={"chunk_size": C})


@needs_kernels
@pytest.mark.parametrize("fwd,bwd", [("levels", "gemm"), ("blocks", "gemm"), ("levels", "kernel")])
def test_op_with_other_kernel_forms_matches_the_fp64_recurrence(monkeypatch, fwd, bwd):
    monkeypatch.setenv("MDN_TRIL_INV", "triton")
    monkeypatch.setenv("MDN_TRIL_INV_FWD", fwd)
    monkeypatch.setenv("MDN_TRIL_INV_BWD", bwd)
    inputs = make_inputs(2, 100, 2, 32, 40, device=DEV, gates="layer", initial_state=True)
    compare_with_oracle(inputs, dtype=torch.float32, tol_o=1e-5, tol_grad=1e-5, op_kwargs={"chunk_size": 64})


@needs_kernels
def test_op_with_the_kernel_equals_the_solve(monkeypatch):
    """Same op, same inputs: the kernel's A and the solve's give the same outputs and gradients (fp32)."""
    inputs = make_inputs(2, 90, 2, 32, 24, device=DEV, initial_state=True)
    assert_knob_values_agree(monkeypatch, "MDN_TRIL_INV", "solve", "triton", inputs, 1e-5, chunk_size=32)


@needs_kernels
def test_kernel_under_torch_compile(monkeypatch):
    """The kernel is a custom op with a fake: a caller's torch.compile(fullgraph=True) keeps it."""
    monkeypatch.setenv("MDN_CHUNK_COMPILE", "0")
    monkeypatch.setenv("MDN_TRIL_INV", "triton")
    assert_compiled_op_matches_eager(1, 37, 2, 16, 16, chunk_size=16, device=DEV)


def test_fake_tensor_shape():
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        n = torch.empty(3, 4, 64, 64)
        a = ti.tril_inverse_op(n)
        dn = ti.tril_inverse_grad_op(a, torch.empty(3, 4, 64, 64))
    assert a.shape == dn.shape == (3, 4, 64, 64) and a.dtype == dn.dtype == torch.float32


@pytest.mark.parametrize("value", ["cublas", "1", "Triton"])
def test_env_rejects_unknown_value(monkeypatch, value):
    monkeypatch.setenv("MDN_TRIL_INV", value)
    inputs = make_inputs(1, 20, 1, 16, 16)
    with pytest.raises(ValueError, match=f"MDN_TRIL_INV='{value}': expected one of 'auto', 'solve', 'triton'"):
        chunk_momentum_delta_rule(**inputs, chunk_size=16)


@pytest.mark.parametrize("var,value,choices", [
    ("MDN_TRIL_INV_FWD", "rows", "'auto', 'blocks', 'levels'"),
    ("MDN_TRIL_INV_BWD", "kernel_tf32x3", "'auto', 'gemm', 'kernel'"),
])
def test_kernel_knobs_reject_unknown_values_before_anything_runs(monkeypatch, var, value, choices):
    """The kernels read their knobs when they run (in a backward, say): the op checks them up front."""
    monkeypatch.setenv(var, value)
    inputs = make_inputs(1, 20, 1, 16, 16)
    with pytest.raises(ValueError, match=f"{var}='{value}': expected one of {choices}"):
        chunk_momentum_delta_rule(**inputs, chunk_size=16)


def test_bad_kernel_arguments_are_clear():
    with pytest.raises(ValueError, match=r"C in 16, 32, 64, 128, got \(2, 48, 48\)"):
        ti.tril_inverse_triton(torch.zeros(2, 48, 48))
    with pytest.raises(ValueError, match="expected float32, got torch.float64"):
        ti.tril_inverse_triton(torch.zeros(2, 16, 16, dtype=torch.float64))


def test_other_devices_and_dtypes_take_the_solve(monkeypatch):
    """fp64 (the references) and CPU tensors without the interpreter: the solve, whatever the mode."""
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    n = _strict_lower(2, 16, 16)
    called = []
    monkeypatch.setattr(ti, "tril_inverse_op", lambda x, *a: called.append(x) or x)
    torch.testing.assert_close(ti.unit_lower_inverse(n, "triton"), _solve64(n))
    torch.testing.assert_close(ti.unit_lower_inverse(n.float(), "triton").double(), _solve64(n), rtol=1e-5,
                               atol=1e-5)
    assert called == []


@pytest.mark.skipif(not _have_ptxas(), reason="needs Triton's NVIDIA backend (ptxas)")
@pytest.mark.parametrize("kernel,C,warps,max_spill", [
    ("levels", 16, 4, 0), ("levels", 32, 4, 0), ("levels", 64, 4, 0),
    # one warp per matrix (the shipped BLOCKS_WARPS) spills ~0.5 KB at C = 64 and was still the fastest (H100)
    ("blocks", 16, 1, 0), ("blocks", 32, 1, 0), ("blocks", 64, 1, 1024), ("blocks", 64, 2, 0),
    ("bwd", 32, 4, 0), ("bwd", 64, 4, 0),
])
def test_sm90_resources(kernel, C, warps, max_spill):
    """Compiled for sm_90 on the CPU (ptxas, in a child process without the interpreter), at the launchers' warps:
    register spills within the bound (C = 128 at 8 warps spills ~100 bytes in "levels", and takes the kernel only
    when asked)."""
    mod = "mdn.ops.momentum_delta_rule.tril_inverse"
    if kernel == "levels":
        res = compile_sm90_child(mod, "momentum_delta_rule_fwd_kernel_tril_inverse", {"n": "*fp32", "a": "*fp32"},
                                 {"C": C, "LEVELS": {16: 1, 32: 2, 64: 3}[C], "NB": C // 16}, warps)
    elif kernel == "blocks":
        assert ti.BLOCKS_WARPS == 1
        res = compile_sm90_child(mod, "momentum_delta_rule_fwd_kernel_tril_inverse_blocks",
                                 {"n": "*fp32", "a": "*fp32"}, {"C": C, "NB": C // 16}, warps)
    else:
        res = compile_sm90_child(mod, "momentum_delta_rule_bwd_kernel_tril_inverse",
                                 {"a": "*fp32", "da": "*fp32", "dn": "*fp32"}, {"C": C}, warps)
    assert res["spill_st"] <= max_spill and res["spill_ld"] <= max_spill, res


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs CUDA")
@pytest.mark.parametrize("K,V", [(128, 128), (256, 512)])
def test_gpu_op_with_the_kernel(monkeypatch, K, V):
    """On the GPU (bf16, the 1.3B layer's and the H16 head shapes), compiled intra part: within the bf16
    thresholds of the fp64 recurrence, every gradient included."""
    monkeypatch.setenv("MDN_TRIL_INV", "triton")
    inputs = make_inputs(2, 1000, 2, K, V, dtype=torch.bfloat16, device="cuda", gates="layer", initial_state=True)
    compare_with_oracle(inputs, dtype=torch.bfloat16, tol_o=5e-3, tol_grad=1e-2, tol_state=1e-2)


def test_auto_takes_the_solve_off_cuda(monkeypatch):
    """The default mode ("auto") runs the kernel only for CUDA tensors: on the CPU, the interpreter included (where
    the kernel is slow), it is the solve."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.delenv("MDN_TRIL_INV", raising=False)
    assert ti.tril_inv_mode() == "auto"
    calls = []
    monkeypatch.setattr(ti, "tril_inverse_op", lambda n, *a: calls.append(n) or n)
    n = torch.randn(2, 32, 32).tril(-1) * 0.1
    torch.testing.assert_close(ti.unit_lower_inverse(n, "auto").double(), _solve64(n), rtol=1e-5, atol=1e-6)
    assert not calls
    ti.unit_lower_inverse(n, "triton")
    assert len(calls) == 1


@pytest.mark.gpu
def test_gpu_auto_takes_the_kernel(monkeypatch):
    calls = []
    real = ti.tril_inverse_op
    monkeypatch.setattr(ti, "tril_inverse_op", lambda n, *a: calls.append(n) or real(n, *a))
    n = (torch.randn(4, 64, 64, device="cuda").tril(-1) * 0.1)
    a = ti.unit_lower_inverse(n, "auto")
    assert len(calls) == 1
    assert rel_rms(a.double().cpu(), _solve64(n)) <= 1e-6
