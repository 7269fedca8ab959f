"""MDN_SCAN_V=v (the default since the fourteenth session): the pqk forward scan takes the packed values V instead of U0 = A V and computes Vt = A (V - W)
in its loop, the reverse scan also stores X = A^T dVt as V's gradient, and the chain rule adds dVt V^T to A's
(chunk_scan_pqk.scan_v). The intra part then runs no A V GEMM and the backward no A^T dU0.

Checked: the scan kernels against their torch mirror with v_in (Vt, O, states; dx = A^T dVt and everything else
the reverse scan writes), the op against the fp64 recurrence (fp32 dense and varlen at 1e-5, bf16 at the bf16
tolerances) and against "u0" (the earlier default, still an option and what MDN_BWD_GEMM=stacked implies) on every
backward path (tail, rev, rec, saved states, segments), inside
torch.compile(fullgraph=True), the knob's checks, and on the GPU the shipped tiles at K 256/128/100/64 (fla issue
640 shows as a wrong dk). Outputs are NaN-poisoned (MDN_POISON_OUTPUTS=1)."""
from __future__ import annotations

import pytest
import torch

from conftest import (DEV, assert_compiled_op_matches_eager, assert_gpu_knob_matches_and_oracle,
                      assert_knob_matches_oracle_small, assert_knob_values_agree, make_inputs, needs_kernels,
                      pqk_scan_operands, rel_rms)
from mdn.ops.momentum_delta_rule import chunk_scan_pqk as sp
from mdn.ops.momentum_delta_rule.chunk import chunk_momentum_delta_rule


@pytest.fixture(autouse=True)
def _pqk(monkeypatch):
    monkeypatch.setenv("MDN_POISON_OUTPUTS", "1")
    monkeypatch.setenv("MDN_SCAN_FORM", "pqk")


def _v_operands(B, T, H, K, V, C, dtype):
    """The pqk scan's operands with u = the packed V (what the intra part returns with v_in), and the offsets."""
    (u0, p, q, kw, a, aqk, r, g), off = pqk_scan_operands(B, T, H, K, V, C, dtype, DEV)
    v = torch.randn(u0.shape, device=DEV).to(u0.dtype)
    return (v, p, q, kw, a, aqk, r, g), off


@needs_kernels
@pytest.mark.parametrize("dots", ["2", "1"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("B,T,H,K,V,C", [(2, 48, 2, 32, 24, 16), (1, 64, 1, 100, 40, 32)])
def test_scan_kernels_match_the_torch_mirror_with_v_in(monkeypatch, dtype, B, T, H, K, V, C, dots):
    monkeypatch.setenv("MDN_SCAN_V_DOTS", dots)
    ops, off = _v_operands(B, T, H, K, V, C, dtype)
    h0 = torch.randn(2, B, H, K, V, device=DEV)
    tol = 1e-5 if dtype == torch.float32 else 2e-3
    o_k, vt_k, ht_k, hc_k = sp.scan_pqk_fwd_triton(*ops, h0, off, store_states=True, v_in=True)
    o_t, vt_t, ht_t, hc_t = sp.scan_pqk_fwd_torch(*ops, h0, off, store_states=True, v_in=True)
    for name, x, y in (("o", o_t, o_k), ("vt", vt_t, vt_k), ("ht", ht_t, ht_k), ("hc", hc_t, hc_k)):
        assert torch.isfinite(y).all(), name
        assert rel_rms(x, y) <= tol, (name, rel_rms(x, y))
    # v_in changes Vt's formula, not just its rounding: against the default formula on the same u, Vt differs
    _, vt_u0, _, _ = sp.scan_pqk_fwd_torch(*ops, h0, off, store_states=True)
    assert rel_rms(vt_t, vt_u0) > 1e-2
    # the reverse scan: dx = A^T dVt, and nothing else it writes changes
    p, q, kw, a, aqk, r, g = ops[1:]
    do = torch.randn(vt_k.shape, device=DEV).to(vt_k.dtype)
    dht = torch.randn(2, B, H, K, V, device=DEV) * 1e-2
    args = (p, q, kw, a, aqk, r, g, do, dht, hc_k, off)
    dx_k, dx_t = torch.full_like(vt_k, float("nan")), torch.full_like(vt_k, float("nan"))
    dvo_k, dhc_k, dh0_k, dg_k = sp.scan_pqk_bwd_triton(*args, stacked=False, dx=dx_k)
    dvo_t, dhc_t, dh0_t, dg_t = sp.scan_pqk_bwd_torch(*args, dx=dx_t)
    assert torch.isfinite(dx_k).all(), "an element of dx was not written"
    assert rel_rms(dx_t, dx_k) <= tol and rel_rms(dvo_t, dvo_k) <= tol and rel_rms(dh0_t, dh0_k) <= tol
    want = torch.einsum("nhij,nhiv->nhjv", a.float(), dvo_k[0].float())  # A^T dVt
    assert rel_rms(want, dx_k) <= (1e-5 if dtype == torch.float32 else 1e-2)
    plain = sp.scan_pqk_bwd_triton(*args, stacked=False)
    assert torch.equal(plain[0], dvo_k) and torch.equal(plain[2], dh0_k)
    # u and dx through their strides: token-major ([NC, C, H, V] memory, chunk.py::_v_chunks) gives the same bits
    u_tm = ops[0].transpose(1, 2).contiguous().transpose(1, 2)
    assert u_tm.stride(2) == H * V  # rows H * V apart
    o_s, vt_s, ht_s, hc_s = sp.scan_pqk_fwd_triton(u_tm, *ops[1:], h0, off, store_states=True, v_in=True)
    for name, x, y in (("o", o_k, o_s), ("vt", vt_k, vt_s), ("ht", ht_k, ht_s), ("hc", hc_k, hc_s)):
        assert torch.equal(x, y), name
    dx_s = torch.full_like(u_tm.transpose(1, 2).contiguous(), float("nan")).transpose(1, 2)
    sp.scan_pqk_bwd_triton(*args, stacked=False, dx=dx_s)
    assert torch.equal(dx_s, dx_k)
    o_t2, vt_t2, _, _ = sp.scan_pqk_fwd_torch(u_tm, *ops[1:], h0, off, store_states=True, v_in=True)
    assert torch.equal(o_t2, o_t) and torch.equal(vt_t2, vt_t)


@pytest.mark.parametrize("lengths", [None, [1, 37, 16, 30]])
@pytest.mark.parametrize("T", [64, 50])
def test_v_chunks_is_a_view_of_v_when_dense_and_aligned(T, lengths):
    """_v_chunks: the [NC, H, C, V] token-major operand; a view of v itself (no copy) for a dense batch with T a
    multiple of C, else the zero-padded chunk-aligned packing (the same values as the other operands' packing)."""
    from mdn.ops.momentum_delta_rule import chunk as ch
    C = 16
    if lengths is not None:
        T = sum(lengths)
        v = torch.randn(1, T, 3, 8)
        pos, _, NC = ch._varlen_positions(torch.tensor([0] + lengths).cumsum(0), T, C)
        want = ch._pack_varlen(v, pos, NC, C)
    else:
        v = torch.randn(2, T, 3, 8)
        pos, NC = None, 2 * -(-T // C)
        want = ch._pack_dense(v, C)
    x = ch._v_chunks(v, pos, NC, C, torch.float32)
    assert x.shape == want.shape and torch.equal(x, want)
    assert x.stride(1) == 8 and x.stride(2) == 3 * 8  # token-major: [NC, C, H, V] memory
    assert (x.data_ptr() == v.data_ptr()) == (lengths is None and T % C == 0)


@needs_kernels
def test_op_reads_a_strided_v_in_place(monkeypatch):
    """V sliced out of a wider tensor (as from a fused projection) gives the contiguous V's outputs and gradients,
    bit for bit, dense (T a multiple of C: read through its strides) and padded."""
    monkeypatch.setenv("MDN_SCAN_V", "v")
    for T in (48, 45):
        inputs = make_inputs(2, T, 2, 16, 24, device=DEV, initial_state=True)
        wide = torch.cat([inputs["v"], torch.randn_like(inputs["v"])], -1).requires_grad_(True)
        strided = dict(inputs, v=wide[..., :24])
        assert not strided["v"].is_contiguous()
        o_s, ht_s = chunk_momentum_delta_rule(**strided, chunk_size=16, output_final_state=True)
        do = torch.randn_like(o_s)
        (o_s * do).sum().backward()
        leaf = inputs["v"].clone().requires_grad_(True)
        o_c, ht_c = chunk_momentum_delta_rule(**dict(inputs, v=leaf), chunk_size=16, output_final_state=True)
        (o_c * do).sum().backward()
        assert torch.equal(o_s, o_c) and torch.equal(ht_s, ht_c), T
        assert torch.equal(wide.grad[..., :24], leaf.grad) and not wide.grad[..., 24:].any(), T


@needs_kernels
def test_op_with_scan_v_matches_the_fp64_recurrence(monkeypatch):
    """fp32 dense (initial state) and varlen (a length-1 sequence) at 1e-5, bf16 with layer gates at the bf16
    tolerances."""
    assert_knob_matches_oracle_small(monkeypatch, "MDN_SCAN_V", "v", DEV)


@needs_kernels
def test_op_with_one_dot_scan_v_matches_the_fp64_recurrence(monkeypatch):
    """MDN_SCAN_V_DOTS=1 (Vt = A (V - W)): same checks."""
    monkeypatch.setenv("MDN_SCAN_V", "v")
    assert_knob_matches_oracle_small(monkeypatch, "MDN_SCAN_V_DOTS", "1", DEV)


@needs_kernels
def test_one_and_two_dot_scan_v_differ_only_in_rounding(monkeypatch):
    """The two forms of Vt agree to fp32 rounding with fp32 operands, and differ (so each test runs its own form)."""
    monkeypatch.setenv("MDN_SCAN_V", "v")
    inputs = make_inputs(2, 40, 2, 16, 24, device=DEV, initial_state=True)
    assert_knob_values_agree(monkeypatch, "MDN_SCAN_V_DOTS", "1", "2", inputs, 1e-5, chunk_size=16)
    (u, p, q, kw, a, aqk, r, g), off = _v_operands(1, 32, 1, 16, 24, 16, torch.bfloat16)
    vts = []
    for dots in ("1", "2"):
        monkeypatch.setenv("MDN_SCAN_V_DOTS", dots)
        vts.append(sp.scan_pqk_fwd_triton(u, p, q, kw, a, aqk, r, g, None, off, store_states=True, v_in=True)[1])
    assert not torch.equal(vts[0], vts[1])


@pytest.mark.parametrize("value", ["0", "3", "two"])
def test_scan_v_dots_env_rejects_unknown_value(monkeypatch, value):
    monkeypatch.setenv("MDN_SCAN_V_DOTS", value)
    inputs = make_inputs(1, 20, 1, 16, 16, dtype=torch.bfloat16)
    with pytest.raises(ValueError, match=f"MDN_SCAN_V_DOTS='{value}'.*'1'.*'2'"):
        chunk_momentum_delta_rule(**inputs, chunk_size=16)


@needs_kernels
def test_op_with_scan_u0_matches_the_fp64_recurrence(monkeypatch):
    """The earlier default, kept as an option: same checks as for "v"."""
    assert_knob_matches_oracle_small(monkeypatch, "MDN_SCAN_V", "u0", DEV)


def test_scan_v_default_is_v_and_u0_with_the_stacked_gemm(monkeypatch):
    monkeypatch.delenv("MDN_SCAN_V", raising=False)
    monkeypatch.delenv("MDN_BWD_GEMM", raising=False)
    assert sp.scan_v() == "v"
    monkeypatch.setenv("MDN_SCAN_V", "")
    assert sp.scan_v() == "v"
    monkeypatch.setenv("MDN_BWD_GEMM", "stacked")
    assert sp.scan_v() == "u0"
    monkeypatch.setenv("MDN_SCAN_V", "u0")
    assert sp.scan_v() == "u0"


@needs_kernels
@pytest.mark.parametrize("env", [
    {},                                                        # the defaults: tail, q8, O from the kernel
    {"MDN_BWD_DG": "rev", "MDN_FWD_O": "scan"},                # the reverse scan's row sums, the state recompute
    {"MDN_BWD_DG": "rec", "MDN_FWD_O": "scan"},                # the row sums in the recompute
    {"MDN_BWD_DG": "rev", "MDN_SAVE_STATES": "1", "MDN_FWD_O": "scan"},
    {"MDN_BWD_SEGMENTS": "2", "MDN_BWD_DG": "tail"},
    {"MDN_BWD_SEGMENTS": "3", "MDN_BWD_DG": "rev", "MDN_FWD_O": "scan"},
], ids=["default", "rev", "rec", "saved", "seg2-tail", "seg3-rev"])
def test_op_with_scan_v_matches_u0_on_every_backward_path(monkeypatch, env):
    for var, val in env.items():
        monkeypatch.setenv(var, val)
    inputs = make_inputs(2, 81, 2, 32, 40, dtype=torch.bfloat16, device=DEV, gates="layer", initial_state=True)
    assert_knob_values_agree(monkeypatch, "MDN_SCAN_V", "u0", "v", inputs, 1e-2, chunk_size=16)
    lengths = [1, 37, 16, 30]
    inputs = make_inputs(1, sum(lengths), 2, 16, 24, device=DEV, initial_state=True, lengths=lengths)
    assert_knob_values_agree(monkeypatch, "MDN_SCAN_V", "u0", "v", inputs, 1e-5, chunk_size=16)


@needs_kernels
def test_compiled_op_with_scan_v_matches_eager(monkeypatch):
    monkeypatch.setenv("MDN_SCAN_V", "v")
    assert_compiled_op_matches_eager(1, 40, 2, 16, 24, chunk_size=16, device=DEV)


@pytest.mark.parametrize("value", ["V", "1", "u"])
def test_scan_v_env_rejects_unknown_value(monkeypatch, value):
    monkeypatch.setenv("MDN_SCAN_V", value)
    inputs = make_inputs(1, 20, 1, 16, 16, dtype=torch.bfloat16)
    with pytest.raises(ValueError, match=f"MDN_SCAN_V='{value}'.*'u0'.*'v'"):
        chunk_momentum_delta_rule(**inputs, chunk_size=16)


def test_scan_v_refuses_the_stacked_gemm(monkeypatch):
    monkeypatch.setenv("MDN_SCAN_V", "v")
    monkeypatch.setenv("MDN_BWD_GEMM", "stacked")
    inputs = make_inputs(1, 20, 1, 16, 16, dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="MDN_SCAN_V='v' does not combine with MDN_BWD_GEMM='stacked'"):
        chunk_momentum_delta_rule(**inputs, chunk_size=16)


@pytest.mark.gpu
@pytest.mark.parametrize("K,V", [(256, 512), (128, 128), (100, 72), (64, 64)])
def test_gpu_scan_v_matches_u0_and_oracle(monkeypatch, K, V):
    """bf16 at the shipped tiles (fla issue 640 shows as a wrong dk)."""
    assert_gpu_knob_matches_and_oracle(monkeypatch, "MDN_SCAN_V", "u0", "v", K, V, 1e-2)


@pytest.mark.gpu
@pytest.mark.parametrize("K,V", [(256, 512), (128, 128)])
def test_gpu_one_dot_scan_v_matches_two_and_oracle(monkeypatch, K, V):
    monkeypatch.setenv("MDN_SCAN_V", "v")
    assert_gpu_knob_matches_and_oracle(monkeypatch, "MDN_SCAN_V_DOTS", "2", "1", K, V, 1e-2)
