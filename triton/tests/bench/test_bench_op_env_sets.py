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
