"""`echo`: a job for protocol tests. Emits progress and a metric, and returns its params.

Optional params (all for tests of the runner and the launcher):
  steps (int)        progress events to emit (default 1); sleep (float) seconds after each
  stray_print        print() to stdout, os.write(1, ...) and a subprocess writing to its stdout — none of it
                     may reach the event stream
  read_stdin         read sys.stdin to EOF (it must be empty: specs are on a private descriptor)
  non_finite         put NaN/inf (Python and numpy) into the metric and the result
  fail (str)         raise JobError(fail_kind or "user", fail)
  raise (str)        raise the named built-in exception (ValueError, ImportError, MemoryError, RuntimeError, ...)
  exit (int)         os._exit(exit) mid-job, without an end event
"""
from __future__ import annotations

import builtins
import os
import subprocess
import sys
import time

from ..protocol import JobError


def run(params: dict, ctx) -> dict:
    n = int(params.get("steps", 1))
    for i in range(n):
        ctx.progress(i + 1, n, "echo")
        if params.get("sleep"):
            time.sleep(float(params["sleep"]))
    out: dict = {"echo": params}
    if params.get("stray_print"):
        print("stray print() that must not reach the event stream")
        sys.stdout.flush()
        os.write(1, b"stray os.write(1) that must not reach the event stream\n")
        subprocess.run([sys.executable, "-c", "print('stray output of a subprocess')"], check=True)
    if params.get("read_stdin"):
        out["stdin"] = sys.stdin.read()
    if "exit" in params:
        sys.stderr.flush()
        os._exit(int(params["exit"]))
    if params.get("fail"):
        raise JobError(params.get("fail_kind", "user"), str(params["fail"]))
    if params.get("raise"):
        exc = getattr(builtins, str(params["raise"]))
        raise exc(f"echo raised {params['raise']}")
    metric = {"step": n, "value": float(n)}
    if params.get("non_finite"):
        import numpy as np

        extra = {"nan": float("nan"), "inf": float("inf"), "ninf": float("-inf"),
                 "np_nan": np.float32("nan"), "np_arr": np.array([1.0, np.nan, np.inf])}
        metric.update(extra)
        out.update(extra)
    ctx.metric(metric)
    return out
