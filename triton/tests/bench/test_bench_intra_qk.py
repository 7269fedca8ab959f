"""bench_intra_qk.py times what it says: its inputs drive the key/query kernels (on the GPU, or on the CPU under
TRITON_INTERPRET=1), a tile set changes only the summation order, its comparison is not blind to a wrong input, and
bad arguments are refused before anything runs."""
import os

import pytest
import torch
from conftest import DEV, needs_kernels

from mdn.bench import bench_intra_qk as bq


@needs_kernels
def test_tile_sets_agree_and_the_check_can_fail():
    x = bq.inputs(2, 32, 1, 128, 64, DEV)
    with bq.tile_set("default"):
        f = bq.forward(x)
        b = bq.backward(x, f[5])
    with bq.tile_set("16,2;16,2;16,2,3"):
        f2 = bq.forward(x)
        b2 = bq.backward(x, f2[5])
    assert all(torch.isfinite(t).all() for t in f + b + f2 + b2)  # outputs are poisoned with NaN before the kernels
    assert bq.max_rel(f, f2) < 1e-2 and bq.max_rel(b, b2) < 1e-2   # bf16 outputs, another summation order
    y = dict(x, daqk=x["daqk"] * 2)
    assert bq.max_rel(b, bq.backward(y, f[5])) > 0.1


def test_tile_set_sets_and_restores(monkeypatch):
    monkeypatch.setenv(bq.CONFIG_VAR, "32,4;32,4;32,4")
    with bq.tile_set("default"):
        assert bq.CONFIG_VAR not in os.environ
    with bq.tile_set("64,4;64,4;128,8"):
        assert bq.cq.qk_config("bwd", 256) == (128, 8)
    assert os.environ[bq.CONFIG_VAR] == "32,4;32,4;32,4"


@pytest.mark.parametrize("args,msg", [
    (["--configs", "default|64,3;64,4;64,4"], "MDN_INTRA_QK_CONFIG"),
    (["--configs", "64,4;64,4;64,4,9"], "stages in 1/2/3"),
    (["--shapes", "h9k9"], "--shapes"),
    (["--T", "100"], "--T 100"),
])
def test_bad_arguments_are_refused(capsys, args, msg):
    assert bq.main(args) == 2
    assert msg in capsys.readouterr().err
