"""Argument checks shared by every momentum-delta-rule op; they run before any kernel launch.

Every failure is a ValueError whose message names the argument, the value it got and what was expected.
"""
from __future__ import annotations

import math
import numbers

import torch

KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
REFERENCE_DTYPES = KERNEL_DTYPES + (torch.float64,)
STATE_DTYPES = REFERENCE_DTYPES
CHUNK_SIZES = (16, 32, 64, 128)
INDEX_DTYPES = (torch.int32, torch.int64)


def _names(dtypes) -> str:
    return ", ".join(str(d).replace("torch.", "") for d in dtypes)


def _shape(x: torch.Tensor) -> str:
    return "[" + ", ".join(str(s) for s in x.shape) + "]"


def _tensor(name: str, x, rank: int, layout: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name}: expected a tensor of shape {layout}, got {type(x).__name__}")
    if x.dim() != rank:
        raise ValueError(f"{name}: expected rank {rank} ({layout}), got rank {x.dim()} with shape {_shape(x)}")
    return x


def _dtype(name: str, x: torch.Tensor, allowed) -> None:
    if x.dtype not in allowed:
        raise ValueError(f"{name}: expected dtype in ({_names(allowed)}), got {str(x.dtype).replace('torch.', '')}")


def check_inputs(q, k, v, log_alpha, beta, log_mu, eta, scale=None, initial_state=None, cu_seqlens=None,
                 chunk_size=None, max_k: int = 256, allow_fp64: bool = False, check_values: bool = True):
    """Validate the op arguments; return (N, scale) with N the number of sequences and scale a float.

    q, k [B, T, H, K] and v [B, T, H, V] of one floating dtype (fp32/fp16/bf16; also fp64 with ``allow_fp64``,
    which the naive references pass); gates log_alpha, beta, log_mu, eta [B, T, H] floating; 1 <= K <= max_k,
    V >= 1, B, T, H >= 1; one device for all tensors; scale None (-> K^-0.5) or a finite number > 0;
    chunk_size None (not a chunk op) or one of 16/32/64/128; cu_seqlens None or a 1-D int32/int64 tensor
    [N + 1] that starts at 0, never decreases and ends at T, with B == 1; initial_state None or floating
    [2, N, H, K, V]. ``check_values=False`` skips the checks that read cu_seqlens' values (a host sync).
    """
    dtypes = REFERENCE_DTYPES if allow_fp64 else KERNEL_DTYPES
    _tensor("q", q, 4, "[B, T, H, K]")
    B, T, H, K = q.shape
    _tensor("k", k, 4, "[B, T, H, K]")
    _tensor("v", v, 4, "[B, T, H, V]")
    if min(B, T, H) < 1:
        raise ValueError(f"q: expected B, T, H >= 1, got shape {_shape(q)}")
    if K < 1 or K > max_k:
        raise ValueError(f"q: expected head dimension K in [1, {max_k}], got K={K} (shape {_shape(q)})")
    if tuple(k.shape) != tuple(q.shape):
        raise ValueError(f"k: expected the shape of q {_shape(q)}, got {_shape(k)}")
    if tuple(v.shape[:3]) != (B, T, H):
        raise ValueError(f"v: expected shape [B={B}, T={T}, H={H}, V], got {_shape(v)}")
    if v.shape[3] < 1:
        raise ValueError(f"v: expected value dimension V >= 1, got V={v.shape[3]}")
    for name, x in (("q", q), ("k", k), ("v", v)):
        _dtype(name, x, dtypes)
    if not (k.dtype == q.dtype == v.dtype):
        raise ValueError(f"k, v: expected the dtype of q ({str(q.dtype).replace('torch.', '')}), got "
                         f"k {str(k.dtype).replace('torch.', '')} and v {str(v.dtype).replace('torch.', '')}")
    device = q.device
    for name, x in (("k", k), ("v", v)):
        if x.device != device:
            raise ValueError(f"{name}: expected device {device} (the device of q), got {x.device}")
    for name, x in (("log_alpha", log_alpha), ("beta", beta), ("log_mu", log_mu), ("eta", eta)):
        _tensor(name, x, 3, f"[B={B}, T={T}, H={H}]")
        if tuple(x.shape) != (B, T, H):
            raise ValueError(f"{name}: expected shape [B={B}, T={T}, H={H}], got {_shape(x)}")
        _dtype(name, x, dtypes)
        if x.device != device:
            raise ValueError(f"{name}: expected device {device} (the device of q), got {x.device}")

    if scale is None:
        scale = K ** -0.5
    else:
        if isinstance(scale, torch.Tensor) and scale.numel() == 1:
            scale = scale.item()
        if isinstance(scale, bool) or not isinstance(scale, numbers.Real):
            raise ValueError(f"scale: expected None or a finite number > 0, got {scale!r}")
        scale = float(scale)
        if not math.isfinite(scale) or scale <= 0:
            raise ValueError(f"scale: expected None or a finite number > 0, got {scale!r}")

    if chunk_size is not None:
        if isinstance(chunk_size, bool) or not isinstance(chunk_size, numbers.Integral) \
                or int(chunk_size) not in CHUNK_SIZES:
            raise ValueError(f"chunk_size: expected one of {CHUNK_SIZES}, got {chunk_size!r}")

    N = B
    if cu_seqlens is not None:
        if not isinstance(cu_seqlens, torch.Tensor):
            raise ValueError(f"cu_seqlens: expected None or a 1-D integer tensor [N+1], got "
                             f"{type(cu_seqlens).__name__}")
        if cu_seqlens.dim() != 1 or cu_seqlens.numel() < 2:
            raise ValueError(f"cu_seqlens: expected a 1-D tensor [N+1] with N >= 1, got shape {_shape(cu_seqlens)}")
        if cu_seqlens.dtype not in INDEX_DTYPES:
            raise ValueError(f"cu_seqlens: expected dtype in ({_names(INDEX_DTYPES)}), got "
                             f"{str(cu_seqlens.dtype).replace('torch.', '')}")
        if cu_seqlens.device != device:
            raise ValueError(f"cu_seqlens: expected device {device} (the device of q), got {cu_seqlens.device}")
        if B != 1:
            raise ValueError(f"q: with cu_seqlens the batch must be packed into B=1, got B={B} (shape {_shape(q)})")
        N = cu_seqlens.numel() - 1
        if check_values:
            cs = cu_seqlens.tolist()
            if cs[0] != 0:
                raise ValueError(f"cu_seqlens: expected to start at 0, got cu_seqlens[0]={cs[0]}")
            for i in range(N):
                if cs[i + 1] < cs[i]:
                    raise ValueError(f"cu_seqlens: expected non-decreasing values, got cu_seqlens[{i}]={cs[i]} > "
                                     f"cu_seqlens[{i + 1}]={cs[i + 1]}")
            if cs[-1] != T:
                raise ValueError(f"cu_seqlens: expected to end at T={T}, got cu_seqlens[-1]={cs[-1]}")

    if initial_state is not None:
        _tensor("initial_state", initial_state, 5, f"[2, N={N}, H={H}, K={K}, V={v.shape[3]}]")
        want = (2, N, H, K, v.shape[3])
        if tuple(initial_state.shape) != want:
            raise ValueError(f"initial_state: expected shape [2, N={N}, H={H}, K={K}, V={v.shape[3]}], got "
                             f"{_shape(initial_state)}")
        _dtype("initial_state", initial_state, STATE_DTYPES)
        if initial_state.device != device:
            raise ValueError(f"initial_state: expected device {device} (the device of q), got {initial_state.device}")
    return N, scale
