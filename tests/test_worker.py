"""One worker process, run in-process: push -> run -> outcome, retries, hooks."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import pytest

from tests.conftest import wait_for
from tests.jobs import (
    AfterJobRecorderJob,
    AfterRaisesJob,
    BadResultJob,
    BeforeFailsJob,
    FailJob,
    ProgressJob,
    RecordJob,
)
from workers import Job, boot, shutdown
from workers.app import App
from workers.settings import Settings
from workers.worker import Worker


@contextmanager
def running(app: App, **kwargs: Any) -> Iterator[Worker]:
    worker = Worker(app, **kwargs)
    thread = threading.Thread(target=worker.run, name="worker-under-test")
    thread.start()
    try:
        yield worker
    finally:
        worker.stop()
        thread.join(timeout=30)
        assert not thread.is_alive(), "the worker did not stop"


def finished(app: App, job_id: str) -> dict[str, Any] | None:
    doc = app.store.get_job(job_id)
    return doc if doc and doc["status"] in ("completed", "failed") else None


def test_a_pushed_job_runs_and_its_result_is_stored(app: App, db: Any) -> None:
    job_id = Job.push(RecordJob(echo="hello"))
    with running(app):
        doc = wait_for(lambda: finished(app, job_id), timeout=20, what="the job to finish")
    assert doc["status"] == "completed"
    assert doc["result"] == {"echo": "hello"}
    assert doc["attempts"] == 1
    assert doc["lease_owner"] is None
    assert doc["finished"] >= doc["started"] >= doc["created"]
    assert db.executions.count_documents({"job_id": job_id}) == 1


def test_a_failing_job_is_retried_then_fails_with_message_and_traceback(app: App, db: Any) -> None:
    job_id = Job.push(FailJob(message="nope"), retry={"retries": 2, "wait": 0})
    with running(app):
        doc = wait_for(lambda: finished(app, job_id), timeout=20, what="the job to fail")
    assert doc["status"] == "failed"
    assert doc["attempts"] == 3
    assert doc["error"]["message"] == "nope"
    assert doc["error"]["type"] == "builtins.ValueError"
    assert 'raise ValueError(self.params.get("message", "boom"))' in doc["error"]["traceback"]
    assert [e["attempt"] for e in db.executions.find({"job_id": job_id})] == [1, 2, 3]
    failures = [entry for entry in doc["log"] if entry["level"] == "error"]
    assert len(failures) == 3


def test_retries_wait_with_exponential_backoff(app: App, db: Any) -> None:
    job_id = Job.push(FailJob(), retry={"retries": 2, "wait": 0.4})
    with running(app):
        wait_for(lambda: finished(app, job_id), timeout=20, what="the job to fail")
    doc = app.store.get_job(job_id)
    assert doc is not None
    failed_at = [entry["time"] for entry in doc["log"] if entry["level"] == "error"]
    started_at = [e["server_time"] for e in db.executions.find({"job_id": job_id}).sort("attempt")]
    assert len(failed_at) == 3 and len(started_at) == 3
    # both clocks are the server's: attempt 2 starts >= 0.4 s after attempt 1 failed,
    # attempt 3 >= 0.8 s after attempt 2 failed (fixed backoff would give 0.4 s again)
    gaps = [
        (started_at[1] - failed_at[0]).total_seconds(),
        (started_at[2] - failed_at[1]).total_seconds(),
    ]
    assert gaps[0] >= 0.4 - 0.05, gaps
    assert gaps[1] >= 0.8 - 0.05, gaps


def test_after_job_is_called_with_none_after_a_success(app: App, db: Any) -> None:
    job_id = Job.push(AfterJobRecorderJob())
    with running(app):
        wait_for(lambda: db.after_job.find_one({"job_id": job_id}), timeout=20, what="after_job")
    calls = list(db.after_job.find({"job_id": job_id}))
    assert [call["error"] for call in calls] == [None]
    assert app.store.get_job(job_id)["status"] == "completed"  # type: ignore[index]


def test_after_job_is_called_with_the_error_after_every_failed_attempt(app: App, db: Any) -> None:
    job_id = Job.push(FailJob(message="bad input"), retry={"retries": 1, "wait": 0})
    with running(app):
        wait_for(lambda: finished(app, job_id), timeout=20, what="the job to fail")
        wait_for(
            lambda: db.after_job.count_documents({"job_id": job_id}) == 2,
            timeout=20,
            what="after_job twice",
        )
    calls = sorted(db.after_job.find({"job_id": job_id}), key=lambda c: c["attempt"])
    assert [c["error"] for c in calls] == ["ValueError('bad input')"] * 2


def test_an_exception_in_before_job_fails_the_attempt_like_one_in_handle_job(
    app: App, db: Any
) -> None:
    job_id = Job.push(BeforeFailsJob(), retry=0)
    with running(app):
        doc = wait_for(lambda: finished(app, job_id), timeout=20, what="the job to fail")
        wait_for(lambda: db.after_job.find_one({"job_id": job_id}), timeout=20, what="after_job")
    assert doc["status"] == "failed"
    assert doc["error"]["type"] == "builtins.PermissionError"
    assert db.executions.count_documents({"job_id": job_id}) == 0  # handle_job never ran
    assert (
        db.after_job.find_one({"job_id": job_id})["error"] == "PermissionError('not allowed yet')"
    )


def test_an_exception_in_after_job_is_logged_and_the_worker_keeps_working(app: App) -> None:
    first = Job.push(AfterRaisesJob())
    with running(app):
        assert (
            wait_for(lambda: finished(app, first), timeout=20, what="first")["status"]
            == "completed"
        )
        second = Job.push(RecordJob())
        assert (
            wait_for(lambda: finished(app, second), timeout=20, what="second")["status"]
            == "completed"
        )


def test_a_result_that_is_not_bson_fails_the_attempt_with_a_clear_error(app: App) -> None:
    job_id = Job.push(BadResultJob(), retry=0)
    with running(app):
        doc = wait_for(lambda: finished(app, job_id), timeout=20, what="the job to fail")
    assert doc["status"] == "failed"
    assert "not BSON-encodable: result.value" in doc["error"]["message"]


def test_progress_and_log_are_recorded_on_the_job(app: App) -> None:
    job_id = Job.push(ProgressJob())
    with running(app):
        doc = wait_for(lambda: finished(app, job_id), timeout=20, what="the job to finish")
    assert doc["progress"] == {"completed": 4, "total": 4, "percent": 100.0}
    (entry,) = [e for e in doc["log"] if e["message"] == "quarter done"]
    assert entry["level"] == "info" and entry["data"] == {"step": 1} and "time" in entry


@pytest.mark.slow
def test_a_delayed_job_runs_only_once_its_time_has_come(app: App, db: Any) -> None:
    job_id = Job.push(RecordJob(), delay=1.5)
    with running(app):
        doc = wait_for(lambda: finished(app, job_id), timeout=20, what="the delayed job")
    assert doc["started"] >= doc["run_at"]
    assert (doc["started"] - doc["created"]).total_seconds() >= 1.5


def test_a_job_that_comes_due_while_the_claim_of_another_runs_is_not_left_waiting(
    app: App, db: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given two delayed jobs due 100 ms apart (retries of jobs that failed together), two
    # idle threads, and a claim of the first that takes 200 ms (the clock moves on by that
    # much): the second comes due after that claim looked, before the claimer's next read
    # of when a job is due
    first = app.store.now() + timedelta(seconds=1)
    ids = [
        Job.push(RecordJob(n=n), after=first + timedelta(milliseconds=100 * n)) for n in range(2)
    ]
    claim = app.store.claim

    def slow_claim(*args: Any, **kwargs: Any) -> Any:
        docs = claim(*args, **kwargs)
        if docs:
            app.store._offset += timedelta(milliseconds=200)
        return docs

    monkeypatch.setattr(app.store, "claim", slow_claim)
    with running(app):
        # Then the second runs when due, not at the next safety poll (30 s later)
        docs = [wait_for(lambda i=i: finished(app, i), timeout=10, what=i) for i in ids]
    assert {doc["status"] for doc in docs} == {"completed"}


@pytest.mark.slow
def test_one_thread_runs_jobs_in_priority_order(
    make_settings: Callable[..., Settings], db: Any
) -> None:
    app = boot(settings=make_settings(workers__count=1))
    try:
        names = ("low", "normal", "critical", "high")
        ids = [Job.push(RecordJob(echo=p), priority=p) for p in names]
        with running(app):
            wait_for(lambda: all(finished(app, i) for i in ids), timeout=20, what="all jobs")
    finally:
        shutdown()
    order = [e["params"]["echo"] for e in db.executions.find().sort("server_time", 1)]
    assert order == ["critical", "high", "normal", "low"]
