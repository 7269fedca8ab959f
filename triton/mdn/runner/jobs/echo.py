"""`echo`: a job for protocol tests. Emits progress, an optional metric, and returns its params."""
from __future__ import annotations

import sys
import time

from ..protocol import JobError


def run(params: dict, ctx) -> dict:
    n = int(params.get("steps", 1))
    for i in range(n):
        ctx.progress(i + 1, n, "echo")
        if params.get("sleep"):
            time.sleep(float(params["sleep"]))
    if params.get("stray_print"):
        print("stray print that must not reach the event stream")
        sys.stdout.flush()
    if params.get("fail"):
        raise JobError(params.get("fail_kind", "user"), str(params["fail"]))
    if params.get("crash"):
        raise RuntimeError(str(params["crash"]))
    ctx.metric({"step": n, "value": float(n)})
    return {"echo": params}
