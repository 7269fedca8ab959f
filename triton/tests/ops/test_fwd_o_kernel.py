"""MDN_FWD_O=kernel: the pqk forward scan without O (WRITE_O=False) stores the chunk-start states, and the parallel
kernel of chunk_output_pqk.py computes O from them; with a gradient the backward reads those states (no recompute).

Checked: the output kernel against its torch mirror and against the fused scan's O (same states, same rounding),
the whole op against the default path and the fp64 recurrence (o, final states, every gradient; dense with an
initial state, varlen with a length-1 sequence, K not a power of two, V not a multiple of the V-block), no state
recompute in training, torch.compile, the knob's checks, and on the GPU the 1.3B shape (fla issue 640). Outputs are
NaN-poisoned (MDN_POISON_OUTPUTS=1), so a row the kernel does not write shows."""
from __future__ import annotations

import pytest
import torch

from conftest import (ALL_GRAD_NAMES, DEV, assert_compiled_op_matches_eager, assert_gpu_knob_matches_and_oracle,
                      assert_knob_matches_oracle_small, assert_same_results, make_inputs, needs_kernels,
                      pqk_scan_operands, rel_rms, run_op_per_env)
from mdn.ops.momentum_delta_rule import chunk_output_pqk as co
from mdn.ops.momentum_delta_rule import chunk_scan_pqk as sp
from mdn.ops.momentum_delta_rule.chunk import chunk_momentum_delta_rule


@pytest.fixture(autouse=True)
def _pqk(monkeypatch):
    monkeypatch.setenv("MDN_POISON_OUTPUTS", "1")
    monkeypatch.setenv("MDN_SCAN_FORM", "pqk")


@needs_kernels
@pytest.mark.parametrize("dtype,B,T,H,K,V,C", [
    (torch.float32, 2, 48, 2, 32, 24, 16),
    (torch.float32, 1, 64, 1, 100, 40, 32),
    (torch.bfloat16, 1, 64, 2, 64, 80, 16),
])
def test_output_kernel_gives_the_fused_scans_o(monkeypatch, dtype, B, T, H, K, V, C):
    intra, off = pqk_scan_operands(B, T, H, K, V, C, dtype, DEV)
    h0 = torch.randn(2, B, H, K, V, device=DEV)
    monkeypatch.setenv("MDN_FWD_O", "scan")
    o_ref, vt_ref, ht_ref, hc_ref = sp.scan_pqk_fwd_triton(*intra, h0, off, store_states=True)
    monkeypatch.setenv("MDN_FWD_O", "kernel")
    o, vt, ht, hc = sp.scan_pqk_fwd_triton(*intra, h0, off, store_states=True)
    # Vt, the states and the final state come from the same loop; O from the same products in another kernel
    assert torch.equal(vt, vt_ref) and torch.equal(hc, hc_ref) and torch.equal(ht, ht_ref)
    assert not o.isnan().any(), "rows of O were not written"
    assert rel_rms(o_ref.float(), o.float()) <= (1e-6 if dtype == torch.float32 else 4e-3)
    mirror = co.output_pqk_torch(intra.q, hc, vt, intra.aqk, intra.r)
    assert rel_rms(mirror.float(), o.float()) <= (1e-6 if dtype == torch.float32 else 4e-3)
    # without store_states the states are a temporary: not returned
    assert sp.scan_pqk_fwd_triton(*intra, h0, off)[3] is None


@needs_kernels
@pytest.mark.parametrize("dtype,T,C,K,V,H,tol", [
    (torch.float32, 70, 32, 100, 20, 1, 1e-6),
    (torch.float32, 45, 16, 32, 72, 2, 1e-6),
    (torch.bfloat16, 81, 16, 64, 48, 2, 4e-3),
])
def test_op_with_the_output_kernel_equals_the_default(monkeypatch, pqk_fwd_calls, dtype, T, C, K, V, H, tol):
    inputs = make_inputs(2, T, H, K, V, dtype=dtype, device=DEV, initial_state=True)
    do = torch.randn(2, T, H, V, dtype=torch.float64, device=DEV)
    dht = torch.randn(2, 2, H, K, V, dtype=torch.float64, device=DEV)
    out = run_op_per_env(monkeypatch, "MDN_FWD_O", ("scan", "kernel"), chunk_momentum_delta_rule, inputs,
                         grads=ALL_GRAD_NAMES, do=do, dht=dht, chunk_size=C)
    assert_same_results(out["scan"], out["kernel"], tol)
    # the second run (MDN_FWD_O=kernel) stored the states in its forward and did not recompute them
    assert pqk_fwd_calls[-1] == ["store_states"], pqk_fwd_calls


@needs_kernels
def test_output_kernel_matches_the_fp64_recurrence(monkeypatch):
    """fp32 dense and varlen (a length-1 sequence), bf16 with layer gates."""
    assert_knob_matches_oracle_small(monkeypatch, "MDN_FWD_O", "kernel", DEV)


@needs_kernels
def test_output_kernel_with_segments(monkeypatch):
    """MDN_BWD_SEGMENTS takes the forward's states (only dhc is segmented), as with MDN_SAVE_STATES=1."""
    inputs = make_inputs(1, 90, 2, 32, 24, device=DEV, initial_state=True)
    do = torch.randn(1, 90, 2, 24, dtype=torch.float64, device=DEV)
    dht = torch.randn(2, 1, 2, 32, 24, dtype=torch.float64, device=DEV)
    base = run_op_per_env(monkeypatch, "MDN_FWD_O", ("scan",), chunk_momentum_delta_rule, inputs,
                          grads=ALL_GRAD_NAMES, do=do, dht=dht, chunk_size=16)["scan"]
    monkeypatch.setenv("MDN_BWD_SEGMENTS", "3")
    seg = run_op_per_env(monkeypatch, "MDN_FWD_O", ("kernel",), chunk_momentum_delta_rule, inputs,
                         grads=ALL_GRAD_NAMES, do=do, dht=dht, chunk_size=16)["kernel"]
    assert_same_results(base, seg, 1e-6)


@needs_kernels
def test_output_kernel_under_torch_compile(monkeypatch):
    monkeypatch.setenv("MDN_CHUNK_COMPILE", "0")
    monkeypatch.setenv("MDN_FWD_O", "kernel")
    assert_compiled_op_matches_eager(1, 37, 2, 16, 16, chunk_size=16, device=DEV)


@pytest.mark.parametrize("value", ["fused", "1", "Kernel"])
def test_fwd_o_env_rejects_unknown_value(monkeypatch, value):
    monkeypatch.setenv("MDN_FWD_O", value)
    inputs = make_inputs(1, 20, 1, 16, 16, dtype=torch.bfloat16)
    with pytest.raises(ValueError, match=f"MDN_FWD_O='{value}'.*'scan'.*'kernel'"):
        chunk_momentum_delta_rule(**inputs, chunk_size=16)


@pytest.mark.parametrize("value", ["64,4", "48,4,2", "64,3,2", "64,4,5", "a,b,c"])
def test_fwd_o_config_env_rejects_bad_value(monkeypatch, value):
    monkeypatch.setenv("MDN_FWD_O_CONFIG", value)
    with pytest.raises(ValueError, match="MDN_FWD_O_CONFIG=.*BV,num_warps,num_stages"):
        co.output_config(torch.bfloat16)


def test_the_scan_without_o_needs_stored_states():
    from mdn.ops.momentum_delta_rule.chunk_scan import launch_scan_fwd
    u = torch.zeros(1, 1, 16, 16)
    with pytest.raises(ValueError, match="write_o=False needs the pqk forward with store_states"):
        launch_scan_fwd(sp.momentum_delta_rule_fwd_kernel_scan_pqk, u, (u,) * 7, False, None,
                        torch.tensor([0, 1]), write_o=False)


@pytest.mark.gpu
@pytest.mark.parametrize("K,V", [(256, 512), (128, 128), (64, 48), (100, 200), (253, 136)])
def test_gpu_output_kernel_matches_default_and_oracle(monkeypatch, K, V):
    """On the GPU at the shipped tiles (the Vt-only scan at its pipeline stages, the output kernel's tiles). K = 253
    (rows not 16-byte aligned) ran wrong when pipelined (chunk_scan._kernel_stages)."""
    assert_gpu_knob_matches_and_oracle(monkeypatch, "MDN_FWD_O", "scan", "kernel", K, V, 4e-3)


@pytest.mark.slow
@pytest.mark.parametrize("K,V", [(256, 512), (128, 128)])
def test_output_path_resources_sm90(monkeypatch, K, V):
    """The Vt-only scan (WRITE_O=False, STORE_STATES) at its shipped stages and the output kernel at its shipped tiles,
    compiled for sm_90 on the CPU: within Hopper's shared memory, and (bf16) free of spills beyond 64 bytes."""
    from conftest import HOPPER_SHARED_LIMIT, _have_ptxas, compile_sm90
    from mdn.ops.momentum_delta_rule.chunk_scan import _sub_k, scan_config, scan_stages
    if not _have_ptxas():
        pytest.skip("needs Triton's NVIDIA backend (ptxas)")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    import triton
    if triton.knobs.runtime.interpret:
        pytest.skip("compiling needs the interpreter off (run without TRITON_INTERPRET=1)")
    bf = torch.bfloat16
    sig = {n: "*bf16" for n in ("u", "p", "q", "kw", "a", "aqk", "o", "vt", "hc", "dhc")}
    sig.update(r="*fp32", g="*fp32", h0="*fp32", ht="*fp32", dgp="*fp32", hb="*fp32", chunk_offsets="*i64",
               H="i32", seg_j0="i32", seg_j1="i32", seg_len="i32")
    # o's and u's strides (u: the values V read in place, MDN_SCAN_V=v with two dots, the default: V_IN = 2)
    sig.update({n: "i64" for n in sp.momentum_delta_rule_fwd_kernel_scan_pqk.arg_names if n.startswith("s_")})
    bv, nw = scan_config(K, V, bf, "fwd")
    res = compile_sm90(sp.momentum_delta_rule_fwd_kernel_scan_pqk, sig,
                       dict(K=K, V=V, C=64, BK=_sub_k(K), BV=bv, USE_H0=True, RECOMPUTE=False, STORE_STATES=True,
                            DOT_MODE=1, LOAD_TMA=False, WRITE_O=False, V_IN=2), nw,
                       num_stages=scan_stages(K, bf, "rec"))
    assert 0 < res["shared"] <= HOPPER_SHARED_LIMIT and res["spill_st"] <= 64 and res["spill_ld"] <= 64, res
    bv, nw, ns = co.output_config(bf)
    sig = dict(q="*bf16", hc="*bf16", vt="*bf16", aqk="*bf16", r="*fp32", o="*bf16", H="i32", s_oc="i64",
               s_oh="i64", s_ot="i64")
    res = compile_sm90(co.momentum_delta_rule_fwd_kernel_output_pqk, sig,
                       dict(K=K, V=V, C=64, BK=_sub_k(K), BV=bv, DOT_MODE=1), nw, num_stages=ns)
    assert 0 < res["shared"] <= HOPPER_SHARED_LIMIT and res["spill_st"] == 0 and res["spill_ld"] == 0, res


def test_rows_not_16_byte_aligned_run_unpipelined(monkeypatch):
    """The scans' pipeline stages drop to one where a [C, K] row is not a multiple of 16 bytes (the 2-stage Vt-only
    forward was wrong on an H200 at K = 253, bf16); aligned rows keep SCAN_STAGES / MDN_SCAN_STAGES."""
    from mdn.ops.momentum_delta_rule.chunk_scan import _kernel_stages
    kernel = sp.momentum_delta_rule_fwd_kernel_scan_pqk
    monkeypatch.setenv("MDN_SCAN_STAGES", "2")
    assert _kernel_stages(kernel, 253, torch.bfloat16, "rec") == 1
    assert _kernel_stages(kernel, 100, torch.bfloat16, "rec") == 1   # 200 bytes
    assert _kernel_stages(kernel, 250, torch.float32, "rec") == 1    # 1000 bytes
    assert _kernel_stages(kernel, 256, torch.bfloat16, "rec") == 2
    assert _kernel_stages(kernel, 100, torch.float32, "rec") == 2    # 400 bytes
