"""`dist_check` job: the torch.distributed smoke test that Slurm/torchrun launches run (docs/slurm.md)."""
from __future__ import annotations

import io
import socket

import pytest

from mdn.runner.jobs import dist_check
from mdn.runner.protocol import EventWriter, JobContext, JobError


def _ctx():
    return JobContext(EventWriter(io.StringIO()), "d", "dist_check")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_one_rank_gloo(monkeypatch):
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(_free_port()))
    out = dist_check.run({"backend": "gloo", "numel": 8, "steps": 2, "timeout_s": 30}, _ctx())
    assert out["world_size"] == 1 and out["rank"] == 0 and out["allreduce_sum"] == 1.0 and out["backend"] == "gloo"


def test_needs_torchrun_environment(monkeypatch):
    for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(k, raising=False)
    with pytest.raises(JobError) as e:
        dist_check.run({}, _ctx())
    assert e.value.kind == "user" and "torchrun" in e.value.message


@pytest.mark.parametrize("params", [{"backend": "mpi"}, {"numel": 0}])
def test_bad_params(monkeypatch, params):
    for k, v in {"RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "1"}.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(ValueError):
        dist_check.run(params, _ctx())
