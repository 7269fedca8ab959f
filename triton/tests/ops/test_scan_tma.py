"""MDN_SCAN_LOAD=tma: the scan kernels load their [C, K] operands through tensor descriptors (opt-in variant).

The variant must give the pointer path's numbers: in the interpreter (which emulates descriptor loads) exactly,
on the GPU up to fp32 summation order. Where descriptors cannot be used (fp32, rows not a multiple of 16 bytes,
no Hopper GPU) it runs the pointer path. The GPU test is how a Hopper miscompile (fla issue 640) would show up.
"""
from __future__ import annotations

import os
import sys

import pytest
import torch

from conftest import (DEV, HAS_CUDA, INTERPRET, assert_rel, make_inputs, needs_kernels, record_results, rel_rms, run_op,
                      to_fp64)
from mdn.ops.momentum_delta_rule import chunk_scan as cs
from mdn.ops.momentum_delta_rule.chunk import chunk_momentum_delta_rule
from mdn.ops.naive import naive_recurrent_momentum_delta_rule

GRADS = ("q", "k", "v", "log_alpha", "beta", "log_mu", "eta", "initial_state")


@pytest.fixture(autouse=True)
def _poison(monkeypatch):
    """Poisoned outputs, and the six scan form whose descriptor loads these tests spy on (the pqk form's TMA path
    has its own test in test_scan_pqk.py)."""
    monkeypatch.setenv("MDN_POISON_OUTPUTS", "1")
    monkeypatch.setenv("MDN_SCAN_FORM", "six")


@pytest.fixture
def tma_calls(monkeypatch):
    """Records what cs._use_tma decided at each scan launch (True = descriptor loads)."""
    return record_results(monkeypatch, cs, "_use_tma")


def _scan_inputs(NC, H, C, K, V, dtype, offsets, device=DEV):
    mk = lambda *s, sc=1.0: (sc * torch.randn(*s, device=device)).to(dtype)  # noqa: E731
    x = dict(u=mk(NC, H, C, V), y=mk(NC, H, C, K, sc=0.1), z=mk(NC, H, C, K, sc=0.1), qa=mk(NC, H, C, K),
             qb=mk(NC, H, C, K), aqk=mk(NC, H, C, C).tril(), ks=mk(NC, H, C, K, sc=0.1), km=mk(NC, H, C, K, sc=0.1),
             g=torch.rand(NC, H, 3, device=device))
    off = torch.tensor(offsets, dtype=torch.int32, device=device)
    N = len(offsets) - 1
    return x, off, torch.randn(2, N, H, K, V, device=device), mk(NC, H, C, V), torch.randn(2, N, H, K, V,
                                                                                           device=device)


def _run_scans(x, off, h0, do, dht):
    """Forward scan, state recompute and reverse scan: (o, vt, ht, hc, dvo, dhc, dh0, dg)."""
    a = x["u"], x["y"], x["z"], x["qa"], x["qb"], x["aqk"], x["ks"], x["km"], x["g"]
    o, vt, ht, _ = cs.scan_fwd_triton(*a, h0, off)
    hc = cs.scan_fwd_triton(*a, h0, off, vt=vt, store_states=True)[3]
    return (o, vt, ht, hc) + tuple(cs.scan_bwd_triton(*a[1:], do, dht, hc, off))


NAMES = ("o", "vt", "ht", "hc", "dvo", "dhc", "dh0", "dg")


# ------------------------------------------------------------------------------------------------------ selection
def test_scan_load_env(monkeypatch):
    monkeypatch.delenv("MDN_SCAN_LOAD", raising=False)
    assert cs.scan_load() == "ptr"
    for v in ("ptr", "tma"):
        monkeypatch.setenv("MDN_SCAN_LOAD", v)
        assert cs.scan_load() == v


@pytest.mark.parametrize("interpret", ["0", "1"])
def test_scan_load_env_rejects_unknown_value(monkeypatch, interpret):
    """A bad MDN_SCAN_LOAD is a ValueError naming the variable, the value and the choices, on every path."""
    monkeypatch.setenv("TRITON_INTERPRET", interpret)
    monkeypatch.setenv("MDN_SCAN_LOAD", "bogus")
    with pytest.raises(ValueError, match=r"MDN_SCAN_LOAD='bogus'.*'ptr', 'tma'"):
        cs.scan_load()
    inputs = make_inputs(1, 20, 1, 16, 16, dtype=torch.bfloat16, device="cpu")
    with pytest.raises(ValueError, match="MDN_SCAN_LOAD='bogus'"):
        chunk_momentum_delta_rule(**inputs, chunk_size=16)


def test_tma_ok_conditions(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    bf = torch.zeros(2, 1, 16, 32, dtype=torch.bfloat16)
    assert cs._tma_ok((bf, bf.clone()))
    assert cs._tma_ok((torch.zeros(2, 1, 16, 32, dtype=torch.float16),))
    assert not cs._tma_ok((bf.float(),))                                      # fp32: pointer path
    assert not cs._tma_ok((torch.zeros(2, 1, 16, 20, dtype=torch.bfloat16),))  # 40-byte rows
    assert not cs._tma_ok((bf, bf.transpose(2, 3).contiguous().transpose(2, 3)))  # not contiguous
    misaligned = torch.zeros(2 * 16 * 32 + 1, dtype=torch.bfloat16)[1:].view(2, 1, 16, 32)
    assert not cs._tma_ok((bf, misaligned))                                   # base not 16-byte aligned
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert cs._tma_ok((bf,)) is False  # CPU tensors without the interpreter: no descriptors


# ------------------------------------------------------------------------------------------------------ interpreter
@needs_kernels
@pytest.mark.parametrize("NC,H,C,K,V,offsets", [
    (5, 2, 16, 48, 40, [0, 2, 2, 5]),   # K < BK = 64 (descriptor zero-fills columns 48..63), an empty sequence
    (3, 1, 16, 256, 64, [0, 1, 3]),     # four K sub-tiles
    (2, 1, 64, 128, 32, [0, 2]),
])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_scan_kernels_tma_equal_ptr(monkeypatch, tma_calls, NC, H, C, K, V, offsets, dtype):
    """Every scan kernel (fwd, state recompute, reverse) gives the pointer path's outputs with MDN_SCAN_LOAD=tma:
    bit for bit in the interpreter, up to fp32 summation order on the GPU; both vs the torch scan."""
    x, off, h0, do, dht = _scan_inputs(NC, H, C, K, V, dtype, offsets)
    monkeypatch.setenv("MDN_SCAN_LOAD", "ptr")
    ref = _run_scans(x, off, h0, do, dht)
    assert tma_calls == [False] * 3
    monkeypatch.setenv("MDN_SCAN_LOAD", "tma")
    out = _run_scans(x, off, h0, do, dht)
    assert tma_calls[3:] == [True] * 3
    for name, r, t in zip(NAMES, ref, out):
        assert torch.isfinite(t).all(), name
        if INTERPRET and not HAS_CUDA:
            assert torch.equal(r, t), name
        else:
            assert rel_rms(r, t) <= 1e-3, name
    a = x["u"], x["y"], x["z"], x["qa"], x["qb"], x["aqk"], x["ks"], x["km"], x["g"]
    b = cs.scan_fwd_torch(*a, h0, off)
    for name, t, w in zip(NAMES, out[:3], b[:3]):
        assert rel_rms(w, t) <= 1e-2, name


@needs_kernels
def test_scan_tma_falls_back_where_descriptors_cannot_load(monkeypatch, tma_calls):
    """K = 20 in bf16 (40-byte rows) and fp32 inputs: MDN_SCAN_LOAD=tma runs the pointer path, same outputs."""
    for K, dtype in ((20, torch.bfloat16), (32, torch.float32)):
        x, off, h0, do, dht = _scan_inputs(3, 1, 16, K, 24, dtype, [0, 3])
        monkeypatch.setenv("MDN_SCAN_LOAD", "ptr")
        ref = _run_scans(x, off, h0, do, dht)
        monkeypatch.setenv("MDN_SCAN_LOAD", "tma")
        out = _run_scans(x, off, h0, do, dht)
        for name, r, t in zip(NAMES, ref, out):
            assert torch.equal(r, t), (K, dtype, name)
    assert not any(tma_calls)


def _op_vs_ptr_and_oracle(monkeypatch, inputs, chunk_size, tol_o=5e-3, tol_grad=1e-2, exact=True):
    B, T, H, V = inputs["v"].shape
    K = inputs["q"].shape[-1]
    N = B if inputs.get("cu_seqlens") is None else inputs["cu_seqlens"].numel() - 1
    do = torch.randn(B, T, H, V, dtype=torch.float64, device=inputs["q"].device)
    dht = torch.randn(2, N, H, K, V, dtype=torch.float64, device=inputs["q"].device)
    res = {}
    for load in ("ptr", "tma"):
        monkeypatch.setenv("MDN_SCAN_LOAD", load)
        res[load] = run_op(chunk_momentum_delta_rule, inputs, grads=GRADS, do=do, dht=dht, chunk_size=chunk_size)
    (o_p, ht_p, g_p), (o_t, ht_t, g_t) = res["ptr"], res["tma"]
    pairs = [("o", o_p, o_t), ("ht", ht_p, ht_t)] + [("d" + n, g_p[n], g_t[n]) for n in GRADS]
    for name, p, t in pairs:
        if exact:
            assert torch.equal(p, t), name
        else:
            assert rel_rms(p, t) <= 1e-3, name
    ro, rht, rg = run_op(naive_recurrent_momentum_delta_rule, to_fp64(inputs), grads=GRADS, do=do, dht=dht)
    assert_rel("o", ro, o_t, tol_o)
    assert_rel("S_T", rht[0], ht_t[0], tol_grad)
    assert_rel("M_T", rht[1], ht_t[1], tol_grad)
    for n in GRADS:
        assert_rel("d" + n, rg[n], g_t[n], tol_grad)


@pytest.mark.skipif(not INTERPRET or HAS_CUDA, reason="interpreter test (TRITON_INTERPRET=1, no GPU)")
@pytest.mark.parametrize("case", ["K256_V512", "varlen"])
def test_op_tma_matches_ptr_and_oracle_interpreter(monkeypatch, tma_calls, case):
    """The whole op (forward and backward) with MDN_SCAN_LOAD=tma: the pointer path's outputs and grads bit for
    bit, and the fp64 oracle within the bf16 tolerances; K = 256 V = 512 (small T), and varlen with an initial
    state. BV = 128 keeps the interpreter's program count down (the descriptor path does not depend on BV)."""
    monkeypatch.setenv("MDN_SCAN_CONFIG", "128,4")
    if case == "K256_V512":
        inputs = make_inputs(1, 20, 1, 256, 512, dtype=torch.bfloat16, device="cpu", gates="layer",
                             initial_state=True)
    else:
        inputs = make_inputs(1, 50, 2, 64, 32, dtype=torch.bfloat16, device="cpu", gates="layer",
                             initial_state=True, lengths=[1, 30, 19])
    monkeypatch.setenv("MDN_FWD_O", "scan")  # the three scans (the default keeps the states: no recompute)
    _op_vs_ptr_and_oracle(monkeypatch, inputs, chunk_size=16)
    assert tma_calls.count(True) == 3 and tma_calls.count(False) == 3  # fwd, recompute, reverse: each load


# ------------------------------------------------------------------------------------------------------ GPU
def _hopper() -> bool:
    return HAS_CUDA and torch.cuda.get_device_capability()[0] >= 9


@pytest.mark.gpu
@pytest.mark.skipif(not _hopper(), reason="tensor descriptors need a Hopper (sm_90) or newer GPU")
def test_gpu_op_tma_matches_ptr_and_oracle(monkeypatch, tma_calls):
    """K = 256 V = 512 T = 1000 bf16 at the shipped scan tiles, forward and backward: MDN_SCAN_LOAD=tma vs the
    pointer path (rel. RMS <= 1e-3 everywhere) and vs the fp64 oracle. A Hopper miscompile of a descriptor-load
    backward kernel (fla issue 640) would show up here."""
    monkeypatch.delenv("MDN_SCAN_CONFIG", raising=False)
    inputs = make_inputs(2, 1000, 2, 256, 512, dtype=torch.bfloat16, device="cuda", gates="layer",
                         initial_state=True)
    _op_vs_ptr_and_oracle(monkeypatch, inputs, chunk_size=64, exact=False)
    assert tma_calls.count(True) == 3


@pytest.mark.gpu
@pytest.mark.skipif(not _hopper(), reason="tensor descriptors need a Hopper (sm_90) or newer GPU")
@pytest.mark.parametrize("K", [256, 248, 128, 64])
def test_gpu_scan_kernels_tma_equal_ptr(monkeypatch, tma_calls, K):
    """Scan kernels at the shipped tiles, masked V edge and (K = 248) a zero-filled K edge: tma vs ptr."""
    monkeypatch.delenv("MDN_SCAN_CONFIG", raising=False)
    V = 2 * 64 + 8
    x, off, h0, do, dht = _scan_inputs(6, 2, 64, K, V, torch.bfloat16, [0, 4, 6], device="cuda")
    monkeypatch.setenv("MDN_SCAN_LOAD", "ptr")
    ref = _run_scans(x, off, h0, do, dht)
    monkeypatch.setenv("MDN_SCAN_LOAD", "tma")
    out = _run_scans(x, off, h0, do, dht)
    assert tma_calls == [False] * 3 + [True] * 3
    for name, r, t in zip(NAMES, ref, out):
        assert torch.isfinite(t).all(), name
        assert rel_rms(r, t) <= 1e-3, name


# ------------------------------------------------------------------------------------------------------ compile (CPU)
@pytest.mark.slow
@pytest.mark.parametrize("run", ["fwd", "rec", "bwd"])
@pytest.mark.parametrize("key", sorted(k for k in cs.SCAN_CONFIGS if k[0] >= 128 and not k[1]))
def test_scan_tma_compiles_for_sm90(key, run, monkeypatch):
    """The descriptor variant of every shipped bf16 K >= 128 config compiles for sm_90 (on the CPU, ptxas
    included) within Hopper's shared memory, and its PTX loads the [C, K] operands with bulk tensor copies."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # tests/ops (importlib import mode)
    from test_scan_resources import HOPPER_SHARED_LIMIT, _have_ptxas, compile_scan, scan_runs
    if not _have_ptxas():
        pytest.skip("needs Triton's NVIDIA backend (ptxas)")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    import triton
    if triton.knobs.runtime.interpret:
        pytest.skip("compiling needs the interpreter off (run without TRITON_INTERPRET=1)")
    BK, _, phase = key
    runs = {name: (kernel, flags) for name, kernel, flags in scan_runs(phase)}
    if run not in runs:
        pytest.skip(f"phase {phase!r} does not launch {run!r}")
    BV, nw = cs.SCAN_CONFIGS[key]
    kernel, flags = runs[run]
    r = compile_scan(kernel, "bf16", BK, 4 * BV, 64, BV, nw, load="tma", **flags)
    assert r["shared"] <= HOPPER_SHARED_LIMIT, f"{run} {key}: {r}"
    # one bulk copy per operand and K sub-tile: fwd Y, Z, Qb, Qa, Ks, Km; rec Ks, Km; bwd Ks, Km, Qa, Y, Qb, Z
    n_ops = {"fwd": 6, "rec": 2, "bwd": 6}[run]
    assert r["tma_loads"] == n_ops * (BK // 64), f"{run} {key}: {r}"
    r_ptr = compile_scan(kernel, "bf16", BK, 4 * BV, 64, BV, nw, load="ptr", ptxas=False, **flags)
    assert r_ptr["tma_loads"] == 0
