"""Registers, spills and shared memory of the fused Triton intra kernels (chunk_intra_fwd.py, chunk_intra_bwd.py),
compiled for sm_90 on the CPU as in test_scan_resources.py (slow: set MDN_SLOW=1; needs the interpreter off).

What it guards: the kernels fit Hopper's shared memory wherever chunk_intra_fwd.fits lets the op use them, and with
bf16 wide products (16-bit inputs) they keep ptxas's full register file. Kernels whose products are fp32 FMA dots
(input_precision="ieee") at K >= 128 collapse to 32 registers with kilobytes of spills; that is how the first
versions compiled, and the measured figures of README §6 come from these compiles.
"""
from __future__ import annotations

import pytest

from conftest import HOPPER_SHARED_LIMIT, _have_ptxas, compile_sm90
from mdn.ops.momentum_delta_rule import chunk_intra_bwd as cib
from mdn.ops.momentum_delta_rule import chunk_intra_fwd as cif

GATES = ("log_alpha", "beta", "log_mu", "eta")
FP32_ARGS = GATES + ("g", "r", "dr", "dg", "dq", "dk", "dv", "dla", "dbeta", "dlm", "deta")
SPILL_LIMIT = 8192  # bytes of spill stores (measured 1.1-4.5 KB at the shipped settings)


def _compile(kernel, K, V, C, wide, prec="ieee", num_warps=8):
    sig = {n: ("*fp32" if n in FP32_ARGS else "*bf16") for n in kernel.arg_names}
    sig.update(scale="fp32", H="i32")
    bk = min(64, max(16, K)) if kernel is cib.momentum_delta_rule_bwd_kernel_intra_pqk else max(16, K)
    consts = dict(K=K, V=V, C=C, BK=1 << (bk - 1).bit_length(), BV=64, USE_L2NORM=True, P_TIMES_ALPHA=True,
                  DOT_PREC=prec, WIDE_MODE=wide, EPS=1e-6)
    if "CAST_MODE" in kernel.arg_names:
        consts["CAST_MODE"] = 0
    for n in consts:
        sig.pop(n, None)
    return compile_sm90(kernel, sig, consts, num_warps)


KERNELS = {"fwd_six": cif.momentum_delta_rule_fwd_kernel_intra, "fwd_pqk": cif.momentum_delta_rule_fwd_kernel_intra_pqk,
           "bwd_pqk": cib.momentum_delta_rule_bwd_kernel_intra_pqk}


@pytest.mark.slow
@pytest.mark.skipif(not _have_ptxas(), reason="needs Triton's NVIDIA backend (ptxas)")
@pytest.mark.parametrize("name", sorted(KERNELS))
@pytest.mark.parametrize("K,V", [(128, 128), (256, 512)])
def test_bf16_kernels_fit_and_keep_their_registers(name, K, V, monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    import triton
    if triton.knobs.runtime.interpret:
        pytest.skip("compiling needs the interpreter off (run without TRITON_INTERPRET=1)")
    assert cif.fits(64, K, bf16_gemm=True)
    res = _compile(KERNELS[name], K, V, 64, wide=1)
    assert res["shared"] <= HOPPER_SHARED_LIMIT, res
    assert res["regs"] > 128 and res["spill_st"] <= SPILL_LIMIT, res


@pytest.mark.slow
@pytest.mark.skipif(not _have_ptxas(), reason="needs Triton's NVIDIA backend (ptxas)")
def test_fp32_fma_products_collapse_to_32_registers(monkeypatch):
    """The documented ptxas behaviour (README §6, §7.5): if this starts failing, fp32 products got cheaper."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    import triton
    if triton.knobs.runtime.interpret:
        pytest.skip("compiling needs the interpreter off (run without TRITON_INTERPRET=1)")
    res = _compile(cif.momentum_delta_rule_fwd_kernel_intra_pqk, 256, 512, 64, wide=0)
    assert res["regs"] == 32 and res["spill_st"] > SPILL_LIMIT, res
