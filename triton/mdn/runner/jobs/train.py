"""`train`: train (or resume) a model; params are the resolved run config (mdn.train.config, docs/TRAINING.md).

Rank 0 emits the events: progress per step, a metric every ``train.log_every`` steps (step, loss, lr, grad_norm,
tokens/s total and per GPU, MFU, peak memory), and the summary as the result. Other ranks emit nothing
(Go also points their event stream at /dev/null when it launches torchrun).
"""
from __future__ import annotations

import os
import signal

from ..protocol import JobError

_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def run(params: dict, ctx) -> dict:
    # SIGTERM/SIGINT (Go's graceful stop goes to rank 0) must never kill the job: from here on they only ask
    # the loop to checkpoint and stop, even while torch is still being imported.
    early: list[int] = []
    old = {s: signal.signal(s, lambda n, f: early.append(n)) for s in _STOP_SIGNALS}
    try:
        from ...layers.availability import MixerUnavailable
        from ...train import NonFiniteError, Reporter, TrainJob, train
        from ...train.trainer import StopFlag

        job = TrainJob.from_params(params)  # ValueError -> error kind "user"
        main = int(os.environ.get("RANK", "0")) == 0
        rep = Reporter(ctx.progress, ctx.metric, ctx.log) if main else Reporter(log=ctx.log)
        with StopFlag() as stop:
            if early:
                stop.stop, stop.signal = True, signal.Signals(early[0]).name
            try:
                summary, _ = train(job, rep, stop)
            except MixerUnavailable as exc:
                raise JobError("unavailable", str(exc)) from None
            except NonFiniteError as exc:
                raise JobError("nan", str(exc)) from None
        return summary
    finally:
        for s, h in old.items():
            signal.signal(s, h)
