"""Job ``mqar``: train a small model on MQAR (best of N learning rates) and report recall accuracy.

Params (flat, fully resolved by Go; a sweep point's fields plus the sweep file's ``[mqar]`` table):

    model        "mdn" | "gdn" | "transformer" | "kda" | "mamba2"  (``arch`` is accepted as the same key;
                 a kernel-sweep ``op`` name maps sdpa -> transformer, ssd -> mamba2)
    constraint   MDN gating-constraint mode (trig, clamp, none, quadrant); must be "none" (or absent) for others
    d_model      model width; num_layers (2); num_heads (linear mixers; head_dim = d_model / num_heads unless
                 head_dim is given); attn_num_heads (attention); model_overrides: any other ModelConfig keys
    vocab_size, seq_len, num_pairs, power_a, random_non_queries     the training split (mdn.tasks.mqar)
    test_splits  [{seq_len, num_pairs}, ...]: extra held-out splits (same vocab and power_a)
    lr | lrs     one rate, or the list to take the best of
    steps, batch_size, num_train, num_test, warmup_steps, weight_decay, min_lr_ratio, grad_clip, eval_every,
    eval_batch_size, early_stop_accuracy, max_seconds, precision, cuda_graph (off | auto | on: replay each
    training step as one CUDA graph)                                  (mdn.tasks.train_mqar.MQARTrainConfig)
    seed, device ("cpu" | "cuda" | "auto")
    point, variant, repeat, derived, task     bookkeeping from the sweep; ignored here

``{"probe": true, "device": ...}`` returns the worker's environment (device_name, versions, import_s,
job_start_t) without training, as the sweep executor's probe expects.

Result: the best run's ``accuracy``/``loss``/``best_lr``/``steps_done`` on the training split's test set,
``accuracy_<L>x<N>`` for every test split, ``runs`` (one entry per rate), ``n_params``, ``tokens_per_s``,
``chance``, ``device_name``/``versions``. Keys that name point fields (model, lr, steps, ...) are left out, so a
sweep row keeps the point's values. One ``metric`` event per evaluation (``eval_every``) and one per finished
rate. If every rate diverges the job fails with error kind ``nan``.
"""
from __future__ import annotations

import math
import os
import platform
import time

_T_IMPORT0 = time.perf_counter()
import torch  # noqa: E402

from ..protocol import JobError  # noqa: E402

_IMPORT_S = time.perf_counter() - _T_IMPORT0

ARCH_ALIASES = {"sdpa": "transformer", "ssd": "mamba2", "attention": "transformer"}
LINEAR_ARCHS = ("mdn", "gdn", "kda", "mamba2")
TASK_KEYS = ("vocab_size", "seq_len", "num_pairs", "power_a", "random_non_queries")
TRAIN_KEYS = ("steps", "batch_size", "num_train", "num_test", "warmup_steps", "weight_decay", "min_lr_ratio",
              "grad_clip", "eval_every", "eval_batch_size", "early_stop_accuracy", "max_seconds", "precision",
              "beta1", "beta2", "seed", "device", "cuda_graph")
MODEL_KEYS = ("model", "arch", "op", "constraint", "d_model", "num_layers", "num_heads", "head_dim",
              "attn_num_heads", "model_overrides")
IGNORED_KEYS = ("point", "variant", "repeat", "derived", "task", "job", "timer", "lr", "lrs", "test_splits",
                "name", "probe")


def environment(device: str) -> dict:
    """device_name and versions of this worker (for result rows)."""
    versions = {"torch": torch.__version__, "python": platform.python_version()}
    try:
        import triton

        versions["triton"] = triton.__version__
    except Exception:  # pragma: no cover - triton is a dependency, but report rather than fail
        pass
    name = "cpu"
    if device != "cpu" and torch.cuda.is_available():
        name = torch.cuda.get_device_name(0)
        versions["cuda"] = torch.version.cuda
    else:
        name = f"cpu ({platform.machine()})"
    return {"device_name": name, "versions": versions}


def probe(params: dict, import_s: float | None = None) -> dict:
    """The environment, the import time of the job's modules and when the job began (the sweep's probe)."""
    t0 = time.time()
    if import_s is None:
        t1 = time.perf_counter()
        from mdn.tasks import train_mqar  # noqa: F401  (mdn.models, mdn.layers)
        import_s = _IMPORT_S + time.perf_counter() - t1
    out = environment(str(params.get("device", "auto")))
    out.update(import_s=import_s, job_start_t=t0)
    return out


def model_config(params: dict) -> dict:
    """The ModelConfig dict of a point (see module docstring)."""
    arch = params.get("model", params.get("arch"))
    if arch is None and "op" in params:
        arch = params["op"]
    if not isinstance(arch, str):
        raise ValueError(f"model = {arch!r}: expected a model name (mdn, gdn, transformer, kda, mamba2)")
    arch = ARCH_ALIASES.get(arch, arch)
    d = params.get("d_model")
    if isinstance(d, bool) or not isinstance(d, int) or d < 1:
        raise ValueError(f"d_model = {d!r}: expected an integer >= 1")
    cfg = {"arch": arch, "hidden_size": d, "num_layers": params.get("num_layers", 2),
           "vocab_size": params.get("vocab_size")}
    constraint = params.get("constraint")
    if arch == "mdn":
        if constraint is not None:
            cfg["gate_mode"] = constraint
    elif constraint not in (None, "", "none"):
        raise ValueError(f"constraint = {constraint!r}: gating-constraint modes apply to model = 'mdn' only "
                         f"(got model = {arch!r}; filter the grid with where = \"model == 'mdn' or "
                         f"constraint == 'none'\")")
    if arch in LINEAR_ARCHS:
        heads = params.get("num_heads", 2)
        if isinstance(heads, bool) or not isinstance(heads, int) or heads < 1:
            raise ValueError(f"num_heads = {heads!r}: expected an integer >= 1")
        head_dim = params.get("head_dim")
        if head_dim is None:
            if d % heads:
                raise ValueError(f"num_heads = {heads}: must divide d_model = {d} (or give head_dim)")
            head_dim = d // heads
        if arch != "mamba2":
            cfg["num_heads"] = heads
        cfg["head_dim"] = head_dim
    if "attn_num_heads" in params:
        cfg["attn_num_heads"] = params["attn_num_heads"]
    overrides = params.get("model_overrides") or {}
    if not isinstance(overrides, dict):
        raise ValueError(f"model_overrides = {overrides!r}: expected a table of model config keys")
    cfg.update(overrides)
    return cfg


def task_configs(params: dict):
    from mdn.tasks.mqar import MQARConfig

    base = {k: params[k] for k in TASK_KEYS if k in params}
    task = MQARConfig.from_dict(base, prefix="mqar")
    splits = []
    raw = params.get("test_splits") or []
    if not isinstance(raw, list):
        raise ValueError(f"test_splits = {raw!r}: expected a list of {{seq_len, num_pairs}} tables")
    for i, s in enumerate(raw):
        if not isinstance(s, dict):
            raise ValueError(f"test_splits[{i}] = {s!r}: expected a table with seq_len and num_pairs")
        d = dict(base)
        d.update(s)
        splits.append(MQARConfig.from_dict(d, prefix=f"test_splits[{i}]"))
    return task, splits


def train_config(params: dict):
    from mdn.tasks.train_mqar import MQARTrainConfig

    d = {k: params[k] for k in TRAIN_KEYS if k in params}
    lrs = params.get("lrs")
    if lrs is None:
        if "lr" not in params:
            raise ValueError("lr / lrs: one of them is required (a learning rate, or the list to take the best of)")
        lrs = [params["lr"]]
    elif "lr" in params:
        raise ValueError("lr and lrs are both set: give one learning rate or a list, not both")
    if not isinstance(lrs, list) or not lrs:
        raise ValueError(f"lrs = {lrs!r}: expected a non-empty list of learning rates")
    d["lr"] = lrs[0]
    return MQARTrainConfig.from_dict(d, prefix="mqar"), [float(x) if isinstance(x, (int, float)) else x for x in lrs]


def check_keys(params: dict) -> None:
    known = set(TASK_KEYS) | set(TRAIN_KEYS) | set(MODEL_KEYS) | set(IGNORED_KEYS)
    unknown = sorted(set(params) - known)
    if unknown:
        raise ValueError(f"mqar job: unknown parameter {unknown[0]!r} (known: {', '.join(sorted(known))})")


def run(params: dict, ctx) -> dict:
    if params.get("probe"):
        return probe(params)
    from mdn.layers.availability import MixerUnavailable
    from mdn.tasks.train_mqar import train_mqar_lrs

    try:
        check_keys(params)
        mcfg = model_config(params)
        task, splits = task_configs(params)
        tcfg, lrs = train_config(params)
        if mcfg.get("vocab_size") is None:
            mcfg["vocab_size"] = task.vocab_size
        from mdn.models.config import ModelConfig

        ModelConfig.from_dict(mcfg)  # validate before any data is generated
    except ValueError as exc:
        raise JobError("user", str(exc)) from None

    t0 = time.perf_counter()
    try:
        out = train_mqar_lrs(mcfg, task, tcfg, lrs, splits, on_metric=ctx.metric, on_progress=ctx.progress)
    except MixerUnavailable as exc:
        raise JobError("unavailable", str(exc)) from None
    except torch.cuda.OutOfMemoryError as exc:
        raise JobError("oom", f"CUDA out of memory: {str(exc).splitlines()[0]}") from None
    if out["status"] != "ok":
        rates = ", ".join(f"{r['lr']:.3g}: {r['status']}" for r in out["runs"])
        raise JobError("nan", f"every learning rate diverged (loss not finite): {rates}")
    # Keys that name point fields (model, lr, steps, ...) stay out of the result: sweep rows keep the point's.
    result = {
        "accuracy": out["accuracy"], "loss": out["loss"], "best_lr": out["lr"], "steps_done": out["steps"],
        "stop": out["stop"], "train_seconds": out["train_seconds"], "tokens_per_s": out["tokens_per_s"],
        "n_params": out["params"], "chance": out["chance"], "runs": out["runs"], "splits": out["splits"],
        "elapsed_s": time.perf_counter() - t0, "step_mode": out["step_mode"],
    }
    if mcfg["arch"] == "gdn" and os.environ.get("MDN_FLA_BYPASS_HOPPER_GUARD") == "1":
        result["caveat"] = ("fla's Hopper guard was bypassed (MDN_FLA_BYPASS_HOPPER_GUARD=1): on Hopper with "
                            "Triton < 3.7.1 its dk may be corrupted (fla issue 640)")
    for name, m in out["splits"].items():
        result[f"accuracy_{name}"] = m["accuracy"]
    result.update(environment(str(tcfg.device)))
    if not math.isfinite(result["loss"]):
        raise JobError("nan", "the best run's test loss is not finite")
    return result
