"""Inline mode: Job.push runs the job in the pushing process, hooks, retries and outcome
included, with no worker anywhere."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

import workers
import workers.jobs
from tests.jobs import AfterJobRecorderJob, FailJob, RecordJob
from workers import Job
from workers.app import App
from workers.settings import Settings


@pytest.fixture
def inline_app(make_settings: Callable[..., Settings]) -> Iterator[App]:
    yield workers.boot(settings=make_settings(mode="inline"))
    workers.shutdown()


def test_a_push_has_run_when_it_returns(inline_app: App, db: Any) -> None:
    job_id = Job.push(RecordJob(echo="now"), delay=3600)
    job = workers.jobs.get(job_id)
    assert job is not None
    assert (job.status, job.result, job.attempts) == ("completed", {"echo": "now"}, 1)
    assert db.executions.count_documents({"job_id": job_id}) == 1


def test_retries_run_at_once_and_the_failure_is_recorded(inline_app: App, db: Any) -> None:
    job_id = Job.push(FailJob(message="inline"), retry={"retries": 2, "wait": 600})
    job = workers.jobs.get(job_id)
    assert job is not None
    assert (job.status, job.attempts, job.error["message"]) == ("failed", 3, "inline")
    assert db.after_job.count_documents({"job_id": job_id}) == 3


def test_hooks_run_and_push_many_runs_each(inline_app: App, db: Any) -> None:
    ids = Job.push_many([AfterJobRecorderJob(), AfterJobRecorderJob()])
    assert [workers.jobs.get(i).status for i in ids] == ["completed", "completed"]  # type: ignore[union-attr]
    assert db.after_job.count_documents({"error": None}) == 2


def test_dependents_run_after_their_antecedent_in_order(inline_app: App, db: Any) -> None:
    a = Job.push(RecordJob(name="a"))
    b = Job.push(RecordJob(name="b"), depends=[a])
    assert workers.jobs.get(b).status == "completed"  # type: ignore[union-attr]


def test_web_mode_runs_nothing(app: App, db: Any) -> None:
    job_id = Job.push(RecordJob())
    assert workers.jobs.get(job_id).status == "ready"  # type: ignore[union-attr]
    assert db.executions.count_documents({}) == 0
