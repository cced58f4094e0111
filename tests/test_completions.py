"""Completions that happen together are written together (one request), and each job's
answer stays its own: written, refused because the job is no longer held under the
token, or the server's refusal of that one job's write."""

from __future__ import annotations

import dataclasses
import threading
from typing import Any

import bson
import pytest
from pymongo import monitoring
from pymongo.errors import AutoReconnect

from tests.commands import StartedListener, registered
from tests.conftest import wait_for
from tests.faulty import FaultyCollection
from tests.jobs import FailJob, RecordJob
from tests.test_bounded import MAX_BSON
from workers import Job, completions
from workers.app import App
from workers.errors import DatabaseUnavailable, WorkersError
from workers.store import Completion
from workers.worker import Profile, Worker


class Writes(StartedListener):
    """The `update` commands sent to the jobs collection, from any thread."""

    def __init__(self) -> None:
        self.updates: list[dict[str, Any]] = []
        self.collection = ""

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        if event.command_name == "update" and event.command.get("update") == self.collection:
            self.updates.append(dict(event.command))


@pytest.fixture(scope="module")
def writes() -> Writes:
    return registered(Writes())


def claimed(app: App, token: str, count: int) -> list[Any]:
    ids = [Job.push(RecordJob(n=n)) for n in range(count)]
    taken = app.store.claim(token, app.registry.types, 60, count)
    assert sorted(doc["_id"] for doc in taken) == sorted(ids)
    return ids


def stored(app: App, ids: list[Any]) -> list[dict[str, Any]]:
    docs = {doc["_id"]: doc for doc in app.store.jobs.find({"_id": {"$in": ids}})}
    return [docs[job_id] for job_id in ids]


def test_jobs_of_two_claims_are_completed_in_one_request_each_with_its_own_result(
    app: App, writes: Writes
) -> None:
    first, second = claimed(app, "node#1", 3), claimed(app, "node#2", 2)
    writes.collection, writes.updates = app.store.jobs.name, []
    done = [Completion(job_id, "node#1", {"n": n}) for n, job_id in enumerate(first)]
    done += [Completion(job_id, "node#2", None) for job_id in second]
    assert app.store.complete_many(done) == [True] * 5
    assert len(writes.updates) == 1, writes.updates
    assert len(writes.updates[0]["updates"]) == 2  # one update_many per claim token
    docs = stored(app, first + second)
    assert [doc["status"] for doc in docs] == ["completed"] * 5
    assert [doc["result"] for doc in docs] == [{"n": 0}, {"n": 1}, {"n": 2}, None, None]
    assert [doc["finished_by"] for doc in docs] == ["node#1"] * 3 + ["node#2"] * 2
    assert all(doc["lease_owner"] is None and doc["finished"] for doc in docs)
    assert docs[0]["log"][-1]["message"] == "attempt 1 completed by node#1"


def test_each_job_gets_its_own_answer_when_they_do_not_all_match(app: App) -> None:
    # Given four held jobs: one taken over by another attempt, one with a dependent, one
    # with a result too large to share a request, and one plain
    taken_over, with_dependent, large, plain = claimed(app, "node#1", 4)
    app.store.jobs.update_one({"_id": taken_over}, {"$set": {"lease_owner": "other#9"}})
    dependent = Job.push(RecordJob(n=99), depends=[with_dependent])
    big = "x" * 100_000
    done = [
        Completion(taken_over, "node#1", 1),
        Completion(with_dependent, "node#1", 2),
        Completion(large, "node#1", big),
        Completion(plain, "node#1", 4),
        Completion(plain, "stale#0", 5),  # an older attempt of the same job: refused
    ]
    # When they are completed together
    answers = app.store.complete_many(done)
    # Then each answer is the job's own, and so is what was stored
    assert answers == [False, True, True, True, False]
    docs = stored(app, [taken_over, with_dependent, large, plain])
    assert [doc["status"] for doc in docs] == ["running", "completed", "completed", "completed"]
    assert docs[0]["lease_owner"] == "other#9" and docs[0]["result"] is None
    assert [doc["result"] for doc in docs[1:]] == [2, big, 4]
    assert app.store.get_job(dependent)["status"] == "ready"  # released by the settle


def test_a_job_the_server_refuses_to_complete_does_not_take_the_others_with_it(app: App) -> None:
    # Given three held jobs, the second a document so near the size limit that a 50 KB
    # result (small enough to share the request) cannot be stored in it
    ids = claimed(app, "node#1", 3)
    size = len(bson.encode(app.store.get_job(ids[1]) or {}))
    padding = "p" * (MAX_BSON - size - 20_000)
    app.store.jobs.update_one({"_id": ids[1]}, {"$set": {"padding": padding}})
    # When all three are completed together
    answers = app.store.complete_many([Completion(i, "node#1", "r" * 50_000) for i in ids])
    # Then the other two are completed and the refusal is that job's alone
    assert answers[0] is True and answers[2] is True
    assert isinstance(answers[1], WorkersError), answers
    docs = stored(app, ids)
    assert [doc["status"] for doc in docs] == ["completed", "running", "completed"]


def test_threads_completing_while_a_write_is_in_flight_are_written_together(
    app: App, writes: Writes
) -> None:
    ids = claimed(app, "node#1", 5)
    completions = app.completions
    answers: dict[Any, bool] = {}

    def complete(job_id: Any) -> None:
        answers[job_id] = completions.complete(job_id, "node#1", job_id)

    # Given a completion write in flight (its writer holds the turn)
    with completions._cond:
        held = completions._gather()
    assert held == []
    writes.collection, writes.updates = app.store.jobs.name, []
    # When five threads complete meanwhile
    threads = [threading.Thread(target=complete, args=(job_id,)) for job_id in ids]
    for thread in threads:
        thread.start()
    wait_for(lambda: len(completions._waiting) == 5, timeout=10, what="five waiting")
    completions._write(held)  # the write in flight returns
    for thread in threads:
        thread.join(timeout=30)
    # Then the first of them to wake writes all five in one request
    assert answers == {job_id: True for job_id in ids}
    assert len(writes.updates) == 1, writes.updates
    assert [doc["result"] for doc in stored(app, ids)] == ids


def test_a_retried_completion_finds_its_own_earlier_write(app: App) -> None:
    """What makes a retry after an outage exact: the shared write (an update_many, which the
    driver does not retry itself) may have applied before the connection dropped."""
    ids = claimed(app, "node#1", 2)
    done = [Completion(job_id, "node#1", None) for job_id in ids]
    assert app.store.complete_many(done) == [True, True]
    assert app.store.complete_many(done) == [True, True]
    assert app.store.complete_many([Completion(ids[0], "node#2", None)]) == [False]


def test_a_shared_write_whose_reply_was_lost_is_found_written_by_the_retry(app: App) -> None:
    (job_id,) = claimed(app, "node#1", 1)
    lost = {"left": 1}

    def lose_the_first_reply(name: str, args: tuple[Any, ...], _: Any) -> str | None:
        if name != "bulk_write" or not lost["left"]:
            return None
        lost["left"] -= 1
        return "after"  # the server applied it; the reply never came

    app.store.jobs = FaultyCollection(  # type: ignore[assignment]
        app.store.jobs, lose_the_first_reply, lambda: AutoReconnect("injected: reply lost")
    )
    with pytest.raises(DatabaseUnavailable):
        app.completions.complete(job_id, "node#1", "done")
    assert app.completions.complete(job_id, "node#1", "done") is True  # as the outcome retry
    assert stored(app, [job_id])[0]["result"] == "done"


def test_a_job_whose_id_is_a_document_is_completed_alone(app: App) -> None:
    (plain,) = claimed(app, "node#1", 1)
    template = app.store.jobs.find_one({"_id": plain})
    odd = {"a": 1}
    app.store.jobs.insert_one({**template, "_id": odd})  # a damaged document, running for us
    done = [Completion(odd, "node#1", None), Completion(plain, "node#1", None)]
    assert app.store.complete_many(done) == [True, True]
    assert app.store.jobs.find_one({"_id": odd})["status"] == "completed"


def test_an_unexpected_error_in_a_shared_write_still_hands_the_turn_on(app: App) -> None:
    first, second = claimed(app, "node#1", 2)
    broken = {"left": 1}

    def break_once(name: str, args: tuple[Any, ...], _: Any) -> str | None:
        if name != "bulk_write" or not broken["left"]:
            return None
        broken["left"] -= 1
        return "before"

    real = app.store.jobs
    app.store.jobs = FaultyCollection(real, break_once, lambda: RuntimeError("a bug"))  # type: ignore[assignment]
    with pytest.raises(RuntimeError):
        app.completions.complete(first, "node#1", None)
    # a writer left holding the turn would make this wait for ever
    assert app.completions.complete(second, "node#1", None) is True


@pytest.fixture
def patient(app: App, monkeypatch: pytest.MonkeyPatch) -> completions.Completions:
    """The app's completions with a writer that waits for siblings as long as it takes (60 s),
    so what is tested is whom it waits for, not this machine's speed."""
    monkeypatch.setattr(completions, "_GATHER_MAX", 60.0)
    app.completions._last_write = 120.0
    return app.completions


def completing(done: completions.Completions, token: str, job_id: Any) -> threading.Thread:
    thread = threading.Thread(target=done.complete, args=(job_id, token, None), daemon=True)
    thread.start()
    return thread


def test_a_writer_waits_for_the_jobs_of_its_claim_still_running_and_writes_them_at_once(
    app: App, writes: Writes, patient: completions.Completions
) -> None:
    ids = claimed(app, "node#1", 4)
    patient.expect("node#1", ids)  # as the worker does when it hands the claim over
    writes.collection, writes.updates = app.store.jobs.name, []
    # When the four finish one after another
    threads = []
    for arrived, job_id in enumerate(ids, start=1):
        threads.append(completing(patient, "node#1", job_id))
        if arrived < len(ids):
            wait_for(lambda n=arrived: len(patient._waiting) == n, timeout=10, what="arrived")
    for thread in threads:
        thread.join(timeout=20)
    # Then the first waited for the other three, and one request wrote all four (without
    # the wait the first is written alone, and the rest after it)
    assert not any(thread.is_alive() for thread in threads)
    assert len(writes.updates) == 1, writes.updates
    assert [doc["status"] for doc in stored(app, ids)] == ["completed"] * 4


def test_a_writer_stops_waiting_for_a_sibling_that_settled_otherwise(
    app: App, writes: Writes, patient: completions.Completions
) -> None:
    done, failed = claimed(app, "node#1", 2)
    patient.expect("node#1", [done, failed])
    writer = completing(patient, "node#1", done)
    wait_for(lambda: len(patient._waiting) == 1, timeout=10, what="the first waiting")
    # When its sibling's attempt ends without a completion (it failed, or was abandoned)
    patient.settle("node#1", failed)
    # Then the writer writes at once instead of waiting out its bound (60 s here)
    writer.join(timeout=20)
    assert not writer.is_alive()
    assert stored(app, [done])[0]["status"] == "completed"
    assert patient._running == {}, "nothing is left behind"


def test_a_completion_without_siblings_running_is_written_without_waiting(
    app: App, patient: completions.Completions
) -> None:
    (alone,) = claimed(app, "node#1", 1)
    patient.expect("node#1", [alone])
    patient.expect("node#2", [{"damaged": "an _id that is a document"}])  # never waited for
    writer = completing(patient, "node#1", alone)
    writer.join(timeout=20)
    assert not writer.is_alive() and stored(app, [alone])[0]["status"] == "completed"


def test_a_worker_writes_a_claim_that_finishes_together_in_one_request_and_settles_failures(
    app: App, writes: Writes, patient: completions.Completions
) -> None:
    # Given four jobs due at once, one of which fails, and a worker of four threads
    ok = [Job.push(RecordJob(n=n)) for n in range(3)]
    bad = Job.push(FailJob(message="no"), retry={"retries": 0})
    writes.collection, writes.updates = app.store.jobs.name, []
    profile = dataclasses.replace(Profile.headless(app), threads=4)
    worker = Worker(app, profile=profile)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    try:
        # Then the three completions went out in one request as soon as the failure was
        # settled (a writer still waiting for it would hold them for 60 s)
        wait_for(
            lambda: (
                [d["status"] for d in stored(app, [*ok, bad])] == ["completed"] * 3 + ["failed"]
            ),
            timeout=20,
            what="all four outcomes",
        )
    finally:
        worker.stop()
        thread.join(timeout=30)
    completed = [
        one["q"]["_id"]["$in"]
        for command in writes.updates
        for one in command["updates"]
        if isinstance(one["u"], list) and one["u"][0]["$set"].get("status") == "completed"
    ]
    assert [sorted(ids) for ids in completed] == [sorted(ok)], completed
    assert patient._running == {}, "every attempt of the claim settled"
