"""bench_op.py --env-sets: parsing, and each run setting only its own knobs on top of the environment."""
import os

import pytest

from mdn.bench.bench_op import apply_env_set, parse_env_sets


def test_parse_env_sets():
    assert parse_env_sets("") == [[]]
    assert parse_env_sets("default|MDN_SCAN_STAGES=1,2,1 MDN_BWD_GEMM=stacked") == [
        [], [("MDN_SCAN_STAGES", "1,2,1"), ("MDN_BWD_GEMM", "stacked")]]
    assert parse_env_sets("MDN_CHUNK_COMPILE_MODE=default") == [[("MDN_CHUNK_COMPILE_MODE", "default")]]
    for bad in ("MDN_X", "PATH=/x", "default||default", "default|MDN_CHUNK_COMPILE_MODE=max-autotune"):
        with pytest.raises(ValueError, match="--env-sets"):
            parse_env_sets(bad)


def test_apply_env_set_restores_what_it_changed(monkeypatch):
    monkeypatch.setenv("MDN_BWD_GEMM", "planes")
    monkeypatch.delenv("MDN_SCAN_STAGES", raising=False)
    apply_env_set([("MDN_BWD_GEMM", "stacked"), ("MDN_SCAN_STAGES", "2")])
    assert os.environ["MDN_BWD_GEMM"] == "stacked" and os.environ["MDN_SCAN_STAGES"] == "2"
    apply_env_set([])
    assert os.environ["MDN_BWD_GEMM"] == "planes" and "MDN_SCAN_STAGES" not in os.environ


def test_env_set_scan_config_survives_the_default_scan_config(monkeypatch):
    # an env set's MDN_SCAN_CONFIG used to be popped again by the (default) --scan-configs entry of the same run
    from mdn.bench.bench_op import apply_scan_config
    monkeypatch.delenv("MDN_SCAN_CONFIG", raising=False)
    env_set = [("MDN_SCAN_CONFIG", "32,4;16,4")]
    apply_env_set(env_set)
    apply_scan_config(None, env_set)
    assert os.environ["MDN_SCAN_CONFIG"] == "32,4;16,4"
    apply_env_set([])
    apply_scan_config(None, [])
    assert "MDN_SCAN_CONFIG" not in os.environ
    apply_scan_config("64,4", [])
    assert os.environ["MDN_SCAN_CONFIG"] == "64,4"
    apply_scan_config(None, [])
    assert "MDN_SCAN_CONFIG" not in os.environ
