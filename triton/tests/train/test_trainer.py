"""The trainer on CPU: loss falls, resume continues the same loss curve, schedule, data, NaN skipping, the job."""
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from mdn.data import DataConfig, make_source, write_shard
from mdn.data.corpus import generate_corpus
from mdn.models import build_model
from mdn.train import NonFiniteError, TrainJob, lr_at, train
from mdn.train.trainer import param_groups


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _params(out_dir, **train):
    t = dict(steps=8, batch_size=4, seq_len=32, log_every=1, ckpt_every=0)
    t.update(train)
    return {"name": "t", "out_dir": str(out_dir), "resume": False,
            "model": dict(vocab_size=256, hidden_size=32, num_layers=2, num_heads=2, head_dim=16),
            "train": t, "optim": dict(lr=3e-3, warmup_steps=2), "data": {"source": "bytes", "corpus_bytes": 200_000}}


def test_loss_falls_on_the_default_corpus(tmp_path, monkeypatch):
    monkeypatch.setenv("MDN_SCAN_FORM", "pqk")  # a kernel knob: the result records it (op_env)
    summary, hist = train(TrainJob.from_params(_params(tmp_path, steps=20, batch_size=8, seq_len=64)))
    assert summary["steps_done"] == 20 and len(hist) == 20
    assert hist[0]["loss"] == pytest.approx(math.log(256), abs=0.3)
    assert summary["final_loss"] < summary["first_loss"] - 1.0, (summary["first_loss"], summary["final_loss"])
    for k in ("loss", "lr", "grad_norm", "tokens_per_s", "tokens_per_s_per_gpu", "peak_mem_gb"):
        assert all(math.isfinite(h[k]) for h in hist), k
    assert summary["mixer_impl"] == {"mdn": "torch"}
    assert summary["op_env"]["MDN_SCAN_FORM"] == "pqk"
    assert os.path.isdir(summary["checkpoint"])  # a checkpoint at the end


def test_resume_continues_the_same_loss_curve(tmp_path):
    """Uninterrupted 8 steps == 4 steps, stop (checkpoint), resume to 8: same losses and same weights."""
    full, hist_full = train(TrainJob.from_params(_params(tmp_path / "a")))
    p = _params(tmp_path / "b", stop_after=4)
    first, hist1 = train(TrainJob.from_params(p))
    assert first["interrupted"] == "stop_after" and first["steps_done"] == 4
    p["resume"] = True
    p["train"]["stop_after"] = 0
    second, hist2 = train(TrainJob.from_params(p))
    assert second["start_step"] == 4 and second["resumed_from"].endswith("step_000004")
    assert [h["step"] for h in hist2] == [5, 6, 7, 8]
    for h_a, h_b in zip(hist_full[4:], hist2):
        assert h_b["loss"] == pytest.approx(h_a["loss"], rel=1e-6, abs=1e-6)
        assert h_b["lr"] == h_a["lr"]
    ma, mb = build_model(p["model"], init=False), build_model(p["model"], init=False)
    from mdn.train import checkpoint
    from mdn.train.distributed import DistInfo

    info = DistInfo(0, 1, 0, torch.device("cpu"), False)
    for m, run in ((ma, full), (mb, second)):
        checkpoint.load(run["checkpoint"], m, torch.optim.AdamW(m.parameters()), info)
    for (n, x), (_, y) in zip(ma.named_parameters(), mb.named_parameters()):
        torch.testing.assert_close(x, y, rtol=1e-6, atol=1e-7, msg=n)


def test_resume_refuses_a_different_model(tmp_path):
    p = _params(tmp_path, steps=2)
    train(TrainJob.from_params(p))
    p["resume"] = True
    p["model"]["num_layers"] = 3
    with pytest.raises(ValueError, match="different model config.*num_layers"):
        train(TrainJob.from_params(p))


def test_non_finite_steps_are_skipped_then_fail(tmp_path):
    p = _params(tmp_path, steps=30, max_skipped=2)
    p["optim"] = dict(lr=1e35, warmup_steps=0, clip=0.0)
    with pytest.raises(NonFiniteError, match="3 consecutive steps"):
        train(TrainJob.from_params(p))


def test_lr_schedule():
    kw = dict(lr=1.0, steps=110, warmup_steps=10, min_lr_ratio=0.1)
    assert lr_at(0, **kw) == pytest.approx(0.1)
    assert lr_at(9, **kw) == pytest.approx(1.0)
    assert lr_at(10, **kw) == pytest.approx(1.0)
    assert lr_at(60, **kw) == pytest.approx(0.55)
    assert lr_at(110, **kw) == pytest.approx(0.1)
    assert lr_at(60, schedule="linear", **kw) == pytest.approx(0.55)
    assert lr_at(100, schedule="constant", **kw) == 1.0


def test_no_weight_decay_on_norms_and_gate_scalars():
    m = build_model(dict(vocab_size=256, hidden_size=32, num_layers=1, num_heads=2, head_dim=16))
    decay, no_decay = param_groups(m, 0.1)
    nd = {id(p) for p in no_decay["params"]}
    names = {n for n, p in m.named_parameters() if id(p) in nd}
    mixer = "layers.0.mixer."
    for n in ("A_log", "Mu_log", "dt_bias", "mu_bias", "log_factor", "D_log", "o_norm.weight"):
        assert mixer + n in names
    assert "norm.weight" in names and mixer + "q_proj.weight" not in names
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0


def test_data_sources_are_deterministic_and_checked(tmp_path):
    assert np.array_equal(generate_corpus(5000, 7), generate_corpus(5000, 7))
    src = make_source({"source": "bytes", "corpus_bytes": 10_000}, vocab_size=256, seed=1)
    assert torch.equal(src.batch(3, 2, 16), src.batch(3, 2, 16))
    assert not torch.equal(src.batch(3, 2, 16), src.batch(4, 2, 16))
    assert src.batch(0, 2, 16).shape == (2, 17)
    with pytest.raises(ValueError, match="vocab_size = 100.*needs >= 256"):
        make_source({"source": "bytes"}, vocab_size=100, seed=1)
    toks = np.arange(1000) % 700
    write_shard(str(tmp_path / "a.bin"), toks, "uint16")
    write_shard(str(tmp_path / "b.bin"), toks[:100], "uint16")
    sh = make_source({"source": "shards", "path": str(tmp_path), "dtype": "uint16"}, vocab_size=700, seed=0)
    b = sh.batch(0, 4, 50).numpy()
    assert all(((row[1:] - row[:-1]) % 700 == 1).all() for row in b)  # contiguous windows of the shard
    with pytest.raises(ValueError, match=r"token id 6\d\d >= vocab size 500"):
        for i in range(20):
            make_source({"source": "shards", "path": str(tmp_path / "*.bin")}, vocab_size=500, seed=0).batch(i, 8, 50)
    with pytest.raises(ValueError, match="no .bin shard files"):
        make_source({"source": "shards", "path": str(tmp_path / "none")}, vocab_size=500, seed=0)
    syn = make_source({"source": "synthetic"}, vocab_size=50, seed=0)
    assert int(syn.batch(0, 4, 8).max()) < 50
    with pytest.raises(ValueError, match="data.source = 'web'"):
        DataConfig.from_dict({"source": "web"})


@pytest.mark.parametrize("section,key,val,match", [
    ("train", "steps", 0, "train.steps = 0"),
    ("train", "stepz", 1, "train.stepz: unknown key"),
    ("optim", "schedule", "step", "optim.schedule = 'step'"),
    ("optim", "betas", [0.9], r"optim.betas = \[0.9\]"),
    ("parallel", "strategy", "tp", "parallel.strategy = 'tp'"),
    ("train", "batch_size", "8", "train.batch_size = '8': expected an integer"),
])
def test_job_errors_name_the_field(tmp_path, section, key, val, match):
    p = _params(tmp_path)
    p.setdefault(section, {})[key] = val
    with pytest.raises(ValueError, match=match):
        TrainJob.from_params(p)


def _run_runner(spec: dict, timeout=300):
    env = dict(os.environ, PYTHONSAFEPATH="1", MDN_PROTOCOL="1", OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "mdn.runner"], input=json.dumps(spec) + "\n", text=True,
                          capture_output=True, timeout=timeout, env=env, cwd=os.path.dirname(__file__))
    return proc, [json.loads(line) for line in proc.stdout.splitlines()]


def test_train_job_through_the_runner(tmp_path):
    proc, events = _run_runner({"v": 1, "id": "j1", "kind": "train", "params": _params(tmp_path, steps=3)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    kinds = [e["event"] for e in events]
    assert kinds[0] == "start" and kinds[-1] == "end" and events[-1]["status"] == "ok", proc.stderr[-2000:]
    metrics = [e["data"] for e in events if e["event"] == "metric"]
    assert [m["step"] for m in metrics] == [1, 2, 3] and all("loss" in m for m in metrics)
    result = next(e["data"] for e in events if e["event"] == "result")
    assert result["steps_done"] == 3 and result["params"]["total"] > 0
    assert any(e["event"] == "progress" for e in events)


def test_bad_train_params_are_a_user_error(tmp_path):
    p = _params(tmp_path)
    p["model"]["gate_mode"] = "nope"
    _, events = _run_runner({"v": 1, "id": "j2", "kind": "train", "params": p})
    err = next(e for e in events if e["event"] == "error")
    assert err["kind"] == "user" and "model.gate_mode = 'nope'" in err["message"]


def test_activation_checkpointing_gives_the_same_step_and_no_checkpoints(tmp_path):
    a, ha = train(TrainJob.from_params(_params(tmp_path / "a", steps=3)))
    b, hb = train(TrainJob.from_params(_params(tmp_path / "b", steps=3, checkpoint_activations=True,
                                              save_checkpoints=False)))
    for x, y in zip(ha, hb):
        assert y["loss"] == pytest.approx(x["loss"], rel=1e-5)
    assert b["checkpoint"] is None and not os.path.exists(tmp_path / "b" / "checkpoints")
