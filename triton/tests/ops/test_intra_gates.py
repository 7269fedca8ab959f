"""MDN_INTRA_GATES: the intra part's gate coefficients (a, m, b, L_m[C-1], Gamma) by the Triton kernels of
intra_gates.py (custom op mdn::intra_gates with its own backward) instead of the torch graph. The kernels against
float64 autograd of the torch graph (every chunk size, layer-like and extreme gates, outputs poisoned with NaN,
unused outputs), the op with them against the fp64 recurrence (dense, varlen, gate stress), the plumbing (defaults,
bad values, fakes, torch.compile) and their sm_90 resources."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from conftest import (DEV, HAS_CUDA, _have_ptxas, assert_compiled_op_matches_eager, compare_with_oracle,
                      compile_sm90_child, constant_gates, make_inputs, needs_kernels, rel_rms)
from mdn.ops.momentum_delta_rule import intra_gates as ig
from mdn.ops.momentum_delta_rule.chunk import chunk_momentum_delta_rule
from mdn.ops.momentum_delta_rule.chunk_intra import gate_coefficients


@pytest.fixture(autouse=True)
def _poison(monkeypatch):
    monkeypatch.setenv("MDN_POISON_OUTPUTS", "1")


def _gates(C, kind, seed=0, n=(3, 2)):
    g = torch.Generator().manual_seed(seed)
    if kind == "layer":
        la = F.logsigmoid(torch.randn(*n, C, generator=g, dtype=torch.float64) + 1)
        lm = F.logsigmoid(torch.randn(*n, C, generator=g, dtype=torch.float64) + 2)
    elif kind == "mu_small":   # log mu <= -1.5 with alpha ~ 1 (NaN in the official kernel)
        la = torch.full((*n, C), -0.001, dtype=torch.float64)
        lm = -1.5 - 2 * torch.rand(*n, C, generator=g, dtype=torch.float64)
    else:                      # "alpha_small": decays of e^-3 to e^-6 per step
        la = -3 - 3 * torch.rand(*n, C, generator=g, dtype=torch.float64)
        lm = torch.full((*n, C), -0.001, dtype=torch.float64)
    be = torch.rand(*n, C, generator=g, dtype=torch.float64)
    return la, be, lm


def _run(gates_mode, la, be, lm, weights, dtype, tf32=False, used=(0, 1, 2, 3, 4)):
    xs = [x.to(device=DEV, dtype=dtype).clone().requires_grad_() for x in (la, be, lm)]
    outs = gate_coefficients(*xs, gates=gates_mode, tf32=tf32)
    loss = sum((outs[i].double() * weights[i].to(DEV)).sum() for i in used)
    loss.backward()
    grads = [torch.zeros_like(x) if x.grad is None else x.grad for x in xs]  # None: the loss does not use it
    return [o.detach().double().cpu() for o in outs], [g.double().cpu() for g in grads]


@needs_kernels
@pytest.mark.parametrize("segsum", ["auto", "cumsum", "dot"])
@pytest.mark.parametrize("C", [16, 32, 64])
@pytest.mark.parametrize("kind", ["layer", "mu_small", "alpha_small"])
def test_kernels_match_fp64_autograd(monkeypatch, C, kind, segsum):
    """Every output and all three gate gradients within 1e-5 of float64 (3xTF32 products; the segment sums as
    cumulative sums or as products in two TF32 parts, MDN_GATES_SEGSUM)."""
    monkeypatch.setenv("MDN_GATES_SEGSUM", segsum)
    la, be, lm = _gates(C, kind, seed=C)
    g = torch.Generator().manual_seed(1)
    weights = [torch.randn(3, 2, C, generator=g, dtype=torch.float64) for _ in range(4)]
    weights.append(torch.randn(3, 2, C, C, generator=g, dtype=torch.float64))
    ref_o, ref_g = _run("torch", la, be, lm, weights, torch.float64)
    out_o, out_g = _run("kernel", la, be, lm, weights, torch.float32)
    for name, r, o in zip(("a", "m", "b", "lm_last", "gamma", "dlog_alpha", "dbeta", "dlog_mu"),
                          ref_o + ref_g, out_o + out_g):
        assert torch.isfinite(o).all(), f"{name}: an element was left unwritten (poisoned output)"
        assert rel_rms(r, o) <= 1e-5, (name, rel_rms(r, o))


@needs_kernels
@pytest.mark.parametrize("where", ["log_mu_all", "log_mu_some", "log_alpha_some"])
def test_zero_gates_take_both_segsum_forms(monkeypatch, where):
    """Log-gates of -inf (mu = 0 exactly: the gated delta rule, spec R1; alpha = 0 at some steps): the op with the
    gate kernels gives finite outputs and gradients with either segment-sum form, and the same ones (the products'
    -inf * 0 would be NaN without _segsum_dot's clamp). The key/query kernels run too: their backward recomputes Gamma
    from the gates (with cumulative sums, whatever the form)."""
    monkeypatch.setenv("MDN_INTRA_GATES", "kernel")
    monkeypatch.setenv("MDN_INTRA_QK", "kernel")
    x = make_inputs(1, 40, 2, 16, 16, dtype=torch.float32, device=DEV, gates="layer", initial_state=True)
    name = where.rsplit("_", 1)[0]
    g = torch.Generator().manual_seed(3)
    mask = torch.ones_like(x[name], dtype=torch.bool) if where.endswith("all") else \
        (torch.rand(x[name].shape, generator=g) < 0.2).to(x[name].device)
    x[name] = x[name].masked_fill(mask, float("-inf"))
    results = {}
    for form in ("cumsum", "dot"):
        monkeypatch.setenv("MDN_GATES_SEGSUM", form)
        leaves = {k: v.detach().clone().requires_grad_(True) for k, v in x.items()
                  if torch.is_tensor(v) and v.is_floating_point()}
        o, st = chunk_momentum_delta_rule(**{**x, **leaves}, chunk_size=16, output_final_state=True)
        (o.sum() + st.sum()).backward()
        results[form] = [o, st] + [leaves[k].grad for k in sorted(leaves)]
        for t in results[form]:
            assert torch.isfinite(t).all(), (form, where)
    for a, b in zip(results["cumsum"], results["dot"]):
        assert rel_rms(a.double(), b.double()) <= 1e-5


@needs_kernels
def test_outputs_without_a_gradient():
    """Outputs that take no part in the loss (their gradients come back as None) count as zero."""
    la, be, lm = _gates(64, "layer")
    weights = [torch.randn(3, 2, 64, dtype=torch.float64) for _ in range(4)] + [torch.randn(3, 2, 64, 64).double()]
    for used in [(4,), (0, 2), (1, 3)]:
        _, ref_g = _run("torch", la, be, lm, weights, torch.float64, used=used)
        _, out_g = _run("kernel", la, be, lm, weights, torch.float32, used=used)
        for r, o in zip(ref_g, out_g):
            assert (rel_rms(r, o) <= 1e-5) if r.abs().max() > 0 else bool((o == 0).all()), (used, r, o)


@needs_kernels
@pytest.mark.parametrize("dtype,T,C,K,V,lengths", [
    (torch.float32, 100, 64, 32, 40, None),
    (torch.float32, 70, 16, 20, 24, [1, 50, 19]),
    (torch.float32, 90, 32, 16, 16, None),
])
def test_op_with_the_kernels_matches_the_fp64_recurrence(monkeypatch, dtype, T, C, K, V, lengths):
    monkeypatch.setenv("MDN_INTRA_GATES", "kernel")
    inputs = make_inputs(1 if lengths else 2, T, 2, K, V, dtype=dtype, device=DEV, gates="layer",
                         initial_state=True, lengths=lengths)
    compare_with_oracle(inputs, dtype=dtype, tol_o=1e-5, tol_grad=1e-5, op_kwargs={"chunk_size": C})


@needs_kernels
@pytest.mark.parametrize("log_alpha,log_mu", [(-0.001, -3.0), (-3.0, -0.001)])
def test_op_with_the_kernels_under_extreme_gates(monkeypatch, log_alpha, log_mu):
    monkeypatch.setenv("MDN_INTRA_GATES", "kernel")
    g = constant_gates(1, 70, 1, log_alpha=log_alpha, log_mu=log_mu, beta=0.4, eta=1.0, device=DEV)
    inputs = make_inputs(1, 70, 1, 16, 16, device=DEV, initial_state=True, gates=g)
    compare_with_oracle(inputs, dtype=torch.float32, tol_o=1e-5, tol_grad=1e-5, op_kwargs={"chunk_size": 64})


@needs_kernels
def test_op_bf16_with_the_tf32_kernels(monkeypatch):
    """16-bit inputs take the TF32 form (the interpreter computes it in fp32; the GPU tests check the rounding)."""
    monkeypatch.setenv("MDN_INTRA_GATES", "kernel")
    inputs = make_inputs(2, 81, 2, 64, 48, dtype=torch.bfloat16, device=DEV, gates="layer", initial_state=True)
    compare_with_oracle(inputs, dtype=torch.bfloat16, tol_o=5e-3, tol_grad=1e-2, tol_state=1e-2)


@needs_kernels
def test_kernels_under_torch_compile(monkeypatch):
    """Custom ops with fakes: a caller's torch.compile(fullgraph=True) keeps them."""
    monkeypatch.setenv("MDN_CHUNK_COMPILE", "0")
    monkeypatch.setenv("MDN_INTRA_GATES", "kernel")
    assert_compiled_op_matches_eager(1, 37, 2, 16, 16, chunk_size=16, device=DEV)


def test_defaults():
    """auto: the kernels for fp32 CUDA gates with 16-bit op inputs (tf32) at C <= 64, else the torch graph; kernel:
    wherever they can run (CUDA or the interpreter)."""
    cpu = torch.zeros(2, 64)
    assert not ig.kernel_applies(cpu, "auto", True)
    assert not ig.kernel_applies(cpu.double(), "kernel", True)
    assert not ig.kernel_applies(torch.zeros(2, 128), "kernel", True)
    assert not ig.kernel_applies(cpu, "torch", True)
    if HAS_CUDA:
        gpu = cpu.cuda()
        assert ig.kernel_applies(gpu, "auto", True) and not ig.kernel_applies(gpu, "auto", False)
        assert ig.kernel_applies(gpu, "kernel", False)


def test_segsum_defaults(monkeypatch):
    """MDN_GATES_SEGSUM: auto (unset or empty) takes the products in the backward only (faster there, slower in the
    forward, docs/BENCHMARKS.md §1.27); cumsum and dot pick one form for both; anything else is a clear error."""
    for value, fwd, bwd in (("", False, True), ("auto", False, True), ("cumsum", False, False), ("dot", True, True)):
        monkeypatch.setenv("MDN_GATES_SEGSUM", value)
        assert (ig.segsum_dot("fwd"), ig.segsum_dot("bwd")) == (fwd, bwd), value
    monkeypatch.setenv("MDN_GATES_SEGSUM", "tf32")
    with pytest.raises(ValueError, match="MDN_GATES_SEGSUM='tf32': expected one of 'auto', 'cumsum', 'dot'"):
        ig.segsum_dot("bwd")


@pytest.mark.parametrize("value", ["triton", "1", "Kernel"])
def test_env_rejects_unknown_value(monkeypatch, value):
    monkeypatch.setenv("MDN_INTRA_GATES", value)
    inputs = make_inputs(1, 20, 1, 16, 16)
    with pytest.raises(ValueError, match=f"MDN_INTRA_GATES='{value}': expected one of 'auto', 'torch', 'kernel'"):
        chunk_momentum_delta_rule(**inputs, chunk_size=16)


def test_bad_arguments_are_clear():
    with pytest.raises(ValueError, match="chunk size 48; expected 16, 32 or 64"):
        ig.intra_gates_op(*(torch.zeros(2, 48) for _ in range(3)), True)
    with pytest.raises(ValueError, match=r"beta is \(2, 16\) torch.float64; expected \(2, 16\) torch.float32"):
        ig.intra_gates_op(torch.zeros(2, 16), torch.zeros(2, 16, dtype=torch.float64), torch.zeros(2, 16), True)


def test_fake_tensor_shapes():
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        x = torch.empty(3, 4, 64)
        outs = ig.intra_gates_op(x, x, x, True)
        grads = ig.intra_gates_grad_op(x, x, x, x, x, x, x, outs[4], True)
    assert [tuple(o.shape) for o in outs] == [(3, 4, 64)] * 4 + [(3, 4, 64, 64)]
    assert [tuple(g.shape) for g in grads] == [(3, 4, 64)] * 3


@pytest.mark.skipif(not _have_ptxas(), reason="needs Triton's NVIDIA backend (ptxas)")
@pytest.mark.parametrize("C", [32, 64])
def test_sm90_resources_without_spills(C):
    """The shipped form (TF32, GATE_WARPS, segsum_dot's default) compiles for sm_90 (ptxas, in a child process
    without the interpreter) without register spills at C = 32 and with at most 56 bytes (forward, 2 warps) and 144
    (backward, 4 warps, segment sums as products) at C = 64: both ran faster on an H200 than at the other warp
    counts, where 8 warps spill 0-8 bytes (GATE_WARPS, segsum_dot). The backward with cumulative sums spills 72
    bytes; 3xTF32 products, or Triton's "tf32x3" for the triangle products, spill 1-4 KB at C = 64: the former runs
    only when asked, for fp32 inputs, the latter is not used (_dot_exact_b)."""
    f32 = "*fp32"
    mod = "mdn.ops.momentum_delta_rule.intra_gates"
    fwd = compile_sm90_child(mod, "momentum_delta_rule_fwd_kernel_intra_gates",
                             {n: f32 for n in ("log_alpha", "beta", "log_mu", "a", "m", "b", "lm_last", "gam")},
                             {"C": C, "PREC": "tf32", "SEGSUM_DOT": ig.segsum_dot("fwd")}, ig.GATE_WARPS["fwd"])
    bwd = compile_sm90_child(mod, "momentum_delta_rule_bwd_kernel_intra_gates",
                             {n: f32 for n in ("log_alpha", "beta", "log_mu", "da", "dm", "db", "dlm_last", "dgam",
                                               "dlog_alpha", "dbeta", "dlog_mu")},
                             {"C": C, "PREC": "tf32", "SEGSUM_DOT": ig.segsum_dot("bwd")}, ig.GATE_WARPS["bwd"])
    for res, limit in ((fwd, 56 if C == 64 else 0), (bwd, 144 if C == 64 else 0)):
        assert res["spill_st"] <= limit and res["spill_ld"] <= limit, res


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs CUDA")
@pytest.mark.parametrize("kind", ["layer", "mu_small", "alpha_small"])
def test_gpu_tf32_kernels_against_fp64(kind):
    """The TF32 form on the GPU, at one op call's worth of (chunk, head) pairs (8192): within 2e-3 of float64 for
    every output and gradient (TF32 rounds operands to 11 bits; the bf16 operands downstream round to 8)."""
    la, be, lm = _gates(64, kind, n=(512, 16))
    weights = [torch.randn(512, 16, 64, dtype=torch.float64) for _ in range(4)]
    weights.append(torch.randn(512, 16, 64, 64, dtype=torch.float64))
    ref_o, ref_g = _run("torch", la, be, lm, weights, torch.float64)
    out_o, out_g = _run("kernel", la, be, lm, weights, torch.float32, tf32=True)
    for name, r, o in zip(("a", "m", "b", "lm_last", "gamma", "dlog_alpha", "dbeta", "dlog_mu"),
                          ref_o + ref_g, out_o + out_g):
        assert rel_rms(r, o) <= 2e-3, (name, rel_rms(r, o))


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs CUDA")
@pytest.mark.parametrize("K,V", [(128, 128), (256, 512)])
def test_gpu_op_default_takes_the_kernels(monkeypatch, K, V):
    """bf16 on the GPU at the benchmark's head shapes, default knobs (the kernels, TF32): within the bf16 thresholds
    of the fp64 recurrence, every gradient included, and the kernels did run."""
    monkeypatch.delenv("MDN_INTRA_GATES", raising=False)
    calls = []
    real = ig.intra_gates_op
    monkeypatch.setattr("mdn.ops.momentum_delta_rule.chunk_intra.intra_gates_op",
                        lambda *a: calls.append(1) or real(*a))
    monkeypatch.setenv("MDN_CHUNK_COMPILE", "0")
    inputs = make_inputs(2, 1000, 2, K, V, dtype=torch.bfloat16, device="cuda", gates="layer", initial_state=True)
    compare_with_oracle(inputs, dtype=torch.bfloat16, tol_o=5e-3, tol_grad=1e-2, tol_state=1e-2)
    assert calls
