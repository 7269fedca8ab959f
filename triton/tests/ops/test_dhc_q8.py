"""MDN_DHC=q8: the reverse scan stores the end-state gradients dS', dM' as bf16 hi planes plus int8 lo planes (the
rest, in 254ths of hi's last place; chunk_scan._store_grad_state_q8) instead of hi + lo bf16 planes, 3 bytes per
element instead of 4; the fused tail rebuilds them in fp32 and splits them into hi + lo bf16 in registers.

Checked: the stored pairs against the split format's values (the hi planes bit for bit, the sum to ~16 bits, zero
gradients exact), everything else the reverse scan writes bit for bit, the tail's products against the split
format's, the whole op against the fp64 recurrence and against "split", the knob's checks, and on the GPU the
K = 256 one-head case where a single bf16 plane cost dbeta 1.5e-2 (README section 4). Outputs are NaN-poisoned
(MDN_POISON_OUTPUTS=1), so an element the kernels do not write shows."""
from __future__ import annotations

import pytest
import torch

from conftest import (ALL_GRAD_NAMES, DEV, assert_gpu_knob_matches_and_oracle, assert_knob_matches_oracle_small,
                      assert_same_results, compare_with_oracle, make_inputs, needs_kernels, pqk_scan_operands, rel_rms,
                      run_op_per_env)
from mdn.ops.momentum_delta_rule import chunk_scan_pqk as sp
from mdn.ops.momentum_delta_rule.chunk import chunk_momentum_delta_rule
from mdn.ops.momentum_delta_rule.chunk_state_gemms import state_gemms_triton


@pytest.fixture(autouse=True)
def _pqk_tail(monkeypatch):
    monkeypatch.setenv("MDN_POISON_OUTPUTS", "1")
    monkeypatch.setenv("MDN_SCAN_FORM", "pqk")
    monkeypatch.setenv("MDN_BWD_DG", "tail")


def _reverse_scans(B, T, H, K, V, C, with_dht):
    """The reverse scan on the same random operands (bf16), split and q8: (split outputs, q8 outputs, vt, hc)."""
    (u, p, q, kw, a, aqk, r, g), off = pqk_scan_operands(B, T, H, K, V, C, torch.bfloat16, DEV)
    h0 = torch.randn(2, B, H, K, V, device=DEV)
    _, vt, _, hc = sp.scan_pqk_fwd_triton(u, p, q, kw, a, aqk, r, g, h0, off, store_states=True)
    do = torch.randn(vt.shape, device=DEV).to(torch.bfloat16)
    dht = torch.randn(2, B, H, K, V, device=DEV) * 1e-3 if with_dht else None
    ops = (p, q, kw, a, aqk, r, g, do, dht, None, off)
    split = sp.scan_pqk_bwd_triton(*ops, stacked=False)
    q8 = sp.scan_pqk_bwd_triton(*ops, stacked=False, dhc_q8=True)
    return split, q8, vt, hc


def _q8_value(hi, lo):
    """The fp32 value of a q8 pair, in torch: hi + lo / 254 * (hi's last place)."""
    e = ((hi.float().view(torch.int32) >> 23) & 0xFF).clamp_min(8)
    return hi.float() + lo.float() / 254 * torch.exp2((e - 134).float())


@needs_kernels
@pytest.mark.parametrize("B,T,H,K,V,C,with_dht", [
    (2, 48, 2, 32, 24, 16, True),
    (1, 64, 1, 100, 40, 32, False),   # K not a power of two; no dht: the last chunk's dS', dM' are zero
    (1, 32, 2, 64, 80, 16, True),     # V not a multiple of the V-block
])
def test_q8_pairs_hold_the_split_values(B, T, H, K, V, C, with_dht):
    (dvo_s, dhc_s, dh0_s, _), (dvo_q, (hi, lo), dh0_q, _), _, _ = _reverse_scans(B, T, H, K, V, C, with_dht)
    assert hi.dtype == torch.bfloat16 and lo.dtype == torch.int8 and hi.shape == lo.shape == dhc_s.shape[:2] + (2, K, V)
    assert torch.equal(hi, dhc_s[:, :, :2]), "the hi planes are the split format's"
    want = dhc_s[:, :, :2].float() + dhc_s[:, :, 2:].float()             # hi + lo bf16: the fp32 value, ~16 bits
    got = _q8_value(hi, lo)
    assert (lo > -128).all(), "an element of the lo planes was not written (-128 is the poison value)"
    assert torch.isfinite(got).all()
    # 254ths of a bf16 last place: 2^-8 / 254 / 2 relative, within the split format's own rounding of lo
    assert ((got - want).abs() <= want.abs() * 2.0 ** -15 + 1e-30).all()
    assert ((got - want).abs() / want.abs().clamp_min(1e-30)).mean() < 2.0 ** -17
    if not with_dht:  # the last chunk has zero end-state gradients: stored as exact zeros
        assert (got[-1] == 0).all()
    # the rest of what the reverse scan writes does not depend on the format
    assert torch.equal(dvo_s, dvo_q) and torch.equal(dh0_s, dh0_q)


@needs_kernels
@pytest.mark.parametrize("B,T,H,K,V,C", [(2, 48, 2, 32, 24, 16), (1, 64, 1, 100, 40, 32)])
def test_tail_with_q8_pairs_gives_the_split_products(B, T, H, K, V, C):
    (dvo_s, dhc_s, _, _), (dvo_q, dhc_q, _, _), vt, hc = _reverse_scans(B, T, H, K, V, C, True)
    (xv_s, xo_s), rr_s, dg_s = state_gemms_triton(vt, dvo_s, hc, dhc_s)
    (xv_q, xo_q), rr_q, dg_q = state_gemms_triton(vt, dvo_q, hc, dhc_q)
    assert torch.equal(xv_s, xv_q) and torch.equal(xo_s, xo_q)   # no dS', dM' in them
    # the same products up to the lo part's 2^-16 relative differences (and the fp32 sums' order)
    assert rel_rms(rr_s, rr_q) <= 1e-4 and rel_rms(dg_s, dg_q) <= 1e-4


@needs_kernels
def test_op_with_q8_dhc_matches_the_fp64_recurrence(monkeypatch):
    """fp32 (where the knob does not apply) dense and varlen, and bf16 with layer gates at the bf16 tolerances."""
    assert_knob_matches_oracle_small(monkeypatch, "MDN_DHC", "q8", DEV)


@needs_kernels
def test_op_with_q8_dhc_is_as_accurate_as_split(monkeypatch):
    """bf16, K = 64, an initial state: every error against fp64 within 5 % (+ 1e-4) of the split format's, and the
    two formats' outputs and gradients within 1e-3 of each other."""
    inputs = make_inputs(2, 81, 2, 64, 48, dtype=torch.bfloat16, device=DEV, gates="layer", initial_state=True)
    errs = {}
    for fmt in ("split", "q8"):
        monkeypatch.setenv("MDN_DHC", fmt)
        torch.manual_seed(1)  # the same random upstream gradients for both
        errs[fmt] = compare_with_oracle(inputs, dtype=torch.bfloat16, tol_o=5e-3, tol_grad=1e-2, tol_state=1e-2,
                                        op_kwargs={"chunk_size": 16})
    for name, e in errs["q8"].items():
        assert e <= 1.05 * errs["split"][name] + 1e-4, (name, e, errs["split"][name])
    do = torch.randn(2, 81, 2, 48, dtype=torch.float64, device=DEV)
    dht = torch.randn(2, 2, 2, 64, 48, dtype=torch.float64, device=DEV)
    out = run_op_per_env(monkeypatch, "MDN_DHC", ("split", "q8"), chunk_momentum_delta_rule, inputs,
                         grads=ALL_GRAD_NAMES, do=do, dht=dht, chunk_size=16)
    assert_same_results(out["split"], out["q8"], 1e-3)


@pytest.mark.parametrize("value", ["f16", "Q8", "1"])
def test_dhc_env_rejects_unknown_value(monkeypatch, value):
    monkeypatch.setenv("MDN_DHC", value)
    inputs = make_inputs(1, 20, 1, 16, 16, dtype=torch.bfloat16, requires_grad=True)
    with pytest.raises(ValueError, match=f"MDN_DHC='{value}'.*'split'.*'q8'"):
        chunk_momentum_delta_rule(**inputs, chunk_size=16)[0].sum().backward()


@pytest.mark.gpu
@pytest.mark.parametrize("K,V", [(256, 512), (128, 128), (100, 72), (64, 64)])
def test_gpu_q8_dhc_matches_split_and_oracle(monkeypatch, K, V):
    """bf16 at the shipped tiles (fla issue 640 shows as a wrong dk)."""
    assert_gpu_knob_matches_and_oracle(monkeypatch, "MDN_DHC", "split", "q8", K, V, 1e-3)


@pytest.mark.gpu
def test_gpu_q8_dhc_gate_grads_at_k256_one_head(monkeypatch):
    """The case where one bf16 plane gave dbeta 1.5e-2 (test_chunk.test_bf16_gate_grads_at_k256_one_head)."""
    monkeypatch.setenv("MDN_DHC", "q8")
    torch.manual_seed(0)
    inputs = make_inputs(1, 1000, 1, 256, 512, dtype=torch.bfloat16, device="cuda", gates="layer",
                         initial_state=True)
    compare_with_oracle(inputs, dtype=torch.bfloat16, tol_o=5e-3, tol_grad=1e-2, tol_state=1e-2)
