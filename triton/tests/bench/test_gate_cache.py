"""The in-process caches of the correctness gate (verdicts and float64 references) and their use by the bench job."""
import pytest
import torch

from conftest import JobCtx, bench_params
from mdn.bench import check, registry
from mdn.bench.registry import Shape, Variant
from mdn.runner.jobs import bench, verify
from mdn.runner.protocol import JobError

TINY = Shape(B=1, T=20, H=2, K=8, V=8)


def _variant(op="mdn_naive", **kw):
    return Variant.from_params({"op": op, "dtype": "float32", "constraint": "layer_init", "chunk_size": 16, **kw})


def _gate(op, v, shape=TINY, mode="fwd", **kw):
    t = {}
    res = check.gate(op, op.load(v, {"device": "cpu", "mode": mode}), v, shape, "cpu", mode, cache=True, timing=t,
                     **kw)
    return res, t


Ctx = JobCtx


def params(**kw):
    return bench_params(**{"rep_ms": 2, "point": "p1", **kw})


def test_second_identical_gate_is_a_cached_hit():
    op, v = registry.get("mdn_naive"), _variant()
    a, ta = _gate(op, v, origin="p1")
    b, tb = _gate(op, v, origin="p2")
    assert a["passed"] and a["cached"] is False and ta["gate_cached"] is False and ta["reference_cached"] is False
    assert b["cached"] is True and b["cached_from"] == "p1" and tb == {"gate_cached": True}
    assert b["errors"] == a["errors"] and b["passed"] and check.GATES.hits == 1
    b["passed"] = False  # a caller's copy: the cached verdict is not touched
    c, _ = _gate(op, v, origin="p3")
    assert c["passed"] and c["cached_from"] == "p1"


@pytest.mark.parametrize("change", [
    dict(variant=dict(chunk_size=32)), dict(variant=dict(constraint="trig")), dict(variant=dict(dtype="bfloat16")),
    dict(shape=Shape(B=1, T=20, H=2, K=16, V=8)), dict(shape=Shape(B=1, T=16, H=2, K=8, V=8)),
    dict(mode="fwdbwd"), dict(seed=1), dict(tolerance=0.5)])
def test_a_different_key_is_a_miss(change):
    op = registry.get("mdn_naive")
    _gate(op, _variant())
    v = _variant(**change.get("variant", {}))
    res, t = _gate(op, v, shape=change.get("shape", TINY), mode=change.get("mode", "fwd"),
                   seed=change.get("seed", 0), tolerance=change.get("tolerance", 0.0))
    assert res["cached"] is False and t["gate_cached"] is False and len(check.GATES) == 2


def test_an_env_knob_is_part_of_the_key(monkeypatch):
    op, v = registry.get("mdn_naive"), _variant()
    monkeypatch.delenv("MDN_SCAN_FORM", raising=False)
    _gate(op, v)
    monkeypatch.setenv("MDN_SCAN_FORM", "pqk")
    res, _ = _gate(op, v)
    assert res["cached"] is False
    assert ("MDN_SCAN_FORM", "pqk") in check.env_knobs()
    assert all(k != "MDN_BENCH_CACHE" for k, _ in check.env_knobs({"MDN_BENCH_CACHE": "1", "MDN_X": "1", "HOME": "/"}))


def test_a_fwd_gate_does_not_reuse_a_fwdbwd_pass():
    op, v = registry.get("mdn_naive"), _variant()
    _gate(op, v, mode="fwdbwd")
    res, t = _gate(op, v, mode="fwd")
    assert res["cached"] is False and t["gate_cached"] is False
    # ... but the float64 reference taken with gradients serves the forward-only gate
    assert t["reference_cached"] is True and "dq" not in res["errors"]


class _Wrong(registry.MDNNaive):
    def call(self, impl, x, variant):
        o, st = super().call(impl, x, variant)
        return o * 1.1, st


def test_op_state_and_class_are_part_of_the_key():
    v = _variant()
    good, _ = _gate(registry.get("mdn_naive"), v)
    bad, t = _gate(_Wrong(), v)
    assert good["passed"] and not bad["passed"] and bad["cached"] is False
    assert t["reference_cached"] is True  # the same reference (and inputs) as mdn_naive's
    a, b = registry.MDNNaive(), registry.MDNNaive()
    b._extra = 1  # load-time state (tile overrides, fallbacks, paths live there)
    assert a.cache_token() != b.cache_token()


def test_a_cached_failure_stays_a_failure(monkeypatch):
    monkeypatch.setitem(registry.OPS, "mdn_naive", _Wrong())
    for i, T in enumerate((24, 48)):
        ctx = Ctx()
        with pytest.raises(JobError) as e:
            bench.run(params(T=T, point=f"p{i}"), ctx)
        assert e.value.kind == "incorrect"
        chk = ctx.metrics[-1]["check"]
        assert chk["passed"] is False and chk["cached"] is (i == 1)
    assert "cached verdict of point p0" in e.value.message


def test_bench_rows_show_the_cache():
    r1 = bench.run(params(T=24, point="a"), Ctx())
    r2 = bench.run(params(T=48, B=1, point="b"), Ctx())  # same gate (B and T are not in it), timed anew
    assert r1["check"]["cached"] is False and r1["job_timing"]["check_cached"] is False
    assert r1["job_timing"]["check_reference_cached"] is False and r1["job_timing"]["check_reference_s"] >= 0
    assert r2["check"]["cached"] is True and r2["check"]["cached_from"] == "a" and r2["check"]["passed"]
    assert r2["job_timing"]["check_cached"] is True and "check_reference_s" not in r2["job_timing"]
    assert r2["median_ms"] > 0
    for k in ("inputs_s", "first_call_s", "timed_s", "cleanup_s", "job_s"):
        assert r2["job_timing"][k] >= 0, k
    assert "peak_mem_s" not in r2["job_timing"]  # CUDA only
    # verify shares the worker's cache too
    r3 = verify.run(params(T=96, point="c"), Ctx())
    assert r3["check"]["cached"] is True


def test_cache_off(monkeypatch):
    monkeypatch.setenv("MDN_BENCH_CACHE", "0")
    bench.run(params(point="a"), Ctx())
    r = bench.run(params(point="b"), Ctx())
    assert r["check"]["cached"] is False and len(check.GATES) == 0 and len(check.REFERENCES) == 0


def test_mdn_family_shares_one_reference():
    v = _variant("mdn_recurrent")
    _gate(registry.get("mdn_naive"), _variant(), mode="fwdbwd")
    res, t = _gate(registry.get("mdn_recurrent"), v, mode="fwdbwd")
    assert res["passed"], res
    assert t["reference_cached"] is True and len(check.REFERENCES) == 1
    assert registry.get("official").reference_name == registry.get("mdn").reference_name
    keys = {check.reference_key(registry.get(n), _variant(n), TINY, "cpu", 0, True)
            for n in ("mdn", "mdn_recurrent", "mdn_naive", "official")}
    assert len(keys) == 1
    others = {check.reference_key(registry.get(n), _variant(n), TINY, "cpu", 0, True) for n in ("gdn", "kda", "ssd")}
    assert len(others) == 3 and not (others & keys)


def test_references_are_kept_on_the_cpu_and_match_a_fresh_gate():
    op, v = registry.get("mdn_naive"), _variant()
    fresh = check.gate(op, op.load(v, {}), v, TINY, "cpu", "fwdbwd")  # cache off: nothing stored
    assert len(check.REFERENCES) == 0 and len(check.GATES) == 0
    cached, _ = _gate(op, v, mode="fwdbwd")
    entry = next(iter(check.REFERENCES._d.values()))
    assert all(t.device.type == "cpu" for t in [entry["o"], entry["state"], *entry["grads"].values()])
    assert cached["errors"] == pytest.approx(fresh["errors"], rel=1e-9, abs=1e-15)


def test_lru_bounds():
    c = check.LRU(2)
    c.put("a", 1)
    c.put("b", 2)
    assert c.get("a") == 1  # a is now the most recent
    c.put("c", 3)
    assert "b" not in c and "a" in c and "c" in c and c.evictions == 1
    sized = check.LRU(10, max_bytes=100, sizeof=lambda v: v)
    for k, n in (("x", 60), ("y", 30), ("z", 30)):
        sized.put(k, n)
    assert "x" not in sized and sized.nbytes == 60
    sized.put("huge", 500)  # larger than the bound: kept alone (the newest entry is never evicted)
    assert len(sized) == 1 and "huge" in sized


def test_gate_cache_is_bounded(monkeypatch):
    monkeypatch.setattr(check.GATES, "max_entries", 2)
    op = registry.get("mdn_naive")
    for seed in range(4):
        _gate(op, _variant(), seed=seed)
    assert len(check.GATES) == 2 and check.GATES.evictions == 2
    res, _ = _gate(op, _variant(), seed=0)  # evicted: computed again
    assert res["cached"] is False


def test_gate_draws_are_copies():
    op = registry.get("mdn_naive")
    a = op.make_inputs(TINY, torch.float32, "cpu", "trig", seed=5)
    a["beta"].requires_grad_(True)
    a["beta"].data.fill_(7.0)
    b = op.make_inputs(TINY, torch.float32, "cpu", "trig", seed=5)
    assert not b["beta"].requires_grad and (b["beta"] < 1).all()
    from mdn.bench import gates
    ref = gates.make_gates("trig", 1, 20, 2, seed=5)
    assert all(torch.equal(b[n], ref[n]) for n in ref)
    assert len(registry._GATE_DRAWS) <= registry.GATE_DRAWS_MAX


class _WrongGrads(registry.MDNNaive):
    """A right forward with a wrong backward (the scale of every input gradient doubled)."""

    def call(self, impl, x, variant):
        o, st = super().call(impl, x, variant)
        return _DoubleGrad.apply(o), st


class _DoubleGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, o):
        return o.clone()

    @staticmethod
    def backward(ctx, do):
        return 2 * do


class _NoBackward(registry.MDNNaive):
    def call(self, impl, x, variant):
        if any(t.requires_grad for t in x.values()):
            raise NotImplementedError("no backward here")
        return super().call(impl, x, variant)


def test_a_fwd_point_with_check_mode_fwdbwd_shares_the_family_gate():
    fwd = bench.run(params(T=24, mode="fwd", check_mode="fwdbwd", point="f"), Ctx())
    assert fwd["check"]["mode"] == "fwd" and fwd["check"]["checked_with"] == "fwdbwd" and fwd["check"]["passed"]
    assert set(fwd["check"]["errors"]) == {"o", "state"} and fwd["check"]["cached"] is False
    both = bench.run(params(T=48, B=1, mode="fwdbwd", point="b"), Ctx())  # the family's fwdbwd point: a hit
    assert both["check"]["cached"] is True and both["check"]["cached_from"] == "f" and "dq" in both["check"]["errors"]
    assert len(check.GATES) == 1


def test_a_shared_gate_judges_a_fwd_point_by_its_forward_only(monkeypatch):
    monkeypatch.setitem(registry.OPS, "mdn_naive", _WrongGrads())
    fwd = bench.run(params(mode="fwd", check_mode="fwdbwd", point="f"), Ctx())
    assert fwd["check"]["passed"] and fwd["median_ms"] > 0
    with pytest.raises(JobError) as e:  # the same (cached) gate fails the fwdbwd point on its gradients
        bench.run(params(mode="fwdbwd", point="b"), Ctx())
    assert e.value.kind == "incorrect" and "cached verdict of point f" in e.value.message
    assert "dv" in e.value.message


def test_a_shared_gate_whose_backward_cannot_run_falls_back_to_the_forward_gate(monkeypatch):
    monkeypatch.setitem(registry.OPS, "mdn_naive", _NoBackward())
    r = bench.run(params(mode="fwd", check_mode="fwdbwd"), Ctx())
    assert r["check"]["passed"] and r["check"]["mode"] == "fwd" and "checked_with" not in r["check"]
    assert "NotImplementedError" in r["check"]["fwdbwd_gate_error"]


def test_check_mode_is_validated():
    for bad in (dict(mode="fwdbwd", check_mode="fwd"), dict(mode="fwd", check_mode="bwd")):
        with pytest.raises(JobError) as e:
            bench.run(params(**bad), Ctx())
        assert e.value.kind == "user" and "check_mode=" in e.value.message


def test_paths_that_libraries_set_mid_run_are_not_knobs(monkeypatch):
    op, v = registry.get("mdn_naive"), _variant()
    monkeypatch.delenv("TRITON_PTXAS_PATH", raising=False)
    _gate(op, v, origin="p1")
    monkeypatch.setenv("TRITON_PTXAS_PATH", "/somewhere/ptxas")  # what inductor does at its first compile
    monkeypatch.setenv("TRITON_CACHE_DIR", "/tmp/elsewhere")
    res, _ = _gate(op, v, origin="p2")
    assert res["cached"] is True and res["cached_from"] == "p1"


class _GuardedBackward(registry.MDNNaive):
    """Like fla's GDN on Hopper: the backward runs only when the op was loaded for a fwdbwd job."""

    def load(self, variant, params):
        self._for_bwd = params.get("mode") == "fwdbwd"
        return super().load(variant, params)

    def call(self, impl, x, variant):
        if any(t.requires_grad for t in x.values()) and not self._for_bwd:
            raise RuntimeError("guarded backward")
        return super().call(impl, x, variant)


def test_a_fwd_point_sharing_the_gate_loads_the_op_for_the_backward(monkeypatch):
    monkeypatch.setitem(registry.OPS, "mdn_naive", _GuardedBackward())
    fwd = bench.run(params(T=24, mode="fwd", check_mode="fwdbwd", point="f"), Ctx())
    assert fwd["check"]["checked_with"] == "fwdbwd" and "fwdbwd_gate_error" not in fwd["check"]
    both = bench.run(params(T=48, B=1, mode="fwdbwd", point="b"), Ctx())
    assert both["check"]["cached"] is True and both["check"]["cached_from"] == "f"
