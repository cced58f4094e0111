"""The batch claim under faults and races: nothing stranded, nothing taken twice,
stale attempts fenced off, and only a document proven bad is ever quarantined."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
import threading
from typing import Any

import pytest
from pymongo.errors import AutoReconnect, OperationFailure

from tests.conftest import ROOT, wait_for, workers_env
from tests.faulty import FaultyCollection
from tests.jobs import RecordJob, SlowEchoJob
from tests.test_worker import finished, running
from workers import Job
from workers.app import App
from workers.errors import ClaimIncomplete
from workers.record import unique_key_of
from workers.store.profile import MONGODB, SECANTUS, ServerProfile
from workers.store.shared_scans import TURN_MAX, Spare, list_key

CLAIM_CALLS = ("find", "update_many", "find_one_and_update", "update_one")


@pytest.mark.slow
@pytest.mark.parametrize("round_trip", [1, 2, 3])
def test_a_claim_that_loses_any_reply_still_runs_every_job_it_took(
    app: App, db: Any, round_trip: int
) -> None:
    # Given four jobs with no retries: a job that lapsed into a rescue would fail as lost
    ids = [Job.push(RecordJob(n=n), retry=0) for n in range(4)]
    # When the reply of the k-th round trip of the worker's first claim is lost
    seen = {"n": 0}

    def verdict(name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str | None:
        if name not in CLAIM_CALLS:
            return None
        seen["n"] += 1
        return "after" if seen["n"] == round_trip else None

    faulty = FaultyCollection(
        app.store.jobs, verdict, lambda: AutoReconnect("injected: reply lost"), "worker-under-test"
    )
    app.store.jobs = faulty  # type: ignore[assignment]
    with running(app, owner="node-a"):
        docs = [wait_for(lambda i=i: finished(app, i), timeout=20, what=f"job {i}") for i in ids]
    # Then every job ran once, in its one attempt, and completed
    assert seen["n"] >= round_trip, "the fault was never injected"
    assert [doc["status"] for doc in docs] == ["completed"] * 4
    assert [doc["attempts"] for doc in docs] == [1] * 4
    assert db.executions.count_documents({}) == 4


def test_an_interrupted_claim_is_recovered_by_its_token(app: App) -> None:
    ids = [Job.push(RecordJob(n=n)) for n in range(3)]
    verdicts = iter(["after"])

    def lose_the_write_reply(name: str, *_: Any) -> str | None:
        return next(verdicts, None) if name == "update_many" else None

    real = app.store.jobs
    app.store.jobs = FaultyCollection(  # type: ignore[assignment]
        real, lose_the_write_reply, lambda: AutoReconnect("injected")
    )
    with pytest.raises(ClaimIncomplete) as interrupted:
        app.store.claim("node-a#1", app.registry.types, 5, 3)
    app.store.jobs = real
    recovered = app.store.recover_claim(interrupted.value.token, interrupted.value.ids)
    assert [doc["_id"] for doc in recovered] == ids  # in claim order
    assert {doc["lease_owner"] for doc in recovered} == {"node-a#1"}


@pytest.mark.slow
def test_a_stale_attempt_cannot_write_over_the_attempt_that_replaced_it(app: App, db: Any) -> None:
    # Given a job running as attempt 1 in this process
    job_id = Job.push(SlowEchoJob(seconds=3))
    with running(app):
        wait_for(
            lambda: db.executions.find_one({"job_id": job_id, "attempt": 1}),
            timeout=20,
            what="attempt 1 to start",
        )
        # When its lease lapses (the process froze) and it is rescued, as any node would do
        rescued = app.store.jobs.update_one(
            {"_id": job_id, "status": "running"},
            {"$set": {"status": "ready", "lease_owner": None, "lease_expires": None,
                      "run_at": dt.datetime(2000, 1, 1, tzinfo=dt.UTC)}},
        )  # fmt: skip
        assert rescued.modified_count == 1
        # and this same process claims it again while attempt 1 is still running
        wait_for(
            lambda: db.executions.find_one({"job_id": job_id, "attempt": 2}),
            timeout=20,
            what="attempt 2 to start",
        )
        doc = wait_for(lambda: finished(app, job_id), timeout=30, what="the job to finish")
    # Then attempt 1 (which returned first) could not record its result over attempt 2
    assert doc["status"] == "completed"
    assert doc["result"] == {"attempt": 2}
    completions = [e["message"] for e in doc["log"] if "completed by" in e["message"]]
    assert len(completions) == 1 and completions[0].startswith("attempt 2 completed by")


def test_an_error_that_is_not_about_a_document_never_quarantines_a_job(app: App) -> None:
    ids = [Job.push(RecordJob(n=n)) for n in range(3)]
    verdicts = iter(["before"])

    def refuse_the_first_write(name: str, *_: Any) -> str | None:
        return next(verdicts, None) if name in ("update_many", "find_one_and_update") else None

    real = app.store.jobs
    app.store.jobs = FaultyCollection(  # type: ignore[assignment]
        real,
        refuse_the_first_write,
        lambda: OperationFailure("interrupted at shutdown", code=11600),
    )
    with pytest.raises(Exception, match="interrupted at shutdown"):
        app.store.claim("node-a#1", app.registry.types, 5, 3)
    app.store.jobs = real
    assert app.store.count_by_status() == {"ready": 3}  # nothing failed
    assert [d["_id"] for d in app.store.claim("node-a#2", app.registry.types, 5, 3)] == ids


@pytest.mark.parametrize("fails", ["always", "once"])
def test_only_a_document_proven_to_break_the_claim_is_quarantined(app: App, fails: str) -> None:
    # Given a document whose claim write the server refuses, at the head of the queue
    bad = Job.push(RecordJob(n="bad"), priority="critical")
    good = [Job.push(RecordJob(n=n)) for n in range(3)]
    refusals = {"left": 10 if fails == "always" else 1}

    def refuse_the_bad_document(name: str, args: tuple[Any, ...], _: Any) -> str | None:
        if name not in ("update_many", "update_one") or not isinstance(args[1], list):
            return None  # only the claim's pipeline update; the quarantine's plain $set passes
        ids = args[0].get("_id", {})
        touches_bad = ids == bad or (isinstance(ids, dict) and bad in ids.get("$in", []))
        if touches_bad and args[0].get("status") == "ready" and refusals["left"] > 0:
            refusals["left"] -= 1 if name == "update_one" else 0
            return "before"
        return None

    real = app.store.jobs
    app.store.jobs = FaultyCollection(  # type: ignore[assignment]
        real,
        refuse_the_bad_document,
        lambda: OperationFailure("Invalid BSON field name", code=2),
    )
    claimed = [d["_id"] for d in app.store.claim("node-a#1", app.registry.types, 5, 4)]
    app.store.jobs = real
    stored = app.store.get_job(bad)
    assert stored is not None
    if fails == "always":  # refused twice running: failed, with the server's reason
        assert claimed == good
        assert stored["status"] == "failed"
        assert stored["error"]["message"].startswith("the server could not claim")
    else:  # refused once, then claimed: not the document's fault
        assert claimed == [bad, *good]
        assert stored["status"] == "running"


RACER = """
import json, sys
import workers
from workers.settings import validate
from workers.store.shared_scans import Spare
url, database, slot = sys.argv[1], sys.argv[2], sys.argv[3]
app = workers.boot(settings=validate({"mongo": {"url": url, "database": database,
    "pool_size": 2}, "jobs": ["tests.jobs"]}))
sys.stdout.write("ready\\n"); sys.stdout.flush(); sys.stdin.readline()
taken, batch = [], 0
spare = Spare() if int(slot) % 2 else None  # half of them keep the rest of their scans
while True:
    batch += 1
    docs = app.store.claim(f"racer-{slot}#{batch}", app.registry.types, 60, 3, spare)
    if not docs:
        break
    taken += [[d["_id"], d["lease_owner"]] for d in docs]
print(json.dumps(taken))
"""


@pytest.mark.slow
@pytest.mark.processes
def test_four_racing_processes_never_claim_the_same_job(
    app: App, mongo_url: str, db_name: str
) -> None:
    ids = {Job.push(RecordJob(n=n)) for n in range(120)}
    racers = [
        subprocess.Popen(
            [sys.executable, "-c", RACER, mongo_url, db_name, str(slot)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=ROOT,
            env=workers_env(),
        )
        for slot in range(4)
    ]
    for racer in racers:  # all booted before any claims: they race for one head
        assert racer.stdout is not None and racer.stdout.readline().strip() == "ready"
    for racer in racers:
        assert racer.stdin is not None
        racer.stdin.write("go\n")
        racer.stdin.flush()
    results = [json.loads(racer.communicate(timeout=90)[0]) for racer in racers]
    taken = [job_id for result in results for job_id, _ in result]
    print(f"claims per process: {[len(result) for result in results]}")
    assert len(taken) == len(set(taken)) == 120 and set(taken) == ids
    for result in results:  # each job is held under the token of the batch that took it
        for job_id, token in result:
            stored = app.store.get_job(job_id)
            assert stored is not None and stored["lease_owner"] == token


def test_a_quarantine_that_finds_the_job_no_longer_ready_leaves_its_unique_key(app: App) -> None:
    """The key is freed in the very write that fails the job: a job paused between the proof
    and the fail write keeps it, or a second live job could take it."""
    bad = Job.push(RecordJob(n="bad"), unique="retention:42")
    real = app.store.jobs

    def refuse_then_pause(name: str, args: tuple[Any, ...], _: Any) -> str | None:
        if name not in ("update_many", "update_one"):
            return None
        if isinstance(args[1], list) and args[0].get("status") == "ready":
            return "before"  # the claim's pipeline update, refused for this document
        if args[1].get("$set", {}).get("status") == "failed":  # the quarantine's fail write
            real.update_one({"_id": bad}, {"$set": {"status": "paused"}})  # paused meanwhile
        return None

    app.store.jobs = FaultyCollection(  # type: ignore[assignment]
        real, refuse_then_pause, lambda: OperationFailure("Invalid BSON field name", code=2)
    )
    app.store.claim("node-a#1", app.registry.types, 5, 1)
    app.store.jobs = real

    stored = app.store.get_job(bad)
    assert stored is not None and stored["status"] == "paused"
    assert stored["unique_key"] == unique_key_of("RecordJob", None, "retention:42")
    assert Job.push(RecordJob(n=2), unique="retention:42") == bad  # the holder, as ever


@pytest.mark.slow
@pytest.mark.parametrize("profile", [MONGODB, SECANTUS], ids=["mongodb", "secantusdb"])
def test_each_server_profile_drains_by_its_own_claim_path(
    app: App, db: Any, profile: ServerProfile
) -> None:
    """MongoDB: each claim scans for itself (a scan is an index range there), and the shared
    candidate list is never written; the embedded server: the scans are shared."""
    app.store._profile = profile  # as buildInfo would have it
    ids = Job.push_many([RecordJob(n=n) for n in range(40)])
    with running(app) as worker:
        assert worker._claimer.shares_scans is profile.shared_scans
        for job_id in ids:
            wait_for(lambda j=job_id: finished(app, j), timeout=30, what="the drain")
    ran = [doc["job_id"] for doc in db.executions.find({}, {"job_id": 1})]
    assert sorted(ran) == sorted(ids)  # each once
    shared = db[app.store.candidates.name].count_documents({})
    assert (shared > 0) is profile.shared_scans


def test_a_claimer_waiting_for_another_ones_scan_stops_when_told(app: App) -> None:
    """The wait for another claimer's scan is the claimer's own (stop-aware), not a sleep in
    the store: a claimer asked to stop scans at once instead of waiting out the turn."""
    app.store._profile = SECANTUS
    Job.push(RecordJob(n=1))
    types = app.registry.types
    turn_ends = app.store.now() + dt.timedelta(seconds=60)  # another claimer's scan, running
    app.store.candidates.insert_one(
        {"_id": list_key(types), "ids": [], "scanning_until": turn_ends, "scan_seconds": 5}
    )
    stop = threading.Event()
    spare = Spare(pause=stop.wait)
    claimed: list[Any] = []
    claiming = threading.Thread(
        target=lambda: claimed.extend(app.store.claim("t#1", types, 30, 1, spare))
    )
    claiming.start()
    wait_for(lambda: claiming.is_alive(), timeout=5, what="the claim to start")
    stop.set()
    claiming.join(timeout=TURN_MAX / 2)
    assert not claiming.is_alive(), "the claimer kept waiting for the other's scan"
    assert len(claimed) == 1  # it scanned beside the holder instead
