"""Shared pytest fixtures and helpers for the mdn tests.

Everything here is offered two ways: as a plain function (``from conftest import rel_rms``; pytest puts this
directory on sys.path when it imports this file) and as a fixture of the same name (``def test_x(rel_rms): ...``).
Fixtures are the robust way; the functions are handy in parametrisation and module-level helpers.

Offered:
* seeding: every test starts from ``torch.manual_seed(0)`` (autouse), ``seed_all(n)`` to reseed;
* ``device`` fixture: "cuda" when available, else "cpu" (the Triton kernels then run under TRITON_INTERPRET=1);
* ``rel_rms(ref, out)``: RMS(ref - out) / RMS(ref) in float64 (NaN/inf in ``out`` give NaN, so ``< tol`` fails);
  ``assert_rel(name, ref, out, tol)`` asserts it with a readable message;
* gate generators (all [B, T, H], fp32 unless ``dtype`` given): ``spec_gates`` (the official test's gates,
  spec §8), ``layer_gates`` (the layer's parametrisation at init, spec §5.1: alpha + beta <= 1, log_mu >=
  min_log_mu), ``constant_gates`` (stress: fixed log_alpha / log_mu / beta / eta), ``gap_gates`` (constant gates
  with a per-step gap log_alpha - log_mu, as in the spec §2.5 stress table);
* ``make_inputs(B, T, H, K, V, ...)``: a dict of keyword arguments for any of the ops (q, k, v, log_alpha, beta,
  log_mu, eta, initial_state, cu_seqlens), random and never zero;
  ``to_fp64(inputs)``: the same values as detached float64 leaves (for the oracle);
  ``cu_seqlens_of(lengths)``: int32 cumulative lengths;
* ``run_op(op, inputs, grads=..., do=..., dht=...)``: calls an op, back-propagates sum(o*do) + sum(ht*dht) and
  returns (o, ht, {name: grad});
* ``INTERPRET``: True when TRITON_INTERPRET=1;
* GPU memory (autouse): after each test that used CUDA, ``torch.cuda.empty_cache()`` (workers share the card);
* poisoning (autouse): MDN_POISON_OUTPUTS=1, so ``mdn.ops.momentum_delta_rule.alloc.empty`` NaN-fills every
  kernel output buffer (use it for your outputs; then assert torch.isfinite);
* markers: ``@pytest.mark.gpu`` is skipped without CUDA; ``@pytest.mark.slow`` is skipped unless MDN_SLOW=1.
"""
from __future__ import annotations

import math
import inspect
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile

import pytest
import torch
import torch.nn.functional as F

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
HAS_CUDA = torch.cuda.is_available()
# the device the op tests run on, and the mark of tests that need the Triton kernels (a GPU or the interpreter)
DEV = "cuda" if HAS_CUDA else "cpu"
needs_kernels = pytest.mark.skipif(not (HAS_CUDA or INTERPRET), reason="needs CUDA or TRITON_INTERPRET=1")
SLOW = os.environ.get("MDN_SLOW", "0") == "1"

GATE_NAMES = ("log_alpha", "beta", "log_mu", "eta")
ALL_GRAD_NAMES = ("q", "k", "v", "log_alpha", "beta", "log_mu", "eta", "initial_state")


# ----------------------------------------------------------------------------------------------- markers
def pytest_collection_modifyitems(config, items):
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    skip_slow = pytest.mark.skip(reason="slow; set MDN_SLOW=1 to run")
    for item in items:
        if "gpu" in item.keywords and not HAS_CUDA:
            item.add_marker(skip_gpu)
        if "slow" in item.keywords and not SLOW:
            item.add_marker(skip_slow)


# ----------------------------------------------------------------------------------------------- seeding
def seed_all(seed: int = 0) -> None:
    random.seed(seed)
    torch.manual_seed(seed)
    try:
        import numpy as np

        np.random.seed(seed)
    except ImportError:  # pragma: no cover
        pass


@pytest.fixture(autouse=True)
def _seed_every_test():
    seed_all(0)
    yield


@pytest.fixture(autouse=True)
def _release_gpu_memory():
    """After a test that used the GPU, hand its cached blocks back to the driver: pytest-xdist workers share one
    card (scripts/gpu_tests.sh), and each worker's caching allocator otherwise keeps its largest test's peak. On an
    H100 four workers held 10-27 GB each and three tests failed with CUDA out of memory (thirteenth session)."""
    yield
    if HAS_CUDA and torch.cuda.is_initialized():
        import gc

        gc.collect()
        torch.cuda.empty_cache()


@pytest.fixture(autouse=True)
def _poison_outputs(monkeypatch):
    """Kernels allocate their outputs through mdn.ops.momentum_delta_rule.alloc.empty, which NaN-fills them
    while MDN_POISON_OUTPUTS=1: an element a kernel forgets to write then fails the test."""
    monkeypatch.setenv("MDN_POISON_OUTPUTS", "1")
    yield


@pytest.fixture
def device() -> str:
    return "cuda" if HAS_CUDA else "cpu"


# ----------------------------------------------------------------------------------------------- metrics
def rel_rms(ref: torch.Tensor, out: torch.Tensor) -> float:
    """RMS(ref - out) / RMS(ref), computed in float64. Non-finite values in either give NaN (never passes).

    If ref is exactly zero the absolute RMS of the difference is returned instead.
    """
    if ref.shape != out.shape:
        raise AssertionError(f"shape mismatch: ref {tuple(ref.shape)} vs out {tuple(out.shape)}")
    r = ref.detach().to(torch.float64).cpu()
    o = out.detach().to(torch.float64).cpu()
    if not (torch.isfinite(r).all() and torch.isfinite(o).all()):
        return float("nan")
    if r.numel() == 0:
        return 0.0
    diff = (r - o).pow(2).mean().sqrt().item()
    base = r.pow(2).mean().sqrt().item()
    return diff / base if base > 0 else diff


def assert_rel(name: str, ref: torch.Tensor, out: torch.Tensor, tol: float) -> float:
    err = rel_rms(ref, out)
    assert err <= tol, f"{name}: rel RMS error {err:.3e} > {tol:.1e} (not finite if nan)"
    return err


# ----------------------------------------------------------------------------------------------- gates
def spec_gates(B, T, H, *, normaliser: float = 1.0, beta_max: float = 0.5, device="cpu",
               dtype=torch.float32):
    """The official test's gates (spec §8): log_alpha, log_mu = logsigmoid(U(0,1)) / normaliser,
    beta = beta_max * sigmoid(randn), eta = sigmoid(randn)."""
    log_alpha = F.logsigmoid(torch.rand(B, T, H, dtype=torch.float64)) / normaliser
    log_mu = F.logsigmoid(torch.rand(B, T, H, dtype=torch.float64)) / normaliser
    beta = beta_max * torch.sigmoid(torch.randn(B, T, H, dtype=torch.float64))
    eta = torch.sigmoid(torch.randn(B, T, H, dtype=torch.float64))
    return {n: x.to(device=device, dtype=dtype) for n, x in
            zip(GATE_NAMES, (log_alpha, beta, log_mu, eta))}


def layer_gates(B, T, H, *, min_log_mu: float = -2.0, e_scale: float = 0.5, device="cpu", dtype=torch.float32):
    """Gates as the layer produces them at init (spec §5.1), with the projections a, b, m ~ N(0, 1) and
    e ~ N(0, e_scale²). Guarantees alpha + beta <= 1 and log_mu >= min_log_mu.
    Mean log_alpha is about -1.4 and mean log_mu about -0.13 (the benign mu >= alpha regime)."""
    f64 = torch.float64
    A_log = torch.empty(H, dtype=f64).uniform_(0, 16).clamp_min(1e-4).log()
    Mu_log = torch.empty(H, dtype=f64).uniform_(0, 16).clamp_min(1e-4).log()
    dt = torch.exp(torch.empty(H, dtype=f64).uniform_(math.log(1e-3), math.log(0.1))).clamp_min(1e-4)
    dt_bias = dt + torch.log(-torch.expm1(-dt))  # softplus^-1(dt)
    log_factor = torch.empty(H, dtype=f64).uniform_(0, 4).clamp_min(1e-4).log()
    a, b, m = (torch.randn(B, T, H, dtype=f64) for _ in range(3))
    e = e_scale * torch.randn(B, T, H, dtype=f64)
    log_alpha_raw = -A_log.exp() * F.softplus(a + dt_bias)
    log_mu = (-Mu_log.exp() * F.softplus(m + dt_bias)).clamp_min(min_log_mu)
    eta = torch.tanh(e) + 1
    theta = torch.atan(eta * log_factor.exp())
    beta = torch.sin(theta) ** 2 * torch.sigmoid(b)
    log_alpha = torch.log(torch.cos(theta) ** 2) + log_alpha_raw
    return {n: x.to(device=device, dtype=dtype) for n, x in
            zip(GATE_NAMES, (log_alpha, beta, log_mu, eta))}


def constant_gates(B, T, H, *, log_alpha: float, log_mu: float, beta: float, eta: float = 1.0, device="cpu",
                   dtype=torch.float32):
    vals = (log_alpha, beta, log_mu, eta)
    return {n: torch.full((B, T, H), float(x), device=device, dtype=dtype) for n, x in zip(GATE_NAMES, vals)}


def gap_gates(B, T, H, *, gap: float, alpha: float = 0.99, beta: float = 0.005, eta: float = 1.0,
              device="cpu", dtype=torch.float32):
    """Constant gates inside the feasible set with log_alpha - log_mu = gap per step (spec §2.5 table)."""
    la = math.log(alpha)
    return constant_gates(B, T, H, log_alpha=la, log_mu=la - gap, beta=beta, eta=eta, device=device, dtype=dtype)


# ----------------------------------------------------------------------------------------------- inputs
def cu_seqlens_of(lengths, device="cpu") -> torch.Tensor:
    cs = [0]
    for n in lengths:
        cs.append(cs[-1] + int(n))
    return torch.tensor(cs, dtype=torch.int32, device=device)


def make_inputs(B, T, H, K, V, *, dtype=torch.float32, device="cpu", gates="spec", gate_kwargs=None,
                initial_state=False, lengths=None, state_scale: float = 1.0, requires_grad=False):
    """Random op inputs as a dict of keyword arguments.

    q, k, v ~ randn in ``dtype``; gates from ``gates`` ("spec", "layer", or a dict of [B,T,H] tensors) in fp32
    (fp64 when dtype is fp64); ``initial_state`` ~ state_scale * randn [2, N, H, K, V] in fp32 (fp64 likewise)
    when True. ``lengths`` (a list) makes a varlen batch: B must be 1 and sum(lengths) == T.
    """
    gdtype = torch.float64 if dtype == torch.float64 else torch.float32
    if lengths is not None:
        if B != 1 or sum(lengths) != T:
            raise ValueError(f"lengths {lengths} need B == 1 and sum == T={T}")
    N = B if lengths is None else len(lengths)
    x = {
        "q": torch.randn(B, T, H, K, dtype=dtype, device=device),
        "k": torch.randn(B, T, H, K, dtype=dtype, device=device),
        "v": torch.randn(B, T, H, V, dtype=dtype, device=device),
    }
    gate_kwargs = gate_kwargs or {}
    if isinstance(gates, dict):
        g = {n: gates[n].to(device=device, dtype=gdtype) for n in GATE_NAMES}
    elif gates == "spec":
        g = spec_gates(B, T, H, device=device, dtype=gdtype, **gate_kwargs)
    elif gates == "layer":
        g = layer_gates(B, T, H, device=device, dtype=gdtype, **gate_kwargs)
    else:
        raise ValueError(f"gates={gates!r}: expected 'spec', 'layer' or a dict")
    x.update(g)
    if initial_state:
        x["initial_state"] = state_scale * torch.randn(2, N, H, K, V, dtype=gdtype, device=device)
    if lengths is not None:
        x["cu_seqlens"] = cu_seqlens_of(lengths, device=device)
    if requires_grad:
        for n, t in x.items():
            if t.is_floating_point():
                t.requires_grad_(True)
    return x


def to_fp64(inputs: dict, requires_grad=False, device=None) -> dict:
    """Detached float64 copies of the floating tensors (integers such as cu_seqlens are copied as they are)."""
    out = {}
    for n, t in inputs.items():
        if isinstance(t, torch.Tensor):
            t = t.detach().to(device=device or t.device)
            if t.is_floating_point():
                t = t.to(torch.float64).requires_grad_(requires_grad)
            out[n] = t
        else:
            out[n] = t
    return out


def run_op(op, inputs: dict, *, grads=(), do=None, dht=None, **kwargs):
    """Call ``op(**inputs, **kwargs)``; if ``grads`` names inputs, back-propagate sum(o*do) [+ sum(ht*dht)].

    The named inputs are replaced by fresh leaves (so the same dict can be reused). Returns
    (o, final_state, {name: grad}).
    """
    args = dict(inputs)
    for n in grads:
        args[n] = inputs[n].detach().clone().requires_grad_(True)
    if dht is not None:
        kwargs.setdefault("output_final_state", True)
    o, ht = op(**args, **kwargs)
    g = {}
    if grads:
        loss = (o * (do if do is not None else torch.ones_like(o)).to(o.dtype)).sum()
        if dht is not None:
            loss = loss + (ht * dht.to(ht.dtype)).sum()
        loss.backward()
        g = {n: args[n].grad for n in grads}
    return o, ht, g


def run_op_per_env(monkeypatch, var: str, values, op, inputs: dict, **kwargs) -> dict:
    """run_op once per value of the environment knob ``var`` (same inputs, gradients as ``kwargs`` say):
    {value: (o, final_state, grads)}, for A/B checks of the op's knobs with assert_same_results."""
    out = {}
    for value in values:
        monkeypatch.setenv(var, value)
        out[value] = run_op(op, inputs, **kwargs)
    return out


def assert_same_results(a, b, tol: float) -> None:
    """Two run_op results (o, final_state, grads) agree within the relative RMS ``tol`` everywhere."""
    (ao, aht, ag), (bo, bht, bg) = a, b
    assert rel_rms(ao, bo) <= tol and rel_rms(aht, bht) <= tol
    assert set(ag) == set(bg)
    for n in ag:
        assert rel_rms(ag[n], bg[n]) <= tol, (n, rel_rms(ag[n], bg[n]))


def assert_knob_values_agree(monkeypatch, var: str, base: str, value: str, inputs: dict, tol: float,
                             chunk_size: int) -> None:
    """The chunk op with the environment knob var = base and var = value on the same inputs (an initial state
    required), with the same random upstream gradients of o and the final state: outputs, final state and every
    gradient within the relative RMS tol."""
    from mdn.ops.momentum_delta_rule.chunk import chunk_momentum_delta_rule
    q, v, h0 = inputs["q"], inputs["v"], inputs["initial_state"]
    do = torch.randn(*v.shape, dtype=torch.float64, device=v.device)
    dht = torch.randn(*h0.shape[:3], q.shape[-1], v.shape[-1], dtype=torch.float64, device=v.device)
    out = run_op_per_env(monkeypatch, var, (base, value), chunk_momentum_delta_rule, inputs,
                         grads=ALL_GRAD_NAMES, do=do, dht=dht, chunk_size=chunk_size)
    assert_same_results(out[base], out[value], tol)


def assert_gpu_knob_matches_and_oracle(monkeypatch, var: str, base: str, value: str, K: int, V: int,
                                       tol: float) -> None:
    """The op on the GPU (bf16, B 2, T 1000, H 2, layer gates, an initial state and a final-state gradient, chunk
    64) with the environment knob var = value: base's outputs and gradients within the relative RMS tol, and the
    bf16 tolerances against the fp64 recurrence (o 5e-3, grads 1e-2; fla issue 640 shows as a wrong dk)."""
    from mdn.ops.momentum_delta_rule.chunk import chunk_momentum_delta_rule
    inputs = make_inputs(2, 1000, 2, K, V, dtype=torch.bfloat16, device="cuda", gates="layer", initial_state=True)
    do = torch.randn(2, 1000, 2, V, dtype=torch.float64, device="cuda")
    dht = torch.randn(2, 2, 2, K, V, dtype=torch.float64, device="cuda")
    out = run_op_per_env(monkeypatch, var, (base, value), chunk_momentum_delta_rule, inputs,
                         grads=ALL_GRAD_NAMES, do=do, dht=dht, chunk_size=64)
    assert_same_results(out[base], out[value], tol)
    monkeypatch.setenv(var, value)
    compare_with_oracle(inputs, dtype=torch.bfloat16, tol_o=5e-3, tol_grad=1e-2, op_kwargs=dict(chunk_size=64))


def assert_knob_matches_oracle_small(monkeypatch, var: str, value: str, device) -> None:
    """The op with the environment knob var = value against the fp64 recurrence at small shapes: fp32 (dense with
    an initial state, C 32; varlen with a length-1 sequence, C 16) at 1e-5, and bf16 with layer gates at the bf16
    tolerances (o 5e-3, grads and states 1e-2)."""
    monkeypatch.setenv(var, value)
    inputs = make_inputs(1, 100, 2, 32, 40, device=device, initial_state=True)
    compare_with_oracle(inputs, dtype=torch.float32, tol_o=1e-5, tol_grad=1e-5, op_kwargs={"chunk_size": 32})
    inputs = make_inputs(1, 100, 2, 64, 64, dtype=torch.bfloat16, device=device, gates="layer", initial_state=True)
    compare_with_oracle(inputs, dtype=torch.bfloat16, tol_o=5e-3, tol_grad=1e-2, tol_state=1e-2,
                        op_kwargs={"chunk_size": 32})
    lengths = [1, 37, 16, 50]
    inputs = make_inputs(1, sum(lengths), 2, 16, 24, device=device, initial_state=True, lengths=lengths)
    compare_with_oracle(inputs, dtype=torch.float32, tol_o=1e-5, tol_grad=1e-5, op_kwargs={"chunk_size": 16})


def pqk_scan_operands(B, T, H, K, V, C, dtype, device):
    """The pqk scan's operands (u, p, q, kw, a, aqk, r, g) for random inputs (dense, T a multiple of C, layer gates;
    16-bit dtypes give bf16 operands), and the chunk offsets."""
    from mdn.ops.momentum_delta_rule.chunk_intra_pqk import chunk_mdn_intra_pqk
    x = make_inputs(B, T, H, K, V, device=device, gates="layer")
    NT = T // C

    def pack(t):  # [B, T, H, D] -> [B * NT, H, C, D]
        return t.reshape(B, NT, C, H, -1).transpose(2, 3).reshape(B * NT, H, C, -1)

    q, k, v = (pack(x[n]) for n in ("q", "k", "v"))
    gates = [pack(x[n][..., None])[..., 0] for n in ("log_alpha", "beta", "log_mu", "eta")]
    op_dtype = torch.float32 if dtype == torch.float32 else torch.bfloat16
    intra = chunk_mdn_intra_pqk(q, k, v, *gates, scale=K ** -0.5, use_qk_l2norm_in_kernel=True, use_p_times_alpha=True,
                                out_dtype=op_dtype, bf16_gemm=op_dtype != torch.float32)
    off = torch.arange(B + 1, device=device, dtype=torch.int32) * NT
    return intra, off


def assert_compiled_op_matches_eager(B, T, H, K, V, *, chunk_size: int, device, tol: float = 1e-5) -> None:
    """The chunk op inside a caller's torch.compile(fullgraph=True) (aot_eager) gives the eager numbers, outputs,
    final state and every gradient: no graph break, and the custom ops' fakes and autograd hold."""
    from mdn.ops.momentum_delta_rule.chunk import chunk_momentum_delta_rule
    torch._dynamo.reset()
    inputs = make_inputs(B, T, H, K, V, device=device, initial_state=True)
    do = torch.randn(B, T, H, V, dtype=torch.float64, device=device)
    dht = torch.randn(2, B, H, K, V, dtype=torch.float64, device=device)
    kw = dict(grads=ALL_GRAD_NAMES, do=do, dht=dht, chunk_size=chunk_size)
    eager = run_op(chunk_momentum_delta_rule, inputs, **kw)
    op = torch.compile(chunk_momentum_delta_rule, fullgraph=True, backend="aot_eager")
    assert_same_results(eager, run_op(op, inputs, **kw), tol)


# ----------------------------------------------------------------------------------------------- fixtures
def _fixture_of(fn):
    @pytest.fixture(name=fn.__name__)
    def _f():
        return fn
    return _f


rel_rms_fixture = _fixture_of(rel_rms)
assert_rel_fixture = _fixture_of(assert_rel)
spec_gates_fixture = _fixture_of(spec_gates)
layer_gates_fixture = _fixture_of(layer_gates)
constant_gates_fixture = _fixture_of(constant_gates)
gap_gates_fixture = _fixture_of(gap_gates)
make_inputs_fixture = _fixture_of(make_inputs)
to_fp64_fixture = _fixture_of(to_fp64)
cu_seqlens_of_fixture = _fixture_of(cu_seqlens_of)
run_op_fixture = _fixture_of(run_op)


def compare_with_oracle(inputs, *, dtype, tol_o, tol_grad, tol_state=None, grads=None, op_kwargs=None,
                        ref_kwargs=None, op=None):
    """op (default chunk_momentum_delta_rule) and the fp64 recurrence with the same random upstream grads for o and
    the final state; asserts every error against its tolerance (states: tol_state, default tol_o) and returns
    them. grads: the inputs to differentiate (default every one present); ref_kwargs: the oracle's keyword
    arguments (default op_kwargs without chunk_size)."""
    from mdn.ops.momentum_delta_rule.chunk import chunk_momentum_delta_rule
    from mdn.ops.naive import naive_recurrent_momentum_delta_rule
    op = op or chunk_momentum_delta_rule
    op_kwargs = dict(op_kwargs or {})
    ref_kwargs = dict(ref_kwargs if ref_kwargs is not None else op_kwargs)
    ref_kwargs.pop("chunk_size", None)
    tol_state = tol_state if tol_state is not None else tol_o
    grads = tuple(g for g in (grads if grads is not None else ALL_GRAD_NAMES) if g in inputs)
    B, T, H, V = inputs["v"].shape
    K = inputs["q"].shape[-1]
    N = B if inputs.get("cu_seqlens") is None else inputs["cu_seqlens"].numel() - 1
    do = torch.randn(B, T, H, V, dtype=torch.float64, device=inputs["q"].device)
    dht = torch.randn(2, N, H, K, V, dtype=torch.float64, device=inputs["q"].device)
    o, ht, g = run_op(op, inputs, grads=grads, do=do, dht=dht, **op_kwargs)
    assert o.dtype == dtype and o.shape == (B, T, H, V)
    assert ht.dtype == torch.float32 and ht.shape == (2, N, H, K, V)
    ro, rht, rg = run_op(naive_recurrent_momentum_delta_rule, to_fp64(inputs), grads=grads, do=do, dht=dht,
                         **ref_kwargs)
    errs = {"o": assert_rel("o", ro, o, tol_o),
            "S": assert_rel("S_T", rht[0], ht[0], tol_state),
            "M": assert_rel("M_T", rht[1], ht[1], tol_state)}
    for n in grads:
        assert g[n] is not None, f"no grad for {n}"
        assert g[n].dtype == inputs[n].dtype, f"grad {n} dtype {g[n].dtype}"
        errs["d" + n] = assert_rel("d" + n, rg[n], g[n], tol_grad)
    return errs


class JobCtx:
    """The runner's job context, recording metrics (tests of runner jobs)."""

    def __init__(self):
        self.metrics = []

    def metric(self, d):
        self.metrics.append(d)

    def progress(self, *a, **k):
        pass


def bench_params(**kw) -> dict:
    """Parameters of a `bench` / `verify` runner job at a tiny CPU shape (the naive op), with overrides."""
    p = dict(op="mdn_naive", chunk_size=16, BK="auto", BV="auto", num_warps="auto", num_stages="auto",
             constraint="layer_init", dtype="float32", mode="fwd", B=2, T=24, H=2, K=8, V=8,
             check_shape=dict(B=1, T=20, H=2, K=8, V=8), check=True, tolerance=0, seed=0, device="cpu",
             timer="wall_clock", warmup_ms=0, rep_ms=5, allow_naive_fallback=False, official_path="")
    p.update(kw)
    return p



# ----------------------------------------------------------------------------------------------- sm_90 compiles
# Ahead-of-time compiles for Hopper on the CPU (ptxas ships with Triton's wheel): the resource tests of the scan and
# intra kernels (tests/ops/test_scan_resources.py, test_intra_resources.py) and scripts/scan_regs.py.
HOPPER_SHARED_LIMIT = 232448  # bytes per block (227 KB), sm_90


def _have_ptxas() -> bool:
    try:
        import triton.backends.nvidia as nv
    except ImportError:
        return False
    path = os.path.join(os.path.dirname(nv.__file__), "bin", "ptxas")
    return os.path.exists(path) or shutil.which("ptxas") is not None


def ptxas_path() -> str:
    import triton.backends.nvidia as nv
    path = os.path.join(os.path.dirname(nv.__file__), "bin", "ptxas")
    return path if os.path.exists(path) else (shutil.which("ptxas") or path)


def compile_sm90(kernel, sig: dict, consts: dict, num_warps: int, ptxas: bool = True, num_stages: int = 1,
                 divisible: tuple = ()) -> dict:
    """Compile a Triton kernel for sm_90 on the CPU: sig maps the runtime arguments to Triton types ("*bf16",
    "i32", ...), consts the constexprs. Returns {"shared", "tma_loads", "ld_b16"} and, with ptxas=True, "regs",
    "stack", "spill_st", "spill_ld" from `ptxas -v --gpu-name sm_90a`. Every pointer is taken as 16-byte aligned,
    as the launchers' torch allocations are, and so is every integer named in ``divisible`` (arguments the
    launchers always pass as multiples of 16, which Triton's launcher then specialises, unless the kernel lists
    them in do_not_specialize: then not). "ld_b16" counts scalar 16-bit global loads in the PTX (one bf16 a thread
    at a time: unaligned or uncoalesced tiles)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    consts = dict(consts)
    # every constexpr with a default that consts leaves out: its default, as a launch without it gets (ASTSource
    # applies none; left out, a flag compiles as None, e.g. the tail kernel's X and R: an empty kernel)
    for prm in kernel.params:
        if prm.is_constexpr and prm.default is not inspect.Parameter.empty:
            consts.setdefault(prm.name, prm.default)
    sig = dict(sig)
    sig.update({n: "constexpr" for n in consts})
    attrs = {(i,): [["tt.divisibility", 16]] for i, n in enumerate(kernel.arg_names)
             if sig.get(n, "").startswith("*") or (n in divisible and not kernel.params[i].do_not_specialize)}
    src = ASTSource(fn=kernel, signature=sig, constexprs=consts, attrs=attrs)
    k = triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": num_warps, "num_stages": num_stages})
    # "tma_loads": descriptor (bulk tensor) copies in the PTX, 0 on the pointer path
    res = {"shared": k.metadata.shared, "tma_loads": k.asm["ptx"].count("cp.async.bulk.tensor"),
           "ld_b16": len(re.findall(r"\bld\.global(?![^\s]*\.v[248]\.)[^\s]*\.[bfsu]16\s", k.asm["ptx"]))}
    if not ptxas:
        return res
    with tempfile.TemporaryDirectory() as d:
        ptx = os.path.join(d, "k.ptx")
        with open(ptx, "w") as f:
            f.write(k.asm["ptx"])
        r = subprocess.run([ptxas_path(), "-v", "--gpu-name", "sm_90a", ptx, "-o", os.path.join(d, "k.cubin")],
                           capture_output=True, text=True)
    if r.returncode != 0:
        msg = f"ptxas exit {r.returncode}: {(r.stderr or r.stdout).strip()[:400]}"
        if HAS_CUDA:
            # seen on the H100 machine (2026-11-28): its Triton's ptxas exits 255 on every offline-compiled PTX; the
            # kernels run there for real, and CI (no GPU) keeps this check strict
            pytest.skip(f"offline sm_90 compile not available on this GPU machine ({msg})")
        raise RuntimeError(msg)
    info = r.stderr

    def num(pattern: str) -> int:
        m = re.search(pattern, info)
        if m is None:
            raise RuntimeError(f"ptxas -v output without {pattern!r}:\n{info}")
        return int(m.group(1))

    res.update(regs=num(r"Used (\d+) registers"), stack=num(r"(\d+) bytes stack frame"),
               spill_st=num(r"(\d+) bytes spill stores"), spill_ld=num(r"(\d+) bytes spill loads"))
    return res


_COMPILE_CHILD = """
import importlib, json, sys
sys.path.insert(0, sys.argv[1])
from conftest import compile_sm90
a = json.loads(sys.argv[2])
try:
    res = compile_sm90(getattr(importlib.import_module(a["module"]), a["kernel"]), a["sig"], a["consts"], a["warps"],
                       num_stages=a["stages"], divisible=tuple(a["divisible"]))
except BaseException as e:  # pytest.skip inside compile_sm90 (a GPU machine whose ptxas rejects the PTX)
    if type(e).__name__ != "Skipped":
        raise
    res = {"skip": str(e)}
print(json.dumps(res))
"""


def compile_sm90_child(module: str, kernel: str, sig: dict, consts: dict, num_warps: int, num_stages: int = 1,
                       divisible: tuple = ()) -> dict:
    """compile_sm90 of ``module.kernel`` in a child Python without TRITON_INTERPRET: under the interpreter (CI) the
    test process's @triton.jit functions are interpreted ones that cannot be compiled, so resource checks that
    called compile_sm90 directly skipped there. Skips where compile_sm90 would."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    arg = json.dumps({"module": module, "kernel": kernel, "sig": sig, "consts": consts, "warps": num_warps,
                      "stages": num_stages, "divisible": list(divisible)})
    r = subprocess.run([sys.executable, "-c", _COMPILE_CHILD, os.path.dirname(os.path.abspath(__file__)), arg],
                       capture_output=True, text=True, env=env, cwd=os.path.dirname(os.path.dirname(
                           os.path.abspath(__file__))))
    if r.returncode != 0:
        raise RuntimeError(f"compiling {module}.{kernel} for sm_90 failed:\n{r.stderr[-2000:]}")
    res = json.loads(r.stdout.strip().splitlines()[-1])
    if "skip" in res:
        pytest.skip(res["skip"])
    return res


def record_results(monkeypatch, owner, name: str) -> list:
    """Wrap owner.name (a module's function) for the test: every call goes through, and its result is appended to
    the returned list, so a test can tell what a launcher decided."""
    results = []
    real = getattr(owner, name)

    def spy(*args, **kwargs):
        out = real(*args, **kwargs)
        results.append(out)
        return out
    monkeypatch.setattr(owner, name, spy)
    return results


@pytest.fixture
def pqk_fwd_calls(monkeypatch):
    """Records the keyword-argument names of every pqk forward-scan launch (chunk_scan_pqk.scan_pqk_fwd_impl): a
    state recompute passes vt, a forward that stores the states store_states; so a test can tell which ran. v_in
    (MDN_SCAN_V, the scan's input, not which path ran) is left out."""
    from mdn.ops.momentum_delta_rule import chunk_scan_pqk as sp
    calls = []
    real = sp.scan_pqk_fwd_impl

    def spy(*a, **kw):
        calls.append(sorted(k for k in kw if k != "v_in"))
        return real(*a, **kw)
    monkeypatch.setattr(sp, "scan_pqk_fwd_impl", spy)
    return calls
