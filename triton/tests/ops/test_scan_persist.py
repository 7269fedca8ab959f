"""The persistent reverse scan (MDN_SCAN_PERSIST; chunk_scan.persistent_plan, the PERSIST path of
chunk_scan_pqk.momentum_delta_rule_bwd_kernel_scan_pqk): dense batches' (V-block, sequence, head) streams cut into
pieces that groups of resident programs run back to back, handing a cut stream's gradient state from one group to
the next through a flag.

Checked: the plan's arithmetic (even shares, a stream cut at most once, only where it pays unless forced), the
kernel bit for bit against one program per stream (every output: dVt, dO's copy, the end-state gradients in each
format, dh0, the row sums, X) for plans that cut streams and that do not, with and without dht, bf16 and fp32, several
V-blocks; that the plan is really taken (and never for varlen batches); the op's outputs and every gradient bit for
bit against "off" and against the fp64 recurrence; the knob's checks. On the GPU the flags are awaited for real
(programs run concurrently): the same bit-for-bit checks at a forced plan and at the automatic one on a shape where
it pays, the occupancy figure, and the fp64 oracle. Outputs are NaN-poisoned (MDN_POISON_OUTPUTS=1)."""
from __future__ import annotations

import pytest
import torch

from conftest import (ALL_GRAD_NAMES, DEV, assert_same_results, compare_with_oracle, make_inputs, needs_kernels,
                      pqk_scan_operands, record_results, run_op_per_env)
from mdn.ops.momentum_delta_rule import chunk_scan as cs
from mdn.ops.momentum_delta_rule import chunk_scan_pqk as sp
from mdn.ops.momentum_delta_rule.chunk import chunk_momentum_delta_rule


@pytest.fixture(autouse=True)
def _pqk_tail(monkeypatch):
    monkeypatch.setenv("MDN_POISON_OUTPUTS", "1")
    monkeypatch.setenv("MDN_SCAN_FORM", "pqk")
    monkeypatch.setenv("MDN_BWD_DG", "tail")


@pytest.fixture
def plans(monkeypatch):
    """Every plan launch_scan_bwd gets from persistent_plan ((groups, steps) or None), in order."""
    return record_results(monkeypatch, cs, "persistent_plan")


@pytest.mark.parametrize("nh,n,nv,slots,forced,expected", [
    (24, 128, 16, 264, False, (16, 192)),   # H6 K256 V512 T 8192 on an H200: 2 rounds of 128 steps -> 192
    (48, 64, 16, 264, False, None),         # T 4096: 3 rounds of 64 = 192 steps either way: not worth it
    (48, 64, 16, 264, True, (16, 192)),
    (5, 12, 1, 3, True, (3, 20)),           # 60 steps over 3 groups
    (5, 12, 1, 3, False, (3, 20)),          # vs 2 rounds of 12 = 24 steps: 20 <= 0.9 * 24
    (2, 10, 1, 8, True, (2, 10)),           # more groups than streams: whole streams, no cut
    (2, 10, 4, 3, True, None),              # fewer resident programs than V-blocks: no group fits
    (7, 9, 2, 6, True, (3, 21)),            # uneven: 63 steps, 3 groups of 21 (the last one takes 21 too)
])
def test_persistent_plan(nh, n, nv, slots, forced, expected):
    assert cs.persistent_plan(nh, n, nv, slots, forced=forced) == expected


@pytest.mark.parametrize("nh,n,nv,slots", [(24, 128, 16, 264), (5, 12, 1, 3), (7, 9, 2, 6), (3, 4, 3, 7),
                                           (13, 5, 1, 4), (1, 1, 1, 1)])
def test_persistent_plan_covers_every_step_and_cuts_a_stream_at_most_once(nh, n, nv, slots):
    groups, length = cs.persistent_plan(nh, n, nv, slots, forced=True)
    assert groups * nv <= slots and length >= n
    steps = nh * n
    assert (groups - 1) * length < steps <= groups * length  # every group has work, all steps are covered
    for s in range(nh):  # stream s's steps [s n, (s + 1) n) fall into one group or two adjacent ones
        assert ((s + 1) * n - 1) // length - s * n // length <= 1


@pytest.mark.parametrize("value", ["fast", "-1", "0", "1.5", "on"])
def test_persist_env_rejects_bad_values(monkeypatch, value):
    monkeypatch.setenv("MDN_SCAN_PERSIST", value)
    with pytest.raises(ValueError, match="MDN_SCAN_PERSIST"):
        cs.scan_persist()


def test_op_rejects_a_bad_persist_value_before_any_kernel(monkeypatch):
    monkeypatch.setenv("MDN_SCAN_PERSIST", "fast")
    inputs = make_inputs(1, 20, 1, 16, 16)
    with pytest.raises(ValueError, match="MDN_SCAN_PERSIST='fast'"):
        chunk_momentum_delta_rule(**inputs)


def test_persist_env_values(monkeypatch):
    monkeypatch.delenv("MDN_SCAN_PERSIST", raising=False)
    assert cs.scan_persist() is None
    for value, want in (("auto", None), ("off", 0), ("264", 264), (" 7 ", 7)):
        monkeypatch.setenv("MDN_SCAN_PERSIST", value)
        assert cs.scan_persist() == want


def _flat(out):
    """launch_scan_bwd's outputs as a flat list of tensors (None left out)."""
    res = []
    for x in out:
        if isinstance(x, (tuple, list)):
            res += [t for t in x if t is not None]
        elif x is not None:
            res.append(x)
    return res


def _reverse_scan_runs(monkeypatch, plans, B, T, H, K, V, C, dtype, with_dht, slots, **kw):
    """The reverse scan with MDN_SCAN_PERSIST=off and =slots on the same operands: (off outputs, persistent
    outputs, the plan taken)."""
    (u, p, q, kw_, a, aqk, r, g), off = pqk_scan_operands(B, T, H, K, V, C, dtype, DEV)
    h0 = torch.randn(2, B, H, K, V, device=DEV)
    _, vt, _, hc = sp.scan_pqk_fwd_triton(u, p, q, kw_, a, aqk, r, g, h0, off, store_states=True)
    do = torch.randn(vt.shape, device=DEV).to(vt.dtype)
    dht = torch.randn(2, B, H, K, V, device=DEV) * 1e-2 if with_dht else None
    n = vt.shape[0] // B
    outs = []
    for value in ("off", str(slots)):
        monkeypatch.setenv("MDN_SCAN_PERSIST", value)
        plans.clear()
        dx = torch.full_like(vt, float("nan")) if kw.get("store_x") else None
        args = (p, q, kw_, a, aqk, r, g, do, dht, hc if kw.get("dg") else None, off)
        res = sp.scan_pqk_bwd_triton(*args, stacked=kw.get("stacked", False), dhc_q8=kw.get("q8", False), dx=dx,
                                     stream_chunks=n)
        outs.append(_flat(res) + ([dx] if dx is not None else []))
    return outs[0], outs[1], plans[-1] if plans else None


@needs_kernels
@pytest.mark.parametrize("B,T,H,K,V,C,dtype,with_dht,slots,opts", [
    (3, 128, 2, 32, 48, 16, torch.bfloat16, True, 5, {}),                      # 6 streams of 8: 5 groups of 10
    (3, 128, 2, 32, 48, 16, torch.bfloat16, False, 2, {"q8": True}),          # 2 groups: 24 steps each
    (2, 96, 3, 20, 100, 16, torch.float32, True, 8, {"dg": True, "store_x": True}),  # 2 V-blocks, row sums
    (2, 64, 2, 32, 130, 16, torch.bfloat16, True, 9, {"stacked": True}),      # 3 V-blocks, 3 groups
    (2, 64, 2, 32, 40, 16, torch.bfloat16, True, 64, {}),                      # more groups than streams: no cut
])
def test_persistent_reverse_scan_is_bit_identical(monkeypatch, plans, B, T, H, K, V, C, dtype, with_dht, slots,
                                                  opts):
    ref, out, plan = _reverse_scan_runs(monkeypatch, plans, B, T, H, K, V, C, dtype, with_dht, slots, **opts)
    assert plan is not None, "the persistent plan was not taken"
    assert len(ref) == len(out)
    for i, (x, y) in enumerate(zip(ref, out)):
        assert not y.float().isnan().any(), f"output {i} has unwritten (NaN) elements"
        assert torch.equal(x, y), f"output {i} differs: max {(x.float() - y.float()).abs().max().item()}"


def _op_inputs(B, T, H, K, V, dtype, device, lengths=None):
    return make_inputs(B, T, H, K, V, dtype=dtype, device=device, gates="layer", initial_state=True,
                       lengths=lengths)


@needs_kernels
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_op_with_persistent_scan_equals_off_and_oracle(monkeypatch, plans, dtype):
    # T = 100: the last chunk of each sequence is padded; 3 x 2 streams of 7 chunks (C 16) over 4 groups
    inputs = _op_inputs(3, 100, 2, 32, 40, dtype, DEV)
    do = torch.randn(3, 100, 2, 40, dtype=torch.float64, device=DEV)
    dht = torch.randn(2, 3, 2, 32, 40, dtype=torch.float64, device=DEV)
    out = run_op_per_env(monkeypatch, "MDN_SCAN_PERSIST", ("off", "4"), chunk_momentum_delta_rule, inputs,
                         grads=ALL_GRAD_NAMES, do=do, dht=dht, chunk_size=16)
    assert any(res is not None for res in plans), "the persistent plan was not taken"
    assert_same_results(out["off"], out["4"], 0.0)
    if dtype == torch.float32:  # the float64 check once (the bf16 run equals "off" bit for bit, checked elsewhere)
        monkeypatch.setenv("MDN_SCAN_PERSIST", "4")
        compare_with_oracle(inputs, dtype=dtype, tol_o=1e-5, tol_grad=1e-5, op_kwargs={"chunk_size": 16})


class _FakeCompiled:
    """What resident_programs reads of a compiled Triton kernel."""
    def __init__(self, n_regs, shared):
        self.n_regs, self.metadata = n_regs, type("Meta", (), {"shared": shared})()

    def _init_handles(self):
        pass


class _FakeKernel:
    def __init__(self, compiled):
        self.fn = type("Fn", (), {"__name__": "fake_scan_kernel"})()
        self.compiled = compiled

    def warmup(self, *args, **kwargs):
        if self.compiled is None:
            raise RuntimeError("does not compile")
        return self.compiled


@pytest.mark.parametrize("n_regs,shared,warps,expected", [
    (255, 45056, 4, 2 * 132),   # the K = 256 reverse scan on an H100 / H200: registers allow two per SM
    (128, 28672, 4, 4 * 132),   # 128 registers: four by registers (and threads allow 16)
    (96, 120000, 4, 1 * 132),   # shared memory allows one
    (32, 1024, 16, 4 * 132),    # threads: 2048 / (16 x 32) = 4
    (None, 0, 4, 0),            # a kernel that does not compile: no plan
])
def test_resident_programs_follows_the_occupancy_rules(monkeypatch, n_regs, shared, warps, expected):
    props = type("Props", (), dict(multi_processor_count=132, regs_per_multiprocessor=65536,
                                   shared_memory_per_multiprocessor=233472, max_threads_per_multi_processor=2048))()
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: props)
    monkeypatch.setattr(cs, "_RESIDENT", {})
    kernel = _FakeKernel(_FakeCompiled(n_regs, shared) if n_regs else None)
    assert cs.resident_programs(kernel, (1,), (), {"K": 256}, warps, 1, "cuda:0") == expected


@needs_kernels
def test_automatic_plan_uses_the_resident_programs(monkeypatch, plans):
    """The "auto" path of launch_scan_bwd on the CPU: never under the interpreter; with "compiled kernels on a GPU"
    and the occupancy figure stood in for (as a GPU would give them), the plan follows resident_programs and the results
    equal one program per stream bit for bit."""
    monkeypatch.delenv("MDN_SCAN_PERSIST", raising=False)
    (u, p, q, kw_, a, aqk, r, g), off = pqk_scan_operands(3, 64, 2, 32, 48, 16, torch.bfloat16, DEV)
    _, vt, _, _ = sp.scan_pqk_fwd_triton(u, p, q, kw_, a, aqk, r, g, None, off, store_states=True)
    do = torch.randn(vt.shape, device=DEV).to(vt.dtype)
    args = (p, q, kw_, a, aqk, r, g, do, None, None, off)
    ref = _flat(sp.scan_pqk_bwd_triton(*args, stacked=False, stream_chunks=4))
    assert plans == []  # the interpreter: no occupancy figure, one program per stream
    if DEV == "cuda":
        pytest.skip("the GPU side: test_gpu_automatic_plan_where_it_pays")
    asked = []
    monkeypatch.setattr(cs, "_compiled_kernels", lambda x: True)
    monkeypatch.setattr(cs, "resident_programs", lambda kernel, grid, *rest: asked.append(grid) or 4)
    out = _flat(sp.scan_pqk_bwd_triton(*args, stacked=False, stream_chunks=4))
    assert asked == [(1, 6)]          # the one-program-per-stream grid's kernel (1 V-block, 6 streams)
    assert plans == [(4, 6)]          # 24 steps over 4 groups instead of 2 rounds of 4 (8 steps vs 6)
    for x, y in zip(ref, out):
        assert torch.equal(x, y)


@needs_kernels
def test_varlen_batches_never_take_the_persistent_scan(monkeypatch, plans):
    monkeypatch.setenv("MDN_SCAN_PERSIST", "3")
    lengths = [1, 37, 16, 50]
    inputs = make_inputs(1, sum(lengths), 2, 16, 24, device=DEV, initial_state=True, lengths=lengths)
    compare_with_oracle(inputs, dtype=torch.float32, tol_o=1e-5, tol_grad=1e-5, op_kwargs={"chunk_size": 16})
    assert plans == []


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("B,T,H,K,V,slots", [
    (2, 1000, 4, 128, 128, 12),    # 8 streams of 16 chunks, 4 V-blocks: 3 groups, every stream boundary awaited
    (4, 1024, 6, 256, 512, 264),   # 24 x 16 streams of 16 chunks on an H200's 264: 16 groups of 24 steps
])
def test_gpu_persistent_scan_bit_identical_and_oracle(monkeypatch, plans, B, T, H, K, V, slots):
    inputs = _op_inputs(B, T, H, K, V, torch.bfloat16, "cuda")
    do = torch.randn(B, T, H, V, dtype=torch.float64, device="cuda")
    dht = torch.randn(2, B, H, K, V, dtype=torch.float64, device="cuda")
    for _ in range(2):  # twice: a missed flag would show as a difference that comes and goes
        out = run_op_per_env(monkeypatch, "MDN_SCAN_PERSIST", ("off", str(slots)), chunk_momentum_delta_rule, inputs,
                             grads=ALL_GRAD_NAMES, do=do, dht=dht, chunk_size=64)
        assert any(res is not None for res in plans), "the persistent plan was not taken"
        assert_same_results(out["off"], out[str(slots)], 0.0)
    monkeypatch.setenv("MDN_SCAN_PERSIST", str(slots))
    compare_with_oracle(inputs, dtype=torch.bfloat16, tol_o=5e-3, tol_grad=1e-2, op_kwargs={"chunk_size": 64})


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_automatic_plan_where_it_pays(monkeypatch, plans):
    """H6 K256 V512 with 24 sequence-heads (the 1.3B layer at T = 8192, here T = 1024): the automatic plan (resident
    programs from the compiled kernel) is taken on a Hopper-class GPU and gives the one-program-per-stream results
    bit for bit, repeatedly (a missed flag would show as a difference that comes and goes)."""
    monkeypatch.delenv("MDN_SCAN_PERSIST", raising=False)
    inputs = _op_inputs(4, 1024, 6, 256, 512, torch.bfloat16, "cuda")
    do = torch.randn(4, 1024, 6, 512, dtype=torch.float64, device="cuda")
    dht = torch.randn(2, 4, 6, 256, 512, dtype=torch.float64, device="cuda")
    auto = run_op_per_env(monkeypatch, "MDN_SCAN_PERSIST", ("auto",), chunk_momentum_delta_rule, inputs,
                          grads=ALL_GRAD_NAMES, do=do, dht=dht)["auto"]
    taken = [res for res in plans if res is not None]
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    resident = [v for k, v in cs._RESIDENT.items() if k[0] == "momentum_delta_rule_bwd_kernel_scan_pqk"]
    assert resident and all(sms <= r <= 32 * sms for r in resident), (resident, sms)
    if not taken:
        pytest.skip(f"the automatic plan does not pay on this GPU ({sms} SMs, resident programs {resident})")
    for _ in range(3):
        again = run_op_per_env(monkeypatch, "MDN_SCAN_PERSIST", ("auto", "off"), chunk_momentum_delta_rule, inputs,
                               grads=ALL_GRAD_NAMES, do=do, dht=dht)
        assert_same_results(auto, again["auto"], 0.0)
        assert_same_results(auto, again["off"], 0.0)
