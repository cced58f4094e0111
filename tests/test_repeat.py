"""`repeat`: a completed repeating job is cloned to run again `wait` seconds later."""

from __future__ import annotations

import itertools
from typing import Any

import workers.jobs
from tests.conftest import wait_for
from tests.faulty import FaultyCollection
from tests.jobs import RecordJob
from tests.test_worker import running
from workers import Job
from workers.app import App
from workers.record import FINISHED, FOLLOWUPS


def series(app: App, first: str) -> list[dict[str, Any]]:
    return list(app.store.jobs.find({"$or": [{"_id": first}, {"series": first}]}).sort("_id", 1))


def test_a_job_repeated_twice_runs_three_times_a_wait_apart(app: App, db: Any) -> None:
    first = Job.push(RecordJob(echo="r"), repeat={"repeats": 2, "wait": 0.3})
    with running(app):
        wait_for(
            lambda: [d["status"] for d in series(app, first)] == ["completed"] * 3,
            timeout=30,
            what="three completed runs",
        )
    docs = series(app, first)
    assert [d["repeats_left"] for d in docs] == [2, 1, 0]
    for before, after in itertools.pairwise(docs):
        gap = (after["run_at"] - before["finished"]).total_seconds()
        assert gap >= 0.29, f"the next run was due {gap:.3f} s after the last finished"
        assert after["params"] == {"echo": "r"}
    assert db.executions.count_documents({}) == 3


def test_a_job_repeated_forever_stops_when_cancelled(app: App) -> None:
    first = Job.push(RecordJob(echo="f"), repeat={"repeats": "forever", "wait": 0.2})
    with running(app):
        wait_for(lambda: len(series(app, first)) >= 3, timeout=30, what="a few runs")
        latest = series(app, first)[-1]

        def cancel_the_live_run() -> bool:
            """Cancel the run that is not finished (a run completing meanwhile has just made
            the next one); True once none is left."""
            live = [d["_id"] for d in series(app, first) if d["status"] not in FINISHED]
            workers.jobs.cancel(live)
            return not live

        wait_for(cancel_the_live_run, timeout=30, what="the series to stop")
        count = len(series(app, first))
        # the series is over: nothing is left to clone it again
        assert app.store.settle_finished() == 0
    assert latest["repeats_left"] == "forever"
    assert len(series(app, first)) == count
    assert [d["status"] for d in series(app, first)].count("cancelled") <= 1


def test_a_settle_that_runs_twice_clones_once(app: App) -> None:
    first = Job.push(RecordJob(), repeat={"repeats": 5, "wait": 60})
    app.store.jobs.update_one({"_id": first}, {"$set": {"status": "completed"}})
    app.store.settle(first)
    app.store.jobs.update_one({"_id": first}, {"$addToSet": {"links": FOLLOWUPS}})
    app.store.settle(first)
    assert len(series(app, first)) == 2


def test_a_repeat_whose_unique_key_was_taken_meanwhile_ends_the_series_loudly(
    app: App, caplog: Any
) -> None:
    """A push may take the key between the run's completion and its clone's insert."""
    first = Job.push(RecordJob(echo="u"), repeat={"repeats": 3, "wait": 60}, unique="nightly")
    app.store.jobs.update_one({"_id": first}, {"$set": {"status": "completed", "unique_key": None}})
    real, taken = app.store.jobs, {}

    def push_first(name: str, args: tuple[Any, ...], _: Any) -> str | None:
        if name == "insert_one" and args[0].get("series") == first and not taken:
            taken["by"] = str(Job.push(RecordJob(echo="other"), unique="nightly"))
        return None

    app.store.jobs = FaultyCollection(real, push_first, RuntimeError)  # type: ignore[assignment]
    with caplog.at_level("WARNING", logger="workers.store"):
        app.store.settle(first)
    app.store.jobs = real

    assert [d["_id"] for d in series(app, first)] == [first]
    said = (app.store.get_job(first) or {})["log"][-1]
    assert said["level"] == "warning" and taken["by"] in said["message"]
    assert "series ends" in caplog.text and taken["by"] in caplog.text
