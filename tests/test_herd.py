"""An idle cluster is not a herd: a job pushed to it is claimed by one process, a job that
comes due is looked for by one, and one process at a time sweeps the lapsed leases.

Each count is read from the server's own per-collection counters (`top`), on this
test's database only: a claim that finds its job taken by another process is a write
command all the same, which the jobs' documents never show."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import wait_for
from tests.headless_node import HeadlessNode
from tests.jobs import RecordJob
from workers import Job
from workers.app import App
from workers.heartbeat import Heartbeat
from workers.metrics import Tally
from workers.peers import DEFER, Peers
from workers.store import ReadyChange
from workers.wakeup import Wakeup

PROCESSES = 3
JOBS = 24


def _jobs_counters(app: App) -> dict[str, int]:
    """The write and read commands the server ran on the jobs collection so far."""
    totals = app.store.db.client.admin.command("top")["totals"]
    found = totals.get(app.store.jobs.full_name, {})
    return {kind: int(found.get(kind, {}).get("count", 0)) for kind in ("update", "queries")}


def _one_at_a_time(app: App, jobs: list[Job]) -> dict[str, float]:
    """Push each job once the last one finished (each lands on an idle cluster): the
    update and read commands on the jobs collection per job."""
    before = _jobs_counters(app)
    for job in jobs:
        job_id = Job.push(job)
        wait_for(lambda j=job_id: _completed(app, j), timeout=30, what="the pushed job")
    after = _jobs_counters(app)
    return {kind: (after[kind] - before[kind]) / len(jobs) for kind in after}


def _every_process_knows_the_others(app: App) -> None:
    """Every process beat again once all were listed: each beat reads the live peers."""
    wait_for(lambda: len(app.store.list_nodes()) >= PROCESSES, timeout=60, what="the nodes")
    listed = app.store.now()
    wait_for(
        lambda: all(node["last_beat"] > listed for node in app.store.list_nodes()),
        timeout=60,
        what="a beat of every process after all were listed",
    )


def _completed(app: App, job_id: str) -> bool:
    doc = app.store.get_job(job_id)
    return doc is not None and doc["status"] == "completed"


@pytest.mark.processes
@pytest.mark.slow
def test_each_job_pushed_to_an_idle_cluster_is_claimed_by_one_process(
    app: App, settings_file: Callable[..., Path], tmp_path: Path
) -> None:
    """Every idle process's stream sees each push; each used to claim it, and all but one
    found it taken: at 3 processes, 4 updates per job where 2 are the job's own (its claim
    and its completion)."""
    path = settings_file(cluster__count=PROCESSES, workers__count=2)
    with HeadlessNode(path, tmp_path) as node:
        _every_process_knows_the_others(app)
        _one_at_a_time(app, [RecordJob(n=n) for n in range(6)])  # every stream is open
        spent = _one_at_a_time(app, [RecordJob(n=n) for n in range(JOBS)])
        assert node.stop() == 0
    assert spent["update"] <= 2.25, spent  # the claim and the completion, a stray beside


@pytest.mark.processes
@pytest.mark.slow
def test_a_job_that_comes_due_on_an_idle_cluster_is_looked_for_by_one_process(
    app: App, settings_file: Callable[..., Path], tmp_path: Path
) -> None:
    """Every process knows the same next due time and woke at it: each scanned, and each
    claimed the job the scan found. That herd is MongoDB's (under TEST_MONGO_URL), where
    each claim scans for itself; on the embedded server the shared scan (one scan's
    candidates for every claimer) already kept it to one claim, and the test below checks
    the wait that prevents it on both."""
    path = settings_file(cluster__count=PROCESSES, workers__count=2)
    with HeadlessNode(path, tmp_path) as node:
        _every_process_knows_the_others(app)
        _one_at_a_time(app, [RecordJob(n=n) for n in range(6)])
        before = _jobs_counters(app)
        due = [Job.push(RecordJob(n=n), delay=1.5 + 0.5 * n) for n in range(8)]
        for job_id in due:
            wait_for(lambda j=job_id: _completed(app, j), timeout=30, what="the due job")
        after = _jobs_counters(app)
        assert node.stop() == 0
    assert (after["update"] - before["update"]) / len(due) <= 2.5, (before, after)


def test_one_process_at_a_time_sweeps_the_lapsed_leases(app: App) -> None:
    """Every process swept every lease/3 seconds, each reading the same lapsed leases and
    the same first followups: a turn, held for a sweep's interval, goes to one of them."""
    swept: list[str] = []
    real = app.store.rescue_expired

    def counted() -> list[Any]:
        swept.append(threading.current_thread().name)
        return real()

    app.store.rescue_expired = counted  # type: ignore[method-assign]
    beats = [_heartbeat(app, f"sweeper-{n}") for n in range(3)]
    for beat in beats:
        assert beat.sweep()
    assert len(swept) == 1, swept
    for beat in beats:  # each sweep still adds its own process's counts
        assert beat.tally.drain() == ({}, {})


def _heartbeat(app: App, owner: str) -> Heartbeat:
    return Heartbeat(app.store, owner, 30.0, dict, lambda lost: None, lambda: None, Tally())


NAMES = ["node-a", "node-b", "node-c"]


def _peers(me: str) -> Peers:
    peers = Peers(me, ["RecordJob"])
    peers.update([(name, ["RecordJob"]) for name in NAMES])
    return peers


def _first_and_other(key: str) -> tuple[str, str]:
    first = [name for name in NAMES if _peers(name).prefers_me(key, "RecordJob")]
    assert len(first) == 1, first  # every process agrees on who goes first
    return first[0], next(name for name in NAMES if name != first[0])


def test_a_woken_job_is_claimed_at_once_by_one_process_and_confirmed_by_the_others(
    app: App,
) -> None:
    first, other = _first_and_other("job-1")
    change = ReadyChange(None, "job-1", 0, False, "RecordJob")
    woken = {}
    for name in (first, other):
        wakeup = Wakeup(app.store, 30.0, stream=False, peers=_peers(name))
        wakeup.clear()
        wakeup._note(change)
        began = time.monotonic()
        woken[name] = (wakeup.wait(None), wakeup.confirm, time.monotonic() - began)
    assert woken[first][:2] == (["job-1"], frozenset())
    assert woken[other][:2] == (["job-1"], frozenset({"job-1"}))
    assert woken[other][2] >= DEFER  # after the first one has taken it
    foreign = Wakeup(app.store, 30.0, stream=False, peers=_peers(first))
    foreign.clear()
    foreign._note(ReadyChange(None, "job-2", 0, False, "ProgressJob"))  # not a type it runs
    assert not foreign._ready and not foreign._deferred


def test_a_claim_of_a_confirmed_id_writes_nothing_when_the_job_was_taken(app: App) -> None:
    taken, left = Job.push(RecordJob(n=1)), Job.push(RecordJob(n=2))
    assert [d["_id"] for d in app.store.claim_ids("first#1", ["RecordJob"], 30, [taken])]
    assert app.store.still_ready([taken, left], frozenset({taken, left})) == [left]
    assert app.store.still_ready([taken], frozenset()) == [taken]  # not asked: kept


def test_a_process_that_does_not_go_first_looks_a_moment_after_a_due_time(app: App) -> None:
    due = app.store.now() + timedelta(seconds=0.3)
    first, other = _first_and_other(due.isoformat())
    assert Wakeup(app.store, 30.0, stream=False, peers=_peers(first))._defer_for(due) == 0
    wakeup = Wakeup(app.store, 30.0, stream=False, peers=_peers(other))
    wakeup.clear()
    wakeup.wait(due)
    assert wakeup.due_reached
    assert app.store.now() >= due + timedelta(seconds=DEFER * 0.9)  # by the server's clock
