"""Every action on a stored job, allowed and refused (jobCollection's state machine), and the
view of a stored job: workers.jobs.get and find, refresh."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

import workers.jobs
from tests.jobs import RecordJob
from tests.plans import assert_on_index
from workers import Job
from workers.app import App
from workers.errors import JobNotFound, TransitionRefused
from workers.record import ALLOWED, STATUSES

ACTIONS = {
    "pause": "paused",
    "resume": None,  # ready or waiting: it depends on the antecedents
    "cancel": "cancelled",
    "restart": None,
    "rerun": "completed",  # the original stays completed; a clone runs
    "remove": None,  # gone
}


def job_in(app: App, status: str) -> str:
    """A job put straight into `status` (as the workers would leave it)."""
    job_id = Job.push(RecordJob(echo=status))
    fields: dict[str, Any] = {"status": status}
    if status == "running":
        fields.update(lease_owner="someone#1", attempts=1)
    if status in ("completed", "failed", "cancelled"):
        fields.update(finished=app.store.now(), attempts=1)
    app.store.jobs.update_one({"_id": job_id}, {"$set": fields})
    return job_id


CASES = [(action, status) for action in ACTIONS for status in STATUSES]


@pytest.mark.slow
@pytest.mark.parametrize(("action", "status"), CASES)
def test_each_action_changes_exactly_the_statuses_it_allows(
    app: App, action: str, status: str
) -> None:
    job_id = job_in(app, status)
    job = workers.jobs.get(job_id)
    assert job is not None
    before = app.store.get_job(job_id)
    if status not in ALLOWED[action]:
        with pytest.raises(TransitionRefused) as refused:
            getattr(job, action)()
        message = str(refused.value)
        assert job_id in message and status in message
        assert all(allowed in message for allowed in ALLOWED[action])
        assert app.store.get_job(job_id) == before, "a refused action must change nothing"
        return
    getattr(job, action)()
    after = app.store.get_job(job_id)
    if action == "remove":
        assert after is None
    elif action == "rerun":
        assert after is not None and after["status"] == "completed"
        clones = [d for d in app.store.jobs.find({"_id": {"$ne": job_id}})]
        assert [(c["status"], c["params"], c["attempts"]) for c in clones] == [
            ("ready", {"echo": "completed"}, 0)
        ]
    elif action in ("resume", "restart"):
        assert after is not None and after["status"] == "ready"
    else:
        assert after is not None and after["status"] == ACTIONS[action]


def test_a_restart_gives_one_more_attempt_plus_the_retries_asked_for(app: App) -> None:
    job_id = job_in(app, "failed")
    app.store.jobs.update_one({"_id": job_id}, {"$set": {"attempts": 4, "retries": 3}})
    job = workers.jobs.get(job_id)
    assert job is not None
    job.restart(retries=2)
    doc = app.store.get_job(job_id)
    assert doc is not None
    assert (doc["status"], doc["attempts"], doc["retries"], doc["finished"]) == (
        "ready",
        4,
        6,
        None,
    )


def test_cancelling_a_ready_job_finishes_it_and_keeps_it_from_running(app: App) -> None:
    job_id = job_in(app, "ready")
    job = workers.jobs.get(job_id)
    assert job is not None
    assert job.cancel().status == "cancelled"
    assert job.finished is not None
    assert any(entry["message"].startswith("cancelled") for entry in job.log)
    assert app.store.claim("t#1", ["RecordJob"], 30, 5) == []


def test_an_unknown_id_reads_as_none_and_many_actions_report_it(app: App) -> None:
    assert workers.jobs.get("0123456789abcdef01234567") is None
    result = workers.jobs.cancel(["0123456789abcdef01234567"])
    assert result.changed == [] and result.refused == {"0123456789abcdef01234567": None}


def test_a_removed_job_cannot_be_refreshed(app: App) -> None:
    job = workers.jobs.get(job_in(app, "completed"))
    assert job is not None
    job.remove()
    with pytest.raises(JobNotFound):
        job.refresh()


def test_many_actions_change_what_they_may_and_report_the_rest(app: App) -> None:
    ready = [job_in(app, "ready") for _ in range(3)]
    running = job_in(app, "running")
    result = workers.jobs.pause([*ready, running])
    assert sorted(result.changed) == sorted(ready)
    assert result.refused == {running: "running"}
    assert {j.status for j in map(workers.jobs.get, ready) if j} == {"paused"}
    assert sorted(workers.jobs.resume(ready).changed) == sorted(ready)


def test_the_view_shows_the_stored_job(app: App) -> None:
    job_id = Job.push(RecordJob(echo=1), priority="high", delay=60)
    job = workers.jobs.get(job_id)
    assert job is not None
    assert (job.id, job.type, job.status, job.params) == (
        job_id,
        "RecordJob",
        "ready",
        {"echo": 1},
    )
    assert (job.priority, job.attempts, job.progress, job.result, job.error) == (
        -10,
        0,
        None,
        None,
        None,
    )
    assert job.created is not None and job.run_at is not None and job.run_at > job.created
    assert (job.started, job.finished, job.depends, job.repeats_left) == (None, None, [], None)
    app.store.jobs.update_one({"_id": job_id}, {"$set": {"status": "paused"}})
    assert job.status == "ready" and job.refresh().status == "paused"


def test_find_filters_by_type_and_status_newest_first(app: App) -> None:
    ids = [Job.push(RecordJob(n=n)) for n in range(6)]
    workers.jobs.pause(ids[:2])
    workers.jobs.cancel(ids[4:5])
    assert [j.id for j in workers.jobs.find(type="RecordJob")] == ids[::-1]
    assert [j.id for j in workers.jobs.find(type="RecordJob", limit=3)] == ids[:2:-1]
    assert [j.id for j in workers.jobs.find()] == ids[::-1]
    assert [j.id for j in workers.jobs.find(status="paused")] == ids[1::-1]
    assert [j.id for j in workers.jobs.find(status="cancelled")] == [ids[4]]
    assert [j.id for j in workers.jobs.find(type="RecordJob", status="cancelled")] == [ids[4]]
    assert [j.id for j in workers.jobs.find(type="RecordJob", status="ready", limit=2)] == [
        ids[5],
        ids[3],
    ]
    assert workers.jobs.find(type="OtherJob") == []


LIFECYCLE_INDEXES = {
    "find by type and finished status #1": "listing",
    "find by finished status #1": "listing",
    "find by type and live status #1": "listing",
    "find by live status #1": "listing",
    "find by type #1": "listing",
    "next page of ready jobs": "listing",
    "dependents": "links_status",
    "release": "links_status",
    "followups sweep": "links_status",
    "unique holder": "unique_key",
}


def test_find_and_every_cascade_query_runs_on_an_index(app: App) -> None:
    queries = app.store.lifecycle_queries()
    assert set(queries) == set(LIFECYCLE_INDEXES)
    for name, (command, plan) in queries.items():
        explain = lambda cmd: app.store.explain_find(cmd)  # noqa: E731
        assert_on_index(name, command, plan, LIFECYCLE_INDEXES[name], explain)


def test_the_finished_jobs_are_read_back_page_by_page_on_their_own_index(app: App) -> None:
    """What a listener catches up on after an outage (listening.py): every job finished
    since a moment, in (finished, _id) order, page after page however many there are; on
    the `finished_at` index, so the read is bounded by the jobs it returns, never by all
    the finished jobs retention keeps (issue 37, item 13)."""
    now = app.store.now()
    ids = [job_in(app, ("completed", "failed", "cancelled")[n % 3]) for n in range(7)]
    live = [job_in(app, status) for status in ("ready", "running", "waiting")]
    early = job_in(app, "completed")
    moments = [now, now, now + timedelta(seconds=1), now + timedelta(seconds=1)] + [
        now + timedelta(seconds=n) for n in (2, 3, 4)
    ]  # ties too: the page's key is (finished, _id)
    for job_id, moment in zip(ids, moments, strict=True):
        app.store.jobs.update_one({"_id": job_id}, {"$set": {"finished": moment}})
    app.store.jobs.update_one({"_id": early}, {"$set": {"finished": now - timedelta(minutes=1)}})
    read: list[str] = []
    after = None
    while True:
        page = app.store.finished_since(now, after, limit=3)
        read += [doc["_id"] for doc in page]
        if len(page) < 3:
            break
        after = (page[-1]["finished"], page[-1]["_id"])
    expected = [job_id for _, job_id in sorted(zip(moments, ids, strict=True))]
    assert read == expected and not set(live) & set(read) and early not in read
    ((command, plan),) = app.store.catch_up_queries().values()
    explain = lambda cmd: app.store.explain_find(cmd)  # noqa: E731
    assert_on_index("finished since", command, plan, "finished_at", explain)
