"""Job ``eval``: held-out loss / perplexity of a checkpoint at 1x, 2x, 4x its training length.

Params (resolved by Go from the run directory's config; mdn.eval.perplexity.EvalConfig):
    run_dir, checkpoint ("" = latest), model (the run's model config, or absent: the checkpoint's),
    data (the run's data config), seq_len (the training length), factors ([1, 2, 4]), batch_size,
    eval_tokens (scored tokens per length), val_path / hf_split (held-out data for shards / hf), seed,
    device, precision.

One ``metric`` event per length ({seq_len, factor, loss, ppl, tokens, status}); the result holds every length
with per-segment losses, flat ``loss``/``ppl`` (1x), ``loss_2x``/``ppl_2x``, ..., and what data was used
(``data``, ``held_out``, ``note``).
"""
from __future__ import annotations

from ..protocol import JobError


def run(params: dict, ctx) -> dict:
    from ...eval.perplexity import EvalConfig, evaluate_run
    from ...layers.availability import MixerUnavailable

    try:
        cfg = EvalConfig.from_dict(params)
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
    return res
