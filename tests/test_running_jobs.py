"""What a running job can do and see: progress and log (readable from outside while it runs),
`self.fail`, cancellation while it runs, and async handlers with a timeout."""

from __future__ import annotations

from typing import Any

import pytest

import workers.jobs
from tests.conftest import wait_for
from tests.jobs import AsyncJob, ProgressJob, SelfFailJob, WaitForCancelJob
from tests.test_worker import finished, running
from workers import Job
from workers.app import App


def test_a_job_cancelled_while_it_runs_stops_at_its_next_progress_call(app: App, db: Any) -> None:
    job_id = Job.push(WaitForCancelJob(seconds=20))
    with running(app):
        # progress is readable from outside while the job runs
        wait_for(
            lambda: (workers.jobs.get(job_id).progress or {}).get("completed"),
            timeout=20,
            what="progress",
        )  # type: ignore[union-attr]
        workers.jobs.get(job_id).cancel()  # type: ignore[union-attr]
        after = wait_for(
            lambda: db.after_job.find_one({"job_id": job_id}), timeout=20, what="after_job"
        )
    assert after["error"] == "JobCancelled"
    doc = app.store.get_job(job_id)
    assert doc is not None
    assert (doc["status"], doc["result"], doc["lease_owner"]) == ("cancelled", None, None)
    assert db.executions.count_documents({"job_id": job_id}) == 1


def test_self_fail_fails_the_attempt_and_is_retried(app: App, db: Any) -> None:
    job_id = Job.push(SelfFailJob(message="no data yet"), retry={"retries": 1, "wait": 0})
    with running(app):
        doc = wait_for(lambda: finished(app, job_id), timeout=20, what="the job to fail")
    assert (doc["status"], doc["attempts"], doc["result"]) == ("failed", 2, None)
    assert doc["error"]["message"] == "no data yet"
    assert doc["error"]["type"] == "workers.errors.JobFailed"
    assert [d["error"] for d in db.after_job.find({"job_id": job_id})] == ["JobFailed"] * 2


def test_a_fatal_self_fail_skips_the_remaining_retries(app: App, db: Any) -> None:
    job_id = Job.push(SelfFailJob(fatal=True), retry={"retries": 5, "wait": 0})
    with running(app):
        doc = wait_for(lambda: finished(app, job_id), timeout=20, what="the job to fail")
    assert (doc["status"], doc["attempts"]) == ("failed", 1)


def test_progress_is_validated_and_log_takes_jobcollections_levels() -> None:
    job = ProgressJob()
    cases: list[tuple[Any, Any]] = [(5, 4), (-1, 4), (1, 0), ("1", 2)]
    for completed, total in cases:
        with pytest.raises(ValueError, match="0 <= completed <= total"):
            job.progress(completed, total)
    for level in ("info", "success", "warning", "danger", "debug", "error"):
        job.log("fine", level=level)  # not running: nothing stored, nothing raised
    with pytest.raises(ValueError, match="log level must be one of"):
        job.log("x", level="loud")


def test_progress_stores_the_percent(app: App) -> None:
    job_id = Job.push(ProgressJob())
    with running(app):
        doc = wait_for(lambda: finished(app, job_id), timeout=20, what="the job")
    assert doc["progress"] == {"completed": 4, "total": 4, "percent": 100.0}


def test_an_async_handler_and_its_hooks_run_on_an_event_loop(app: App, db: Any) -> None:
    job_id = Job.push(AsyncJob(sleep=0.01))
    with running(app):
        doc = wait_for(lambda: finished(app, job_id), timeout=20, what="the async job")
    assert doc["status"] == "completed" and doc["result"]["async"] is True
    assert db.after_job.find_one({"job_id": job_id})["error"] is None


def test_an_async_handler_past_its_timeout_is_cancelled_and_fails(app: App, db: Any) -> None:
    job_id = Job.push(AsyncJob(sleep=30), timeout=0.3, retry=0)
    with running(app):
        doc = wait_for(lambda: finished(app, job_id), timeout=20, what="the async job to time out")
        after = wait_for(
            lambda: db.after_job.find_one({"job_id": job_id}), timeout=20, what="after_job"
        )
    assert doc["status"] == "failed"
    assert doc["error"]["type"] == "workers.errors.JobTimeout"
    assert after["error"] == "JobTimeout"
