"""workers.testing.drain: the due jobs run in the calling thread, through the real claim and
outcome paths, and end as a worker would leave them."""

from __future__ import annotations

from typing import Any

import pytest

import workers.jobs
from tests.jobs import AfterJobRecorderJob, FailJob, RecordJob
from workers import Job
from workers.app import App
from workers.errors import DiscoveryError
from workers.testing import Drained, drain


def test_drain_runs_every_due_job_and_says_how_each_ended(app: App, db: Any) -> None:
    done = [Job.push(RecordJob(echo=n)) for n in range(3)]
    failed = Job.push(FailJob(message="drained"), retry={"retries": 1, "wait": 0})
    assert drain(app) == Drained(completed=3, failed=1, retried=1)
    for n, job_id in enumerate(done):
        job = workers.jobs.get(job_id)
        assert job is not None and (job.status, job.result, job.attempts) == (
            "completed",
            {"echo": n},
            1,
        )
    job = workers.jobs.get(failed)
    assert job is not None and (job.status, job.attempts) == ("failed", 2)
    assert job.error["message"] == "drained"
    assert db.after_job.count_documents({"job_id": failed}) == 2  # the hook ran each time


def test_drain_leaves_what_is_not_due_and_what_is_not_its_type(app: App, db: Any) -> None:
    later = Job.push(RecordJob(), delay=3600)
    other = Job.push(AfterJobRecorderJob())
    waiting = Job.push(FailJob(), retry={"retries": 1, "wait": 600})
    assert drain(app, types=["RecordJob", "FailJob"]) == Drained(retried=1)
    assert [workers.jobs.get(i).status for i in (later, other)] == ["scheduled", "ready"]  # type: ignore[union-attr]
    assert workers.jobs.get(waiting).status == "scheduled"  # type: ignore[union-attr]  # not waited for
    assert db.executions.count_documents({}) == 1


def test_drain_runs_dependents_once_their_antecedents_complete(app: App, db: Any) -> None:
    first = Job.push(RecordJob(echo="a"))
    second = Job.push(RecordJob(echo="b"), depends=[first])
    assert drain(app).completed == 2
    order = [doc["job_id"] for doc in db.executions.find().sort("server_time", 1)]
    assert order == [first, second]


def test_drain_refuses_a_type_no_class_has(app: App) -> None:
    with pytest.raises(DiscoveryError, match="drain: NoSuchJob is not a registered job type"):
        drain(app, types=["NoSuchJob"])


def test_a_drain_out_of_time_hands_back_what_it_did_not_run(app: App, db: Any) -> None:
    ids = [Job.push(RecordJob()) for _ in range(3)]
    with pytest.raises(TimeoutError, match="jobs were still due after 0 s"):
        drain(app, timeout=0)
    assert {workers.jobs.get(i).status for i in ids} == {"ready"}  # type: ignore[union-attr]
    assert db.executions.count_documents({}) == 0
