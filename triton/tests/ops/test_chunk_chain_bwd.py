"""MDN_BWD_CHAIN: the pqk scan backward's chain rule (dP, dQ, dK_w, dA, the row scalars' gradients and dAqk) as one
Triton kernel (chunk_chain_bwd.py). The kernel against the torch chain rule it replaces (fp32: the same numbers) and
against float64 (bf16: at least as close as the torch graph, which rounds two intermediate products), with K and V
not powers of two, every chunk size, strided dO / dVt / V as the reverse scan and MDN_SCAN_V=v hand them over,
outputs poisoned with NaN; the op with it against the fp64 recurrence (dense, varlen with a length-1 sequence,
segmented backward, extreme gates, bf16); the knobs; its sm_90 resources."""
from __future__ import annotations

import pytest
import torch

from conftest import (DEV, HAS_CUDA, _have_ptxas, compare_with_oracle, compile_sm90_child, constant_gates,
                      make_inputs, needs_kernels, rel_rms)
from mdn.ops.momentum_delta_rule import chunk_chain_bwd as cb
from mdn.ops.momentum_delta_rule import chunk_scan_pqk as sp


@pytest.fixture(autouse=True)
def _poison(monkeypatch):
    monkeypatch.setenv("MDN_POISON_OUTPUTS", "1")


def _case(NC, H, C, K, V, dtype, has_u, stacked=False, device=DEV, seed=0):
    """Random chain-rule inputs as the fused tail and the reverse scan leave them: xv, xo [NC, H, C, 2K] in the
    operands' dtype, rr fp32, A unit lower triangular, dO either a plane of [2, NC, H, C, V] or (``stacked``) the
    lower half of [NC, H, 2C, V], V token-major ([NC, C, H, V] memory) as chunk.py::_v_chunks makes it."""
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, dt=dtype):
        return torch.randn(*shape, generator=g).to(dt).to(device)
    a = ((torch.randn(NC, H, C, C, generator=g) * 0.3).tril(-1) + torch.eye(C)).to(dtype).to(device)
    r = (torch.rand(NC, H, 6, C, generator=g) + 0.1).to(device)
    xv, xo, rr = rnd(NC, H, C, 2 * K), rnd(NC, H, C, 2 * K), rnd(NC, H, C, 2 * K, dt=torch.float32)
    p, q, kw, vt = rnd(NC, H, C, K), rnd(NC, H, C, K), rnd(NC, H, C, K), rnd(NC, H, C, V)
    if stacked:
        dvs = rnd(NC, H, 2 * C, V)
        dvt, dob = dvs[:, :, :C], dvs[:, :, C:]
    else:
        planes = rnd(2, NC, H, C, V)
        dvt, dob = planes[0], planes[1]
    u = rnd(NC, C, H, V).transpose(1, 2) if has_u else None
    return dict(xv=xv, xo=xo, rr=rr, p=p, q=q, kw=kw, a=a, r=r, vt=vt, dob=dob, dvt=dvt if has_u else None, u=u)


def _kernel(c):
    return cb.chain_rule_triton(c["xv"], c["xo"], c["rr"], c["p"], c["q"], c["kw"], c["a"], c["r"], c["vt"],
                                c["dob"], *((c["dvt"], c["u"]) if c["u"] is not None else ()))


def _torch(c, dtype=None):
    """The torch chain rule and daqk of _bwd_from_products (in ``dtype`` if given: float64 for the reference)."""
    cv = {k: (v.to(dtype) if dtype is not None and v is not None else v) for k, v in c.items()}
    daqk = (cv["dob"] @ cv["vt"].transpose(-1, -2)).tril()
    out = sp._chain_rule(cv["xv"], cv["xo"], cv["rr"], cv["p"], cv["q"], cv["kw"], cv["a"], cv["r"], cv["dvt"],
                         cv["u"])
    return (*out, daqk)


NAMES = ("dp", "dq", "dkw", "da", "dr", "daqk")


@needs_kernels
@pytest.mark.parametrize("NC,H,C,K,V,has_u,stacked", [
    (3, 2, 16, 20, 24, True, False),
    (2, 2, 64, 100, 48, False, False),
    (2, 3, 32, 64, 80, True, True),
    (1, 1, 64, 256, 16, True, False),
])
def test_kernel_matches_the_torch_chain_rule_fp32(NC, H, C, K, V, has_u, stacked):
    c = _case(NC, H, C, K, V, torch.float32, has_u, stacked)
    got, want = _kernel(c), _torch(c)
    for name, x, y in zip(NAMES, got, want):
        assert x.shape == y.shape and x.dtype == y.dtype, name
        assert torch.isfinite(x).all(), name
        assert rel_rms(y, x) < 1e-5, (name, rel_rms(y, x))
    assert (got[3].triu() == 0).all() and (got[5].triu(1) == 0).all()


@needs_kernels
@pytest.mark.parametrize("C,K,V,has_u", [(64, 64, 48, True), (32, 128, 128, False)])
def test_kernel_bf16_against_float64(C, K, V, has_u):
    """bf16 operands, fp32 accumulation rounded once: within 5e-3 of the same math in float64 (bf16 inputs taken
    as exact), and no further from it than the torch graph (plus a rounding step)."""
    c = _case(2, 2, C, K, V, torch.bfloat16, has_u)
    got, ours_torch, exact = _kernel(c), _torch(c), _torch(c, torch.float64)
    for name, x, t, e in zip(NAMES, got, ours_torch, exact):
        assert torch.isfinite(x).all(), name
        err, err_torch = rel_rms(e, x), rel_rms(e, t)
        assert err < 5e-3 and err <= err_torch + 4e-3, (name, err, err_torch)


def test_chain_kernel_rejects_mismatched_arguments():
    c = _case(1, 1, 16, 16, 16, torch.float32, True, device="cpu")
    with pytest.raises(ValueError, match="dvt and u go together"):
        cb.chain_rule_triton(c["xv"], c["xo"], c["rr"], c["p"], c["q"], c["kw"], c["a"], c["r"], c["vt"], c["dob"],
                             c["dvt"])
    with pytest.raises(ValueError, match="rr must be fp32"):
        cb.chain_rule_triton(c["xv"], c["xo"], c["rr"][..., :16].contiguous(), c["p"], c["q"], c["kw"], c["a"], c["r"], c["vt"],
                             c["dob"])
    with pytest.raises(ValueError, match="xv must be contiguous"):
        cb.chain_rule_triton(c["xv"].mT.contiguous().mT, c["xo"], c["rr"], c["p"], c["q"], c["kw"], c["a"], c["r"],
                             c["vt"], c["dob"])


@needs_kernels
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("C,K,V,stacked", [(16, 32, 24, False), (64, 100, 48, False), (32, 64, 80, True)])
def test_tail_with_the_fused_epilogue(dtype, C, K, V, stacked):
    """The tail's fused epilogue (state_gemms_fused_qk_triton) against the chain rule's dQ, dK_w and row sums in
    float64 from the unfused tail's products; xv and dg as the unfused tail's (the same kernel body); K with a masked
    last K-block, the stacked dO layout. (The q8 dhc of 16-bit inputs: the op's bf16 test below.)"""
    from mdn.ops.momentum_delta_rule import chunk_state_gemms as sg
    NC, H = 3, 2
    g = torch.Generator().manual_seed(1)
    vt, dvt, dob = (torch.randn(NC, H, C, V, generator=g).to(dtype).to(DEV) for _ in range(3))
    hc = torch.randn(NC, H, 2, K, V, generator=g).to(dtype).to(DEV)
    dh = torch.randn(NC, H, 2, K, V, generator=g).to(DEV) * 3
    # as the reverse scan leaves them: dS', dM' fp32, or hi + lo bf16 planes for 16-bit operands
    dhc = dh if dtype == torch.float32 else torch.cat([dh.to(dtype), (dh - dh.to(dtype).float()).to(dtype)], 2)
    dvo = (dvt, torch.cat([dvt, dob], 2)) if stacked else torch.stack([dvt, dob])
    c = _case(NC, H, C, K, V, dtype, False, seed=3)
    q, kw, r = c["q"], c["kw"], c["r"]
    (xv, xo), rr, dg = sg.state_gemms_triton(vt, dvo, hc, dhc)
    xv_f, dg_f, dq, dkw, drp = sg.state_gemms_fused_qk_triton(vt, dvo, hc, dhc, q, kw, r)
    assert torch.equal(xv_f, xv) and rel_rms(dg, dg_f) < 1e-6
    sa, sb, ga, rho = (r[:, :, i, :, None].double() for i in (2, 3, 4, 5))
    xo64, rr64, q64, kw64 = xo.double(), rr.double(), q.double(), kw.double()
    # 16-bit: the unfused tail rounds xo to bf16, the epilogue multiplies the fp32 accumulators; dq, dkw are bf16
    tol = 1e-6 if dtype == torch.float32 else 8e-3
    assert rel_rms(sa * xo64[..., :K] - sb * xo64[..., K:], dq) < tol
    assert rel_rms(ga * rr64[..., :K] - rho * rr64[..., K:], dkw) < tol
    want = torch.stack([(q64 * xo64[..., :K]).sum(-1), -(q64 * xo64[..., K:]).sum(-1),
                        (kw64 * rr64[..., :K]).sum(-1), -(kw64 * rr64[..., K:]).sum(-1)], 2)
    assert rel_rms(want, drp.double().sum(2)) < tol
    assert drp.shape == (NC, H, -(-K // sg.tail_config(K, V, C, dtype)[0]), 4, C)


@pytest.fixture
def chain_calls(monkeypatch):
    """Records the kernel's launches through chunk_scan_pqk (the op's path): "fused" when the tail's fused epilogue
    computed dQ and dK_w for it, "unfused" when the tail stored xo and rr."""
    calls = []
    real = cb.chain_rule_triton

    def spy(*a, fused=None):
        calls.append("unfused" if fused is None else "fused")
        return real(*a, fused=fused)
    monkeypatch.setattr(sp, "chain_rule_triton", spy)
    return calls


@needs_kernels
@pytest.mark.parametrize("mode,B,T,C,K,V,lengths,segments,ran", [
    ("kernel", 2, 100, 64, 32, 40, None, 1, "fused"),
    ("kernel", 1, 70, 16, 20, 24, [1, 50, 19], 1, "fused"),
    ("kernel", 2, 90, 32, 100, 16, None, 2, "unfused"),   # per segment: the tail stores xo, rr
    ("unfused", 2, 100, 64, 32, 40, None, 1, "unfused"),
    ("unfused", 1, 70, 16, 20, 24, [1, 50, 19], 1, "unfused"),
])
def test_op_with_the_kernel_matches_the_fp64_recurrence(monkeypatch, chain_calls, mode, B, T, C, K, V, lengths,
                                                        segments, ran):
    monkeypatch.setenv("MDN_BWD_CHAIN", mode)
    monkeypatch.setenv("MDN_BWD_SEGMENTS", str(segments))
    inputs = make_inputs(B, T, 2, K, V, dtype=torch.float32, device=DEV, gates="layer", initial_state=True,
                         lengths=lengths)
    compare_with_oracle(inputs, dtype=torch.float32, tol_o=1e-5, tol_grad=1e-5, op_kwargs={"chunk_size": C})
    assert chain_calls and set(chain_calls) == {ran}


@needs_kernels
@pytest.mark.parametrize("log_alpha,log_mu", [(-0.001, -3.0), (-3.0, -0.001)])
def test_op_with_the_kernel_under_extreme_gates(monkeypatch, chain_calls, log_alpha, log_mu):
    monkeypatch.setenv("MDN_BWD_CHAIN", "kernel")
    g = constant_gates(1, 70, 1, log_alpha=log_alpha, log_mu=log_mu, beta=0.4, eta=1.0, device=DEV)
    inputs = make_inputs(1, 70, 1, 16, 16, device=DEV, initial_state=True, gates=g)
    compare_with_oracle(inputs, dtype=torch.float32, tol_o=1e-5, tol_grad=1e-5, op_kwargs={"chunk_size": 64})
    assert chain_calls


@needs_kernels
@pytest.mark.parametrize("B,lengths", [(2, None), (1, [1, 50, 30])])
def test_op_bf16_with_the_kernel(monkeypatch, chain_calls, B, lengths):
    """16-bit inputs with every intra kernel too (the CPU-path counterpart of the GPU default: the tail's fused
    epilogue with the q8 dhc), dense and varlen."""
    for knob in ("MDN_BWD_CHAIN", "MDN_INTRA_QK", "MDN_INTRA_GATES"):
        monkeypatch.setenv(knob, "kernel")
    inputs = make_inputs(B, 81, 2, 64, 48, dtype=torch.bfloat16, device=DEV, gates="layer", initial_state=True,
                         lengths=lengths)
    compare_with_oracle(inputs, dtype=torch.bfloat16, tol_o=5e-3, tol_grad=1e-2, tol_state=1e-2)
    assert chain_calls and set(chain_calls) == {"fused"}


def test_defaults(monkeypatch):
    monkeypatch.delenv("MDN_BWD_CHAIN", raising=False)
    monkeypatch.delenv("MDN_BWD_CHAIN_CONFIG", raising=False)
    assert cb.chain_mode() == "auto"
    p = torch.zeros(1, 1, 16, 32, dtype=torch.bfloat16)
    rr = torch.zeros(1, 1, 16, 64)
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert not cb.chain_kernel_applies(p, rr)          # auto: CUDA only
    monkeypatch.setenv("MDN_BWD_CHAIN", "kernel")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert cb.chain_kernel_applies(p, rr)
    assert not cb.chain_kernel_applies(p, torch.zeros(1, 1, 16, 128))  # the cuBLAS path's hi / lo parts
    monkeypatch.setenv("MDN_BWD_CHAIN", "torch")
    assert not cb.chain_kernel_applies(p, rr)
    assert cb.chain_config(128) == cb.CHAIN_CONFIG[128] and cb.chain_config(20) == cb.CHAIN_CONFIG[32]
    # no default tile is one that sm_90 miscompiles, after BK is clamped to K (launch_tile raises for those)
    for K in (8, 16, 20, 32, 48, 64, 100, 128, 256):
        bk, _, nw, _, _ = cb.launch_tile(K, 48, (9, 0))
        assert bk <= max(16, 1 << (K - 1).bit_length()) and (bk, nw) not in cb.HOPPER_BAD, K


def test_hopper_refusal_on_the_cpu_path(monkeypatch):
    """The CPU-path counterpart of test_gpu_hopper_refuses_the_miscompiled_tile: the tile check for a compute
    capability, raised on sm_90 only, and by name."""
    monkeypatch.setenv("MDN_BWD_CHAIN_CONFIG", "32,64,4")
    with pytest.raises(ValueError, match=r"MDN_BWD_CHAIN_CONFIG: BK 32 with 4 warps gives wrong gradients"):
        cb.launch_tile(128, 128, (9, 0))
    assert cb.launch_tile(128, 128, (8, 0))[:3] == (32, 64, 4)
    assert cb.launch_tile(128, 128)[:3] == (32, 64, 4)   # CPU / interpreter: no capability
    monkeypatch.setenv("MDN_BWD_CHAIN_CONFIG", "64,64,4")
    assert cb.launch_tile(16, 20, (9, 0))[:3] == (16, 32, 4)  # clamped to K, V


@pytest.mark.parametrize("value", ["triton", "1", "Kernel", "fused"])
def test_env_rejects_unknown_value(monkeypatch, value):
    monkeypatch.setenv("MDN_BWD_CHAIN", value)
    with pytest.raises(ValueError, match="MDN_BWD_CHAIN="):
        cb.chain_mode()


@pytest.mark.parametrize("value", ["64,4", "48,64,4", "a,b,c", "64,64,3", "8,64,4", "32,64,4,0", "32,64,4,2,2", "32,64,4,1,1,1"])
def test_config_rejects_bad_values(monkeypatch, value):
    monkeypatch.setenv("MDN_BWD_CHAIN_CONFIG", value)
    with pytest.raises(ValueError, match="MDN_BWD_CHAIN_CONFIG="):
        cb.chain_config(128)


@needs_kernels
def test_config_override(monkeypatch):
    """Other tiles through the knob, with and without the transposed loads: same numbers (fp32)."""
    c = _case(2, 2, 32, 100, 72, torch.float32, True)
    want = _kernel(c)
    for env, cfg in (("16,32,2", (16, 32, 2, 1, True)), ("64,16,4,2,0", (64, 16, 4, 2, False))):
        monkeypatch.setenv("MDN_BWD_CHAIN_CONFIG", env)
        assert cb.chain_config(100) == cfg
        for name, x, y in zip(NAMES, _kernel(c), want):
            assert rel_rms(y, x) < 1e-6, (env, name)


@pytest.mark.skipif(not _have_ptxas(), reason="needs Triton's NVIDIA backend (ptxas)")
@pytest.mark.parametrize("K,V", [(128, 128), (256, 512)])
def test_sm90_resources(K, V):
    """The shipped tiles compile for sm_90 at C = 64 with bf16 operands within Hopper's shared memory and with at most
    a few spilled registers (ptxas, in a child process without the interpreter): (64, 64, 4) needs 255 registers
    and spills 116 bytes at K = 128, and still timed fastest of the tiles that are right on Hopper (CHAIN_CONFIG)."""
    sig = {n: "*bf16" for n in ("xv", "xo", "p", "q", "kw", "a", "dvt", "u", "dob", "vt", "dp", "dq", "dkw", "da",
                                "daqk")}
    sig.update({n: "*fp32" for n in ("rr", "r", "dr")})
    sig.update({f"s_{x}_{d}": "i64" for x in ("dvt", "u", "do") for d in "nhc"})
    sig["H"] = "i32"
    bk, bv, nw, _, tload = cb.CHAIN_CONFIG[K]
    res = compile_sm90_child("mdn.ops.momentum_delta_rule.chunk_chain_bwd", "momentum_delta_rule_bwd_kernel_chain",
                             sig, {"K": K, "V": V, "C": 64, "BK": bk, "BV": bv, "HAS_U": True, "DOT_MODE": 1,
                                   "TRANS_LOAD": tload}, nw)
    assert res["shared"] <= 227 * 1024 and res["spill_st"] <= 256 and res["spill_ld"] <= 256, res


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs CUDA")
@pytest.mark.parametrize("K,V", [(128, 128), (256, 512)])
def test_gpu_kernel_at_the_benchmark_heads(K, V):
    """On the GPU (fla issue 640: check every backward there): fp32 as the torch chain rule, bf16 against float64."""
    c = _case(64, 4, 64, K, V, torch.float32, True, device="cuda")
    for name, x, y in zip(NAMES, _kernel(c), _torch(c)):
        assert rel_rms(y, x) < 1e-5, name
    c = _case(64, 4, 64, K, V, torch.bfloat16, True, stacked=True, device="cuda")
    for name, x, t, e in zip(NAMES, _kernel(c), _torch(c), _torch(c, torch.float64)):
        assert rel_rms(e, x) < 5e-3 and rel_rms(e, x) <= rel_rms(e, t) + 4e-3, name


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs CUDA")
@pytest.mark.parametrize("K,V", [(128, 128), (256, 512)])
def test_gpu_op_default_takes_the_fused_kernels(monkeypatch, chain_calls, K, V):
    """bf16 at the benchmark's head shapes with the default knobs: the tail's fused epilogue and the chain kernel
    ran, and every output and gradient is within the bf16 thresholds of the fp64 recurrence."""
    monkeypatch.delenv("MDN_BWD_CHAIN", raising=False)
    monkeypatch.delenv("MDN_BWD_CHAIN_CONFIG", raising=False)
    inputs = make_inputs(2, 1000, 3, K, V, dtype=torch.bfloat16, device="cuda", gates="layer", initial_state=True)
    compare_with_oracle(inputs, dtype=torch.bfloat16, tol_o=5e-3, tol_grad=1e-2, tol_state=1e-2)
    assert chain_calls and set(chain_calls) == {"fused"}


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA or torch.cuda.get_device_capability()[0] != 9, reason="needs an sm_90 GPU")
def test_gpu_hopper_refuses_the_miscompiled_tile(monkeypatch):
    """BK 32 at 4 warps gives wrong gradients on Hopper under Triton 3.6 (CHAIN_CONFIG): a clear error, not them."""
    monkeypatch.setenv("MDN_BWD_CHAIN_CONFIG", "32,64,4")
    with pytest.raises(ValueError, match="wrong gradients on this GPU"):
        _kernel(_case(2, 2, 64, 128, 128, torch.bfloat16, True, device="cuda"))
