"""Held-out perplexity and length extrapolation of a checkpoint (mdn.eval.perplexity, job ``eval``)."""
from __future__ import annotations

import json
import math
import os

import pytest
import torch

from mdn.eval.perplexity import (HELD_OUT_SEED_OFFSET, EvalConfig, evaluate_run, held_out_data, load_model,
                                 segment_bounds)

MODEL = {"arch": "transformer", "vocab_size": 256, "hidden_size": 32, "num_layers": 1, "attn_num_heads": 2}
DATA = {"source": "bytes", "corpus_bytes": 20000}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A tiny run trained by the real trainer (3 steps, checkpoint at the end)."""
    from mdn.train import TrainJob, train

    out = str(tmp_path_factory.mktemp("run"))
    params = {"name": "t", "out_dir": out, "resume": False, "model": MODEL,
              "train": {"steps": 3, "batch_size": 2, "seq_len": 16, "device": "cpu", "log_every": 1},
              "optim": {"lr": 3e-3, "warmup_steps": 1}, "data": DATA}
    train(TrainJob.from_params(params))
    with open(os.path.join(out, "job.json"), "w") as f:  # what mdnctl train writes next to config.toml
        json.dump({"v": 1, "id": "train", "kind": "train", "params": params}, f)
    return out


def cfg(run_dir, **kw):
    base = dict(run_dir=run_dir, model=MODEL, data=DATA, seq_len=16, batch_size=4, eval_tokens=256, device="cpu")
    base.update(kw)
    return EvalConfig(**base)


def test_segments():
    assert segment_bounds(16, 16) == [(0, 16)]
    assert segment_bounds(64, 16) == [(0, 16), (16, 32), (32, 64)]
    assert segment_bounds(40, 16) == [(0, 16), (16, 32), (32, 40)]


def test_held_out_rules():
    d, held, note = held_out_data({"source": "bytes", "corpus_seed": 7})
    assert held and d["corpus_seed"] == 7 + HELD_OUT_SEED_OFFSET and "corpus_seed" in note
    d, held, _ = held_out_data({"source": "shards", "path": "/train.bin"})
    assert not held and d["path"] == "/train.bin"
    d, held, _ = held_out_data({"source": "shards", "path": "/train.bin"}, val_path="/val.bin")
    assert held and d["path"] == "/val.bin"
    d, held, _ = held_out_data({"source": "hf", "hf_dataset": "x"}, hf_split="validation")
    assert held and d["hf_split"] == "validation"
    _, held, _ = held_out_data({"source": "hf", "hf_dataset": "x"})
    assert not held
    _, held, _ = held_out_data({"source": "synthetic"})
    assert held


def test_evaluate_run_lengths_and_segments(run_dir):
    metrics = []
    res = evaluate_run(cfg(run_dir), on_metric=metrics.append)
    assert res["step"] == 3 and res["held_out"] and res["train_seq_len"] == 16
    assert [r["seq_len"] for r in res["lengths"]] == [16, 32, 64]
    assert [m["seq_len"] for m in metrics] == [16, 32, 64]
    for rec in res["lengths"]:
        assert rec["status"] == "ok" and math.isfinite(rec["loss"]) and rec["tokens"] >= 256
        assert rec["ppl"] == pytest.approx(math.exp(rec["loss"]))
        seg = rec["segments"]
        assert seg[0]["from"] == 0 and seg[-1]["to"] == rec["seq_len"]
        # the whole-window loss is the position-weighted mean of the segment losses
        mean = sum(s["loss"] * (s["to"] - s["from"]) for s in seg) / rec["seq_len"]
        assert mean == pytest.approx(rec["loss"], rel=1e-9)
    assert res["ppl"] == res["lengths"][0]["ppl"] and res["ppl_4x"] == res["lengths"][2]["ppl"]
    assert res["loss"] < math.log(256) + 0.5  # a (barely) trained byte model, not garbage
    again = evaluate_run(cfg(run_dir))
    assert again["lengths"][0]["loss"] == res["lengths"][0]["loss"], "deterministic"


def test_loads_the_trained_weights(run_dir):
    from mdn.models import build_model
    from mdn.train import checkpoint
    from mdn.train.distributed import DistInfo

    path, _ = checkpoint.latest(run_dir)
    model, meta = load_model(path, None, torch.device("cpu"))
    ref = build_model(MODEL, device="cpu", seed=123)
    opt = torch.optim.AdamW(ref.parameters())
    checkpoint.load(path, ref, opt, DistInfo(0, 1, 0, torch.device("cpu"), False))
    for (n, a), (_, b) in zip(model.state_dict().items(), ref.state_dict().items()):
        assert torch.equal(a, b), n
    fresh = build_model(MODEL, device="cpu", seed=0)
    assert not torch.equal(fresh.embeddings.weight, model.embeddings.weight)


def test_errors(run_dir, tmp_path):
    with pytest.raises(ValueError, match="no checkpoint in"):
        evaluate_run(cfg(str(tmp_path)))
    with pytest.raises(ValueError, match=r"model\.hidden_size: the run config says 64"):
        evaluate_run(cfg(run_dir, model=dict(MODEL, hidden_size=64)))
    with pytest.raises(ValueError, match=r"factors = \[0\]"):
        cfg(run_dir, factors=[0]).validate()
    with pytest.raises(ValueError, match="checkpoint = .*: not a checkpoint directory"):
        evaluate_run(cfg(run_dir, checkpoint=str(tmp_path)))


def test_eval_job(run_dir):
    from mdn.runner.jobs import eval as job
    from mdn.runner.protocol import JobError

    class Ctx:
        metrics: list = []

        def metric(self, d):
            self.metrics.append(d)

        def progress(self, *a):
            pass

    params = {"run_dir": run_dir, "checkpoint": "", "model": MODEL, "data": DATA, "seq_len": 16,
              "factors": [1, 2], "batch_size": 4, "eval_tokens": 128, "val_path": "", "hf_split": "", "seed": 0,
              "device": "cpu", "precision": "auto"}
    res = job.run(params, Ctx())
    assert res["precision"] == "fp32" and "ppl_2x" in res and "ppl_4x" not in res
    with pytest.raises(JobError) as ei:
        job.run(dict(params, tokens=5), Ctx())
    assert ei.value.kind == "user" and "tokens: unknown eval parameter" in ei.value.message
    assert res["device_name"].startswith("cpu") and "torch" in res["versions"]


def test_eval_as_a_sweep_task(run_dir, tmp_path):
    """A sweep point: bookkeeping keys ignored, model/data/seq_len from the run's job.json, probe answered."""
    from mdn.runner.jobs import eval as job
    from mdn.runner.protocol import JobError

    class Ctx:
        def metric(self, d):
            pass

        def progress(self, *a):
            pass

    point = {"run_dir": run_dir, "factors": [1, 2], "eval_tokens": 64, "seed": 0, "device": "cpu",
             "task": "eval", "point": "abc", "variant": "def", "repeat": 0}
    res = job.run(point, Ctx())
    assert res["train_seq_len"] == 16 and [r["seq_len"] for r in res["lengths"]] == [16, 32]
    probe = job.run({"probe": True, "device": "cpu"}, Ctx())
    assert {"device_name", "versions", "import_s"} <= set(probe)
    with pytest.raises(JobError, match="model, data, seq_len: not given"):
        job.run(dict(point, run_dir=str(tmp_path)), Ctx())
