"""MDN_INTRA_QK: the intra part's key/query work (L2 norms, P, K_w, Lmat = (P K_w^T) * Gamma^-, Aqk = s (Q K_w^T) *
Gamma) by the Triton kernels of chunk_intra_qk.py (custom op mdn::intra_qk with its own backward), reading q and k
unpacked through the chunk table. The kernels against float64 autograd of the same math written in torch (dense
with T not a multiple of C, varlen with a length-1 sequence, K not a power of two and K > BK, every flag, outputs
poisoned with NaN, unused outputs), the op with them against the fp64 recurrence, the plumbing (defaults, bad
values, fakes, torch.compile) and their sm_90 resources."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from conftest import (DEV, HAS_CUDA, _have_ptxas, assert_compiled_op_matches_eager, compare_with_oracle,
                      compile_sm90_child, constant_gates, cu_seqlens_of, make_inputs, needs_kernels, rel_rms)
from mdn.ops.momentum_delta_rule import chunk_intra_qk as cq
from mdn.ops.momentum_delta_rule.chunk import chunk_momentum_delta_rule
from mdn.ops.momentum_delta_rule.chunk_intra import gate_coefficients


@pytest.fixture(autouse=True)
def _poison(monkeypatch):
    monkeypatch.setenv("MDN_POISON_OUTPUTS", "1")


def _packed(x, table, C):
    """[B, T, H, D] -> [NC, H, C, D] through the chunk table (zero rows past each chunk's length)."""
    rows = x.reshape(-1, *x.shape[2:])
    out = []
    for start, n in table.tolist():
        blk = torch.zeros(C, *rows.shape[1:], dtype=rows.dtype, device=rows.device)
        blk[:n] = rows[start:start + n]
        out.append(blk.transpose(0, 1))
    return torch.stack(out)


def _reference(q, k, la, eta, gam, table, scale, l2norm, p_alpha):
    """The kernels' math in float64 torch (module docstring of chunk_intra_qk), differentiable."""
    C = la.shape[-1]
    qc, kc = _packed(q, table, C), _packed(k, table, C)
    if l2norm:
        qc = qc * torch.rsqrt((qc * qc).sum(-1, keepdim=True) + cq.L2NORM_EPS)
        kc = kc * torch.rsqrt((kc * kc).sum(-1, keepdim=True) + cq.L2NORM_EPS)
    p = la.exp().unsqueeze(-1) * kc if p_alpha else kc
    kw = eta.unsqueeze(-1) * kc
    gam_prev = torch.cat([torch.zeros_like(gam[..., :1, :]), gam[..., :-1, :]], -2)
    strict = torch.ones(C, C, dtype=torch.bool, device=q.device).tril(-1)
    lmat = (p @ kw.transpose(-1, -2) * gam_prev).masked_fill(~strict, 0)
    aqk = (scale * (qc @ kw.transpose(-1, -2)) * gam).tril()
    return p, qc, kw, lmat, aqk


def _case(B, T, H, K, C, lengths=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, T, H, K, generator=g, dtype=torch.float64)
    k = torch.randn(B, T, H, K, generator=g, dtype=torch.float64)
    cu = cu_seqlens_of(lengths) if lengths else None
    if cu is None:
        NC = B * -(-T // C)
    else:
        NC = sum(-(-n // C) for n in lengths)
    table = cq.chunk_table(B, T, C, "cpu", cu)
    assert table.shape == (NC, 2)
    la = F.logsigmoid(torch.randn(NC, H, C, generator=g, dtype=torch.float64) + 2)
    lm = F.logsigmoid(torch.randn(NC, H, C, generator=g, dtype=torch.float64) + 1)
    beta = torch.rand(NC, H, C, generator=g, dtype=torch.float64)
    eta = torch.rand(NC, H, C, generator=g, dtype=torch.float64)
    gam = gate_coefficients(la, beta, lm)[4]  # the kernels' backward recomputes Gamma from the gates
    return q, k, la, beta, lm, eta, gam, table


def _grads(fn, inputs, weights, used):
    xs = [x.clone().requires_grad_() for x in inputs]
    outs = fn(*xs)
    loss = sum((outs[i].double() * weights[i]).sum() for i in used)
    grads = torch.autograd.grad(loss, xs, allow_unused=True)
    return [o.detach().double() for o in outs], [torch.zeros_like(x) if g is None else g.double()
                                                 for x, g in zip(xs, grads)]


def _compare(B, T, H, K, C, lengths=None, l2norm=True, p_alpha=True, used=(0, 1, 2, 3, 4), tol=1e-5):
    q, k, la, beta, lm, eta, gam, table = _case(B, T, H, K, C, lengths)
    scale = K ** -0.5
    ref_o, _ = _reference(q, k, la, eta, gam, table, scale, l2norm, p_alpha), None
    g = torch.Generator().manual_seed(7)
    weights = [torch.randn(o.shape, generator=g, dtype=torch.float64) for o in ref_o]
    ref_o, ref_g = _grads(lambda *a: _reference(*a, table, scale, l2norm, p_alpha), (q, k, la, eta, gam), weights,
                          used)
    dev = [x.to(DEV, torch.float32) for x in (q, k, la, eta, gam)]
    be, lmu = beta.to(DEV, torch.float32), lm.to(DEV, torch.float32)
    out_o, out_g = _grads(lambda q_, k_, la_, eta_, gam_: cq.intra_qk_op(
        q_, k_, la_, be, lmu, eta_, gam_, table.to(DEV), scale, l2norm, p_alpha, False), dev,
        [w.to(DEV) for w in weights], used)
    names = ("p", "q", "kw", "lmat", "aqk", "dq", "dk", "dlog_alpha", "deta", "dgam")
    for name, r, o in zip(names, ref_o + ref_g, out_o[:5] + out_g):
        o = o.cpu()
        assert torch.isfinite(o).all(), f"{name}: an element was left unwritten (poisoned output)"
        if r.abs().max() == 0:
            assert (o == 0).all(), name
        else:
            assert rel_rms(r, o) <= tol, (name, rel_rms(r, o))


@needs_kernels
@pytest.mark.parametrize("B,T,H,K,C,lengths,tiles", [
    (2, 100, 2, 32, 64, None, ""),      # T not a multiple of C: a short last chunk per sequence
    # varlen with a length-1 sequence; K = 100: masked columns, at the shipped tiles two K blocks of 64 in the
    # forward and one of 128 in the backward, and at BK = 64 everywhere the [C, K] backward's second pass
    (1, 71, 2, 100, 16, [1, 50, 20], ""),
    (1, 71, 2, 100, 16, [1, 50, 20], "64,4;64,4;64,4"),
    (2, 64, 1, 16, 32, None, ""),
])
def test_kernels_match_fp64_autograd(monkeypatch, B, T, H, K, C, lengths, tiles):
    """Every output and every gradient (q, k, log_alpha, eta, Gamma) within 1e-5 of float64 (fp32, ieee dots)."""
    if tiles:
        monkeypatch.setenv("MDN_INTRA_QK_CONFIG", tiles)
    _compare(B, T, H, K, C, lengths)


@needs_kernels
@pytest.mark.parametrize("l2norm,p_alpha", [(False, True), (True, False), (False, False)])
def test_kernels_flags(l2norm, p_alpha):
    _compare(1, 40, 2, 24, 16, l2norm=l2norm, p_alpha=p_alpha)


@needs_kernels
@pytest.mark.parametrize("used", [(3,), (0, 2), (1, 4)])
def test_outputs_without_a_gradient(used):
    """Outputs that take no part in the loss (their gradients come back as None) count as zero."""
    _compare(1, 40, 1, 16, 16, used=used)


@needs_kernels
@pytest.mark.parametrize("dtype,T,C,K,V,lengths", [
    (torch.float32, 100, 64, 32, 40, None),
    (torch.float32, 70, 16, 20, 24, [1, 50, 19]),
    (torch.float32, 90, 32, 100, 16, None),
])
def test_op_with_the_kernels_matches_the_fp64_recurrence(monkeypatch, dtype, T, C, K, V, lengths):
    monkeypatch.setenv("MDN_INTRA_QK", "kernel")
    inputs = make_inputs(1 if lengths else 2, T, 2, K, V, dtype=dtype, device=DEV, gates="layer",
                         initial_state=True, lengths=lengths)
    compare_with_oracle(inputs, dtype=dtype, tol_o=1e-5, tol_grad=1e-5, op_kwargs={"chunk_size": C})


@needs_kernels
@pytest.mark.parametrize("log_alpha,log_mu", [(-0.001, -3.0), (-3.0, -0.001)])
def test_op_with_the_kernels_under_extreme_gates(monkeypatch, log_alpha, log_mu):
    monkeypatch.setenv("MDN_INTRA_QK", "kernel")
    g = constant_gates(1, 70, 1, log_alpha=log_alpha, log_mu=log_mu, beta=0.4, eta=1.0, device=DEV)
    inputs = make_inputs(1, 70, 1, 16, 16, device=DEV, initial_state=True, gates=g)
    compare_with_oracle(inputs, dtype=torch.float32, tol_o=1e-5, tol_grad=1e-5, op_kwargs={"chunk_size": 64})


@needs_kernels
@pytest.mark.parametrize("B,lengths", [(2, None), (1, [1, 50, 30])])
def test_op_bf16_with_the_kernels(monkeypatch, B, lengths):
    """16-bit inputs: bf16 operands and products, as the torch graph's bf16 GEMMs; with the gate kernels too; dense
    and varlen with a length-1 sequence (the CPU-path counterpart of the GPU tests at the benchmark heads), and the
    kernels did run."""
    monkeypatch.setenv("MDN_INTRA_QK", "kernel")
    monkeypatch.setenv("MDN_INTRA_GATES", "kernel")
    calls = []
    real = cq.intra_qk_op
    monkeypatch.setattr("mdn.ops.momentum_delta_rule.chunk_intra_pqk.intra_qk_op",
                        lambda *a: calls.append(1) or real(*a))
    inputs = make_inputs(B, 81, 2, 64, 48, dtype=torch.bfloat16, device=DEV, gates="layer", initial_state=True,
                         lengths=lengths)
    compare_with_oracle(inputs, dtype=torch.bfloat16, tol_o=5e-3, tol_grad=1e-2, tol_state=1e-2)
    assert calls


@needs_kernels
def test_kernels_under_torch_compile(monkeypatch):
    """Custom ops with fakes: a caller's torch.compile(fullgraph=True) keeps them."""
    monkeypatch.setenv("MDN_CHUNK_COMPILE", "0")
    monkeypatch.setenv("MDN_INTRA_QK", "kernel")
    assert_compiled_op_matches_eager(1, 37, 2, 16, 16, chunk_size=16, device=DEV)


def test_chunk_table():
    t = cq.chunk_table(2, 5, 2, "cpu")
    assert t.tolist() == [[0, 2], [2, 2], [4, 1], [5, 2], [7, 2], [9, 1]]
    t = cq.chunk_table(1, 7, 4, "cpu", cu_seqlens_of([1, 6]))
    assert t.tolist() == [[0, 1], [1, 4], [5, 2]]
    assert cq.chunk_table(1, 7, 4, "cpu", cu_seqlens_of([1, 6]), NC=3).tolist() == t.tolist()


def test_defaults():
    """auto: the kernels for CUDA inputs with bf16 products at C <= 64, else the torch graph; kernel: wherever they
    can run (CUDA or the interpreter)."""
    cpu = torch.zeros(1, 4, 1, 8)
    assert not cq.qk_kernel_applies(cpu, "auto", 64, True)
    assert not cq.qk_kernel_applies(cpu, "kernel", 128, True)
    assert not cq.qk_kernel_applies(cpu, "torch", 64, True)
    if HAS_CUDA:
        gpu = cpu.cuda()
        assert cq.qk_kernel_applies(gpu, "auto", 64, True) and not cq.qk_kernel_applies(gpu, "auto", 64, False)
        assert cq.qk_kernel_applies(gpu, "kernel", 32, False)


@pytest.mark.parametrize("value", ["triton", "1", "Kernel"])
def test_env_rejects_unknown_value(monkeypatch, value):
    monkeypatch.setenv("MDN_INTRA_QK", value)
    inputs = make_inputs(1, 20, 1, 16, 16)
    with pytest.raises(ValueError, match=f"MDN_INTRA_QK='{value}': expected one of 'auto', 'torch', 'kernel'"):
        chunk_momentum_delta_rule(**inputs, chunk_size=16)


@pytest.mark.parametrize("value", ["64,4;64,4", "64,4;48,8;32,4", "a,b;c,d;e,f", "64,3;64,8;32,4", "64,4;64,4;64,4,4",
                                   "64,4;64,4;64,4,0", "64,4;64,4;64,4,2,1", "64,4,2;64,4;64,4", "64,4;64,4,2;64,4",
                                   "64;64,4;64,4"])
def test_config_rejects_bad_values(monkeypatch, value):
    monkeypatch.setenv("MDN_INTRA_QK_CONFIG", value)
    with pytest.raises(ValueError, match="MDN_INTRA_QK_CONFIG="):
        cq.qk_config("fwd", 128)


def test_config_override(monkeypatch):
    assert cq.qk_config("bwd", 256) == cq.QK_CONFIGS["bwd"]
    assert cq.qk_config("fwd", 20) == (32, cq.QK_CONFIGS["fwd"][1])  # BK never above K's power of two
    assert cq.qk_config("bwd_cc", 64) == cq.QK_CONFIGS["bwd_cc"] != cq.QK_CONFIGS_K128["bwd_cc"]
    for d in ("bwd_cc", "bwd"):  # the backward takes one K block of 128 for 64 < K <= 128
        assert cq.qk_config(d, 100) == cq.qk_config(d, 128) == cq.QK_CONFIGS_K128[d] != cq.QK_CONFIGS[d]
    assert cq.qk_config("fwd", 100) == cq.QK_CONFIGS_K128["fwd"] == cq.QK_CONFIGS["fwd"]
    monkeypatch.setenv("MDN_INTRA_QK_CONFIG", "32,8;16,2;128,4")
    assert cq.qk_config("fwd", 128) == (32, 8) and cq.qk_config("bwd_cc", 128) == (16, 2)
    assert cq.qk_config("bwd", 128) == (128, 4)
    assert cq.qk_stages() == 1
    monkeypatch.setenv("MDN_INTRA_QK_CONFIG", "32,8;16,2;32,4,3")
    assert cq.qk_config("bwd", 128) == (32, 4) and cq.qk_config("fwd", 128) == (32, 8) and cq.qk_stages() == 3


@needs_kernels
def test_op_with_pipelined_tiles(monkeypatch):
    """The stages of a tile set reach the [C, K] backward's launch (the other two kernels run at one stage) and give
    what the shipped tiles give (the interpreter ignores num_stages; on a GPU the K-block loops pipeline)."""
    monkeypatch.setenv("MDN_INTRA_QK", "kernel")
    x = make_inputs(1, 100, 2, 64, 32, dtype=torch.float32, device=DEV, gates="layer", initial_state=True)
    ref = chunk_momentum_delta_rule(**x, chunk_size=32)[0]
    launches = {}

    class Spy:
        def __init__(self, name):
            self.name, self.kernel = name, getattr(cq, name)

        def __getitem__(self, grid):
            launch = self.kernel[grid]

            def run(*args, **kwargs):
                launches.setdefault(self.name, set()).add(kwargs["num_stages"])
                return launch(*args, **kwargs)
            return run
    names = ("momentum_delta_rule_fwd_kernel_intra_qk", "momentum_delta_rule_bwd_kernel_intra_qk_cc",
             "momentum_delta_rule_bwd_kernel_intra_qk")
    for name in names:
        monkeypatch.setattr(cq, name, Spy(name))
    monkeypatch.setenv("MDN_INTRA_QK_CONFIG", "32,4;32,4;32,4,3")
    leaves = {k: v.detach().clone().requires_grad_(True) for k, v in x.items()
              if torch.is_tensor(v) and v.is_floating_point()}
    o = chunk_momentum_delta_rule(**{**x, **leaves}, chunk_size=32)[0]
    o.sum().backward()
    assert rel_rms(ref.double(), o.double()) <= 1e-5
    assert launches == dict(zip(names, ({1}, {1}, {3}))), launches


def test_bad_arguments_are_clear():
    q = torch.zeros(1, 16, 1, 8)
    la = torch.zeros(1, 1, 16)
    gam = torch.zeros(1, 1, 16, 16)
    table = cq.chunk_table(1, 16, 16, "cpu")
    with pytest.raises(ValueError, match="chunk size 48; expected 16, 32 or 64"):
        g48 = torch.zeros(1, 1, 48)
        cq.intra_qk_op(q, q, g48, g48, g48, g48, torch.zeros(1, 1, 48, 48), table, 1., True, True, False)
    with pytest.raises(ValueError, match=r"eta is \(1, 1, 16\) torch.float64; expected \(1, 1, 16\) torch.float32"):
        cq.intra_qk_op(q, q, la, la, la, la.double(), gam, table, 1., True, True, False)
    with pytest.raises(ValueError, match=r"log_mu is \(1, 1, 15\)"):
        cq.intra_qk_op(q, q, la, la, la[..., 1:], la, gam, table, 1., True, True, False)
    with pytest.raises(ValueError, match=r"chunks is \(1, 2\) torch.int64"):
        cq.intra_qk_op(q, q, la, la, la, la, gam, table.long(), 1., True, True, False)


def test_fake_tensor_shapes():
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        q = torch.empty(2, 100, 3, 32, dtype=torch.bfloat16)
        la = torch.empty(4, 3, 64)
        gam = torch.empty(4, 3, 64, 64)
        table = torch.empty(4, 2, dtype=torch.int32)
        outs = cq.intra_qk_op(q, q, la, la, la, la, gam, table, 1., True, True, True)
        grads = cq.intra_qk_grad_op(q, q, la, la, la, la, table, outs[5], *outs[:5], 1., True, True, True)
    assert [(tuple(o.shape), o.dtype) for o in outs] == [((4, 3, 64, 32), torch.bfloat16)] * 3 + [
        ((4, 3, 64, 64), torch.float32), ((4, 3, 64, 64), torch.bfloat16), ((4, 3, 2, 64), torch.float32)]
    assert [tuple(g.shape) for g in grads] == [(2, 100, 3, 32)] * 2 + [(4, 3, 64)] * 2 + [(4, 3, 64, 64)]


def _sig(names_bf16, names_f32, scale=True):
    sig = {n: "*bf16" for n in names_bf16}
    sig.update({n: "*fp32" for n in names_f32})
    sig.update({"chunks": "*i32", "H": "i32", **({"scale": "fp32"} if scale else {})})
    return sig


@pytest.mark.skipif(not _have_ptxas(), reason="needs Triton's NVIDIA backend (ptxas)")
@pytest.mark.parametrize("K", [128, 256])
def test_sm90_resources_without_spills(K):
    """The shipped tiles (shipped_tiles: QK_CONFIGS_K128 at K = 128, QK_CONFIGS at 256) compile for sm_90 without
    register spills at C = 64 with bf16 operands (ptxas, in a child process without the interpreter)."""
    mod = "mdn.ops.momentum_delta_rule.chunk_intra_qk"
    consts = {"K": K, "C": 64, "L2NORM": True, "P_ALPHA": True, "DOT_MODE": 1, "EPS": cq.L2NORM_EPS}
    bk, nw = cq.shipped_tiles("fwd", K)
    fwd = compile_sm90_child(mod, "momentum_delta_rule_fwd_kernel_intra_qk",
                             _sig(("q", "k", "p", "qn", "kw", "aqk"), ("la", "eta", "gam", "lmat", "rstd")),
                             {**consts, "BK": bk}, nw)
    consts.pop("EPS")
    bk, nw = cq.shipped_tiles("bwd", K)
    bwd = compile_sm90_child(mod, "momentum_delta_rule_bwd_kernel_intra_qk",
                             _sig(("q", "k", "dp", "dqn", "dkw", "dpk", "dqk", "dq", "dk"),
                                  ("la", "eta", "rstd", "dla", "deta"), scale=False), {**consts, "BK": bk}, nw)
    consts.pop("L2NORM")
    bk, nw = cq.shipped_tiles("bwd_cc", K)
    bwd_cc = compile_sm90_child(mod, "momentum_delta_rule_bwd_kernel_intra_qk_cc",
                                _sig(("q", "k", "daqk", "dpk", "dqk"),
                                     ("la", "beta", "lm", "eta", "rstd", "dlmat", "dgam")),
                                {**consts, "BK": bk, "GAM_PREC": "tf32"}, nw)
    for res in (fwd, bwd, bwd_cc):
        assert res["spill_st"] == 0 and res["spill_ld"] == 0, res


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs CUDA")
@pytest.mark.parametrize("K", [128, 256])
def test_gpu_kernels_against_fp64(K):
    """fp32 on the GPU at many (chunk, head) pairs, dense T not a multiple of C: within 1e-5 of float64."""
    _compare(4, 1000, 8, K, 64)


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs CUDA")
@pytest.mark.parametrize("K,V", [(128, 128), (256, 512)])
def test_gpu_op_default_takes_the_kernels(monkeypatch, K, V):
    """bf16 on the GPU at the benchmark's head shapes, default knobs: within the bf16 thresholds of the fp64
    recurrence, every gradient included, and the kernels did run."""
    monkeypatch.delenv("MDN_INTRA_QK", raising=False)
    calls = []
    real = cq.intra_qk_op
    monkeypatch.setattr("mdn.ops.momentum_delta_rule.chunk_intra_pqk.intra_qk_op",
                        lambda *a: calls.append(1) or real(*a))
    monkeypatch.setenv("MDN_CHUNK_COMPILE", "0")
    inputs = make_inputs(2, 1000, 2, K, V, dtype=torch.bfloat16, device="cuda", gates="layer", initial_state=True)
    compare_with_oracle(inputs, dtype=torch.bfloat16, tol_o=5e-3, tol_grad=1e-2, tol_state=1e-2)
    assert calls


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs CUDA")
def test_gpu_varlen_bf16(monkeypatch):
    """Varlen bf16 with uneven lengths (one of length 1) through the default (compiled) path."""
    monkeypatch.delenv("MDN_INTRA_QK", raising=False)
    inputs = make_inputs(1, 1500, 4, 128, 64, dtype=torch.bfloat16, device="cuda", gates="layer",
                         initial_state=True, lengths=[1, 700, 63, 736])
    compare_with_oracle(inputs, dtype=torch.bfloat16, tol_o=5e-3, tol_grad=1e-2, tol_state=1e-2)
