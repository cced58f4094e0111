"""Jobs not due yet are `scheduled`, out of the ready set the claimers scan, and staged to
ready when due: by whichever claimer gets there, each job once, on the `schedule` index."""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest

import workers
import workers.jobs
from tests.conftest import wait_for
from tests.jobs import RecordJob
from tests.test_worker import finished, running
from workers import Job
from workers.app import App
from workers.record import HORIZON
from workers.settings import Settings
from workers.store import ReadyChange
from workers.store.profile import MONGODB, SCAN_SLACK, SECANTUS, ServerProfile, profile_of
from workers.store.schedule import NEXT_DUE_WINDOW
from workers.store.shared_scans import Spare
from workers.wakeup import Wakeup

SOON = 15  # seconds: well under one 30 s poll


def come_due(app: App, *job_ids: str) -> None:
    """Move the jobs' run_at into the past, as time passing would."""
    past = app.store.now() - timedelta(seconds=1)
    app.store.jobs.update_many({"_id": {"$in": list(job_ids)}}, {"$set": {"run_at": past}})


def status_of(app: App, job_id: str) -> Any:
    return (app.store.get_job(job_id) or {}).get("status")


def test_a_job_due_beyond_the_horizon_is_scheduled_and_no_claim_sees_it(app: App) -> None:
    tomorrow = Job.push(RecordJob(n=1), delay=86400)
    soon = Job.push(RecordJob(n=2), delay=10)  # within the HORIZON: ready, claimed when due
    now = Job.push(RecordJob(n=3))

    claimed = app.store.claim("node#1", app.registry.types, 30, 10)

    assert (status_of(app, tomorrow), status_of(app, soon)) == ("scheduled", "ready")
    assert [doc["_id"] for doc in claimed] == [now]
    assert app.store.next_due(app.registry.types) == app.store.get_job(soon)["run_at"]  # type: ignore[index]


def test_the_next_look_is_when_a_scheduled_job_is_to_be_staged(app: App) -> None:
    later = Job.push(RecordJob(n=1), delay=HORIZON.total_seconds() + 20)
    run_at = app.store.get_job(later)["run_at"]  # type: ignore[index]

    assert status_of(app, later) == "scheduled"
    assert app.store.next_due(app.registry.types) == run_at - HORIZON


def test_with_nothing_due_soon_the_next_look_is_at_the_end_of_the_window(app: App) -> None:
    Job.push(RecordJob(n=1), delay=3600)
    before = app.store.now()

    look = app.store.next_due(app.registry.types)

    assert look is not None
    assert timedelta(0) < look - before <= NEXT_DUE_WINDOW + timedelta(seconds=1)


def test_the_next_look_counts_from_when_the_claim_looked(app: App) -> None:
    # Given a job that came due while a claim ran: after the claim looked, before now
    looked = app.store.now()
    job_id = Job.push(RecordJob(n=1), after=looked + timedelta(milliseconds=50))
    run_at = app.store.get_job(job_id)["run_at"]  # type: ignore[index]
    app.store._offset += timedelta(seconds=1)  # the claim took a second

    # Then the next look counted from the claim is that job's (past: the claimer looks at
    # once), where one counted from now would skip it to the end of the window
    assert app.store.next_due(app.registry.types, looked) == run_at
    assert app.store.next_due(app.registry.types) != run_at


def test_a_wake_by_the_stream_after_a_due_time_passed_makes_the_claim_a_scan(app: App) -> None:
    # Given a wait that knows a retry is due in a second, and another job the stream named
    wakeup = Wakeup(app.store, 30.0, stream=False)
    wakeup._note(ReadyChange(app.store.now() + timedelta(seconds=1)))
    wakeup._note(ReadyChange(None, job_id="other", priority=0))
    app.store._offset += timedelta(seconds=2)  # the retry came due before the claimer woke

    # Then the claim is a scan, after a stage (the woken id is not the retry's), not a
    # claim of the woken id alone that leaves the retry to the 30 s safety look
    assert wakeup.wait(None) is None
    assert wakeup.due_reached


def test_staging_makes_each_due_job_ready_once_however_many_stage_at_once(app: App) -> None:
    due = [Job.push(RecordJob(n=n), delay=3600) for n in range(30)]
    not_yet = Job.push(RecordJob(n=99), delay=3600)
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
    theirs = Job.push(RecordJob(n=1), delay=3600)
    come_due(app, theirs)
    app.store.jobs.update_one({"_id": theirs}, {"$set": {"type": "OtherPoolJob"}})

    assert app.store.stage_due() == 1
    assert status_of(app, theirs) == "ready"
    assert app.store.claim("node#1", app.registry.types, 30, 10) == []


def test_a_paused_job_resumes_scheduled_until_its_time_and_ready_after(app: App) -> None:
    later, due = Job.push(RecordJob(n=1), delay=3600), Job.push(RecordJob(n=2), delay=3600)
    for job in workers.jobs.find(status="scheduled"):
        job.pause()
    come_due(app, due)

    resumed = {job_id: workers.jobs.get(job_id).resume().status for job_id in (later, due)}  # type: ignore[union-attr]

    assert resumed == {later: "scheduled", due: "ready"}


def test_a_dependent_released_before_its_time_is_scheduled(app: App) -> None:
    first = Job.push(RecordJob(n=1))
    second = Job.push(RecordJob(n=2), depends=[first], delay=3600)
    assert status_of(app, second) == "waiting"

    app.store.claim("node#1", app.registry.types, 30, 1)
    app.store.complete(first, "node#1", None)

    assert status_of(app, first) == "completed"
    assert status_of(app, second) == "scheduled"


def test_a_retry_waits_ready_within_the_horizon_and_scheduled_beyond_it(app: App) -> None:
    short, long = Job.push(RecordJob(n=1)), Job.push(RecordJob(n=2))
    app.store.claim("node#1", app.registry.types, 30, 2)

    app.store.fail(short, "node#1", {"message": "no", "attempt": 1}, retry_in=8)
    app.store.fail(long, "node#1", {"message": "no", "attempt": 1}, retry_in=3600)

    assert (status_of(app, short), status_of(app, long)) == ("ready", "scheduled")


def test_a_worker_stages_a_scheduled_job_that_came_due_and_runs_it(
    make_settings: Callable[..., Settings], db: Any
) -> None:
    """Polling (no stream): each look reads the next due time, finds a scheduled job whose
    staging time has come, stages it and claims it."""
    queue = {"poll_interval": 0.2, "lease": 5, "change_streams": False}
    app = workers.boot(settings=make_settings(workers__queue=queue))
    try:
        job_id = Job.push(RecordJob(), delay=86400)
        with running(app):
            wait_for(lambda: app.store.list_nodes(), timeout=SOON, what="the worker")
            come_due(app, job_id)  # a day passes
            doc = wait_for(lambda: finished(app, job_id), timeout=SOON, what="the staged job")
    finally:
        workers.shutdown()
    assert doc["status"] == "completed"


def test_a_scheduled_job_reported_by_the_stream_wakes_the_claimer_to_stage_it(app: App) -> None:
    wakeup = Wakeup(app.store, poll_interval=30.0, stream=False)
    run_at = app.store.now() + HORIZON + timedelta(seconds=5)

    wakeup._note(ReadyChange(run_at, "job-1", 0, scheduled=True))
    wakeup._note(ReadyChange(None, "job-2", 0, scheduled=True))  # a resume: when is unknown

    assert wakeup._due is not None and wakeup._due < app.store.now()  # the unknown one: now
    wakeup._due = None
    wakeup._note(ReadyChange(run_at, "job-1", 0, scheduled=True))
    assert wakeup._due == run_at - HORIZON and not wakeup._woken


def test_the_embedded_server_gets_unhinted_scans_and_mongodb_hinted_ones(app: App) -> None:
    assert profile_of({"version": "8.0.4"}) is MONGODB
    assert profile_of({"version": "8.2.11", "secantusVersion": "0.7.0b3"}) is SECANTUS
    assert MONGODB.hint("claim_queue") == "claim_queue" and SECANTUS.hint("claim_queue") is None
    # the test server's own: SecantusDB here, MongoDB under TEST_MONGO_URL
    assert app.store.profile is profile_of(app.store.db.client.admin.command("buildInfo"))


@pytest.mark.parametrize("profile", [MONGODB, SECANTUS], ids=["mongodb", "secantusdb"])
def test_one_scan_brings_back_the_profiles_count_of_candidates(
    app: App, profile: ServerProfile
) -> None:
    """A scan costs SecantusDB the same whatever its limit, so there it brings back more;
    on MongoDB a scan reads the claim's limit and a small slack (3 + 8)."""
    scan = profile.scan_size(3)
    assert scan == (3 + SCAN_SLACK if profile is MONGODB else 1024)
    Job.push_many([RecordJob(n=n) for n in range(scan + 50)])
    app.store._profile = profile  # as buildInfo would have it
    spare = Spare()

    claimed = app.store.claim("node#1", app.registry.types, 30, 3, spare)

    shared = app.store.candidates.find_one({}) or {}
    assert len(claimed) + len(spare.ids) + len(shared.get("ids", [])) == scan
