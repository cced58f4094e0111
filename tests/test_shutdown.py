"""Graceful shutdown at each level, in-process and by signal to a real headless node."""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import wait_for
from tests.faulty import FaultyCollection
from tests.headless_node import HeadlessNode
from tests.jobs import RecordJob, SleepJob
from workers import Job, boot, shutdown
from workers.settings import Settings
from workers.store.claims import CLAIM_SORT
from workers.worker import Worker


def statuses(db: Any) -> dict[str, str]:
    return {d["params"]["name"]: d["status"] for d in db["workers.jobs"].find()}


@pytest.mark.slow
@pytest.mark.parametrize(
    ("level", "expected"),
    [
        # the claimed-but-unstarted job is finished (soft) or handed back (normal, hard)
        ("soft", {"running": "completed", "claimed": "completed"}),
        ("normal", {"running": "completed", "claimed": "ready"}),
        ("hard", {"running": "ready", "claimed": "ready"}),
    ],
)
def test_each_level_decides_what_happens_to_running_and_claimed_jobs(
    make_settings: Callable[..., Settings], db: Any, level: str, expected: dict[str, str]
) -> None:
    app = boot(settings=make_settings(workers__count=1, workers__shutdown={"level": level}))
    try:
        Job.push(SleepJob(name="running", seconds=1.5))
        worker = Worker(app)
        thread = threading.Thread(target=worker.run)
        thread.start()
        wait_for(lambda: db.executions.find_one({"phase": "start"}), timeout=20, what="a start")
        # The claimer only claims for idle threads, so "claimed but not started" lasts an
        # instant in real life; the test holds that state open by handing over one more
        # job while the only thread is busy.
        Job.push(SleepJob(name="claimed", seconds=0.1))
        worker._pool.hand_over(app.store.claim(worker.owner, app.registry.types, 5, 1))
        worker.stop()
        thread.join(timeout=30)
        assert not thread.is_alive()
    finally:
        shutdown()
    assert statuses(db) == expected
    handed_back = [d for d in db["workers.jobs"].find() if d["status"] == "ready"]
    for doc in handed_back:
        assert doc["attempts"] == 0 and doc["lease_owner"] is None
        assert doc["log"][-1]["message"].startswith(f"handed back by {worker.owner}")


def test_a_second_stop_request_escalates_to_hard(
    make_settings: Callable[..., Settings], db: Any
) -> None:
    app = boot(settings=make_settings(workers__count=1, workers__shutdown={"level": "soft"}))
    try:
        job_id = Job.push(SleepJob(name="long", seconds=30))
        worker = Worker(app)
        thread = threading.Thread(target=worker.run)
        thread.start()
        wait_for(lambda: db.executions.find_one({"phase": "start"}), timeout=20, what="a start")
        worker.stop()
        worker.stop()
        thread.join(timeout=10)
        assert not thread.is_alive()
        assert app.store.get_job(job_id)["status"] == "ready"  # type: ignore[index]
    finally:
        shutdown()


def run_node_and_terminate(
    settings_file: Callable[..., Path], tmp_path: Path, db: Any, **overrides: Any
) -> tuple[int, str]:
    path = settings_file(cluster__count=1, workers__count=2, **overrides)
    boot(str(path))
    try:
        Job.push(SleepJob(name="a", seconds=3))
        Job.push(SleepJob(name="b", seconds=3))
        # claimed after a and b, and only once a thread is free: TERM comes before that
        Job.push(RecordJob(name="queued"), priority="low")
    finally:
        shutdown()
    with HeadlessNode(path, tmp_path) as node:
        wait_for(
            lambda: db.executions.count_documents({"phase": "start"}) == 2,
            timeout=60,
            what="both jobs to start",
        )
        code = node.stop(signal.SIGTERM)
        return code, node.output()


@pytest.mark.processes
@pytest.mark.slow
@pytest.mark.parametrize("level", ["soft", "normal"])
def test_sigterm_lets_running_jobs_finish(
    settings_file: Callable[..., Path], tmp_path: Path, db: Any, level: str
) -> None:
    code, _ = run_node_and_terminate(
        settings_file, tmp_path, db, workers__shutdown={"level": level, "grace": 30}
    )
    assert code == 0
    assert statuses(db) == {"a": "completed", "b": "completed", "queued": "ready"}


@pytest.mark.slow
@pytest.mark.processes
def test_sigterm_hard_hands_running_jobs_back_at_once(
    settings_file: Callable[..., Path], tmp_path: Path, db: Any
) -> None:
    code, _ = run_node_and_terminate(
        settings_file, tmp_path, db, workers__shutdown={"level": "hard", "grace": 30}
    )
    assert code == 0
    assert statuses(db) == {"a": "ready", "b": "ready", "queued": "ready"}
    assert db.executions.count_documents({"phase": "end"}) == 0
    # handed back means claimable now, not after a lease expires
    app = boot(str(settings_file(cluster__count=1, workers__count=2)))
    try:
        names = {d["params"]["name"] for d in app.store.claim("next", app.registry.types, 5, 3)}
    finally:
        shutdown()
    assert names == {"a", "b", "queued"}


@pytest.mark.slow
@pytest.mark.processes
def test_sigterm_hands_back_what_is_still_running_when_the_grace_period_ends(
    settings_file: Callable[..., Path], tmp_path: Path, db: Any
) -> None:
    code, _ = run_node_and_terminate(
        settings_file, tmp_path, db, workers__shutdown={"level": "normal", "grace": 0.5}
    )
    assert code == 0
    assert statuses(db) == {"a": "ready", "b": "ready", "queued": "ready"}
    for doc in db["workers.jobs"].find({"params.name": {"$in": ["a", "b"]}}):
        assert doc["log"][-1]["message"].endswith("grace period over at shutdown")


@pytest.mark.slow
def test_the_grace_period_is_counted_from_the_stop_request(
    make_settings: Callable[..., Settings], db: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="workers.stopping")
    settings = make_settings(workers__count=2, workers__shutdown={"level": "normal", "grace": 1})
    app = boot(settings=settings)
    armed, delaying = threading.Event(), threading.Event()

    def slow_scan(name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        if armed.is_set() and name == "find" and kwargs.get("sort") == CLAIM_SORT:
            delaying.set()
            time.sleep(3)  # a claim under way when the TERM arrives, slower than the grace
        return None

    try:
        long_id = Job.push(SleepJob(name="long", seconds=30))
        app.store.jobs = FaultyCollection(app.store.jobs, slow_scan, AssertionError)  # type: ignore[assignment]
        worker = Worker(app)
        thread = threading.Thread(target=worker.run)
        thread.start()
        wait_for(lambda: db.executions.find_one({"phase": "start"}), timeout=20, what="a start")
        armed.set()
        Job.push(SleepJob(name="short", seconds=0.1))  # wakes the claimer into the slow scan
        wait_for(delaying.is_set, timeout=20, what="a claim under way")
        worker.stop()
        thread.join(timeout=30)
        assert not thread.is_alive()
    finally:
        shutdown()
    (record,) = [r for r in caplog.records if getattr(r, "action", "") == "shutdown"]
    assert getattr(record, "grace_left", None) == 0, "the grace ran out while the claim returned"
    doc = db["workers.jobs"].find_one({"_id": long_id})
    assert doc["status"] == "ready"
    assert doc["log"][-1]["message"].endswith("grace period over at shutdown")
