"""OpenTelemetry: the push's trace context is stored with the job, each attempt runs in a
span linked to it and ends with its outcome; without the extra nothing is imported. Each
case runs in a process of its own (tests/tracing_probe.py): a TracerProvider is set once
per process."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest

from tests.conftest import ROOT, workers_env


def probe(mongo_url: str, db_name: str, *flags: str) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-m", "tests.tracing_probe", mongo_url, db_name, *flags],
        cwd=ROOT, env=workers_env(), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return dict(json.loads(done.stdout.splitlines()[-1]))


@pytest.mark.slow
@pytest.mark.processes
def test_each_attempt_runs_in_a_span_linked_to_the_push(
    mongo_url: str, db_name: str, db: Any
) -> None:
    seen = probe(mongo_url, db_name)
    request = seen["request"]
    for stored in seen["stored"].values():  # W3C traceparent: version-trace-span-flags
        assert stored["traceparent"].split("-")[1:3] == [request["trace_id"], request["span_id"]]
    spans = {span["name"]: span for span in seen["spans"]}
    done, failed = spans["RecordJob attempt"], spans["FailJob attempt"]
    for span in (done, failed):
        assert span["links"] == [request]  # linked to the push, not its child
        assert span["parent"] is None
        assert span["attributes"]["workers.job.attempt"] == 1
        assert len(span["attributes"]["workers.job.id"]) == 24
    assert done["attributes"]["workers.job.type"] == "RecordJob"
    assert (done["attributes"]["workers.job.outcome"], done["status"]) == ("completed", "UNSET")
    assert (failed["attributes"]["workers.job.outcome"], failed["status"]) == ("failed", "ERROR")
    assert failed["events"] == ["exception"]


@pytest.mark.slow
@pytest.mark.processes
def test_without_opentelemetry_nothing_is_imported_or_stored(
    mongo_url: str, db_name: str, db: Any
) -> None:
    seen = probe(mongo_url, db_name, "--without-otel")
    assert seen["loaded"] == []
    assert seen["stored"] == {"RecordJob": None, "FailJob": None}
    assert seen["spans"] == []


@pytest.mark.processes
def test_a_worker_loads_opentelemetry_at_its_start_not_at_its_first_attempt() -> None:
    """`Worker.run` calls `tracing.load()` before its pool starts: the import (some 30 ms and
    0.4 MB) is paid at start, where the bench's idle reading counts it, not as growth."""
    code = (
        "import sys, inspect, workers.tracing as t, workers.worker as w\n"
        "before = 'opentelemetry.trace' in sys.modules\n"
        "t.load()\n"
        "run = inspect.getsource(w.Worker.run)\n"
        "print(before, 'opentelemetry.trace' in sys.modules,"
        " run.index('tracing.load()') < run.index('self._pool.start()'))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=workers_env(), capture_output=True,
        text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split() == ["False", "True", "True"]
