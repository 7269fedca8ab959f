"""Protocol v1 events (docs/protocol.md). Everything written to the event stream goes through `EventWriter`."""
from __future__ import annotations

import json
import math
import os
import socket
import sys
import time
from typing import Any, TextIO

PROTOCOL_VERSION = 1

ERROR_KINDS = ("user", "unavailable", "incorrect", "oom", "nan", "timeout", "internal", "protocol")


class JobError(Exception):
    """A failure reported to Go as an `error` event of the given kind (no traceback for user errors).

    kind is one of ERROR_KINDS; an unknown kind is a bug in the job, so it is reported as `internal`
    (raising here would turn the job's real failure into a confusing one).
    """

    def __init__(self, kind: str, message: str):
        if kind not in ERROR_KINDS:
            message = f"(JobError with unknown kind {kind!r}) {message}"
            kind = "internal"
        super().__init__(message)
        self.kind = kind
        self.message = message


def _clean(obj: Any) -> Any:
    """Make obj JSON-safe: JSON has no NaN/inf, so they become the strings "nan", "inf", "-inf";
    numpy/torch scalars and arrays become Python numbers and lists; tuples become lists; keys become strings."""
    if isinstance(obj, bool) or obj is None or isinstance(obj, (int, str)):
        return obj
    if isinstance(obj, float):
        if math.isnan(obj):
            return "nan"
        if math.isinf(obj):
            return "inf" if obj > 0 else "-inf"
        return obj
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if hasattr(obj, "tolist") and callable(obj.tolist):  # numpy scalars/arrays, torch tensors
        try:
            return _clean(obj.tolist())
        except (TypeError, ValueError, RuntimeError):
            pass
    if hasattr(obj, "item") and callable(obj.item):
        try:
            return _clean(obj.item())
        except (TypeError, ValueError, RuntimeError):
            pass
    return obj  # json.dumps raises TypeError for anything else: the job fails as `internal`


class EventWriter:
    def __init__(self, stream: TextIO):
        self.stream = stream

    def emit(self, event: str, job: str, **fields: Any) -> None:
        rec = {"v": PROTOCOL_VERSION, "event": event, "job": job, "t": time.time()}
        rec.update(fields)
        # allow_nan=False: a non-finite float that escaped _clean is a bug, never an invalid line.
        line = json.dumps(_clean(rec), separators=(",", ":"), allow_nan=False)
        self.stream.write(line + "\n")
        self.stream.flush()


class JobContext:
    """Handed to every job: emit progress and metrics, read the job id."""

    def __init__(self, writer: EventWriter, job_id: str, kind: str):
        self.writer = writer
        self.job_id = job_id
        self.kind = kind

    def progress(self, done: int, total: int, message: str = "") -> None:
        self.writer.emit("progress", self.job_id, done=int(done), total=int(total), message=message)

    def metric(self, data: dict) -> None:
        self.writer.emit("metric", self.job_id, data=data)

    def log(self, message: str) -> None:
        print(message, file=sys.stderr, flush=True)


def take_stdout() -> TextIO:
    """Move fd 1 to a private descriptor for events and point fd 1 (and sys.stdout) at stderr.

    After this, anything written to "stdout" — print(), os.write(1, ...), C extensions, subprocesses that
    inherit fd 1 — lands in stderr; only EventWriter can write to the event stream. The private descriptor is
    not inherited by subprocesses.
    """
    sys.stdout.flush()
    event_fd = os.dup(1)  # non-inheritable (PEP 446)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return os.fdopen(event_fd, "w", buffering=1, encoding="utf-8")


def take_stdin() -> TextIO:
    """Move fd 0 to a private descriptor for job specs and point fd 0 (and sys.stdin) at /dev/null, so a job
    (or anything it starts) that reads stdin can never swallow the next job spec."""
    spec_fd = os.dup(0)  # non-inheritable (PEP 446)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    sys.stdin = open(0, "r", closefd=False)
    return os.fdopen(spec_fd, "r", encoding="utf-8")


def hostname() -> str:
    return socket.gethostname()
