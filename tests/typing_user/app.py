"""A user's module, as a type checker must follow it: every public name of `workers`, with
typed params. `tests/test_public_api.py` runs `mypy --strict` over it; nothing runs it."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any, Literal, assert_type

import workers
import workers.jobs
from workers import (
    ActionResult,
    Job,
    JobEvent,
    Pushed,
    Repeat,
    RetryPolicy,
    StoredJob,
)


class LoadRetentionJob(Job):
    project_id: str
    days: int = 30
    since: datetime | None = None

    def handle_job(self) -> dict[str, Any]:
        assert_type(self.project_id, str)
        assert_type(self.days, int)
        assert_type(self.since, datetime | None)
        assert_type(self.params, dict[str, Any])
        self.progress(1, 2)
        self.log("loaded", level="info")
        return {"project": self.project_id}

    def after_job(self, error: BaseException | None) -> None:
        pass


def pushes() -> None:
    job = LoadRetentionJob(project_id="p1")
    assert_type(Job.push(job), Pushed)
    assert_type(Job.push(job, delay=60, priority="high", unique="p1"), Pushed)
    assert_type(job.push(delay=timedelta(minutes=1)), Pushed)
    retry = RetryPolicy(retries=5, wait=timedelta(seconds=20), backoff="exponential", jitter=0.2)
    assert_type(job.push(retry=retry, repeat=Repeat(repeats=3, wait=60)), Pushed)
    assert_type(job.push(retry=3), Pushed)
    many = LoadRetentionJob.push_many([LoadRetentionJob(project_id="p2")], delay=5)
    assert_type(many, list[Pushed])
    assert_type(workers.push_named("SendMail", {"to": "ada@example.com"}), Pushed)
    assert_type(workers.push_many([job]), list[Pushed])
    pushed = Job.push(job)
    assert_type(pushed.existing, bool)
    assert_type(pushed.result(timeout=10), Any)


def reads(job_id: str) -> None:
    stored = workers.jobs.get(job_id)
    if stored is not None:
        assert_type(stored, StoredJob)
        assert_type(stored.id, str)
        assert_type(stored.params, dict[str, Any])
        assert_type(stored.attempts, int)
        assert_type(stored.started, datetime | None)
        assert_type(stored.error, dict[str, Any] | None)
        if stored.status == "failed":  # a Literal: a typo here is a type error
            assert_type(stored.status, Literal["failed"])
    done = workers.jobs.cancel([job_id])
    assert_type(done, ActionResult)


def events(event: JobEvent) -> None:
    assert_type(event.kind, str)
