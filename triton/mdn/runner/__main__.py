"""`python -m mdn.runner`: read job specs (JSON lines) on stdin, write protocol events on stdout."""
from __future__ import annotations

import importlib
import json
import os
import re
import sys
import time
import traceback

from .protocol import PROTOCOL_VERSION, EventWriter, JobContext, JobError, hostname, take_stdin, take_stdout

_KIND_RE = re.compile(r"^[a-z][a-z0-9_]*$")


def _classify(exc: BaseException) -> tuple[str, str]:
    """Map an exception to an error kind and a one-line message."""
    if isinstance(exc, JobError):
        return exc.kind, exc.message
    name = type(exc).__name__
    msg = str(exc)
    if "out of memory" in msg.lower() or name == "OutOfMemoryError":
        return "oom", f"{name}: {msg.splitlines()[0] if msg else ''}"
    if isinstance(exc, ValueError):
        return "user", msg
    if isinstance(exc, ImportError):
        return "unavailable", f"{name}: {msg}"
    return "internal", f"{name}: {msg}"


def run_job(writer: EventWriter, spec: dict) -> bool:
    job_id = str(spec.get("id", ""))
    kind = spec.get("kind")
    t0 = time.time()
    writer.emit("start", job_id, kind=kind, pid=os.getpid(), host=hostname())
    ok = False
    try:
        if spec.get("v") != PROTOCOL_VERSION:
            raise JobError("protocol", f"job spec v={spec.get('v')!r}, this runner speaks v={PROTOCOL_VERSION}")
        if not isinstance(kind, str) or not _KIND_RE.match(kind):
            raise JobError("protocol", f"job spec kind={kind!r} is not a job kind name")
        params = spec.get("params") or {}
        if not isinstance(params, dict):
            raise JobError("protocol", f"job spec params must be an object, got {type(params).__name__}")
        try:
            module = importlib.import_module(f"mdn.runner.jobs.{kind}")
        except ModuleNotFoundError as exc:
            if exc.name and exc.name.startswith("mdn.runner.jobs"):
                raise JobError("user", f"unknown job kind {kind!r}") from None
            raise
        result = module.run(params, JobContext(writer, job_id, kind))
        writer.emit("result", job_id, data=result if result is not None else {})
        ok = True
    except BaseException as exc:  # report everything; KeyboardInterrupt/SystemExit propagate after the events
        kind_, message = _classify(exc)
        if kind_ == "internal":
            traceback.print_exc(file=sys.stderr)
        writer.emit("error", job_id, kind=kind_, message=message)
        if isinstance(exc, (KeyboardInterrupt, SystemExit)):
            writer.emit("end", job_id, status="error", elapsed=time.time() - t0)
            raise
    writer.emit("end", job_id, status="ok" if ok else "error", elapsed=time.time() - t0)
    return ok


def apply_memory_fraction(env: dict | None = None) -> float | None:
    """MDN_CUDA_MEMORY_FRACTION=f (0 < f <= 1): cap this worker's CUDA caching allocator at f of each visible GPU.

    For several workers sharing one GPU (scripts/gpu_mqar.sh): without a cap each process keeps freed blocks cached
    and the others run out of memory (4 of 89 MQAR points did with 8 workers on one H100); with it a worker that
    reaches its share empties its own cache and retries before failing. No-op without CUDA. Returns the fraction.
    """
    env = os.environ if env is None else env
    text = env.get("MDN_CUDA_MEMORY_FRACTION", "").strip()
    if not text:
        return None
    try:
        frac = float(text)
    except ValueError:
        frac = float("nan")
    if not 0.0 < frac <= 1.0:
        raise ValueError(f"MDN_CUDA_MEMORY_FRACTION={text!r}: expected a number in (0, 1], e.g. 0.12")
    import torch
    if torch.cuda.is_available():
        for dev in range(torch.cuda.device_count()):
            torch.cuda.set_per_process_memory_fraction(frac, dev)
    return frac


def main() -> int:
    try:
        apply_memory_fraction()
    except ValueError as exc:
        print(f"mdn.runner: {exc}", file=sys.stderr)
        return 2
    events = take_stdout()
    specs = take_stdin()
    writer = EventWriter(events)
    bad = False
    for line in specs:
        line = line.strip()
        if not line:
            continue
        try:
            spec = json.loads(line)
            if not isinstance(spec, dict):
                raise ValueError(f"a job spec is a JSON object, got {type(spec).__name__}")
        except ValueError as exc:
            # No job id to answer to: an error event with job "" (docs/protocol.md); go on with the next line.
            writer.emit("error", "", kind="protocol", message=f"bad job spec line: {exc}")
            bad = True
            continue
        run_job(writer, spec)
    return 2 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
