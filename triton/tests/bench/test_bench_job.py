import math

import pytest

from conftest import JobCtx, bench_params
from mdn.bench import registry
from mdn.runner.jobs import bench, verify
from mdn.runner.protocol import JobError


Ctx = JobCtx
params = bench_params


def test_probe():
    r = bench.run({"probe": True, "device": "cpu"}, Ctx())
    assert r["device_name"].startswith("cpu") and r["versions"]["torch"] and r["import_s"] >= 0 and r["job_start_t"] > 0


def test_probe_without_cuda_is_unavailable():
    import torch
    if torch.cuda.is_available():
        pytest.skip("has CUDA")
    with pytest.raises(JobError) as e:
        bench.run({"probe": True, "device": "cuda"}, Ctx())
    assert e.value.kind == "unavailable"


@pytest.mark.parametrize("mode", ["fwd", "fwdbwd"])
def test_ok_result(mode):
    ctx = Ctx()
    r = bench.run(params(mode=mode), ctx)
    assert r["check"]["passed"] and r["timer"] == "wall_clock" and r["runs"] >= 3
    assert 0 < r["p20_ms"] <= r["median_ms"] <= r["p80_ms"]
    assert math.isclose(r["tokens_per_s"], 48 / (r["median_ms"] / 1e3))
    assert r["peak_mem_gib"] is None  # not measured on the CPU
    assert r["impl"] == "mdn.ops.naive_chunk_momentum_delta_rule"
    jt = r["job_timing"]
    assert jt["job_s"] >= jt["timed_s"] > 0 and jt["first_call_s"] > 0
    assert ctx.metrics and ctx.metrics[0]["device_name"].startswith("cpu")  # environment first, for failed rows


def test_verify_does_not_time():
    r = verify.run(params(mode="fwdbwd"), Ctx())
    assert r["check"]["passed"] and "median_ms" not in r and "dq" in r["check"]["errors"]


def test_no_check():
    r = bench.run(params(check=False), Ctx())
    assert r["check"] == {"skipped": True} and r["median_ms"] > 0


class _Broken(registry.MDNNaive):
    def __init__(self, when):
        self.when = when

    def call(self, impl, x, variant):
        o, st = super().call(impl, x, variant)
        if self.when == "always" or (self.when == "big" and o.shape[0] > 1):
            o = o.clone()
            o.view(-1)[0] = float("nan")
        return o, st


def test_incorrect_is_not_timed(monkeypatch):
    monkeypatch.setitem(registry.OPS, "mdn_naive", _Broken("always"))
    ctx = Ctx()
    with pytest.raises(JobError) as e:
        bench.run(params(), ctx)
    assert e.value.kind == "incorrect" and "correctness gate failed" in e.value.message
    assert ctx.metrics[-1]["check"]["passed"] is False and "o" in ctx.metrics[-1]["check"]["failed"]


def test_nan_at_the_timed_shape(monkeypatch):
    # passes the gate (B=1) but gives NaN at the timed shape (B=2)
    monkeypatch.setitem(registry.OPS, "mdn_naive", _Broken("big"))
    with pytest.raises(JobError) as e:
        bench.run(params(), Ctx())
    assert e.value.kind == "nan" and "B2 T24" in e.value.message


def test_unavailable_and_user_errors():
    with pytest.raises(JobError) as e:
        bench.run(params(op="gdn"), Ctx())
    assert e.value.kind == "unavailable" and "CUDA only" in e.value.message
    with pytest.raises(JobError) as e:
        bench.run(params(op="what"), Ctx())
    assert e.value.kind == "user" and "op='what'" in e.value.message
    with pytest.raises(JobError) as e:
        bench.run(params(mode="bwd"), Ctx())
    assert e.value.kind == "user"


def test_rows_record_the_kernel_knobs_of_the_environment(monkeypatch):
    monkeypatch.setenv("MDN_SCAN_FORM", "six")
    monkeypatch.setenv("MDN_PROTOCOL", "1")          # the launcher's, not a knob
    monkeypatch.setenv("TRITON_CACHE_DIR", "/tmp/x")  # a path, not a knob
    monkeypatch.setenv("HOME_UNRELATED", "1")
    r = bench.run(params(), Ctx())
    assert r["env"]["MDN_SCAN_FORM"] == "six"
    assert not {"MDN_PROTOCOL", "TRITON_CACHE_DIR", "HOME_UNRELATED"} & set(r["env"])
