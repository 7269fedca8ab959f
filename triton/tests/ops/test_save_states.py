"""MDN_SAVE_STATES=1: the pqk scan's forward stores the chunk-start states and its backward reads them instead of
recomputing them (chunk_scan_pqk.scan_pqk_fwd_saving / scan_pqk_bwd_saved). Same numbers as the recompute, the
fp64 recurrence's accuracy, no recompute launch, and the plumbing (fake tensors, torch.compile, a bad value)."""
from __future__ import annotations

import pytest
import torch

from conftest import (ALL_GRAD_NAMES, DEV, HAS_CUDA, assert_compiled_op_matches_eager, assert_knob_matches_oracle_small,
                      compare_with_oracle, make_inputs, needs_kernels, rel_rms, run_op)
from mdn.ops.momentum_delta_rule import chunk_scan_pqk as sp
from mdn.ops.momentum_delta_rule.chunk import chunk_momentum_delta_rule


@pytest.fixture(autouse=True)
def _pqk(monkeypatch):
    monkeypatch.setenv("MDN_POISON_OUTPUTS", "1")
    monkeypatch.setenv("MDN_SCAN_FORM", "pqk")
    # O in the scan, so that "0" is the recompute (MDN_FWD_O=kernel, the default, keeps the states itself;
    # test_fwd_o_kernel.py)
    monkeypatch.setenv("MDN_FWD_O", "scan")


def _run(monkeypatch, save, inputs, dtype, C):
    monkeypatch.setenv("MDN_SAVE_STATES", save)
    x = {k: (v.to(dtype) if k in ("q", "k", "v") else v) for k, v in inputs.items()}
    torch.manual_seed(1)
    do = torch.randn(*x["v"].shape, dtype=torch.float64, device=DEV)
    dht = torch.randn(*x["initial_state"].shape, dtype=torch.float64, device=DEV)
    return run_op(chunk_momentum_delta_rule, x, grads=ALL_GRAD_NAMES, do=do, dht=dht, chunk_size=C)


@needs_kernels
@pytest.mark.parametrize("dtype,T,C,K,V,H", [
    (torch.float32, 45, 16, 32, 24, 2),
    (torch.float32, 70, 32, 100, 20, 1),
    (torch.bfloat16, 81, 16, 64, 48, 2),
])
def test_saved_states_give_the_recompute_numbers(monkeypatch, pqk_fwd_calls, dtype, T, C, K, V, H):
    inputs = make_inputs(2, T, H, K, V, device=DEV, initial_state=True)
    ro, rht, rg = _run(monkeypatch, "0", inputs, dtype, C)
    assert any("vt" in kw for kw in pqk_fwd_calls), "the default backward should recompute the states"
    pqk_fwd_calls.clear()
    so, sht, sg = _run(monkeypatch, "1", inputs, dtype, C)
    assert not any("vt" in kw for kw in pqk_fwd_calls), f"MDN_SAVE_STATES=1 still recomputed: {pqk_fwd_calls}"
    assert any(kw == ["store_states"] for kw in pqk_fwd_calls), f"the forward did not store the states: {pqk_fwd_calls}"
    # the stored states are those the recompute rebuilds (same kernels, same saved Vt): equal up to the tile
    # config of the two launches (fwd vs bwd BV)
    tol = 1e-6 if dtype == torch.float32 else 1e-3
    assert rel_rms(ro, so) <= tol and rel_rms(rht, sht) <= tol
    for n in ALL_GRAD_NAMES:
        assert rel_rms(rg[n], sg[n]) <= tol, (n, rel_rms(rg[n], sg[n]))


@needs_kernels
def test_saved_states_match_the_fp64_recurrence(monkeypatch):
    """fp32 dense and varlen (a length-1 sequence), bf16 with layer gates."""
    assert_knob_matches_oracle_small(monkeypatch, "MDN_SAVE_STATES", "1", DEV)


@needs_kernels
def test_saved_states_without_grad_store_nothing(monkeypatch, pqk_fwd_calls):
    monkeypatch.setenv("MDN_SAVE_STATES", "1")
    inputs = make_inputs(1, 40, 1, 16, 16, device=DEV)
    with torch.no_grad():
        chunk_momentum_delta_rule(**inputs, chunk_size=16)
    assert pqk_fwd_calls == [[]], f"a no-grad call should run the plain forward scan once: {pqk_fwd_calls}"


@needs_kernels
def test_saved_states_under_torch_compile(monkeypatch):
    """The saving forward and its backward are custom ops: a caller's torch.compile(fullgraph=True) keeps them."""
    monkeypatch.setenv("MDN_CHUNK_COMPILE", "0")
    monkeypatch.setenv("MDN_SAVE_STATES", "1")
    assert_compiled_op_matches_eager(1, 37, 2, 16, 16, chunk_size=16, device=DEV)


@pytest.mark.parametrize("value", ["yes", "2", "true"])
def test_save_states_env_rejects_unknown_value(monkeypatch, value):
    monkeypatch.setenv("MDN_SAVE_STATES", value)
    inputs = make_inputs(1, 20, 1, 16, 16, dtype=torch.bfloat16)
    with pytest.raises(ValueError, match=f"MDN_SAVE_STATES='{value}'.*'0'.*'1'"):
        chunk_momentum_delta_rule(**inputs, chunk_size=16)


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs CUDA")
@pytest.mark.parametrize("K,V", [(128, 128), (256, 512)])
def test_gpu_saved_states_at_shipped_tiles(monkeypatch, K, V):
    """On the GPU at the shipped tiles (the forward's BV stores the states the backward's BV then reads)."""
    monkeypatch.setenv("MDN_SAVE_STATES", "1")
    inputs = make_inputs(2, 1000, 2, K, V, dtype=torch.bfloat16, device="cuda", gates="layer", initial_state=True)
    compare_with_oracle(inputs, dtype=torch.bfloat16, tol_o=5e-3, tol_grad=1e-2, tol_state=1e-2)


def test_saved_states_torch_fallback(monkeypatch, pqk_fwd_calls):
    """CPU without the interpreter: the torch mirror stores the states in the forward too."""
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    monkeypatch.setenv("MDN_SAVE_STATES", "1")
    inputs = make_inputs(1, 70, 2, 16, 24, device="cpu", initial_state=True, lengths=[1, 50, 19])
    compare_with_oracle(inputs, dtype=torch.float32, tol_o=1e-5, tol_grad=1e-5, op_kwargs={"chunk_size": 16})
    assert pqk_fwd_calls == [["store_states"]], pqk_fwd_calls
