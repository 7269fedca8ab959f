"""`python -m mdn.runner` as the Go side runs it: specs on stdin, events on stdout, logs on stderr.

Every stdout line is parsed strictly (NaN/Infinity tokens rejected), so any stray byte on the event stream
fails the test.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from mdn.runner.protocol import ERROR_KINDS, PROTOCOL_VERSION


def _reject_constant(name):
    raise ValueError(f"non-standard JSON constant {name} on the event stream")


def strict_loads(line: str) -> dict:
    return json.loads(line, parse_constant=_reject_constant)


def run_runner(*lines, timeout=120, env=None):
    """Run the runner with the given stdin lines (dicts are JSON-encoded); return (events, stderr, returncode)."""
    text = "".join((json.dumps(x) if isinstance(x, dict) else x) + "\n" for x in lines)
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONSAFEPATH": "1", "MDN_PROTOCOL": "1", **(env or {})}
    proc = subprocess.run([sys.executable, "-m", "mdn.runner"], input=text, capture_output=True, text=True,
                          timeout=timeout, env=full_env, cwd=os.path.dirname(os.path.abspath(__file__)))
    events = []
    for raw in proc.stdout.splitlines():
        try:
            ev = strict_loads(raw)
        except ValueError as exc:
            pytest.fail(f"non-event line on stdout: {raw!r} ({exc}); stderr:\n{proc.stderr}")
        assert isinstance(ev, dict), raw
        assert ev["v"] == PROTOCOL_VERSION and isinstance(ev["event"], str) and isinstance(ev["t"], float), raw
        assert "job" in ev, raw
        events.append(ev)
    return events, proc.stderr, proc.returncode


def spec(job_id, kind="echo", **params):
    return {"v": PROTOCOL_VERSION, "id": job_id, "kind": kind, "params": params}


def of_job(events, job_id):
    return [e for e in events if e["job"] == job_id]


def names(events):
    return [e["event"] for e in events if e["event"] != "progress"]


def test_echo_clean_event_sequence():
    events, stderr, rc = run_runner(spec("a", steps=3))
    assert rc == 0, stderr
    assert [e["event"] for e in events] == ["start", "progress", "progress", "progress", "metric", "result", "end"]
    start, end = events[0], events[-1]
    assert start["kind"] == "echo" and start["pid"] > 0 and start["host"]
    assert [e["done"] for e in events if e["event"] == "progress"] == [1, 2, 3]
    assert all(e["total"] == 3 for e in events if e["event"] == "progress")
    assert events[-2]["data"] == {"echo": {"steps": 3}}
    assert end["status"] == "ok" and end["elapsed"] >= 0


def test_stray_output_never_reaches_event_stream():
    """print(), os.write(1, ...) and a subprocess's stdout all go to stderr; specs are not readable by jobs."""
    events, stderr, rc = run_runner(spec("a", stray_print=True, read_stdin=True), spec("b"))
    assert rc == 0, stderr
    assert names(of_job(events, "a"))[-1] == "end" and of_job(events, "a")[-1]["status"] == "ok"
    result = [e for e in of_job(events, "a") if e["event"] == "result"][0]["data"]
    assert result["stdin"] == "", "a job reading stdin must see nothing (the next spec must not leak)"
    assert of_job(events, "b")[-1]["status"] == "ok", "the spec after a stdin-reading job must still run"
    for stray in ("stray print()", "stray os.write(1)", "stray output of a subprocess"):
        assert stray in stderr


def test_unknown_kind_is_a_user_error_and_the_runner_goes_on():
    events, stderr, rc = run_runner(spec("a", kind="no_such_job"), spec("b"))
    assert rc == 0, stderr
    a = of_job(events, "a")
    assert names(a) == ["start", "error", "end"]
    assert a[1]["kind"] == "user" and "unknown job kind 'no_such_job'" in a[1]["message"]
    assert a[2]["status"] == "error"
    assert of_job(events, "b")[-1]["status"] == "ok"


@pytest.mark.parametrize("kind", ["../etc", "Echo", "", 5, None, "jobs.echo"])
def test_bad_kind_names_are_protocol_errors(kind):
    events, stderr, rc = run_runner(spec("a", kind=kind))
    a = of_job(events, "a")
    assert names(a) == ["start", "error", "end"]
    assert a[1]["kind"] == "protocol"


@pytest.mark.parametrize("line", ["not json", "[1, 2]", '"a string"', "{truncated"])
def test_bad_spec_line(line):
    """A line that is not a JSON object: error{kind: protocol, job: ""}, the next job still runs, exit 2."""
    events, stderr, rc = run_runner(line, spec("b"))
    assert rc == 2
    assert events[0]["event"] == "error" and events[0]["job"] == "" and events[0]["kind"] == "protocol"
    assert events[0]["message"].startswith("bad job spec line")
    assert of_job(events, "b")[-1]["status"] == "ok"


def test_wrong_protocol_version_and_bad_params():
    events, _, rc = run_runner({"v": 99, "id": "a", "kind": "echo", "params": {}},
                               {"v": 1, "id": "b", "kind": "echo", "params": [1]})
    assert rc == 0
    for job in ("a", "b"):
        ev = of_job(events, job)
        assert names(ev) == ["start", "error", "end"] and ev[1]["kind"] == "protocol", ev
    assert "v=99" in of_job(events, "a")[1]["message"]


def test_job_error_kinds():
    kinds = [k for k in ERROR_KINDS]
    events, stderr, rc = run_runner(*[spec(k, fail=f"failed as {k}", fail_kind=k) for k in kinds],
                                    spec("bogus", fail="x", fail_kind="no-such-kind"))
    assert rc == 0, stderr
    for k in kinds:
        ev = of_job(events, k)
        assert names(ev) == ["start", "error", "end"], ev
        err = [e for e in ev if e["event"] == "error"][0]
        assert err["kind"] == k and err["message"] == f"failed as {k}"
        assert ev[-1]["event"] == "end" and ev[-1]["status"] == "error"
    bogus = [e for e in of_job(events, "bogus") if e["event"] == "error"][0]
    assert bogus["kind"] == "internal" and "no-such-kind" in bogus["message"]


@pytest.mark.parametrize("exc,kind", [("ValueError", "user"), ("ImportError", "unavailable"),
                                      ("RuntimeError", "internal"), ("KeyError", "internal")])
def test_exceptions_are_classified(exc, kind):
    events, stderr, rc = run_runner(spec("a", **{"raise": exc}), spec("b"))
    assert rc == 0
    err = [e for e in of_job(events, "a") if e["event"] == "error"][0]
    assert err["event"] == "error" and err["kind"] == kind, err
    assert "echo raised" in err["message"]
    if kind == "internal":
        assert "Traceback" in stderr, "a bug must leave its traceback in the log"
    else:
        assert "Traceback" not in stderr, "user-facing errors must not print tracebacks"
    assert of_job(events, "b")[-1]["status"] == "ok"


def test_non_finite_numbers_are_encoded_as_strings():
    events, stderr, rc = run_runner(spec("a", non_finite=True))
    assert rc == 0, stderr
    metric = [e for e in events if e["event"] == "metric"][0]["data"]
    result = [e for e in events if e["event"] == "result"][0]["data"]
    for d in (metric, result):
        assert d["nan"] == "nan" and d["inf"] == "inf" and d["ninf"] == "-inf" and d["np_nan"] == "nan"
        assert d["np_arr"] == [1.0, "nan", "inf"]


def test_crash_mid_job_leaves_no_end():
    """os._exit mid-job: the stream stops without `end` and the exit status is the job's — Go reports it."""
    events, stderr, rc = run_runner(spec("a", exit=7), spec("b"))
    assert rc == 7
    assert "end" not in names(of_job(events, "a"))
    assert of_job(events, "b") == []


def test_warm_runner_many_jobs_one_process():
    events, stderr, rc = run_runner(*[spec(f"j{i}", i=i) for i in range(5)])
    assert rc == 0, stderr
    pids = {e["pid"] for e in events if e["event"] == "start"}
    assert len(pids) == 1
    for i in range(5):
        ev = of_job(events, f"j{i}")
        assert ev[-1]["status"] == "ok" and ev[-2]["data"]["echo"]["i"] == i


def test_doctor_job_reports_the_environment():
    events, stderr, rc = run_runner(spec("d", kind="doctor"), env={"TRITON_INTERPRET": "1"})
    assert rc == 0, stderr
    d = of_job(events, "d")
    assert d[-1]["status"] == "ok", d
    rep = [e for e in d if e["event"] == "result"][0]["data"]
    assert os.path.abspath(rep["python"]["executable"]) == os.path.abspath(sys.executable)
    assert rep["python"]["version"] == ".".join(map(str, sys.version_info[:3]))
    for name in ("torch", "triton", "numpy", "fla", "mamba_ssm"):
        p = rep["packages"][name]
        assert isinstance(p["importable"], bool)
        assert p["importable"] or p["error"], f"{name}: a missing package must say why"
    import torch

    assert rep["packages"]["torch"]["version"] == torch.__version__
    assert rep["cuda"]["available"] == torch.cuda.is_available()
    assert len(rep["cuda"]["devices"]) == rep["cuda"]["device_count"]
    assert rep["triton_interpret"] is True and rep["backend"] == "interpreter"
    assert rep["mdn"]["path"].endswith(os.path.join("triton", "mdn"))


@pytest.mark.parametrize("bad", ["0", "1.5", "-0.2", "half"])
def test_bad_memory_fraction_is_a_clear_startup_error(bad):
    env = dict(os.environ, MDN_CUDA_MEMORY_FRACTION=bad)
    proc = subprocess.run([sys.executable, "-m", "mdn.runner"], input="", capture_output=True, text=True,
                          timeout=120, env=env)
    assert proc.returncode == 2
    assert f"MDN_CUDA_MEMORY_FRACTION='{bad}'" in proc.stderr and "(0, 1]" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_memory_fraction_parsing():
    from mdn.runner.__main__ import apply_memory_fraction
    assert apply_memory_fraction({}) is None
    assert apply_memory_fraction({"MDN_CUDA_MEMORY_FRACTION": " 0.25 "}) == 0.25
    with pytest.raises(ValueError, match="expected a number in"):
        apply_memory_fraction({"MDN_CUDA_MEMORY_FRACTION": "nan"})
