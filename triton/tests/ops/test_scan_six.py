"""The "six" scan form (MDN_SCAN_FORM=six; chunk_scan.py, chunk_intra.py), kept as an option since "pqk" became the
default: the whole op against the fp64 recurrence (fp32 <= 1e-5, bf16 o <= 5e-3 and grads <= 1e-2), varlen with a
length-1 sequence, and a spy that the six-form scan (not pqk) ran. The kernels themselves are tested in test_chunk.py.
"""
from __future__ import annotations

import pytest
import torch

from conftest import DEV, compare_with_oracle as _compare, make_inputs, needs_kernels
from mdn.ops.momentum_delta_rule import chunk_scan as cs

FP32_TOL = 1e-5


@pytest.fixture(autouse=True)
def six_calls(monkeypatch):
    """MDN_SCAN_FORM=six, poisoned outputs, and a count of six-form scan launches."""
    monkeypatch.setenv("MDN_POISON_OUTPUTS", "1")
    monkeypatch.setenv("MDN_SCAN_FORM", "six")
    calls = []
    real = cs.scan_fwd_impl

    def spy(*a, **kw):
        calls.append(1)
        return real(*a, **kw)
    monkeypatch.setattr(cs, "scan_fwd_impl", spy)
    return calls


@needs_kernels
@pytest.mark.parametrize("T,C,K,V,B,H", [(45, 16, 32, 24, 1, 2), (70, 64, 100, 16, 2, 1), (20, 16, 256, 24, 1, 1)])
def test_six_fp32_matches_oracle(six_calls, T, C, K, V, B, H):
    inputs = make_inputs(B, T, H, K, V, device=DEV, initial_state=True)
    _compare(inputs, dtype=torch.float32, tol_o=FP32_TOL, tol_grad=FP32_TOL, op_kwargs={"chunk_size": C})
    assert six_calls, "the six-form scan did not run"


@needs_kernels
@pytest.mark.parametrize("T,C,K,V", [(65, 16, 32, 48), (100, 64, 256, 24)])
def test_six_bf16_matches_oracle(six_calls, T, C, K, V):
    inputs = make_inputs(1, T, 2, K, V, dtype=torch.bfloat16, device=DEV, gates="layer", initial_state=True)
    _compare(inputs, dtype=torch.bfloat16, tol_o=5e-3, tol_grad=1e-2, tol_state=1e-2, op_kwargs={"chunk_size": C})
    assert six_calls


@needs_kernels
def test_six_varlen_with_length_one(six_calls):
    lengths = [1, 17, 40, 3]
    inputs = make_inputs(1, sum(lengths), 2, 32, 24, device=DEV, initial_state=True, lengths=lengths)
    _compare(inputs, dtype=torch.float32, tol_o=FP32_TOL, tol_grad=FP32_TOL, op_kwargs={"chunk_size": 16})
    assert six_calls
