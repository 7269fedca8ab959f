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
    """A failure reported to Go as an `error` event of the given kind (no traceback for user errors)."""

    def __init__(self, kind: str, message: str):
        if kind not in ERROR_KINDS:
            raise ValueError(f"JobError kind {kind!r} is not one of {ERROR_KINDS}")
        super().__init__(message)
        self.kind = kind
        self.message = message


def _clean(obj: Any) -> Any:
    """JSON has no NaN/inf: encode them as strings so the stream stays valid JSON."""
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
    if hasattr(obj, "item") and callable(obj.item):  # numpy / torch scalars
        try:
            return _clean(obj.item())
        except (TypeError, ValueError):
            pass
    return obj


class EventWriter:
    def __init__(self, stream: TextIO):
        self.stream = stream

    def emit(self, event: str, job: str, **fields: Any) -> None:
        rec = {"v": PROTOCOL_VERSION, "event": event, "job": job, "t": time.time()}
        rec.update(fields)
        self.stream.write(json.dumps(_clean(rec), separators=(",", ":")) + "\n")
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
    """Move fd 1 to a private descriptor for events and point fd 1 (and sys.stdout) at stderr."""
    sys.stdout.flush()
    event_fd = os.dup(1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return os.fdopen(event_fd, "w", buffering=1, encoding="utf-8")


def hostname() -> str:
    return socket.gethostname()
