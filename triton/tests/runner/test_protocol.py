"""Protocol v1 pieces in-process: event encoding, JobError kinds."""
from __future__ import annotations

import io
import json
import math

import numpy as np
import pytest
import torch

from mdn.runner.protocol import ERROR_KINDS, PROTOCOL_VERSION, EventWriter, JobContext, JobError, _clean


def _reject(name):
    raise ValueError(name)


def emitted(fn):
    buf = io.StringIO()
    fn(EventWriter(buf))
    lines = buf.getvalue().splitlines()
    return [json.loads(x, parse_constant=_reject) for x in lines], lines


def test_event_fields_and_one_line_each():
    evs, lines = emitted(lambda w: (w.emit("start", "j", kind="echo", pid=1, host="h"),
                                    w.emit("metric", "j", data={"msg": "a\nb"})))
    assert len(lines) == 2, "a newline inside a value must stay escaped"
    assert evs[0]["v"] == PROTOCOL_VERSION and evs[0]["event"] == "start" and evs[0]["job"] == "j"
    assert isinstance(evs[0]["t"], float)
    assert evs[1]["data"]["msg"] == "a\nb"


@pytest.mark.parametrize("value,want", [
    (float("nan"), "nan"), (float("inf"), "inf"), (float("-inf"), "-inf"), (1.5, 1.5), (True, True), (None, None),
    (np.float64("nan"), "nan"), (np.int64(3), 3), (np.array([[1.0, np.inf]]), [[1.0, "inf"]]),
    (torch.tensor(float("nan")), "nan"), (torch.tensor([1.0, -math.inf]), [1.0, "-inf"]),
    ((1, float("nan")), [1, "nan"]), ({1: float("inf")}, {"1": "inf"}),
])
def test_clean_makes_values_json_safe(value, want):
    assert _clean(value) == want
    evs, _ = emitted(lambda w: w.emit("result", "j", data={"x": value}))
    assert evs[0]["data"]["x"] == want


def test_unserialisable_result_raises_before_writing():
    buf = io.StringIO()
    with pytest.raises(TypeError):
        EventWriter(buf).emit("result", "j", data={"x": object()})
    assert buf.getvalue() == "", "a failed encoding must not leave a partial line"


def test_job_error_kinds():
    for k in ERROR_KINDS:
        e = JobError(k, "m")
        assert (e.kind, e.message, str(e)) == (k, "m", "m")
    e = JobError("bogus", "m")
    assert e.kind == "internal" and "bogus" in e.message


def test_context_progress_and_metric():
    def go(w):
        ctx = JobContext(w, "j", "echo")
        ctx.progress(1.0, 4, "x")
        ctx.metric({"loss": float("nan")})
    evs, _ = emitted(go)
    assert evs[0]["event"] == "progress" and evs[0]["done"] == 1 and evs[0]["total"] == 4
    assert evs[1]["data"] == {"loss": "nan"}
