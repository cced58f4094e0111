"""Per-job timeouts: the attempt fails with a JobTimeout; a job that will not return
gets its process recycled."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from pymongo.errors import AutoReconnect

from tests.conftest import wait_for
from tests.faulty import FaultyCollection
from tests.headless_node import HeadlessNode
from tests.jobs import RecordJob, SleepJob, SlowEchoJob, SpinJob, TimeoutAfterJob
from tests.test_worker import finished, running
from workers import Job, boot, shutdown
from workers.app import App
from workers.settings import Settings


def test_a_job_past_its_timeout_fails_with_a_timeout_error_and_a_late_return_changes_nothing(
    app: App, db: Any
) -> None:
    job_id = Job.push(TimeoutAfterJob(seconds=1.0), retry=0)  # class timeout: 0.5 s
    with running(app) as worker:
        doc = wait_for(lambda: finished(app, job_id), timeout=20, what="the timeout")
        call = wait_for(
            lambda: db.after_job.find_one({"job_id": job_id}),
            timeout=20,
            what="after_job of the late job",
        )
        later = Job.push(RecordJob())
        assert (
            wait_for(lambda: finished(app, later), timeout=20, what="next job")["status"]
            == "completed"
        )
        assert not worker._stopping.is_set()  # it returned in time: no recycling
    doc = app.store.get_job(job_id)
    assert doc is not None and doc["status"] == "failed"
    assert doc["error"]["type"] == "workers.errors.JobTimeout"
    assert doc["error"]["message"] == "TimeoutAfterJob ran past its timeout of 0.5 s"
    assert call["error"] == "JobTimeout('TimeoutAfterJob ran past its timeout of 0.5 s')"


def test_a_timed_out_job_is_retried_by_its_policy(app: App) -> None:
    job_id = Job.push(TimeoutAfterJob(seconds=0.8), retry={"retries": 1, "wait": 0})
    with running(app):
        doc = wait_for(lambda: finished(app, job_id), timeout=20, what="both attempts")
    assert doc["attempts"] == 2 and doc["status"] == "failed"


def test_the_timeout_comes_from_push_then_class_then_settings(
    make_settings: Callable[..., Settings],
) -> None:
    app = boot(settings=make_settings(workers__queue={"timeout": 60, "lease": 5}))
    try:
        get = app.store.get_job
        assert get(Job.push(RecordJob()))["timeout"] == 60  # type: ignore[index]
        assert get(Job.push(TimeoutAfterJob()))["timeout"] == 0.5  # type: ignore[index]
        assert get(Job.push(TimeoutAfterJob(), timeout=7))["timeout"] == 7  # type: ignore[index]
    finally:
        shutdown()


@pytest.mark.processes
@pytest.mark.slow
@pytest.mark.parametrize(
    "job", [SleepJob(seconds=120), SpinJob(seconds=120)], ids=["sleeps", "spins"]
)
def test_a_job_that_never_returns_gets_its_process_recycled(
    settings_file: Callable[..., Path], tmp_path: Path, db: Any, job: Any
) -> None:
    path = settings_file(cluster__count=1, workers__count=2)
    with HeadlessNode(path, tmp_path) as node:
        boot(str(path))
        try:
            stuck = Job.push(job, timeout=1, retry=0)
            doc = wait_for(
                lambda: (
                    (d := db["workers.jobs"].find_one({"_id": stuck}))
                    and d["status"] == "failed"
                    and d
                ),
                timeout=60,
                what="the timeout",
            )
            wait_for(
                lambda: "exited: workers-00 (exit status 3" in node.output(),
                timeout=60,
                what="the process to recycle",
            )
            after = Job.push(RecordJob())
            wait_for(
                lambda: db.executions.find_one({"job_id": after}),
                timeout=60,
                what="a job on the fresh process",
            )
        finally:
            shutdown()
        assert node.stop(signal.SIGTERM) == 0
    assert doc["error"]["type"] == "workers.errors.JobTimeout"
    stuck_pid = db.executions.find_one({"job_id": stuck})["pid"]
    assert db.executions.find_one({"job_id": after})["pid"] != stuck_pid


@pytest.mark.slow
def test_a_job_that_returned_in_time_keeps_its_outcome_while_the_write_outlasts_the_deadline(
    app: App, db: Any
) -> None:
    # Given a job with a 2 s timeout that returns after 1 s
    job_id = Job.push(SlowEchoJob(seconds=1.0), timeout=2, retry=1)
    refused: dict[str, float] = {}

    def refuse_completion_for_2s(name: str, args: tuple[Any, ...], _: Any) -> str | None:
        if name != "bulk_write":  # completions, the only bulk write on the jobs
            if name != "update_one" or not isinstance(args[1], list):
                return None
            if args[1][0]["$set"].get("status") != "completed":
                return None
        first = refused.setdefault("first", time.monotonic())
        return "before" if time.monotonic() - first < 2.0 else None

    # When its completion write fails through an outage until past the deadline
    app.store.jobs = FaultyCollection(  # type: ignore[assignment]
        app.store.jobs, refuse_completion_for_2s, lambda: AutoReconnect("injected: outage")
    )
    with running(app):
        doc = wait_for(lambda: finished(app, job_id), timeout=20, what="the job to finish")
    # Then its own outcome is recorded, once, and it never runs again
    assert refused, "the completion was never refused"
    assert doc["status"] == "completed", doc.get("error")
    assert doc["attempts"] == 1
    assert db.executions.count_documents({"job_id": job_id, "phase": "start"}) == 1


@pytest.mark.slow
def test_the_watchdog_records_a_timeout_through_an_outage(app: App, db: Any) -> None:
    job_id = Job.push(TimeoutAfterJob(seconds=1.0), retry=0)  # class timeout: 0.5 s
    refusals = {"left": 3}

    def refuse_the_first_failure_writes(name: str, args: tuple[Any, ...], _: Any) -> str | None:
        if name != "update_one" or not isinstance(args[1], list):
            return None
        if "error" not in args[1][0]["$set"] or refusals["left"] == 0:
            return None
        refusals["left"] -= 1
        return "before"

    app.store.jobs = FaultyCollection(  # type: ignore[assignment]
        app.store.jobs, refuse_the_first_failure_writes, lambda: AutoReconnect("injected")
    )
    with running(app):
        doc = wait_for(lambda: finished(app, job_id), timeout=30, what="the timeout")
    assert refusals["left"] == 0, "the timeout write was never refused"
    assert doc["status"] == "failed"
    assert doc["error"]["type"] == "workers.errors.JobTimeout"  # not lost to a lease expiry
