import sys
import types

import pytest
import torch

from mdn.bench import check, registry
from mdn.bench.registry import OPS, Shape, Unavailable, Variant

TINY = Shape(B=1, T=20, H=2, K=8, V=8)


def _variant(op, **kw):
    return Variant.from_params({"op": op, "dtype": "float32", "constraint": "layer_init", "chunk_size": 16, **kw})


def test_ops_match_the_go_list():
    # sweep.Ops in sweep/fields.go holds the same names
    assert list(OPS) == ["mdn", "mdn_recurrent", "mdn_naive", "official", "gdn", "kda", "ssd", "sdpa"]


@pytest.mark.parametrize("op", ["mdn_naive", "sdpa"])
@pytest.mark.parametrize("mode", ["fwd", "fwdbwd"])
def test_gate_passes_on_cpu(op, mode):
    o = registry.get(op)
    v = _variant(op)
    fn = o.load(v, {"device": "cpu", "mode": mode})
    res = check.gate(o, fn, v, TINY, "cpu", mode)
    assert res["passed"], res
    assert ("dq" in res["errors"]) == (mode == "fwdbwd")
    assert ("state" in res["errors"]) == o.has_state


def test_gate_passes_for_the_triton_chunk_op():
    o = registry.get("mdn")
    v = _variant("mdn")
    fn = o.load(v, {"device": "cpu", "mode": "fwdbwd"})
    res = check.gate(o, fn, v, Shape(B=1, T=20, H=1, K=8, V=8), "cpu", "fwdbwd")
    assert res["passed"], res
    assert set(res["errors"]) == {"o", "state", "dq", "dk", "dv", "dlog_alpha", "dbeta", "dlog_mu", "deta"}


class _Wrong(registry.MDNNaive):
    """The naive op with one thing broken, to show the gate catches it."""
    def __init__(self, what):
        self.what = what

    def call(self, impl, x, variant):
        o, st = super().call(impl, x, variant)
        if self.what == "output":
            o = o * 1.1
        elif self.what == "nan":
            o = o.clone()
            o.view(-1)[3] = float("nan")
        elif self.what == "grad":  # right values, wrong gradient for v
            o = o + (x["v"] - x["v"].detach()) * 0.3
        return o, st


@pytest.mark.parametrize("what", ["output", "nan", "grad"])
def test_gate_fails_a_wrong_op(what):
    o = _Wrong(what)
    v = _variant("mdn_naive")
    fn = o.load(v, {})
    res = check.gate(o, fn, v, TINY, "cpu", "fwdbwd")
    assert not res["passed"]
    assert ("dv" in res["failed"]) if what == "grad" else ("o" in res["failed"])
    assert "correctness gate failed" in check.describe_failure(res)


def test_tolerance_override():
    o = _Wrong("output")
    v = _variant("mdn_naive")
    res = check.gate(o, o.load(v, {}), v, TINY, "cpu", "fwd", tolerance=0.2)
    assert res["passed"] and res["tol"]["output"] == 0.2


@pytest.mark.parametrize("op,params,shape,match", [
    ("gdn", {}, TINY, "CUDA only"),
    ("kda", {"chunk_size": 32}, TINY, "CUDA only"),
    ("kda", {}, TINY, "chunk_size 32, 64"),
    ("ssd", {}, TINY, "CUDA only"),
    ("sdpa", {}, Shape(1, 20, 2, 8, 16), "K == V"),
    ("gdn", {"chunk_size": 128}, TINY, "chunk_size 16, 32, 64"),
    ("official", {}, TINY, "chunk_size 64"),
    ("official", {"chunk_size": 64}, TINY, "no official MDN code configured"),
    ("mdn_naive", {"num_warps": 4}, TINY, "overrides"),
    ("mdn", {"BK": 32}, TINY, "takes no tile/warp/stage overrides"),
])
def test_unavailable_reasons(op, params, shape, match, monkeypatch):
    monkeypatch.delenv("MDN_OFFICIAL_PATH", raising=False)
    o = registry.get(op)
    v = _variant(op, **params)
    with pytest.raises(Unavailable, match=match):
        o.supports(v, shape, "cpu")
        o.load(v, {"device": "cpu", "mode": "fwd"})


def test_official_path_checked(tmp_path):
    o = registry.get("official")
    v = _variant("official", chunk_size=64)
    with pytest.raises(Unavailable, match="holds no fla/ops/momentum_delta_rule"):
        o.load(v, {"device": "cuda", "official_path": str(tmp_path)})


def test_variant_validation():
    with pytest.raises(ValueError, match="op='nope'"):
        Variant.from_params({"op": "nope"})
    with pytest.raises(ValueError, match="dtype='fp8'"):
        Variant.from_params({"op": "mdn", "dtype": "fp8"})
    with pytest.raises(ValueError, match="constraint="):
        Variant.from_params({"op": "mdn", "constraint": "tri"})
    v = Variant.from_params({"op": "mdn", "BK": 64, "num_warps": "auto", "chunk_size": 32})
    assert v.overrides() == {"BK": 64} and v.chunk_size == 32
    with pytest.raises(ValueError, match="missing 'V'"):
        Shape.from_dict({"B": 1, "T": 1, "H": 1, "K": 1})


def test_mdn_falls_back_only_when_asked(monkeypatch):
    import mdn.ops
    monkeypatch.delattr(mdn.ops, "chunk_momentum_delta_rule", raising=False)
    monkeypatch.setattr(mdn.ops, "__getattr__", lambda name: (_ for _ in ()).throw(AttributeError(name)), raising=False)
    o = registry.MDNChunk()
    v = _variant("mdn")
    with pytest.raises(Unavailable, match="no chunk_momentum_delta_rule"):
        o.load(v, {})
    fn = o.load(v, {"allow_naive_fallback": True})
    assert fn is mdn.ops.naive_chunk_momentum_delta_rule
    assert "FALLBACK" in o.notes(v, "fwd")[0] and "fallback" in o.impl_label


def test_isolated_fla_import(tmp_path, monkeypatch):
    # A second package called `fla` is imported without disturbing the one already loaded.
    pkg = tmp_path / "fla" / "ops" / "momentum_delta_rule"
    pkg.mkdir(parents=True)
    (tmp_path / "fla" / "__init__.py").write_text("WHO = 'official'\n")
    (tmp_path / "fla" / "ops" / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("from fla import WHO\ndef chunk_mode_rule(*a, **k):\n    return WHO\n")
    pypi = types.ModuleType("fla")
    pypi.WHO = "pypi"
    monkeypatch.setitem(sys.modules, "fla", pypi)
    monkeypatch.setattr(registry.Official, "_fn", None)
    o = registry.Official()
    fn = o.load(_variant("official", chunk_size=64), {"device": "cuda", "official_path": str(tmp_path)})
    assert fn() == "official"
    assert sys.modules["fla"] is pypi and "fla.ops" not in sys.modules
    assert str(tmp_path) not in sys.path


def test_hopper_guard_bypass(monkeypatch):
    fake = types.ModuleType("fla.ops.common.chunk_o")
    fake.IS_NVIDIA_HOPPER, fake.TRITON_ABOVE_3_4_0, fake.TRITON_ABOVE_3_7_1 = True, True, False
    monkeypatch.setitem(sys.modules, "fla.ops.common.chunk_o", fake)
    monkeypatch.setitem(registry._GUARD, "bypassed", False)
    assert registry.hopper_guard_bypassed() and fake.TRITON_ABOVE_3_7_1 is True
    gdn = registry.get("gdn")
    assert registry.GUARD_NOTE in gdn.notes(_variant("gdn"), "fwdbwd")
    assert gdn.notes(_variant("gdn"), "fwd") == []
    assert registry.get("kda").notes(_variant("kda"), "fwdbwd") == []  # KDA has its own backward
    # Not Hopper: nothing is touched.
    fake.IS_NVIDIA_HOPPER, fake.TRITON_ABOVE_3_7_1 = False, False
    monkeypatch.setitem(registry._GUARD, "bypassed", False)
    assert not registry.hopper_guard_bypassed() and fake.TRITON_ABOVE_3_7_1 is False


def test_inputs_shared_across_ops():
    # every op sees the same q, k, v and gates for the same seed
    a = registry.get("mdn").make_inputs(TINY, torch.float32, "cpu", "trig", seed=3)
    b = registry.get("gdn").make_inputs(TINY, torch.float32, "cpu", "trig", seed=3)
    c = registry.get("kda").make_inputs(TINY, torch.float32, "cpu", "trig", seed=3)
    assert torch.equal(a["q"], b["q"]) and torch.equal(a["log_alpha"], b["g"]) and torch.equal(a["beta"], b["beta"])
    assert c["g"].shape == (1, 20, 2, 8) and (c["g"] <= 0).all()
