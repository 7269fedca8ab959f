"""Fused recurrent kernel (forward + reverse-time backward) against the fp64 recurrence.

On the CPU these run the Triton kernels in the interpreter (TRITON_INTERPRET=1); keep shapes tiny. The
``gpu`` set runs the same comparisons at real sizes. Every kernel output starts as NaN (conftest poisoning).
"""
import pytest
import torch

import mdn.ops.momentum_delta_rule.fused_recurrent as fr_mod
from conftest import HAS_CUDA, INTERPRET, assert_rel, gap_gates, make_inputs, to_fp64
from mdn.ops import fused_recurrent_momentum_delta_rule
from mdn.ops.momentum_delta_rule.naive import l2norm, naive_recurrent_momentum_delta_rule

NAMES = ("q", "k", "v", "log_alpha", "beta", "log_mu", "eta", "initial_state")

pytestmark = pytest.mark.skipif(not (HAS_CUDA or INTERPRET),
                                reason="the Triton kernels need CUDA or TRITON_INTERPRET=1")


def _run(op, x, do, dht, grads=True, **kw):
    """o, final state and the gradients of sum(o*do) + sum(ht*dht) w.r.t. every floating input."""
    names = [n for n in NAMES if n in x] if grads else []
    args = dict(x)
    for n in names:
        args[n] = x[n].detach().clone().requires_grad_(True)
    o, ht = op(**args, output_final_state=True, **kw)
    if names:
        loss = (o.float() * do.to(o.device, torch.float32)).sum()
        if dht is not None:
            loss = loss + (ht * dht.to(ht.device, ht.dtype)).sum()
        loss.backward()
    return o, ht, {n: args[n].grad for n in names}


def _compare(x, tol_o, tol_g, grads=True, dht=True, **kw):
    """Run the kernel on x and the fp64 oracle (same device, same values); check o, state and every gradient."""
    B, T, H, V = x["v"].shape
    K, dev = x["q"].shape[-1], x["q"].device
    N = B if x.get("cu_seqlens") is None else x["cu_seqlens"].numel() - 1
    do = torch.randn(B, T, H, V, dtype=torch.float64, device=dev)
    dh = torch.randn(2, N, H, K, V, dtype=torch.float64, device=dev) if dht else None
    o, ht, g = _run(fused_recurrent_momentum_delta_rule, x, do, dh, grads, **kw)
    o_ref, ht_ref, g_ref = _run(naive_recurrent_momentum_delta_rule, to_fp64(x), do, dh, grads, **kw)
    assert o.dtype == x["q"].dtype and o.shape == o_ref.shape
    assert ht.dtype == torch.float32 and ht.shape == ht_ref.shape
    assert torch.isfinite(o).all() and torch.isfinite(ht).all()
    errs = {"o": assert_rel("o", o_ref, o, tol_o), "S": assert_rel("S_T", ht_ref[0], ht[0], tol_o),
            "M": assert_rel("M_T", ht_ref[1], ht[1], tol_o)}
    for n, gr in g.items():
        assert gr is not None and gr.dtype == x[n].dtype and torch.isfinite(gr).all(), n
        errs["d" + n] = assert_rel("d" + n, g_ref[n], gr, tol_g)
    return errs, g


@pytest.mark.parametrize("shape", [
    (2, 37, 1, 16, 24),   # T spans several checkpoint intervals (BC = 16)
    (1, 20, 1, 200, 20),  # K not a power of two; V split into 3 blocks with a ragged tail
    (1, 1, 2, 8, 4),      # T = 1
])
def test_fp32_matches_fp64_oracle(shape, device):
    x = make_inputs(*shape, device=device, initial_state=True)
    _compare(x, 1e-5, 1e-5)


@pytest.mark.parametrize("use_p_times_alpha", [True, False])
def test_flags_p_times_alpha(use_p_times_alpha, device):
    x = make_inputs(1, 12, 2, 8, 8, device=device, gates="layer", initial_state=True)
    _compare(x, 1e-5, 1e-5, use_p_times_alpha=use_p_times_alpha)


def test_l2norm_off_equals_prenormalised_inputs(device):
    x = make_inputs(1, 12, 2, 8, 8, device=device, initial_state=True)
    o1, h1 = fused_recurrent_momentum_delta_rule(**x, output_final_state=True)
    xn = dict(x, q=l2norm(x["q"]), k=l2norm(x["k"]))
    o2, h2 = fused_recurrent_momentum_delta_rule(**xn, output_final_state=True, use_qk_l2norm_in_kernel=False)
    assert_rel("o", o1, o2, 1e-6)
    assert_rel("state", h1, h2, 1e-6)
    _compare(xn, 1e-5, 1e-5, use_qk_l2norm_in_kernel=False)


def test_no_initial_state_no_final_state_gradient(device):
    x = make_inputs(2, 10, 2, 8, 8, device=device)
    _compare(x, 1e-5, 1e-5, dht=False)


def test_varlen(device):
    lengths = [1, 9, 0, 6]
    x = make_inputs(1, sum(lengths), 2, 8, 8, device=device, initial_state=True, lengths=lengths)
    _compare(x, 1e-5, 1e-5)


def test_bf16(device):
    x = make_inputs(1, 16, 2, 16, 16, dtype=torch.bfloat16, device=device, gates="layer", initial_state=True)
    errs, _ = _compare(x, 5e-3, 1e-2)
    assert errs["o"] > 0  # the comparison really ran at bf16 output precision


@pytest.mark.parametrize("case", ["mu_zero", "gap1.0", "la-0.001_lm-2"])
def test_extreme_gates(case, device):
    x = make_inputs(1, 24, 2, 8, 8, device=device, initial_state=True)
    if case == "mu_zero":  # log_mu = -inf: mu = 0 exactly (R1); its gradient is then 0, not NaN
        x["log_mu"] = torch.full_like(x["log_mu"], float("-inf"))
        _, g = _compare(x, 1e-5, 1e-5)
        assert (g["log_mu"] == 0).all()
        return
    if case == "gap1.0":
        g = gap_gates(1, 24, 2, gap=1.0, device=device)
    else:
        g = {"log_alpha": torch.full((1, 24, 2), -0.001, device=device), "log_mu": torch.full((1, 24, 2), -2.0,
             device=device), "beta": torch.full((1, 24, 2), 0.5, device=device), "eta": x["eta"]}
    x.update(g)
    _compare(x, 1e-5, 1e-5)


def test_decode_continuation_equals_one_pass(device):
    """Prefill T0 tokens, then feed one token per call with the carried state: the same outputs and state
    as one pass over the whole sequence."""
    B, T, T0, H, K, V = 2, 9, 5, 2, 8, 8
    x = make_inputs(B, T, H, K, V, device=device, initial_state=True)
    o_all, h_all = fused_recurrent_momentum_delta_rule(**x, output_final_state=True)
    seq = ("q", "k", "v", "log_alpha", "beta", "log_mu", "eta")
    part = lambda a, b: {n: x[n][:, a:b] for n in seq}  # noqa: E731
    o0, h = fused_recurrent_momentum_delta_rule(**part(0, T0), initial_state=x["initial_state"],
                                                output_final_state=True)
    outs = [o0]
    for t in range(T0, T):
        o_t, h = fused_recurrent_momentum_delta_rule(**part(t, t + 1), initial_state=h, output_final_state=True)
        outs.append(o_t)
    assert_rel("o", o_all, torch.cat(outs, 1), 1e-6)
    assert_rel("state", h_all, h, 1e-6)
    o_ref, h_ref = naive_recurrent_momentum_delta_rule(**to_fp64(x), output_final_state=True)
    assert_rel("o vs fp64", o_ref, torch.cat(outs, 1), 1e-5)


def test_decode_packed_batch_of_single_tokens(device):
    """The decode layout with cu_seqlens: N sequences of one token each, B = 1, state [2, N, ...]."""
    N, H, K, V = 3, 2, 8, 8
    x = make_inputs(1, N, H, K, V, device=device, initial_state=True, lengths=[1] * N)
    _compare(x, 1e-5, 1e-5)


def test_cpu_without_interpreter_falls_back_to_torch(monkeypatch):
    x = make_inputs(1, 6, 2, 8, 8, initial_state=True)
    monkeypatch.setattr(fr_mod, "INTERPRET", False)
    o, h = fused_recurrent_momentum_delta_rule(**x, output_final_state=True)
    o_ref, h_ref = naive_recurrent_momentum_delta_rule(**x, output_final_state=True)
    assert torch.equal(o, o_ref) and torch.equal(h, h_ref)


def test_no_grad_forward_skips_checkpoints(device, monkeypatch):
    seen = []
    real = fr_mod.fused_recurrent_momentum_delta_rule_fwd

    def spy(*args, save_ckpt):
        seen.append(save_ckpt)
        return real(*args, save_ckpt=save_ckpt)

    monkeypatch.setattr(fr_mod, "fused_recurrent_momentum_delta_rule_fwd", spy)
    x = make_inputs(1, 4, 1, 8, 8, device=device)
    with torch.no_grad():
        fused_recurrent_momentum_delta_rule(**x)
    x["q"].requires_grad_(True)
    fused_recurrent_momentum_delta_rule(**x)
    assert seen == [False, True]


# ------------------------------------------------------------------------------------------------- GPU
GPU_SHAPES = [(1, 4096, 2, 256, 512), (2, 1000, 4, 100, 48), (1, 300, 2, 32, 200), (4, 65, 6, 128, 256)]


@pytest.mark.gpu
@pytest.mark.parametrize("shape", GPU_SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gpu_forward(shape, dtype):
    x = make_inputs(*shape, dtype=dtype, device="cuda", gates="layer", initial_state=True)
    o, h = fused_recurrent_momentum_delta_rule(**x, output_final_state=True)
    o_ref, h_ref = naive_recurrent_momentum_delta_rule(**to_fp64(x), output_final_state=True)
    assert torch.isfinite(o).all() and torch.isfinite(h).all()
    tol = 1e-5 if dtype == torch.float32 else 5e-3
    assert_rel("o", o_ref, o, tol)
    assert_rel("state", h_ref, h, 1e-5 if dtype == torch.float32 else 5e-3)


@pytest.mark.gpu
@pytest.mark.parametrize("shape", [(1, 4096, 1, 256, 512), (2, 1000, 2, 100, 48), (1, 512, 2, 128, 256)])
def test_gpu_forward_backward(shape):
    x = make_inputs(*shape, device="cuda", gates="layer", initial_state=True)
    _compare(x, 1e-5, 1e-4)


@pytest.mark.gpu
def test_gpu_varlen_and_gaps():
    lengths = [1, 700, 63, 64, 65, 2000]
    x = make_inputs(1, sum(lengths), 2, 128, 128, device="cuda", initial_state=True, lengths=lengths)
    x.update(gap_gates(1, sum(lengths), 2, gap=0.5, device="cuda"))
    _compare(x, 1e-5, 1e-4)


@pytest.mark.gpu
def test_gpu_bf16_backward():
    x = make_inputs(2, 1000, 2, 128, 256, dtype=torch.bfloat16, device="cuda", gates="layer", initial_state=True)
    _compare(x, 5e-3, 1e-2)
