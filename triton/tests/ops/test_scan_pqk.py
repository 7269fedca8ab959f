"""The "pqk" scan form (MDN_SCAN_FORM=pqk; chunk_scan_pqk.py, chunk_intra_pqk.py): the scan kernels load P, Q, K_w
and rebuild the six virtual operands (Y, Z, Qa, Qb, Ks, Km) in registers.

Checked: the whole op vs the fp64 recurrence (o, final states, every gradient; fp32 <= 1e-5 relative RMS, bf16
o <= 5e-3 and grads <= 1e-2), the pqk kernels vs their torch mirror, descriptor loads vs pointer loads, pqk vs six
for bf16, torch.compile, and the MDN_SCAN_FORM check. Outputs are NaN-poisoned (MDN_POISON_OUTPUTS=1).
"""
from __future__ import annotations

import pytest
import torch

from conftest import (ALL_GRAD_NAMES, DEV, HAS_CUDA, assert_gpu_knob_matches_and_oracle, assert_rel,
                      assert_same_results, compare_with_oracle as _compare, make_inputs, needs_kernels, rel_rms, run_op,
                      run_op_per_env, to_fp64)
from mdn.ops.momentum_delta_rule import chunk_scan_pqk as sp
from mdn.ops.momentum_delta_rule.chunk import chunk_momentum_delta_rule
from mdn.ops.naive import naive_recurrent_momentum_delta_rule

FP32_TOL = 1e-5


@pytest.fixture(autouse=True)
def _pqk(monkeypatch):
    monkeypatch.setenv("MDN_POISON_OUTPUTS", "1")
    monkeypatch.setenv("MDN_SCAN_FORM", "pqk")


@pytest.fixture
def pqk_calls(pqk_fwd_calls):
    """Launches of the pqk scans (so a test cannot pass on the six form by accident)."""
    return pqk_fwd_calls


# ------------------------------------------------------------------------------------------------------ accuracy
@needs_kernels
@pytest.mark.parametrize("T,C,K,V,B,H,p_alpha", [
    (45, 16, 32, 24, 1, 2, True),
    (45, 16, 32, 24, 1, 2, False),
    (63, 32, 32, 48, 2, 1, True),
    (70, 64, 32, 16, 1, 1, False),
    (40, 16, 100, 20, 1, 1, True),
    (20, 16, 128, 24, 1, 1, True),
])
def test_pqk_fp32_matches_oracle(pqk_calls, T, C, K, V, B, H, p_alpha):
    inputs = make_inputs(B, T, H, K, V, device=DEV, initial_state=True)
    errs = _compare(inputs, dtype=torch.float32, tol_o=FP32_TOL, tol_grad=FP32_TOL,
                    op_kwargs={"chunk_size": C, "use_p_times_alpha": p_alpha})
    assert pqk_calls, "the pqk scan did not run"
    print(errs)


@needs_kernels
@pytest.mark.parametrize("lengths,C", [([1, 17, 40, 3], 16), ([33, 1, 20], 32)])
def test_pqk_varlen_matches_oracle(lengths, C):
    inputs = make_inputs(1, sum(lengths), 2, 32, 24, device=DEV, initial_state=True, lengths=lengths)
    _compare(inputs, dtype=torch.float32, tol_o=FP32_TOL, tol_grad=FP32_TOL, op_kwargs={"chunk_size": C})


@needs_kernels
def test_pqk_no_initial_state():
    inputs = make_inputs(2, 37, 1, 32, 16, device=DEV)
    _compare(inputs, dtype=torch.float32, tol_o=FP32_TOL, tol_grad=FP32_TOL, op_kwargs={"chunk_size": 16})


@needs_kernels
@pytest.mark.parametrize("T,C,K,V,p_alpha", [(65, 16, 32, 48, True), (130, 64, 32, 48, False), (40, 16, 100, 24, True),
                                             (30, 16, 128, 40, True), (100, 64, 256, 24, True)])
def test_pqk_bf16_matches_oracle(pqk_calls, T, C, K, V, p_alpha):
    # K = 256 with T = 20 or 70 puts the six form itself over 1e-2 on a gate gradient (few tokens to average over)
    inputs = make_inputs(1, T, 2, K, V, dtype=torch.bfloat16, device=DEV, gates="layer", initial_state=True)
    errs = _compare(inputs, dtype=torch.bfloat16, tol_o=5e-3, tol_grad=1e-2, tol_state=1e-2,
                    op_kwargs={"chunk_size": C, "use_p_times_alpha": p_alpha})
    assert pqk_calls
    print(errs)


@needs_kernels
def test_pqk_bf16_varlen_with_length_one():
    lengths = [1, 40, 25]
    inputs = make_inputs(1, sum(lengths), 2, 32, 24, dtype=torch.bfloat16, device=DEV, gates="layer",
                         initial_state=True, lengths=lengths)
    _compare(inputs, dtype=torch.bfloat16, tol_o=5e-3, tol_grad=1e-2, tol_state=1e-2, op_kwargs={"chunk_size": 16})


@needs_kernels
def test_pqk_fp32_k256_four_subtiles():
    inputs = make_inputs(1, 20, 1, 256, 24, device=DEV, initial_state=True)
    _compare(inputs, dtype=torch.float32, tol_o=FP32_TOL, tol_grad=FP32_TOL, op_kwargs={"chunk_size": 16})


def test_pqk_torch_fallback_matches_oracle(monkeypatch, pqk_calls):
    """CPU without the interpreter: the torch mirror of the pqk kernels."""
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    for dtype, tol_o, tol_g in ((torch.float32, FP32_TOL, FP32_TOL), (torch.bfloat16, 5e-3, 1e-2)):
        inputs = make_inputs(1, 70, 2, 16, 24, dtype=dtype, device="cpu", initial_state=True, lengths=[1, 50, 19])
        _compare(inputs, dtype=dtype, tol_o=tol_o, tol_grad=tol_g, tol_state=tol_g, op_kwargs={"chunk_size": 16})
    assert pqk_calls


def test_pqk_bf16_gate_grads_at_k256_one_head(monkeypatch):
    """K = 256, V = 512, bf16, one head, T = 1000 (test_chunk's hardest bf16 case) through the torch mirror of the
    pqk kernels: every gradient within 1e-2 of fp64 (seen: o 4.0e-3, dbeta 8.1e-3; six form 4.0e-3, 9.1e-3)."""
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    monkeypatch.setenv("MDN_CHUNK_COMPILE", "0")
    torch.manual_seed(0)
    inputs = make_inputs(1, 1000, 1, 256, 512, dtype=torch.bfloat16, gates="layer", initial_state=True)
    _compare(inputs, dtype=torch.bfloat16, tol_o=5e-3, tol_grad=1e-2, tol_state=1e-2)


@needs_kernels
def test_pqk_agrees_with_six_bf16(monkeypatch):
    """Both forms compute the same function with different bf16 roundings: they agree far inside the oracle
    tolerances (and the pqk form really ran something different: not bit-identical)."""
    inputs = make_inputs(1, 70, 2, 64, 32, dtype=torch.bfloat16, device=DEV, gates="layer", initial_state=True)
    do = torch.randn(1, 70, 2, 32, dtype=torch.float64, device=DEV)
    dht = torch.randn(2, 1, 2, 64, 32, dtype=torch.float64, device=DEV)
    res = run_op_per_env(monkeypatch, "MDN_SCAN_FORM", ("six", "pqk"), chunk_momentum_delta_rule, inputs,
                         grads=ALL_GRAD_NAMES, do=do, dht=dht, chunk_size=32)
    (o6, h6, g6), (op, hp, gp) = res["six"], res["pqk"]
    assert_rel("o", o6, op, 5e-3)
    assert_rel("ht", h6, hp, 5e-3)
    for n in ALL_GRAD_NAMES:
        assert_rel("d" + n, g6[n], gp[n], 1e-2)
    assert not torch.equal(o6, op)


# ------------------------------------------------------------------------------------------------------ kernels
def _pqk_inputs(NC, H, C, K, V, dtype, offsets, device=DEV):
    mk = lambda *s, sc=1.0: (sc * torch.randn(*s, device=device)).to(dtype)  # noqa: E731
    a = (torch.eye(C, device=device) + 0.1 * torch.randn(NC, H, C, C, device=device).tril(-1)).to(dtype)
    r = torch.rand(NC, H, 6, C, device=device)
    r[:, :, 1] *= 2.0  # b- up to 2
    x = dict(u=mk(NC, H, C, V), p=mk(NC, H, C, K, sc=0.3), q=mk(NC, H, C, K), kw=mk(NC, H, C, K, sc=0.3), a=a,
             aqk=mk(NC, H, C, C).tril(), r=r, g=torch.rand(NC, H, 3, device=device))
    off = torch.tensor(offsets, dtype=torch.int32, device=device)
    N = len(offsets) - 1
    return x, off, torch.randn(2, N, H, K, V, device=device), mk(NC, H, C, V), torch.randn(2, N, H, K, V,
                                                                                           device=device)


def _args(x):
    return x["u"], x["p"], x["q"], x["kw"], x["a"], x["aqk"], x["r"], x["g"]


@needs_kernels
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("K", [20, 100])
def test_pqk_kernels_match_torch_mirror(dtype, K):
    """Triton pqk scans (fwd, state recompute, reverse scan) vs their torch mirror, uneven and empty sequences,
    masked K (20: one sub-tile; 100: two) and V edges."""
    NC, H, C, V = 5, 2, 16, 40
    x, off, h0, do, dht = _pqk_inputs(NC, H, C, K, V, dtype, [0, 2, 2, 5])  # sequence 1 is empty
    a = _args(x)
    tol = 1e-5 if dtype == torch.float32 else 1e-2
    for kw in ({}, {"block_v": 16, "num_warps": 2}):
        t = sp.scan_pqk_fwd_triton(*a, h0, off, **kw)
        m = sp.scan_pqk_fwd_torch(*a, h0, off)
        for name, out, ref in zip(("o", "vt", "ht"), t[:3], m[:3]):
            assert rel_rms(ref, out) <= tol, name
        assert torch.equal(t[2][:, 1], h0[:, 1])  # the empty sequence passes its state through
        hc = sp.scan_pqk_fwd_triton(*a, h0, off, vt=m[1], store_states=True, **kw)[3]
        hc_ref = sp.scan_pqk_fwd_torch(*a, h0, off, vt=m[1], store_states=True)[3]
        assert rel_rms(hc_ref, hc) <= tol
        t = sp.scan_pqk_bwd_triton(*a[1:], do, dht, hc_ref, off, **kw)
        m = sp.scan_pqk_bwd_torch(*a[1:], do, dht, hc_ref, off)
        for name, out, ref in zip(("dvo", "dhc", "dh0", "dg"), t, m):
            assert rel_rms(ref, out) <= (max(tol, 1e-6) if name == "dg" else tol), name
        assert torch.equal(t[0][1], do)  # dvo[1] is a chunk-major copy of dO
        assert torch.equal(t[2][:, 1], dht[:, 1])


@needs_kernels
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_pqk_kernels_token_major_o_and_do(dtype):
    """O is stored token-major ([NC, C, H, V] memory behind the [NC, H, C, V] shape, chunk_scan._o_like) by the
    kernel and the torch mirror alike, and the reverse scan reads a dO of any strides (the op's dO is a
    token-major view) to the same bits as a contiguous one, with dvo[1] its chunk-major copy."""
    NC, H, C, K, V = 4, 3, 16, 32, 48
    x, off, h0, do, dht = _pqk_inputs(NC, H, C, K, V, dtype, [0, 1, 4])
    a = _args(x)
    for fwd in (sp.scan_pqk_fwd_triton, sp.scan_pqk_fwd_torch):
        o = fwd(*a, h0, off)[0]
        assert o.shape == (NC, H, C, V) and o.transpose(1, 2).is_contiguous(), fwd.__name__
    hc = sp.scan_pqk_fwd_torch(*a, h0, off, vt=x["u"], store_states=True)[3]
    do_tm = do.transpose(1, 2).contiguous().transpose(1, 2)  # same values, token-major memory
    assert not do_tm.is_contiguous()
    for bwd in (sp.scan_pqk_bwd_triton, sp.scan_pqk_bwd_torch):
        ref = bwd(*a[1:], do, dht, hc, off)
        got = bwd(*a[1:], do_tm, dht, hc, off)
        for name, r_, g_ in zip(("dvo", "dhc", "dh0", "dg"), ref, got):
            assert torch.equal(r_, g_), f"{bwd.__name__}: {name}"
        assert torch.equal(got[0][1], do)


@needs_kernels
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_pqk_reverse_scan_stacked_layout(dtype):
    """MDN_BWD_GEMM=stacked: the reverse scan writes dVt twice, contiguous and as rows :C of [dVt; dO] [NC, H, 2C,
    V], to the same bits as the planes layout; the GEMM tail gives the same gradients from either."""
    from mdn.ops.momentum_delta_rule import chunk_scan as cs
    NC, H, C, K, V = 4, 2, 16, 32, 40
    x, off, h0, do, dht = _pqk_inputs(NC, H, C, K, V, dtype, [0, 3, 4])
    a = _args(x)
    hc = sp.scan_pqk_fwd_torch(*a, h0, off, vt=x["u"], store_states=True)[3]
    do_tm = do.transpose(1, 2).contiguous().transpose(1, 2)
    planes = sp.scan_pqk_bwd_triton(*a[1:], do_tm, dht, hc, off, stacked=False)
    stacked = sp.scan_pqk_bwd_triton(*a[1:], do_tm, dht, hc, off, stacked=True)
    dvt, dvs = stacked[0]
    assert dvt.is_contiguous() and dvs.shape == (NC, H, 2 * C, V)
    assert torch.equal(dvt, planes[0][0]) and torch.equal(dvs[..., :C, :], planes[0][0])
    assert torch.equal(dvs[..., C:, :], planes[0][1])
    for name, p_, s_ in zip(("dhc", "dh0", "dg"), planes[1:], stacked[1:]):
        assert torch.equal(p_, s_), name
    vt = x["u"]
    gp = cs.scan_bwd_gemms(vt, do, planes[0], hc, planes[1], planes[2], h0, sum_parts=False)
    gs = cs.scan_bwd_gemms(vt, do, stacked[0], hc, stacked[1], stacked[2], h0, sum_parts=False)
    for name, p_, s_ in zip(("xv", "xo"), gp[0], gs[0]):
        torch.testing.assert_close(p_, s_, rtol=0, atol=0, msg=name)
    for name, p_, s_ in zip(("r", "du", "daqk", "dh0"), gp[1:], gs[1:]):
        torch.testing.assert_close(p_, s_, rtol=0, atol=0, msg=name)


@needs_kernels
def test_op_stacked_bwd_gemm_equals_planes(monkeypatch):
    """The op with MDN_BWD_GEMM=stacked gives the planes layout's outputs and gradients (both with MDN_SCAN_V=u0,
    which stacked implies); a bad value is a ValueError."""
    monkeypatch.setenv("MDN_SCAN_V", "u0")
    inputs = make_inputs(2, 50, 2, 32, 24, device=DEV, initial_state=True)
    do = torch.randn(2, 50, 2, 24, dtype=torch.float64, device=DEV)
    dht = torch.randn(2, 2, 2, 32, 24, dtype=torch.float64, device=DEV)
    out = run_op_per_env(monkeypatch, "MDN_BWD_GEMM", ("planes", "stacked"), chunk_momentum_delta_rule, inputs,
                         grads=ALL_GRAD_NAMES, do=do, dht=dht, chunk_size=16)
    assert_same_results(out["planes"], out["stacked"], 1e-6)
    monkeypatch.setenv("MDN_BWD_GEMM", "one")
    with pytest.raises(ValueError, match="MDN_BWD_GEMM='one': expected one of 'planes', 'stacked'"):
        chunk_momentum_delta_rule(**inputs, chunk_size=16)


def test_op_output_is_a_view_of_the_scan_output():
    """With T a multiple of the chunk, the op's [B, T, H, V] output needs no copy: it is a contiguous view."""
    inputs = make_inputs(2, 64, 2, 16, 24)
    o, _ = chunk_momentum_delta_rule(**inputs, chunk_size=16)
    assert o.is_contiguous() and o._base is not None


def _virtual_six(x):
    """The six-form operands the pqk kernels rebuild: (u, y, z, qa, qb, aqk, ks, km, g) in fp32."""
    r = x["r"].float()
    col = lambda i: r[:, :, i, :, None]  # noqa: E731
    A, P, Q, Kw = x["a"].float(), x["p"].float(), x["q"].float(), x["kw"].float()
    return (x["u"].float(), A @ (col(0) * P), A @ (col(1) * P), col(2) * Q, col(3) * Q, x["aqk"].float(),
            col(4) * Kw, col(5) * Kw, x["g"])


@needs_kernels
def test_pqk_scan_equals_six_scan_fp32():
    """fp32: the pqk scan gives the six-form scan's outputs on the virtual operands, and its custom-op backward
    (GEMMs + chain rule) gives the gradients autograd finds through the six-form ops and the virtual operands."""
    from mdn.ops.momentum_delta_rule import chunk_scan as cs
    NC, H, C, K, V = 4, 2, 16, 40, 24
    x, off, h0, do, dht = _pqk_inputs(NC, H, C, K, V, torch.float32, [0, 3, 4])
    leaves = {n: t.clone().requires_grad_() for n, t in x.items()}
    h0p, h0s = h0.clone().requires_grad_(), h0.clone().requires_grad_()
    o, ht = sp.chunk_scan_pqk(*_args(leaves), h0p, off)
    ((o * do).sum() + (ht * dht).sum()).backward()
    ref = {n: t.clone().requires_grad_() for n, t in x.items()}
    o6, ht6 = cs.chunk_scan(*_virtual_six(ref), h0s, off)
    ((o6 * do).sum() + (ht6 * dht).sum()).backward()
    assert_rel("o", o6, o, 1e-5)
    assert_rel("ht", ht6, ht, 1e-5)
    for n in x:
        g, gr = leaves[n].grad, ref[n].grad
        if n == "a":  # A is unit lower triangular: only its strictly lower part is a variable
            gr = gr.tril(-1)
        assert_rel("d" + n, gr, g, 1e-5)
    assert_rel("dh0", h0s.grad, h0p.grad, 1e-5)


@needs_kernels
def test_pqk_tma_equals_ptr(monkeypatch):
    """MDN_SCAN_LOAD=tma (descriptor loads of P, Q, K_w; emulated by the interpreter) gives the pointer path's
    numbers; on the CPU without the interpreter and for fp32 it silently runs the pointer path."""
    NC, H, C, K, V = 4, 1, 16, 64, 32
    x, off, h0, do, dht = _pqk_inputs(NC, H, C, K, V, torch.bfloat16, [0, 1, 4])
    a = _args(x)
    calls = []
    real = sp._use_tma
    monkeypatch.setattr(sp, "_use_tma", lambda ops: calls.append(real(ops)) or calls[-1])
    out = {}
    for load in ("ptr", "tma"):
        monkeypatch.setenv("MDN_SCAN_LOAD", load)
        o, vt, ht, _ = sp.scan_pqk_fwd_triton(*a, h0, off)
        hc = sp.scan_pqk_fwd_triton(*a, h0, off, vt=vt, store_states=True)[3]
        out[load] = (o, vt, ht, hc) + tuple(sp.scan_pqk_bwd_triton(*a[1:], do, dht, hc, off))
    assert calls == [False] * 3 + [True] * 3, calls  # the descriptor path really ran
    for name, p, t in zip(("o", "vt", "ht", "hc", "dvo", "dhc", "dh0", "dg"), out["ptr"], out["tma"]):
        if HAS_CUDA:
            assert rel_rms(p, t) <= 1e-5, name
        else:
            assert torch.equal(p, t), name


# ------------------------------------------------------------------------------------------------------ plumbing
@needs_kernels
@pytest.mark.parametrize("backend_env", ["intra", "fullgraph"])
def test_pqk_under_torch_compile(monkeypatch, backend_env):
    """The compiled intra wrapper and chain rule (MDN_CHUNK_COMPILE=1, aot_eager) with form="pqk", and the whole op
    inside a caller's torch.compile(fullgraph=True): same numbers as eager."""
    from mdn.ops.momentum_delta_rule import chunk as ch
    torch._dynamo.reset()
    inputs = make_inputs(1, 37, 2, 16, 16, device=DEV, initial_state=True)
    do = torch.randn(1, 37, 2, 16, dtype=torch.float64, device=DEV)
    dht = torch.randn(2, 1, 2, 16, 16, dtype=torch.float64, device=DEV)
    monkeypatch.setenv("MDN_CHUNK_COMPILE", "0")
    eo, eht, eg = run_op(chunk_momentum_delta_rule, inputs, grads=ALL_GRAD_NAMES, do=do, dht=dht, chunk_size=16)
    if backend_env == "intra":
        monkeypatch.setenv("MDN_CHUNK_COMPILE", "1")
        monkeypatch.setenv("MDN_CHUNK_COMPILE_BACKEND", "aot_eager")
        monkeypatch.setattr(ch, "_compiled_intra", {})
        monkeypatch.setattr(ch, "_compile_failed", False)
        op = chunk_momentum_delta_rule
    else:
        op = torch.compile(chunk_momentum_delta_rule, fullgraph=True, backend="aot_eager")
    with _no_warning():
        co, cht, cg = run_op(op, inputs, grads=ALL_GRAD_NAMES, do=do, dht=dht, chunk_size=16)
    if backend_env == "intra":
        assert ch._compiled_intra and not ch._compile_failed
    assert rel_rms(eo, co) <= 1e-5 and rel_rms(eht, cht) <= 1e-5
    for n in ALL_GRAD_NAMES:
        assert rel_rms(eg[n], cg[n]) <= 1e-5, n


class _no_warning:
    """Fails on a RuntimeWarning (the compile fallback warns and switches to eager)."""

    def __enter__(self):
        import warnings
        self._cm = warnings.catch_warnings()
        self._cm.__enter__()
        warnings.simplefilter("error", RuntimeWarning)

    def __exit__(self, *exc):
        return self._cm.__exit__(*exc)


def test_fake_tensor_shapes():
    from torch._subclasses.fake_tensor import FakeTensorMode
    with FakeTensorMode():
        NC, H, C, K, V = 3, 2, 16, 8, 12
        ck = lambda: torch.empty(NC, H, C, K, dtype=torch.bfloat16)  # noqa: E731
        cc = lambda: torch.empty(NC, H, C, C, dtype=torch.bfloat16)  # noqa: E731
        u, r, g = torch.empty(NC, H, C, V, dtype=torch.bfloat16), torch.empty(NC, H, 6, C), torch.empty(NC, H, 3)
        off = torch.empty(3, dtype=torch.int32)
        o, vt, ht = sp.scan_pqk_fwd(u, ck(), ck(), ck(), cc(), cc(), r, g, None, off)
        assert o.shape == vt.shape == (NC, H, C, V) and ht.shape == (2, 2, H, K, V) and ht.dtype == torch.float32
        grads = sp.scan_pqk_bwd(ck(), ck(), ck(), cc(), cc(), r, g, None, off, vt, o, None)
        assert [t.shape for t in grads[:8]] == [u.shape] + [(NC, H, C, K)] * 3 + [(NC, H, C, C)] * 2 + [r.shape,
                                                                                                     g.shape]
        assert grads[8].shape == (2, 2, H, K, V)
        # the MDN_SAVE_STATES pair: the forward also returns the chunk-start states, the backward takes them
        o2, vt2, ht2, hc = sp.scan_pqk_fwd_saving(u, ck(), ck(), ck(), cc(), cc(), r, g, None, off)
        assert o2.shape == vt2.shape == (NC, H, C, V) and ht2.shape == (2, 2, H, K, V) and ht2.dtype == torch.float32
        assert hc.shape == (NC, H, 2, K, V) and hc.dtype == torch.bfloat16
        saved = sp.scan_pqk_bwd_saved(ck(), ck(), ck(), cc(), cc(), r, g, None, off, vt2, o2, None, hc)
        assert [t.shape for t in saved] == [t.shape for t in grads]


@pytest.mark.parametrize("value", ["PQK", "three", "6"])
def test_scan_form_env_rejects_unknown_value(monkeypatch, value):
    monkeypatch.setenv("MDN_SCAN_FORM", value)
    inputs = make_inputs(1, 20, 1, 16, 16, dtype=torch.bfloat16)
    for _ in range(2):  # on every call, not only the first
        with pytest.raises(ValueError, match=f"MDN_SCAN_FORM='{value}'.*'six'.*'pqk'"):
            chunk_momentum_delta_rule(**inputs, chunk_size=16)


def test_scan_form_default_is_pqk(monkeypatch):
    from mdn.ops.momentum_delta_rule.chunk import scan_form
    monkeypatch.delenv("MDN_SCAN_FORM", raising=False)
    assert scan_form() == "pqk"
    monkeypatch.setenv("MDN_SCAN_FORM", "")
    assert scan_form() == "pqk"


# ------------------------------------------------------------------------------------------------------ GPU only
@pytest.mark.gpu
@pytest.mark.parametrize("K,V", [(64, 64), (100, 72), (128, 256), (256, 512)])
@pytest.mark.parametrize("T", [1000, 4096])
def test_gpu_pqk_bf16_shapes(K, V, T):
    H = 2 if K < 256 else 1
    inputs = make_inputs(1, T, H, K, V, dtype=torch.bfloat16, device="cuda", gates="layer", initial_state=True)
    print(_compare(inputs, dtype=torch.bfloat16, tol_o=5e-3, tol_grad=1e-2, tol_state=1e-2))


@pytest.mark.gpu
@pytest.mark.parametrize("K,V,C", [(64, 128, 64), (256, 512, 64), (256, 512, 128), (100, 48, 32)])
def test_gpu_pqk_fp32_shapes(K, V, C):
    inputs = make_inputs(2, 300, 2, K, V, device="cuda", initial_state=True)
    _compare(inputs, dtype=torch.float32, tol_o=FP32_TOL, tol_grad=FP32_TOL, op_kwargs={"chunk_size": C})


@pytest.mark.gpu
@pytest.mark.parametrize("K", [64, 128, 253, 256])
@pytest.mark.parametrize("cfg", [None, (16, 4), (32, 4), (64, 4), (32, 8), (64, 8)])
@pytest.mark.parametrize("load", ["ptr", "tma"])
def test_gpu_pqk_kernels_tile_configs(monkeypatch, K, cfg, load):
    """The pqk kernels at the shipped tile configs (None) and the usual sweep tiles, pointer and descriptor loads,
    vs the torch mirror (bf16; masked V edge; uneven sequences). How a Hopper miscompile (fla issue 640) shows."""
    monkeypatch.setenv("MDN_SCAN_LOAD", load)
    NC, H, C, V = 6, 2, 64, 2 * 64 + 8
    x, off, h0, do, dht = _pqk_inputs(NC, H, C, K, V, torch.bfloat16, [0, 4, 6], device="cuda")
    a = _args(x)
    kw = {} if cfg is None else {"block_v": cfg[0], "num_warps": cfg[1]}
    t = sp.scan_pqk_fwd_triton(*a, h0, off, **kw)
    m = sp.scan_pqk_fwd_torch(*a, h0, off)
    for name, out, ref in zip(("o", "vt", "ht"), t[:3], m[:3]):
        assert rel_rms(ref, out) <= 1e-2, name
    hc = sp.scan_pqk_fwd_triton(*a, h0, off, vt=m[1], store_states=True, **kw)[3]
    hc_ref = sp.scan_pqk_fwd_torch(*a, h0, off, vt=m[1], store_states=True)[3]
    assert rel_rms(hc_ref, hc) <= 1e-2
    t = sp.scan_pqk_bwd_triton(*a[1:], do, dht, hc_ref, off, **kw)
    m = sp.scan_pqk_bwd_torch(*a[1:], do, dht, hc_ref, off)
    for name, out, ref in zip(("dvo", "dhc", "dh0", "dg"), t, m):
        assert rel_rms(ref, out) <= 1e-2, name


def test_scan_stages_knob(monkeypatch):
    """MDN_SCAN_STAGES: unset -> SCAN_STAGES (1 where absent); "n" for every phase or "fwd,rec,bwd"; anything else
    is a ValueError naming the variable and the value, raised by the op before any kernel runs."""
    from mdn.ops.momentum_delta_rule import chunk_scan as cs
    monkeypatch.delenv("MDN_SCAN_STAGES", raising=False)
    for phase in cs.SCAN_PHASES:
        assert cs.scan_stages(256, torch.bfloat16, phase) == cs.SCAN_STAGES.get((256, False, phase), 1)
    monkeypatch.setenv("MDN_SCAN_STAGES", "3")
    assert [cs.scan_stages(128, torch.bfloat16, ph) for ph in cs.SCAN_PHASES] == [3, 3, 3]
    monkeypatch.setenv("MDN_SCAN_STAGES", "1,2,4")
    assert [cs.scan_stages(64, torch.float32, ph) for ph in cs.SCAN_PHASES] == [1, 2, 4]
    with pytest.raises(ValueError, match="phase='back'"):
        cs.scan_stages(64, torch.float32, "back")
    inputs = make_inputs(1, 20, 1, 16, 16)
    for bad in ("0", "1,2", "two", "1,2,5"):
        monkeypatch.setenv("MDN_SCAN_STAGES", bad)
        with pytest.raises(ValueError, match=f"MDN_SCAN_STAGES='{bad}': expected 'n' or 'fwd,rec,bwd'"):
            chunk_momentum_delta_rule(**inputs, chunk_size=16)


@pytest.mark.gpu
@pytest.mark.parametrize("K,stages", [(128, "2,2,2"), (128, "3,3,3"), (256, "1,2,1"), (256, "1,3,1")])
def test_gpu_scan_stages_match_one_stage_and_oracle(monkeypatch, K, stages):
    """Pipelined chunk loops (MDN_SCAN_STAGES) give the one-stage numbers and stay within the bf16 tolerances
    against fp64, forward and backward, at configs that fit Hopper's shared memory (a miscompiled pipelined
    backward, as in fla issue 640, would show here)."""
    monkeypatch.delenv("MDN_SCAN_CONFIG", raising=False)
    inputs = make_inputs(2, 1000, 2, K, 2 * K, dtype=torch.bfloat16, device="cuda", gates="layer",
                         initial_state=True)
    do = torch.randn(2, 1000, 2, 2 * K, dtype=torch.float64, device="cuda")
    dht = torch.randn(2, 2, 2, K, 2 * K, dtype=torch.float64, device="cuda")
    out = run_op_per_env(monkeypatch, "MDN_SCAN_STAGES", ("1", stages), chunk_momentum_delta_rule, inputs,
                         grads=ALL_GRAD_NAMES, do=do, dht=dht, chunk_size=64)
    assert_same_results(out["1"], out[stages], 1e-3)
    monkeypatch.setenv("MDN_SCAN_STAGES", stages)
    _compare(inputs, dtype=torch.bfloat16, tol_o=5e-3, tol_grad=1e-2, op_kwargs=dict(chunk_size=64))


class _StubKernel:
    """Stands in for a jitted kernel: records each launch's num_stages; fails like Triton when over `fits`."""

    class fn:
        __name__ = "stub_kernel_pqk"

    def __init__(self, fits):
        self.fits, self.launches = fits, []

    def __getitem__(self, grid):
        def launch(*args, num_warps, num_stages, **consts):
            self.launches.append(num_stages)
            if num_stages > self.fits:
                from triton.runtime.errors import OutOfResources
                raise OutOfResources(300000, 232448, "shared memory")
        return launch


def test_pipelined_launch_falls_back_to_one_stage_where_shared_memory_is_short():
    """A pipelined scan config that this GPU cannot hold runs with one stage (once tried, then directly); one that
    fits runs as asked; other errors propagate."""
    from mdn.ops.momentum_delta_rule import chunk_scan as cs
    cs._UNPIPELINED.clear()
    k = _StubKernel(fits=1)
    for _ in range(2):
        cs._launch_pipelined(k, (1,), (), dict(K=128, BV=32), 4, 3)
    assert k.launches == [3, 1, 1]
    cs._UNPIPELINED.clear()
    k2 = _StubKernel(fits=3)
    cs._launch_pipelined(k2, (1,), (), dict(K=128, BV=32), 4, 3)
    assert k2.launches == [3]

    class Broken(_StubKernel):
        def __getitem__(self, grid):
            def launch(*a, **kw):
                raise RuntimeError("compile error")
            return launch
    with pytest.raises(RuntimeError, match="compile error"):
        cs._launch_pipelined(Broken(1), (1,), (), dict(K=64), 4, 2)
    cs._UNPIPELINED.clear()


def test_compile_mode_knob(monkeypatch):
    """MDN_CHUNK_COMPILE_MODE: unset -> None (torch.compile's default), an inductor mode passes through, anything
    else is a ValueError from the op before any kernel runs."""
    from mdn.ops.momentum_delta_rule.knobs import compile_mode
    monkeypatch.delenv("MDN_CHUNK_COMPILE_MODE", raising=False)
    assert compile_mode() is None
    monkeypatch.setenv("MDN_CHUNK_COMPILE_MODE", "max-autotune-no-cudagraphs")
    assert compile_mode() == "max-autotune-no-cudagraphs"
    monkeypatch.setenv("MDN_CHUNK_COMPILE_MODE", "fast")
    with pytest.raises(ValueError, match="MDN_CHUNK_COMPILE_MODE='fast': expected one of"):
        chunk_momentum_delta_rule(**make_inputs(1, 20, 1, 16, 16), chunk_size=16)


@needs_kernels
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-6), (torch.bfloat16, 2e-3)])
def test_op_dg_in_recompute_equals_reverse(monkeypatch, dtype, tol):
    """MDN_BWD_DG=rec (the <dS', S> row sums in the state recompute, after the reverse scan) gives the default's
    outputs and gradients (bf16: the recompute multiplies the fp32 states where the reverse scan reads their bf16
    copies, so the gate gradients differ by that rounding); also against fp64; a bad value is a ValueError."""
    monkeypatch.setenv("MDN_FWD_O", "scan")  # rec needs the recompute (a forward that keeps the states has none)
    inputs = make_inputs(2, 50, 2, 32, 24, dtype=dtype, device=DEV, initial_state=True)
    do = torch.randn(2, 50, 2, 24, dtype=torch.float64, device=DEV)
    dht = torch.randn(2, 2, 2, 32, 24, dtype=torch.float64, device=DEV)
    out = run_op_per_env(monkeypatch, "MDN_BWD_DG", ("rev", "rec"), chunk_momentum_delta_rule, inputs,
                         grads=ALL_GRAD_NAMES, do=do, dht=dht, chunk_size=16)
    assert_same_results(out["rev"], out["rec"], tol)
    monkeypatch.setenv("MDN_BWD_DG", "rec")
    if dtype == torch.float32:
        _compare(inputs, dtype=dtype, tol_o=FP32_TOL, tol_grad=FP32_TOL, op_kwargs=dict(chunk_size=16))
    else:
        _compare(inputs, dtype=dtype, tol_o=5e-3, tol_grad=1e-2, op_kwargs=dict(chunk_size=16))
    monkeypatch.setenv("MDN_BWD_DG", "both")
    with pytest.raises(ValueError, match="MDN_BWD_DG='both': expected one of 'rev', 'rec'"):
        chunk_momentum_delta_rule(**inputs, chunk_size=16)


@pytest.mark.gpu
@pytest.mark.parametrize("K,V", [(256, 512), (128, 128), (64, 48)])
def test_gpu_dg_in_recompute_matches_reverse_and_oracle(monkeypatch, K, V):
    """MDN_BWD_DG=rec on the GPU at the shipped tiles (and their pipelined recompute): the default's numbers within
    bf16 rounding, and the bf16 tolerances against fp64, forward and backward (fla issue 640 shows as a wrong dk)."""
    monkeypatch.delenv("MDN_SCAN_CONFIG", raising=False)
    monkeypatch.delenv("MDN_SAVE_STATES", raising=False)
    monkeypatch.setenv("MDN_FWD_O", "scan")  # rec needs the recompute
    assert_gpu_knob_matches_and_oracle(monkeypatch, "MDN_BWD_DG", "rev", "rec", K, V, 2e-3)


@needs_kernels
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-6), (torch.bfloat16, 1e-6)])
@pytest.mark.parametrize("segments", ["2", "3", "9"])
def test_op_segmented_reverse_scan_equals_one_pass(monkeypatch, dtype, tol, segments):
    """MDN_BWD_SEGMENTS: the reverse scan and its GEMM Vt [dS'; dM']^T in time segments, each with a segment-sized
    dhc, give the one-pass outputs and gradients (same arithmetic), dense with an initial state and a final-state
    gradient, and varlen with uneven lengths (one of length 1, more segments than a sequence has chunks)."""
    monkeypatch.setenv("MDN_BWD_DG", "rev")  # the one pass with the same arithmetic (row sums in the reverse scan)
    do = torch.randn(2, 100, 2, 24, dtype=torch.float64, device=DEV)
    dht = torch.randn(2, 2, 2, 32, 24, dtype=torch.float64, device=DEV)
    dense = make_inputs(2, 100, 2, 32, 24, dtype=dtype, device=DEV, initial_state=True)
    out = run_op_per_env(monkeypatch, "MDN_BWD_SEGMENTS", ("1", segments), chunk_momentum_delta_rule, dense,
                         grads=ALL_GRAD_NAMES, do=do, dht=dht, chunk_size=16)
    assert_same_results(out["1"], out[segments], tol)
    cu = torch.tensor([0, 1, 40, 71], dtype=torch.long, device=DEV)
    varlen = make_inputs(1, 71, 2, 32, 24, dtype=dtype, device=DEV)
    out = run_op_per_env(monkeypatch, "MDN_BWD_SEGMENTS", ("1", segments), chunk_momentum_delta_rule, varlen,
                         grads=[n for n in ALL_GRAD_NAMES if n != "initial_state"],
                         do=torch.randn(1, 71, 2, 24, dtype=torch.float64, device=DEV),
                         dht=torch.randn(2, 3, 2, 32, 24, dtype=torch.float64, device=DEV), chunk_size=16,
                         cu_seqlens=cu)
    assert_same_results(out["1"], out[segments], tol)


@needs_kernels
@pytest.mark.parametrize("segments", ["2", "5"])
def test_op_segmented_backward_with_saved_states(monkeypatch, segments):
    """MDN_BWD_SEGMENTS with MDN_SAVE_STATES=1: the forward's full hc, segment-sized dhc only; the one-pass
    numbers."""
    monkeypatch.setenv("MDN_SAVE_STATES", "1")
    monkeypatch.setenv("MDN_BWD_DG", "rev")
    inputs = make_inputs(2, 90, 2, 32, 24, dtype=torch.bfloat16, device=DEV, initial_state=True)
    do = torch.randn(2, 90, 2, 24, dtype=torch.float64, device=DEV)
    dht = torch.randn(2, 2, 2, 32, 24, dtype=torch.float64, device=DEV)
    out = run_op_per_env(monkeypatch, "MDN_BWD_SEGMENTS", ("1", segments), chunk_momentum_delta_rule, inputs,
                         grads=ALL_GRAD_NAMES, do=do, dht=dht, chunk_size=16)
    assert_same_results(out["1"], out[segments], 1e-6)


def test_bwd_segments_knob(monkeypatch):
    """A bad MDN_BWD_SEGMENTS, or segments with MDN_BWD_DG=rec, is a ValueError from the op before any kernel."""
    inputs = make_inputs(1, 20, 1, 16, 16)
    for bad in ("0", "-2", "two", "1.5"):
        monkeypatch.setenv("MDN_BWD_SEGMENTS", bad)
        with pytest.raises(ValueError, match=f"MDN_BWD_SEGMENTS='{bad}': expected a positive integer"):
            chunk_momentum_delta_rule(**inputs, chunk_size=16)
    monkeypatch.setenv("MDN_BWD_SEGMENTS", "4")
    monkeypatch.setenv("MDN_BWD_DG", "rec")
    with pytest.raises(ValueError, match="needs MDN_BWD_DG=rev"):
        chunk_momentum_delta_rule(**inputs, chunk_size=16)


@pytest.mark.gpu
@pytest.mark.parametrize("K,V,segments", [(256, 512, "4"), (128, 128, "3")])
def test_gpu_segmented_reverse_scan_matches_one_pass_and_oracle(monkeypatch, K, V, segments):
    """MDN_BWD_SEGMENTS on the GPU at the shipped tiles: the one-pass numbers with the same arithmetic (MDN_BWD_DG=rev)
    and the bf16 tolerances against fp64, forward and backward (fla issue 640 shows as a wrong dk)."""
    monkeypatch.delenv("MDN_SCAN_CONFIG", raising=False)
    monkeypatch.setenv("MDN_BWD_DG", "rev")
    assert_gpu_knob_matches_and_oracle(monkeypatch, "MDN_BWD_SEGMENTS", "1", segments, K, V, 1e-5)


@needs_kernels
def test_op_segmented_reverse_scan_with_stacked_gemm(monkeypatch):
    """MDN_BWD_SEGMENTS with MDN_BWD_GEMM=stacked (the segments share the full dVt / [dVt; dO] buffers)."""
    monkeypatch.setenv("MDN_BWD_GEMM", "stacked")
    monkeypatch.setenv("MDN_BWD_DG", "rev")
    inputs = make_inputs(2, 70, 2, 32, 24, dtype=torch.bfloat16, device=DEV, initial_state=True)
    do = torch.randn(2, 70, 2, 24, dtype=torch.float64, device=DEV)
    out = run_op_per_env(monkeypatch, "MDN_BWD_SEGMENTS", ("1", "2"), chunk_momentum_delta_rule, inputs,
                         grads=ALL_GRAD_NAMES, do=do, chunk_size=16, output_final_state=True)
    assert_same_results(out["1"], out["2"], 1e-6)
