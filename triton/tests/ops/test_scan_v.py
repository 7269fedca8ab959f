"""MDN_SCAN_V=v (opt-in): the pqk forward scan takes the packed values V instead of U0 = A V and computes Vt = A (V - W)
in its loop, the reverse scan also stores X = A^T dVt as V's gradient, and the chain rule adds dVt V^T to A's
(chunk_scan_pqk.scan_v). The intra part then runs no A V GEMM and the backward no A^T dU0.

Checked: the scan kernels against their torch mirror with v_in (Vt, O, states; dx = A^T dVt and everything else
the reverse scan writes), the op against the fp64 recurrence (fp32 dense and varlen at 1e-5, bf16 at the bf16
tolerances) and against the default "u0" on every backward path (tail, rev, rec, saved states, segments), inside
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
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("B,T,H,K,V,C", [(2, 48, 2, 32, 24, 16), (1, 64, 1, 100, 40, 32)])
def test_scan_kernels_match_the_torch_mirror_with_v_in(dtype, B, T, H, K, V, C):
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


@needs_kernels
def test_op_with_scan_v_matches_the_fp64_recurrence(monkeypatch):
    """fp32 dense (initial state) and varlen (a length-1 sequence) at 1e-5, bf16 with layer gates at the bf16
    tolerances."""
    assert_knob_matches_oracle_small(monkeypatch, "MDN_SCAN_V", "v", DEV)


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
