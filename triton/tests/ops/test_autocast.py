"""The public ops pick their own dtypes: an enclosing autocast (as in bf16 training) must not change the math.
On CUDA, before the ops disabled autocast, the chunk op failed inside training with
'"triangular_solve_cuda" not implemented for BFloat16' (seen on an H100)."""
import pytest
import torch

from conftest import rel_rms
from mdn.ops import chunk_momentum_delta_rule, fused_recurrent_momentum_delta_rule
from mdn.ops.naive import naive_recurrent_momentum_delta_rule


@pytest.mark.parametrize("op", [chunk_momentum_delta_rule, fused_recurrent_momentum_delta_rule])
def test_op_under_bf16_autocast(op, device):
    B, T, H, K, V = 1, 70, 2, 16, 24
    torch.manual_seed(0)
    q, k = torch.randn(B, T, H, K, device=device), torch.randn(B, T, H, K, device=device)
    v = torch.randn(B, T, H, V, device=device)
    la = -torch.rand(B, T, H, device=device)
    b = torch.rand(B, T, H, device=device) * 0.3
    lm = -torch.rand(B, T, H, device=device) * 0.5
    e = torch.rand(B, T, H, device=device)
    ref, _ = naive_recurrent_momentum_delta_rule(*(x.double() for x in (q, k, v, la, b, lm, e)))
    qb, kb, vb = (x.bfloat16().requires_grad_(True) for x in (q, k, v))
    with torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16):
        o, _ = op(qb, kb, vb, la, b, lm, e)
        o.float().sum().backward()
    assert o.dtype == torch.bfloat16
    assert rel_rms(ref, o) < 1e-2
    assert all(torch.isfinite(x.grad).all() for x in (qb, kb, vb))
