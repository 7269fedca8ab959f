"""GatedDeltaNet resolves fla's op module when built, so that a torch.compile'd block never runs the import check
(traced by dynamo it failed: compile=true reported fla as not installed)."""
import types

import pytest

from mdn.layers import gated_deltanet as gd


def test_fla_module_is_resolved_at_construction(monkeypatch):
    fake = types.SimpleNamespace(name="fla.ops.gated_delta_rule")
    monkeypatch.setattr(gd, "_FLA_GDN", [])
    monkeypatch.setattr(gd, "fla_ops_available", lambda: True)
    monkeypatch.setattr(gd, "bypass_fla_hopper_guard", lambda: False)
    monkeypatch.setattr(gd.importlib, "import_module", lambda name: fake if name == fake.name else None)
    gd.GatedDeltaNet(hidden_size=32, num_heads=2, head_dim=8, mixer_impl="fla")
    assert gd._FLA_GDN == [fake]

    def no_check():
        raise AssertionError("the import check ran again")
    monkeypatch.setattr(gd, "fla_ops_available", no_check)
    assert gd.load_fla_gdn() is fake


def test_missing_fla_is_unavailable_at_first_use(monkeypatch):
    monkeypatch.setattr(gd, "_FLA_GDN", [])
    monkeypatch.setattr(gd, "fla_ops_available", lambda: False)
    gd.GatedDeltaNet(hidden_size=32, num_heads=2, head_dim=8, mixer_impl="fla")  # building is fine
    with pytest.raises(gd.MixerUnavailable, match="needs flash-linear-attention"):
        gd.load_fla_gdn()
