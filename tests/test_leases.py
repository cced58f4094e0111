"""Leases, heartbeats, nodes and rescue, with an in-process worker."""

from __future__ import annotations

import threading
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import wait_for
from tests.faulty import FaultyCollection
from tests.headless_node import HeadlessNode
from tests.jobs import HoldConnectionJob, RecordJob, SleepJob, SlowEchoJob, SpinJob
from tests.plans import assert_on_index
from tests.test_worker import finished, running
from workers import Job, boot, shutdown
from workers.app import App
from workers.store import LOST_MESSAGE
from workers.worker import Worker


def rescues(doc: dict[str, Any]) -> list[str]:
    return [e["message"] for e in doc["log"] if e["message"].startswith("lost: worker")]


@pytest.mark.slow
def test_a_job_longer_than_its_lease_keeps_it_while_the_process_beats(app: App) -> None:
    # settings: lease 5 s, so a beat every 5/3 s; the job runs 7 s
    job_id = Job.push(SleepJob(seconds=7))
    with running(app):
        doc = wait_for(lambda: finished(app, job_id), timeout=30, what="the long job")
    assert doc["status"] == "completed"
    assert doc["attempts"] == 1 and rescues(doc) == []


def test_a_long_sweep_never_holds_back_the_renewal_of_a_lease(
    app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a settling of follow-ups that takes as long as it takes (a cascade of thousands
    # of dependents): here it waits until the test lets it go
    released = threading.Event()
    settling = threading.Event()
    settle = type(app.store).settle_finished

    def long_settle(store: Any) -> int:
        settling.set()
        released.wait(30)
        return int(settle(store))

    monkeypatch.setattr(type(app.store), "settle_finished", long_settle)
    job_id = Job.push(SleepJob(seconds=6))  # longer than two beats of the 5 s lease
    try:
        with running(app):
            wait_for(
                lambda: app.store.get_job(job_id)["status"] == "running", timeout=15, what="the job"
            )  # type: ignore[index]
            wait_for(settling.is_set, timeout=15, what="a sweep to start settling")
            first = app.store.get_job(job_id)["lease_expires"]  # type: ignore[index]
            # Then the lease of the running job is renewed while the sweep is still busy
            wait_for(
                lambda: app.store.get_job(job_id)["lease_expires"] > first,  # type: ignore[index]
                timeout=10,
                what="a renewal during the sweep",
            )
            released.set()
    finally:
        released.set()


@pytest.mark.slow
def test_a_cpu_bound_job_longer_than_its_lease_keeps_it_too(app: App) -> None:
    job_id = Job.push(SpinJob(seconds=7))
    with running(app):
        doc = wait_for(lambda: finished(app, job_id), timeout=30, what="the spinning job")
    assert doc["status"] == "completed" and doc["attempts"] == 1 and rescues(doc) == []


@pytest.mark.slow
def test_a_job_whose_owner_died_is_rescued_and_run_again(app: App, db: Any) -> None:
    job_id = Job.push(RecordJob())
    app.store.claim("dead-node", app.registry.types, 3, 1)  # and then never beats
    with running(app):
        doc = wait_for(lambda: finished(app, job_id), timeout=30, what="the rescued job")
    assert doc["status"] == "completed"
    assert doc["attempts"] == 2  # the lost attempt counts
    assert rescues(doc) == [
        "lost: worker dead-node stopped renewing its lease; attempt 1 will be retried"
    ]
    assert db.executions.count_documents({"job_id": job_id}) == 1


@pytest.mark.slow
def test_a_lost_job_out_of_retries_fails_as_lost(app: App) -> None:
    job_id = Job.push(RecordJob(), retry=0)
    app.store.claim("dead-node", app.registry.types, 3, 1)
    with running(app):
        doc = wait_for(lambda: finished(app, job_id), timeout=30, what="the lost job to fail")
    assert doc["status"] == "failed"
    assert doc["error"]["message"] == LOST_MESSAGE == "lost: worker died"
    assert doc["error"]["node"] == "dead-node"


def test_rescue_never_takes_a_live_lease_even_from_a_node_whose_clock_runs_ahead(app: App) -> None:
    job_id = Job.push(RecordJob())
    app.store.claim("live-node", app.registry.types, 30, 1)
    assert app.store.rescue_expired() == []
    app.store.sync_clock()
    app.store._offset += timedelta(hours=1)  # this node now believes it is an hour later
    assert app.store.rescue_expired() == []
    assert app.store.get_job(job_id)["lease_owner"] == "live-node"  # type: ignore[index]


def test_a_rescue_counts_only_the_jobs_it_rescued_itself(app: App) -> None:
    """Two processes' heartbeats may read the same lapsed leases; the one whose write came
    second rescued nothing, and must neither count nor report the other's rescues."""
    first, second = Job.push(RecordJob()), Job.push(RecordJob())
    app.store.claim("dead-node", app.registry.types, 3, 2)
    app.store.jobs.update_many({}, {"$set": {"lease_expires": app.store.now() - timedelta(1)}})
    real = app.store.jobs

    def other_rescues_first_in_between(name: str, args: tuple[Any, ...], _: Any) -> None:
        if name == "update_many":  # our rescue write: another process's landed just before
            real.update_one({"_id": first}, {"$set": {"status": "ready", "lease_owner": None}})

    app.store.jobs = FaultyCollection(real, other_rescues_first_in_between, RuntimeError)  # type: ignore[assignment]
    try:
        rescued = app.store.rescue_expired()
    finally:
        app.store.jobs = real
    assert [doc["_id"] for doc in rescued] == [second]
    assert app.store.get_job(second)["status"] == "ready"  # type: ignore[index]


@pytest.mark.parametrize(
    ("query", "index"),
    [
        ("rescue", "running_leases"),
        ("renew / release", "_id_"),
        ("outcome write", "_id_"),
        ("completions together", "_id_"),
        ("completions read-back", "_id_"),
    ],
)
def test_lease_and_outcome_queries_are_index_scans(app: App, query: str, index: str) -> None:
    for _ in range(5):
        Job.push(RecordJob())
    app.store.claim("node", app.registry.types, 30, 5)
    command, explained = app.store.lease_queries()[query]
    assert_on_index(query, command, explained, index, app.store.explain_find)


def test_renewing_reports_the_leases_another_process_took_over(app: App) -> None:
    first, second = Job.push(RecordJob()), Job.push(RecordJob())
    app.store.claim("node-a#1", app.registry.types, 5, 2)
    app.store.release({second: "node-a#1"}, "test")
    app.store.claim("node-b#1", app.registry.types, 5, 1)
    held = {first: "node-a#1", second: "node-a#1"}
    assert app.store.renew_leases(held, 5) == [second]


def test_renewing_under_an_older_token_of_the_same_process_is_refused(app: App) -> None:
    # Given a job this process claimed, lost (rescued) and claimed again under a new token
    job_id = Job.push(RecordJob())
    app.store.claim("node-a#1", app.registry.types, 5, 1)
    app.store.release({job_id: "node-a#1"}, "rescued, say")
    # (released at the server's $$NOW, due by this process's estimate of that clock within
    # the estimate's error: a few ms on a busy machine, so the claim may need a second look)
    wait_for(
        lambda: app.store.claim("node-a#2", app.registry.types, 5, 1),
        timeout=5,
        what="the claim of the released job",
    )
    # Then the old attempt can neither renew, nor finish, nor hand the job back
    assert app.store.renew_leases({job_id: "node-a#1"}, 5) == [job_id]
    assert app.store.complete(job_id, "node-a#1", "stale") is False
    assert app.store.release({job_id: "node-a#1"}, "stale") == 0
    assert app.store.complete(job_id, "node-a#2", "live") is True


@pytest.mark.slow
def test_each_process_records_itself_in_nodes_while_it_runs(app: App) -> None:
    job_id = Job.push(SleepJob(seconds=2))
    with running(app) as worker:
        node = wait_for(
            lambda: (n := app.store.nodes.find_one({"_id": worker.owner})) and n["running"] and n,
            timeout=20,
            what="the node record to list the running job",
        )
        assert node["running"] == [job_id]
        assert node["threads"] == 2 and node["host"] and node["pid"] and node["version"]
        assert node["last_beat"] >= node["started"]
    assert app.store.nodes.find_one({"_id": worker.owner}) is None  # a clean stop forgets it


def test_process_ids_are_unique_even_for_one_os_process(app: App) -> None:
    assert Worker(app).owner != Worker(app).owner


def test_after_job_is_told_when_the_outcome_was_refused_because_the_lease_was_lost(
    app: App, db: Any
) -> None:
    job_id = Job.push(SlowEchoJob(seconds=1.5))
    with running(app):
        wait_for(lambda: db.executions.find_one({"job_id": job_id}), timeout=20, what="a start")
        # another node holds it now (it was rescued from us and claimed there)
        taken = app.store.jobs.update_one(
            {"_id": job_id, "status": "running"}, {"$set": {"lease_owner": "other-node#1"}}
        )
        assert taken.modified_count == 1
        call = wait_for(
            lambda: db.after_job.find_one({"job_id": job_id}), timeout=20, what="after_job"
        )
    assert call["error"] is not None and call["error"].startswith("LeaseLost(")
    doc = app.store.get_job(job_id)
    assert doc is not None and doc["status"] == "running" and doc["lease_owner"] == "other-node#1"


@pytest.mark.processes
@pytest.mark.slow
def test_slow_app_queries_that_exhaust_the_pool_cannot_starve_the_heartbeat(
    settings_file: Any, make_settings: Any, tmp_path: Path, db: Any
) -> None:
    # Given a node with a 3 s lease running 8 jobs whose own queries each hold one of the
    # app's connections for 5 s (mongo.pool_size is 4 in the tests)
    path = settings_file(workers__count=8, workers__queue={"lease": 3})
    app = boot(settings=make_settings())  # and an idle node that rescues whatever lapses
    try:
        ids = [Job.push(HoldConnectionJob(seconds=5)) for _ in range(8)]
        rescued: list[Any] = []
        with HeadlessNode(path, tmp_path) as node:
            deadline = time.monotonic() + 120
            while db["workers.jobs"].count_documents({"status": "completed"}) < 8:
                assert time.monotonic() < deadline, "8 jobs did not complete in 120 s"
                rescued += [doc["_id"] for doc in app.store.rescue_expired()]
                time.sleep(0.2)
            node.stop()
    finally:
        shutdown()
    # Then no lease lapsed: every job ran once, in its first attempt
    assert rescued == [], f"{len(rescued)} live jobs were rescued: their heartbeat starved"
    docs = list(db["workers.jobs"].find({"_id": {"$in": ids}}))
    assert [doc["attempts"] for doc in docs] == [1] * 8
    assert db.executions.count_documents({"phase": "start"}) == 8
