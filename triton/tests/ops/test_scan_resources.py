"""Every shipped scan tile config compiles for Hopper (sm_90) within its shared memory, without a GPU.

Triton compiles ahead of time for a target on the CPU (ptxas ships with the wheel), and the compiled kernel's
metadata says how much shared memory it needs. A config over the limit fails on the GPU at launch with
OutOfResources (it happened: fp32 K=256 needed 270336 bytes in the reverse scan). Slow (a few seconds per
kernel), so marked slow; scripts/gpu_check_op.sh does not need it (the GPU tests launch every config).
"""
from __future__ import annotations

import os
import shutil

import pytest

from mdn.ops.momentum_delta_rule import chunk_scan as cs

HOPPER_SHARED_LIMIT = 232448  # bytes per block (227 KB), sm_90


def _have_ptxas() -> bool:
    try:
        import triton.backends.nvidia as nv
    except ImportError:
        return False
    path = os.path.join(os.path.dirname(nv.__file__), "bin", "ptxas")
    return os.path.exists(path) or shutil.which("ptxas") is not None


def compile_shared_bytes(kernel, dtype: str, K: int, V: int, C: int, BV: int, num_warps: int, **flags) -> int:
    """Compile one scan kernel for sm_90 and return its shared memory in bytes."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    ptr = "*" + dtype
    if kernel is cs.momentum_delta_rule_fwd_kernel_scan:
        names = ["u", "y", "z", "qa", "qb", "aqk", "ks", "km", "g", "h0", "o", "vt", "ht", "hc"]
        fp32_ptrs = {"g", "h0", "ht"}
    else:
        names = ["y", "z", "qa", "qb", "aqk", "ks", "km", "g", "do", "dht", "dh0", "dvo", "dhc", "hc", "dgp"]
        fp32_ptrs = {"g", "dht", "dh0", "dgp"}
    sig = {n: ("*fp32" if n in fp32_ptrs else ptr) for n in names}
    sig.update(chunk_offsets="*i32", H="i32")
    consts = dict(K=K, V=V, C=C, BK=cs._block_k(K), BV=BV, DOT_MODE=0 if dtype == "fp32" else 1, **flags)
    sig.update({n: "constexpr" for n in consts})
    src = ASTSource(fn=kernel, signature=sig, constexprs=consts)
    k = triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": num_warps, "num_stages": 1})
    return k.metadata.shared


@pytest.mark.slow
@pytest.mark.skipif(not _have_ptxas(), reason="needs Triton's NVIDIA backend (ptxas)")
@pytest.mark.parametrize("C", [64, 128])
@pytest.mark.parametrize("key", sorted(k for k in cs.SCAN_CONFIGS if k[0] >= 128))
def test_scan_shared_memory(key, C, monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    import triton
    if triton.knobs.runtime.interpret:
        pytest.skip("compiling needs the interpreter off (run without TRITON_INTERPRET=1)")
    BK, is_fp32, phase = key
    BV, nw = cs.SCAN_CONFIGS[key]
    dtype = "fp32" if is_fp32 else "bf16"
    K, V = BK, 4 * BV
    if phase == "fwd":
        runs = [(cs.momentum_delta_rule_fwd_kernel_scan, dict(USE_H0=True, RECOMPUTE=False, STORE_STATES=False))]
    else:
        runs = [(cs.momentum_delta_rule_fwd_kernel_scan, dict(USE_H0=True, RECOMPUTE=True, STORE_STATES=True)),
                (cs.momentum_delta_rule_bwd_kernel_scan, dict(USE_DHT=True))]
    for kernel, flags in runs:
        shared = compile_shared_bytes(kernel, dtype, K, V, C, BV, nw, **flags)
        assert shared <= HOPPER_SHARED_LIMIT, f"{kernel.__name__} {key} C={C}: {shared} bytes of shared memory"
