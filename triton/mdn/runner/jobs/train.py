"""`train`: train (or resume) a model; params are the resolved run config (mdn.train.config, docs/TRAINING.md).

Rank 0 emits the events: progress per step, a metric every ``train.log_every`` steps (step, loss, lr, grad_norm,
tokens/s total and per GPU, MFU, peak memory), and the summary as the result. Other ranks emit nothing
(Go also points their event stream at /dev/null when it launches torchrun).
"""
from __future__ import annotations

import os

from ..protocol import JobError


def run(params: dict, ctx) -> dict:
    from ...layers.availability import MixerUnavailable
    from ...train import NonFiniteError, Reporter, TrainJob, train

    job = TrainJob.from_params(params)  # ValueError -> error kind "user"
    main = int(os.environ.get("RANK", "0")) == 0
    rep = Reporter(ctx.progress, ctx.metric, ctx.log) if main else Reporter(log=ctx.log)
    try:
        summary, _ = train(job, rep)
    except MixerUnavailable as exc:
        raise JobError("unavailable", str(exc)) from None
    except NonFiniteError as exc:
        raise JobError("nan", str(exc)) from None
    return summary
