"""`repeat`: a completed repeating job is cloned to run again `wait` seconds later."""

from __future__ import annotations

import itertools
from typing import Any

from tests.conftest import wait_for
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
            Job.cancel_many(live)
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
