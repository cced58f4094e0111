"""Jobs not due yet are `scheduled`, out of the ready set the claimers scan, and staged to
ready when due: by whichever claimer gets there, each job once, on the `schedule` index."""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import workers
from tests.conftest import wait_for
from tests.jobs import RecordJob
from tests.test_worker import finished, running
from workers import Job
from workers.app import App
from workers.settings import Settings
from workers.store.claims import NEXT_DUE_WINDOW
from workers.store.profile import MONGODB, SECANTUS, profile_of

SOON = 15  # seconds: well under one 30 s poll


def come_due(app: App, *job_ids: str) -> None:
    """Move the jobs' run_at into the past, as time passing would."""
    past = app.store.now() - timedelta(seconds=1)
    app.store.jobs.update_many({"_id": {"$in": list(job_ids)}}, {"$set": {"run_at": past}})


def status_of(app: App, job_id: str) -> Any:
    return (app.store.get_job(job_id) or {}).get("status")


def test_a_job_pushed_for_later_is_scheduled_and_no_claim_sees_it(app: App) -> None:
    later = Job.push(RecordJob(n=1), delay=10)
    now = Job.push(RecordJob(n=2))

    claimed = app.store.claim("node#1", app.registry.types, 30, 10)

    assert status_of(app, later) == "scheduled" and status_of(app, now) == "running"
    assert [doc["_id"] for doc in claimed] == [now]
    assert app.store.next_due(app.registry.types) == app.store.get_job(later)["run_at"]  # type: ignore[index]


def test_with_nothing_due_soon_the_next_look_is_at_the_end_of_the_window(app: App) -> None:
    Job.push(RecordJob(n=1), delay=3600)
    before = app.store.now()

    look = app.store.next_due(app.registry.types)

    assert look is not None
    assert timedelta(0) < look - before <= NEXT_DUE_WINDOW + timedelta(seconds=1)


def test_staging_makes_each_due_job_ready_once_however_many_stage_at_once(app: App) -> None:
    due = [Job.push(RecordJob(n=n), delay=60) for n in range(30)]
    not_yet = Job.push(RecordJob(n=99), delay=60)
    come_due(app, *due)
    start, staged = threading.Barrier(3), []

    def stage() -> None:
        start.wait()
        staged.append(app.store.stage_due())

    stagers = [threading.Thread(target=stage) for _ in range(3)]
    for thread in stagers:
        thread.start()
    for thread in stagers:
        thread.join()

    assert sum(staged) == 30, staged
    assert {status_of(app, job_id) for job_id in due} == {"ready"}
    assert status_of(app, not_yet) == "scheduled"


def test_a_due_job_of_a_type_no_node_here_runs_is_staged_and_waits_as_ready(app: App) -> None:
    theirs = Job.push(RecordJob(n=1), delay=60)
    come_due(app, theirs)
    app.store.jobs.update_one({"_id": theirs}, {"$set": {"type": "OtherPoolJob"}})

    assert app.store.stage_due() == 1
    assert status_of(app, theirs) == "ready"
    assert app.store.claim("node#1", app.registry.types, 30, 10) == []


def test_a_paused_job_resumes_scheduled_until_its_time_and_ready_after(app: App) -> None:
    later, due = Job.push(RecordJob(n=1), delay=60), Job.push(RecordJob(n=2), delay=60)
    for job in Job.find(status="scheduled"):
        job.pause()
    come_due(app, due)

    resumed = {job_id: Job.get(job_id).resume().status for job_id in (later, due)}  # type: ignore[union-attr]

    assert resumed == {later: "scheduled", due: "ready"}


def test_a_dependent_released_before_its_time_is_scheduled(app: App) -> None:
    first = Job.push(RecordJob(n=1))
    second = Job.push(RecordJob(n=2), depends=[first], delay=60)
    assert status_of(app, second) == "waiting"

    app.store.claim("node#1", app.registry.types, 30, 1)
    app.store.complete(first, "node#1", None)

    assert status_of(app, first) == "completed"
    assert status_of(app, second) == "scheduled"


def test_a_retry_waits_scheduled(app: App) -> None:
    job_id = Job.push(RecordJob(n=1), retry={"retries": 2, "wait": 60})
    app.store.claim("node#1", app.registry.types, 30, 1)

    app.store.fail(job_id, "node#1", {"message": "no", "attempt": 1}, retry_in=60)

    assert status_of(app, job_id) == "scheduled"


def test_without_change_streams_a_scheduled_job_runs_when_due_not_a_poll_later(
    make_settings: Callable[..., Settings], db: Any
) -> None:
    """The poll is 30 s: the worker sleeps until the next due time (read on the `schedule`
    index), then stages the job and claims it."""
    queue = {"poll_interval": 30.0, "lease": 5, "change_streams": False}
    app = workers.boot(settings=make_settings(workers__queue=queue))
    try:
        job_id = Job.push(RecordJob(), delay=1.5)
        with running(app):
            doc = wait_for(lambda: finished(app, job_id), timeout=SOON, what="the delayed job")
    finally:
        workers.shutdown()
    assert doc["status"] == "completed"
    assert db.executions.find_one({"job_id": job_id})["server_time"] >= doc["run_at"]


def test_the_embedded_server_gets_unhinted_scans_and_mongodb_hinted_ones(app: App) -> None:
    assert profile_of({"version": "8.0.4"}) is MONGODB
    assert profile_of({"version": "8.2.11", "secantusVersion": "0.7.0b3"}) is SECANTUS
    assert MONGODB.hint("claim_queue") == "claim_queue" and SECANTUS.hint("claim_queue") is None
    assert app.store.profile is SECANTUS  # the test server
