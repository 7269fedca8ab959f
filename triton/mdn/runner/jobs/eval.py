"""Job ``eval``: held-out loss / perplexity of a checkpoint at 1x, 2x, 4x its training length.

Params (mdn.eval.perplexity.EvalConfig): run_dir, checkpoint ("" = latest), model, data, seq_len, factors
([1, 2, 4]), batch_size, eval_tokens, val_path / hf_split (held-out data for shards / hf), seed, device,
precision. ``mdnctl eval RUN`` resolves them all from the run's config.toml.

As a sweep task (``task = "eval"``, e.g. an axis ``run_dir = [...]`` and an ``[eval]`` table) the sweep's
bookkeeping keys (task, point, variant, repeat, derived) are ignored, ``{"probe": true}`` reports the environment,
and model / data / seq_len / batch_size that are not given come from the run's ``job.json`` (the train job spec
that ``mdnctl train`` wrote: JSON, resolved by Go).

One ``metric`` event per length ({seq_len, factor, loss, ppl, tokens, status}); the result holds every length
with per-segment losses, flat ``loss``/``ppl`` (1x), ``loss_2x``/``ppl_2x``, ..., and what data was used
(``data``, ``held_out``, ``note``).
"""
from __future__ import annotations

import json
import os

from ..protocol import JobError

SWEEP_KEYS = ("task", "job", "point", "variant", "repeat", "derived")


def from_run_spec(params: dict) -> dict:
    """Fill model / data / seq_len / batch_size missing from ``params`` out of RUN/job.json."""
    missing = [k for k in ("model", "data", "seq_len") if k not in params]
    if not missing or not params.get("run_dir"):
        return params
    path = os.path.join(params["run_dir"], "job.json")
    try:
        with open(path) as f:
            spec = json.load(f)
    except FileNotFoundError:
        raise ValueError(f"{', '.join(missing)}: not given, and the run has no {path} to read them from") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not JSON ({exc})") from None
    run = spec.get("params") if isinstance(spec, dict) else None
    if not isinstance(run, dict) or spec.get("kind") != "train":
        raise ValueError(f"{path}: not a train job spec")
    out = dict(params)
    train = run.get("train") or {}
    out.setdefault("model", run.get("model"))
    out.setdefault("data", run.get("data") or {})
    out.setdefault("seq_len", train.get("seq_len"))
    if "batch_size" not in out and train.get("batch_size"):
        out["batch_size"] = train["batch_size"]
    return out


def run(params: dict, ctx) -> dict:
    if params.get("probe"):
        import time

        t0 = time.perf_counter()
        from ...eval import perplexity  # noqa: F401  (torch, mdn.models, mdn.data)
        from .mqar import probe

        return probe(params, import_s=time.perf_counter() - t0)
    from ...eval.perplexity import EvalConfig, evaluate_run
    from ...layers.availability import MixerUnavailable
    params = {k: v for k, v in params.items() if k not in SWEEP_KEYS}
    try:
        cfg = EvalConfig.from_dict(from_run_spec(params))
    except (TypeError, ValueError) as exc:
        raise JobError("user", str(exc)) from None
    try:
        res = evaluate_run(cfg, on_metric=ctx.metric, on_progress=ctx.progress)
    except MixerUnavailable as exc:
        raise JobError("unavailable", str(exc)) from None
    if not any(rec.get("status") == "ok" for rec in res["lengths"]):
        kinds = {rec.get("status") for rec in res["lengths"]}
        raise JobError("oom" if kinds == {"oom"} else "nan",
                       "no length could be evaluated: " + ", ".join(f"{r['seq_len']}: {r.get('status')}"
                                                                    for r in res["lengths"]))
    res.update(_env(cfg.device))
    return res


def _env(device: str) -> dict:
    from .mqar import environment

    env = environment(device)
    return {"device_name": env["device_name"], "versions": env["versions"]}
