"""The MQAR trainer (mdn.tasks.train_mqar) and the ``mqar`` runner job: mechanics on tiny models (seconds)."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn

from mdn.tasks.mqar import IGNORE_INDEX, MQARConfig
from mdn.tasks.train_mqar import (MQARTrainConfig, evaluate, lr_at, param_groups, query_logits, train_mqar,
                                  train_mqar_lrs)

TASK = MQARConfig(vocab_size=64, seq_len=16, num_pairs=2)


def tiny_cfg(**kw) -> MQARTrainConfig:
    base = dict(lr=3e-3, batch_size=16, steps=20, num_train=256, num_test=32, device="cpu")
    base.update(kw)
    return MQARTrainConfig(**base)


class Lookup(nn.Module):
    """A stand-in model with CausalLM's interface: embedding -> linear head (cannot do recall)."""

    def __init__(self, vocab: int, d: int = 16, nan: bool = False):
        super().__init__()
        self.emb = nn.Embedding(vocab, d)
        self.head = nn.Linear(d, vocab)
        self.nan = nan

    def hidden_states(self, ids):
        h = self.emb(ids)
        return h * float("nan") if self.nan else h

    def logits(self, h):
        return self.head(h)

    def forward(self, ids):
        return self.logits(self.hidden_states(ids))


TRANSFORMER = dict(arch="transformer", hidden_size=32, num_layers=1, attn_num_heads=2)


def test_schedule_warmup_then_cosine():
    cfg = tiny_cfg(lr=1.0, steps=110, warmup_steps=10, min_lr_ratio=0.1)
    assert lr_at(0, cfg) == pytest.approx(0.1)
    assert lr_at(9, cfg) == pytest.approx(1.0)
    assert lr_at(10, cfg) == pytest.approx(1.0)
    assert lr_at(60, cfg) == pytest.approx(0.55)
    assert lr_at(110, cfg) == pytest.approx(0.1)
    lrs = [lr_at(s, cfg) for s in range(10, 111)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:])), "cosine decays monotonically"


def test_param_groups_decay_matrices_only():
    m = nn.Sequential(nn.Embedding(8, 4), nn.Linear(4, 4), nn.LayerNorm(4))
    scalar = nn.Parameter(torch.zeros(3, 3))
    scalar._no_weight_decay = True
    m.register_parameter("flagged", scalar)
    decay, no_decay = param_groups(m, 0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert {id(p) for p in decay["params"]} == {id(m[0].weight), id(m[1].weight)}


def test_query_logits_only_at_labelled_positions():
    model = Lookup(TASK.vocab_size)
    x = torch.randint(0, 64, (3, 16))
    y = torch.full((3, 16), IGNORE_INDEX)
    y[0, 5], y[2, 9] = 40, 50
    logits, tgt = query_logits(model, x, y)
    assert logits.shape == (2, 64) and tgt.tolist() == [40, 50]
    full = model(x)
    assert torch.allclose(logits, full[[0, 2], [5, 9]])
    # with the count known in advance (no host sync): the same positions in the same order
    logits2, tgt2 = query_logits(model, x, y, n_query=2)
    assert torch.equal(logits2, logits) and torch.equal(tgt2, tgt)


def test_query_logits_with_known_count_on_real_mqar_batches():
    from mdn.tasks.mqar import mqar_batch
    x, y = mqar_batch(TASK, 5, seed=3)
    model = Lookup(TASK.vocab_size)
    a = query_logits(model, x, y)
    b = query_logits(model, x, y, n_query=5 * TASK.num_pairs)  # exactly num_pairs labels per example
    assert a[1].numel() == 5 * TASK.num_pairs
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_config_validation_names_the_field():
    with pytest.raises(ValueError, match=r"train\.lr = -1\.0: expected a number > 0"):
        tiny_cfg(lr=-1.0).validate()
    with pytest.raises(ValueError, match=r"mqar\.precision = 'fp8'"):
        MQARTrainConfig.from_dict({"precision": "fp8"}, prefix="mqar")
    with pytest.raises(ValueError, match=r"mqar\.epochs: unknown key"):
        MQARTrainConfig.from_dict({"epochs": 3}, prefix="mqar")
    assert MQARTrainConfig.from_dict({"steps": 5.0, "lr": 1}).steps == 5


def test_trains_and_reports(tmp_path):
    metrics = []
    res = train_mqar(TRANSFORMER, TASK, tiny_cfg(steps=12, eval_every=5), [MQARConfig(64, 32, 4)],
                     on_metric=metrics.append)
    assert res["status"] == "ok" and res["steps"] == 12 and res["stop"] == "steps"
    assert 0.0 <= res["accuracy"] <= 1.0 and math.isfinite(res["loss"])
    assert set(res["splits"]) == {"16x2", "32x4"}
    assert res["splits"]["32x4"]["queries"] == 32 * 4
    assert [m["step"] for m in metrics] == [5, 10, 12] and metrics[-1]["final"]
    assert "accuracy@32x4" in metrics[-1]


def test_same_seed_same_result():
    a = train_mqar(TRANSFORMER, TASK, tiny_cfg(steps=8))
    b = train_mqar(TRANSFORMER, TASK, tiny_cfg(steps=8))
    c = train_mqar(TRANSFORMER, TASK, tiny_cfg(steps=8, seed=1))
    assert a["loss"] == b["loss"] and a["train_loss"] == b["train_loss"]
    assert a["loss"] != c["loss"]


def test_fresh_data_mode():
    res = train_mqar(TRANSFORMER, TASK, tiny_cfg(steps=6, num_train=0))
    assert res["status"] == "ok" and res["examples_seen"] == 6 * 16


def test_early_stop(monkeypatch):
    res = train_mqar(TRANSFORMER, TASK, tiny_cfg(steps=50, eval_every=2, early_stop_accuracy=1e-9))
    assert res["stop"] == "early" and res["steps"] == 2


def test_time_budget_fits_the_schedule():
    cfg = tiny_cfg(steps=100000, max_seconds=1.0, num_train=64)
    res = train_mqar(TRANSFORMER, TASK, cfg)
    assert res["stop"] == "time" and 13 <= res["steps"] < 100000
    assert res["train_seconds"] < 4.0


def test_vocab_mismatch_is_a_user_error():
    with pytest.raises(ValueError, match=r"model\.vocab_size = 32: expected an integer >= the task vocab_size 64"):
        train_mqar(dict(TRANSFORMER, vocab_size=32), TASK, tiny_cfg())


def test_best_of_lrs_and_nan_runs():
    pending = [1e-3, 1e-2, 3e-3]
    calls = []

    def builder(cfg, device, seed):  # the trainer builds one model per rate, in order; 1e-2 "diverges"
        lr = pending[len(calls)]
        calls.append(lr)
        torch.manual_seed(seed)
        return Lookup(cfg["vocab_size"], nan=lr == 1e-2)

    out = train_mqar_lrs({"vocab_size": 64}, TASK, tiny_cfg(steps=10), pending, build=builder)
    assert calls == pending
    assert [r["lr"] for r in out["runs"]] == pending
    assert [r["status"] for r in out["runs"]] == ["ok", "nan", "ok"]
    ok = [r for r in out["runs"] if r["status"] == "ok"]
    best = max(ok, key=lambda r: (r["accuracy"], -r["loss"]))
    assert out["lr"] == best["lr"] and out["status"] == "ok"
    assert out["chance"] == pytest.approx(1 / 32)


def test_every_rate_nan():
    out = train_mqar_lrs({"vocab_size": 64}, TASK, tiny_cfg(steps=5), [1e-3],
                         build=lambda cfg, device, seed: Lookup(cfg["vocab_size"], nan=True))
    assert out["status"] == "nan" and out["runs"][0]["stop"] == "nan"


def test_evaluate_counts_every_query():
    model = Lookup(64)
    from mdn.tasks.mqar import mqar_batch

    x, y = mqar_batch(TASK, 10, seed=0)
    res = evaluate(model, x, y, batch_size=3)
    assert res["queries"] == 20 and 0 <= res["accuracy"] <= 1
    with torch.no_grad():
        want = float(torch.nn.functional.cross_entropy(model(x)[y != IGNORE_INDEX], y[y != IGNORE_INDEX]))
    assert res["loss"] == pytest.approx(want, rel=1e-5)


def test_evaluate_uneven_query_counts():
    """Rows with different numbers of labelled positions take the general path (no known count) and agree."""
    model = Lookup(64)
    from mdn.tasks.mqar import mqar_batch

    x, y = mqar_batch(TASK, 10, seed=1)
    y = y.clone()
    first = (y[0] != IGNORE_INDEX).nonzero()[0, 0]
    y[0, first] = IGNORE_INDEX  # row 0 now has one query less
    res = evaluate(model, x, y, batch_size=4)
    mask = y != IGNORE_INDEX
    assert res["queries"] == int(mask.sum()) == 19
    with torch.no_grad():
        logits = model(x)[mask]
        want_loss = float(torch.nn.functional.cross_entropy(logits, y[mask]))
        want_acc = float((logits.argmax(-1) == y[mask]).float().mean())
    assert res["loss"] == pytest.approx(want_loss, rel=1e-5)
    assert res["accuracy"] == pytest.approx(want_acc)


# --------------------------------------------------------------------------------------------- the runner job
class Ctx:
    def __init__(self):
        self.metrics, self.progress_calls = [], []

    def metric(self, d):
        self.metrics.append(d)

    def progress(self, done, total, msg=""):
        self.progress_calls.append((done, total))

    def log(self, msg):
        pass


def job_params(**kw):
    p = dict(task="mqar", model="transformer", constraint="none", d_model=32, num_layers=1, attn_num_heads=2,
             vocab_size=64, seq_len=16, num_pairs=2, lr=3e-3, steps=6, batch_size=8, num_train=64, num_test=16,
             eval_every=3, seed=0, device="cpu", point="abc", variant="def", repeat=0,
             test_splits=[{"seq_len": 32, "num_pairs": 4}])
    p.update(kw)
    return p


def test_job_result_and_events():
    from mdn.runner.jobs import mqar as job

    ctx = Ctx()
    res = job.run(job_params(), ctx)
    assert 0 <= res["accuracy"] <= 1 and "accuracy_32x4" in res and "accuracy_16x2" in res
    assert res["best_lr"] == 3e-3 and res["steps_done"] == 6 and res["n_params"] > 0
    for clash in ("model", "lr", "steps", "task"):
        assert clash not in res, f"{clash} names a point field and must stay out of the result"
    assert res["device_name"].startswith("cpu") and "torch" in res["versions"]
    assert [m["step"] for m in ctx.metrics] == [3, 6]
    assert ctx.progress_calls[-1] == (6, 6)


def test_job_probe():
    from mdn.runner.jobs import mqar as job

    res = job.run({"probe": True, "device": "cpu"}, Ctx())
    assert {"device_name", "versions", "import_s", "job_start_t"} <= set(res)


@pytest.mark.parametrize("kw,msg", [
    (dict(model="gdn", constraint="trig"), "constraint = 'trig': gating-constraint modes apply to model = 'mdn'"),
    (dict(model="rnn"), "model.arch = 'rnn'"),
    (dict(d_model=30, model="mdn", constraint="trig", num_heads=4), "num_heads = 4: must divide d_model = 30"),
    (dict(lr=None, lrs=None), "lr / lrs: one of them is required"),
    (dict(lrs=[1e-3]), "lr and lrs are both set"),
    (dict(seq_len=15), "mqar.seq_len = 15: expected an even length"),
    (dict(epochs=3), "unknown parameter 'epochs'"),
    (dict(test_splits=[{"seq_len": 1000}]), "test_splits[0].num_pairs"),
])
def test_job_user_errors(kw, msg):
    from mdn.runner.jobs import mqar as job
    from mdn.runner.protocol import JobError

    params = job_params(**kw)
    for k in [k for k, v in kw.items() if v is None]:
        del params[k]
    if msg == "test_splits[0].num_pairs":
        params["test_splits"] = [{"seq_len": 16, "num_pairs": 5}]
    with pytest.raises(JobError) as ei:
        job.run(params, Ctx())
    assert ei.value.kind == "user"
    assert msg in ei.value.message


def test_job_model_config_for_mdn():
    from mdn.runner.jobs.mqar import model_config

    cfg = model_config(job_params(model="mdn", constraint="clamp", d_model=64, num_heads=2,
                                  model_overrides={"expand_v": 1.0}))
    assert cfg == {"arch": "mdn", "hidden_size": 64, "num_layers": 1, "vocab_size": 64, "gate_mode": "clamp",
                   "num_heads": 2, "head_dim": 32, "attn_num_heads": 2, "expand_v": 1.0}
    assert model_config(job_params(op="sdpa", model=None))["arch"] == "transformer"


# ------------------------------------------------------------------------------------ CUDA-graph training step
def test_cuda_graph_mode_validation_and_cpu_behaviour():
    with pytest.raises(ValueError, match=r"mqar\.cuda_graph = 'yes': expected one of off, auto, on"):
        MQARTrainConfig.from_dict({"cuda_graph": "yes"}, prefix="mqar")
    # "on" promises a graphed step: on the CPU that is a user error naming the field, before any training
    with pytest.raises(ValueError, match=r"mqar\.cuda_graph = 'on': needs a CUDA device, got cpu"):
        train_mqar(TRANSFORMER, TASK, tiny_cfg(steps=2, cuda_graph="on"))
    # "auto" runs eagerly where there is no CUDA device, and says so; the numbers equal mode "off"
    auto = train_mqar(TRANSFORMER, TASK, tiny_cfg(steps=6, cuda_graph="auto"))
    off = train_mqar(TRANSFORMER, TASK, tiny_cfg(steps=6))
    assert auto["step_mode"] == off["step_mode"] == "eager"
    assert auto["loss"] == off["loss"] and auto["train_loss"] == off["train_loss"]


def test_cuda_graph_key_reaches_the_job():
    from mdn.runner.jobs import mqar as job

    tcfg, _ = job.train_config({"lr": 1e-3, "cuda_graph": "auto"})
    assert tcfg.cuda_graph == "auto"
    res = job.run(job_params(cuda_graph="auto"), Ctx())
    assert res["step_mode"] == "eager" and all(r["step_mode"] == "eager" for r in res["runs"])


def _gpu_mqar(arch: str) -> dict:
    """A model config as the MQAR job builds it (width 64, 2 layers, 2 heads, tied head)."""
    from mdn.runner.jobs import mqar as job

    return job.model_config({"model": arch, "d_model": 64, "num_layers": 2, "num_heads": 2, "attn_num_heads": 2,
                             "vocab_size": 256, "model_overrides": {"tie_embeddings": True}})


@pytest.mark.gpu
@pytest.mark.parametrize("arch", ["transformer", "mdn", "gdn"])
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_gpu_cuda_graph_step_matches_eager(arch, precision):
    """The graphed step trains like the eager one: same data, same init, losses along the way and the final
    test loss agree (the kernels are the same; only launch order and allocation differ), and the step really
    was captured (mode "on" raises otherwise)."""
    from mdn.layers.availability import MixerUnavailable

    task = MQARConfig(vocab_size=256, seq_len=128, num_pairs=8)
    cfg = dict(lr=3e-3, batch_size=32, steps=24, num_train=512, num_test=64, device="cuda", precision=precision,
               warmup_steps=4)
    curves = {}
    try:
        for mode in ("off", "on"):
            metrics = []
            res = train_mqar(_gpu_mqar(arch), task, MQARTrainConfig(**cfg, eval_every=8, cuda_graph=mode),
                             on_metric=metrics.append)
            curves[mode] = (res, [m["loss"] for m in metrics])
    except MixerUnavailable as exc:
        pytest.skip(str(exc))
    (eager, e_curve), (graph, g_curve) = curves["off"], curves["on"]
    assert eager["step_mode"] == "eager" and graph["step_mode"] == "cuda_graph"
    assert graph["steps"] == eager["steps"] == 24
    tol = 2e-2 if precision == "bf16" else 2e-3
    for a, b in zip(e_curve, g_curve):
        assert math.isclose(a, b, rel_tol=tol), (e_curve, g_curve)
    assert math.isclose(eager["train_loss"], graph["train_loss"], rel_tol=tol)
