"""Every query of the claim path, the leases, the lifecycle and its cascades, the sweep, the
unique lookup and the dashboard, explained among 100,000 jobs (50,000 finished, 45,000
delayed, 5,000 ready): each on the index it names, never a collection scan or an in-memory
sort, and every clause of its filter bounded by that index. Where the server's
executionStats are real (MongoDB, under TEST_MONGO_URL), the keys each examined are
checked too; the embedded server reports them as the documents it returned.

On the embedded server the crowd is a tenth of that (10,000 jobs, in the same shares): its
planner picks an index by rule, from the filter and the hint, never from statistics, so
the plans are the same at any size, and the fill took 100-140 s of the suite's time. On
MongoDB, whose planner races candidate plans over the data, the crowd is the whole 100,000.

This module has a server of its own: the crowd is more than the shared one should carry."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import pymongo
import pytest

import workers
from tests.conftest import TEST_MONGO_URL, own_server, settings_dict
from tests.jobs import RecordJob
from tests.plans import (
    assert_on_index,
    index_scans,
    is_secantus,
    keys_bounded,
    sort_follows_equalities,
    unbounded_fields,
)
from tests.test_transitions import LIFECYCLE_INDEXES
from workers import Job
from workers.app import App
from workers.settings import validate
from workers.store import new_id

# a fill of 100,000 (MongoDB's) outlasts the suite's 120 s per test, which counts the
# module's fixture into this one test
pytestmark = [pytest.mark.tooling, pytest.mark.slow, pytest.mark.timeout(400)]

SHARE = 1 if TEST_MONGO_URL else 10  # see the module's doc
FINISHED, DELAYED, READY = 50_000 // SHARE, 45_000 // SHARE, 5_000 // SHARE
CHUNK = 5_000 // SHARE
EXPECTED = {
    # the claim path
    "claim candidates": "claim_queue",
    "claim write": "_id_",
    "claim by woken ids": "_id_",
    "claim read-back": "_id_",
    "next ready": "ready_times",
    "next due": "schedule",
    "stage due": "schedule",
    # a claim of a type under a cluster-wide limit (store/limits.py)
    "limited running count": "claim_queue",
    "limited due check": "claim_queue",
    "limit backlog": "ready_times",  # the dashboard's and /metrics' count, capped
    # leases and outcomes
    "renew / release": "_id_",
    "outcome write": "_id_",
    "completions together": "_id_",
    "completions read-back": "_id_",
    "rescue": "running_leases",
    "finished since": "finished_at",  # a listener catching up (listening.py)
    # the lifecycle: the lists, the cascades, the sweep, the unique key
    **LIFECYCLE_INDEXES,
    # the dashboard and /metrics
    "oldest ready": "ready_times",
    "waiting on": "links_status",
    "count by status and type": "claim_queue",
}


@pytest.fixture(scope="module")
def crowded() -> Iterator[App]:
    """An app over the crowd, its documents made by the app's own push path."""
    name = f"plans_{uuid.uuid4().hex[:8]}"
    with own_server() as url:
        app = workers.boot(settings=validate(settings_dict(url, name)))
        try:
            _fill(app)
            yield app
        finally:
            workers.shutdown()
            if TEST_MONGO_URL:  # a shared server keeps no crowd; our own just stops
                with pymongo.MongoClient(url) as client:
                    client.drop_database(name)


@pytest.fixture(scope="module")
def commands(crowded: App) -> dict[str, tuple[dict[str, Any], dict[str, Any]]]:
    return {
        **crowded.store.hot_path_queries(crowded.registry.types),
        **crowded.store.lease_queries(),
        **crowded.store.lifecycle_queries(),
        **crowded.store.overview_queries(),
        **crowded.store.catch_up_queries(),
    }


def _fill(app: App) -> None:
    """The documents `push` makes (`App.job_document`), the finished ones as their worker
    leaves them, inserted with the indexes dropped and then built again by boot's own
    `ensure_indexes`: on the embedded server a bulk build is three times faster than
    keeping nine indexes up to date through each insert."""
    started, now = time.monotonic(), app.store.now()
    types = ("SleepJob", "RecordJob", "FailJob")
    app.store.jobs.drop_indexes()
    for n in range(DELAYED // CHUNK):
        delayed = [_document(app, types[n % 3], delay=3600 * (n + 1)) for _ in range(CHUNK)]
        app.store.insert_jobs(delayed)
    for n in range(FINISHED // CHUNK):
        status = ("completed", "failed", "cancelled")[n % 3]
        ended = {"status": status, "attempts": 1, "started": now, "finished": now}
        app.store.insert_jobs([{**_document(app, types[n % 3]), **ended} for _ in range(CHUNK)])
    app.store.insert_jobs([_document(app, types[n % 3]) for n in range(READY)])
    app.store.ensure_indexes()
    for _ in range(50):  # antecedents still to run and their dependents: the marker, live
        Job.push(RecordJob(), depends=[Job.push(RecordJob(), delay=7200)])
    total = FINISHED + DELAYED + READY
    print(f"\n{total:,} jobs stored and indexed in {time.monotonic() - started:.0f} s")


def _document(app: App, job_type: str, **options: Any) -> dict[str, Any]:
    return app.job_document(new_id(), job_type, {}, **options)


def test_every_hot_query_runs_on_its_index_in_order_and_bounded(
    crowded: App, commands: dict[str, Any]
) -> None:
    """One test over every query, each failure named: pytest-xdist gives each test process
    that draws a test of this module its own crowd (a fill each), so the
    module is one test, built once."""
    counts = crowded.store.count_by_status()
    assert counts.get("scheduled", 0) >= DELAYED
    assert counts.get("ready", 0) >= READY
    assert sum(counts.get(s, 0) for s in ("completed", "failed", "cancelled")) == FINISHED
    assert set(commands) == set(EXPECTED)
    failures = []
    for name in sorted(EXPECTED):
        try:
            _check_plan(crowded, commands, name)
        except AssertionError as failure:
            failures.append(f"{name}: {failure}")
    assert not failures, "\n".join(failures)


def _check_plan(crowded: App, commands: dict[str, Any], name: str) -> None:
    command, explained = commands[name]
    index = EXPECTED[name]
    indexes = {ix["name"]: ix for ix in crowded.store.jobs.list_indexes()}
    keys = dict(indexes[index]["key"])
    if "aggregate" in command:  # the counts: read from the index, never a document fetched
        scanned, stages = index_scans(explained)
        assert scanned == [index] and "COLLSCAN" not in stages, stages
        if not is_secantus(explained):  # the embedded server fetches what it counts
            assert "FETCH" not in stages, f"{name}: the counts fetch documents: {stages}"
        return
    assert_on_index(name, command, explained, index, crowded.store.explain_find)
    filter_ = command["filter"]
    partial = indexes[index].get("partialFilterExpression")
    assert not unbounded_fields(filter_, keys, partial), (name, filter_, keys)
    if command.get("sort"):
        assert sort_follows_equalities(filter_, command["sort"], keys), (name, keys)
    if not is_secantus(explained):  # the embedded server sorts what it found, whatever the index
        _, stages = index_scans(explained)
        assert "SORT" not in stages, f"{name}: sorted in memory: {stages}"
        _, executed = crowded.store.explain_find(
            {k: v for k, v in command.items() if k != "find"}, "executionStats"
        )
        assert keys_bounded(executed["executionStats"]), (name, executed["executionStats"])
