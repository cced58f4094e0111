"""Never lose a job: kill -9, repeated random kills, and a database restart, on real processes."""

from __future__ import annotations

import datetime as dt
import json
import os
import random
import re
import signal
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pymongo
import pytest

from tests.conftest import settings_dict, wait_for
from tests.headless_node import HeadlessNode, alive
from tests.jobs import SleepJob
from workers import DatabaseUnavailable, Job, boot, shutdown

LEASE = 3


def server_now(db: Any) -> dt.datetime:
    now: dt.datetime = db.client.admin.command("hello")["localTime"]
    return now.replace(tzinfo=dt.UTC) if now.tzinfo is None else now


def push_sleepers(path: Path, count: int, seconds: float) -> set[str]:
    boot(str(path))
    try:
        return {Job.push(SleepJob(n=n, seconds=seconds)) for n in range(count)}
    finally:
        shutdown()


def by_status(db: Any) -> Counter[str]:
    return Counter(d["status"] for d in db["workers.jobs"].find({}, {"status": 1}))


def completions(doc: dict[str, Any]) -> int:
    """Completion writes recorded on the job (each one appends to its log, atomically)."""
    return sum(1 for e in doc["log"] if re.fullmatch(r"attempt \d+ completed by .+", e["message"]))


def lost_entries(doc: dict[str, Any]) -> int:
    return sum(1 for e in doc["log"] if e["message"].startswith("lost: worker"))


def assert_every_job_completed_exactly_once(db: Any, ids: set[str]) -> dict[str, int]:
    """0 lost, 0 running, each job completed once, and run again only where rescued.

    A kill between a handler's last statement and its completion write makes a
    rescued job run to its end twice: that is at-least-once delivery. What must
    hold is runs <= 1 + rescues for every job, and one recorded completion.
    """
    jobs = {d["_id"]: d for d in db["workers.jobs"].find()}
    assert set(jobs) == ids
    assert by_status(db) == Counter({"completed": len(ids)})
    assert {job_id: completions(doc) for job_id, doc in jobs.items()} == dict.fromkeys(ids, 1)
    starts = Counter(e["job_id"] for e in db.executions.find({"phase": "start"}))
    ends = Counter(e["job_id"] for e in db.executions.find({"phase": "end"}))
    rescued = {job_id: lost_entries(doc) for job_id, doc in jobs.items()}
    for job_id in ids:
        runs = (ends[job_id], starts[job_id], 1 + rescued[job_id])
        assert 1 <= runs[0] <= runs[1] <= runs[2], (job_id, runs)
    return rescued


@pytest.mark.processes
@pytest.mark.slow
def test_kill_9_during_long_jobs_loses_nothing(
    settings_file: Callable[..., Path], tmp_path: Path, db: Any
) -> None:
    path = settings_file(cluster__count=2, workers__count=2, workers__queue={"lease": LEASE})
    ids = push_sleepers(path, 4, seconds=4)
    with HeadlessNode(path, tmp_path) as node:
        wait_for(
            lambda: db.executions.count_documents({"phase": "start"}) == 4,
            timeout=60,
            what="all four jobs to run",
        )
        victim = db.executions.find_one({"phase": "start"})["pid"]
        victims_jobs = {e["job_id"] for e in db.executions.find({"pid": victim})}
        killed_at = server_now(db)
        os.kill(victim, signal.SIGKILL)
        wait_for(lambda: by_status(db)["completed"] == 4, timeout=60, what="all four to complete")
        assert node.stop() == 0
    rescued = assert_every_job_completed_exactly_once(db, ids)
    for job_id in victims_jobs:
        doc = db["workers.jobs"].find_one({"_id": job_id})
        print(
            f"rescued job finished {(doc['finished'] - killed_at).total_seconds():.1f} s after kill"
        )
        assert rescued[job_id] == 1 and doc["attempts"] == 2
        # lease expiry (3 s) + one beat (1 s) + the 4 s re-run, with 3 s to spare
        assert (doc["finished"] - killed_at).total_seconds() < LEASE + 1 + 4 + 3


@pytest.mark.processes
@pytest.mark.slow
def test_ten_random_kills_during_a_300_job_run_lose_nothing(
    settings_file: Callable[..., Path], tmp_path: Path, db: Any
) -> None:
    seed = int(os.environ.get("KILL_SEED", time.time()))
    print(f"KILL_SEED={seed}")
    chance = random.Random(seed)
    path = settings_file(cluster__count=2, workers__count=3, workers__queue={"lease": LEASE})
    ids = push_sleepers(path, 300, seconds=0.4)
    kills = 0
    with HeadlessNode(path, tmp_path) as node:
        while kills < 10:
            victim = wait_for(lambda: _killable_worker(db), timeout=30, what="a worker to kill")
            os.kill(victim, signal.SIGKILL)
            kills += 1
            wait_for(lambda pid=victim: not alive(pid), timeout=10, what="the victim to die")
            time.sleep(chance.uniform(0.3, 1.5))  # random spacing between faults
        assert by_status(db)["completed"] < 300, "the run ended before the tenth kill"
        wait_for(lambda: by_status(db)["completed"] == 300, timeout=180, what="300 completed")
        assert node.stop() == 0
    rescued = assert_every_job_completed_exactly_once(db, ids)
    assert sum(rescued.values()) >= 1
    starts = db.executions.count_documents({"phase": "start"})
    print(f"kills={kills} rescued={sum(rescued.values())} runs started={starts}")
    assert 300 <= starts <= 300 + sum(rescued.values())


def _killable_worker(db: Any) -> int | None:
    """A live worker process that has been up for over 1.5 s (supervisord's startsecs is 1)."""
    now = server_now(db)
    candidates = [
        n["pid"]
        for n in db["workers.nodes"].find()
        if alive(n["pid"]) and (now - n["started"]).total_seconds() > 1.5 and n["running"]
    ]
    return random.choice(candidates) if candidates else None


@pytest.mark.processes
@pytest.mark.slow
def test_a_database_restart_mid_run_loses_and_duplicates_nothing(
    tmp_path: Path,
    restartable_server: tuple[str, Callable[[], None], Callable[[], None]],
    request: pytest.FixtureRequest,
) -> None:
    url, stop_db, start_db = restartable_server
    raw = settings_dict(
        url,
        "app",
        cluster__count=2,
        workers__count=3,
        workers__queue={"lease": LEASE, "retry_wait": 0.2},
    )
    raw["mongo"]["timeout"] = 2
    path = tmp_path / "settings.json"
    path.write_text(json.dumps(raw))
    ids = push_sleepers(path, 120, seconds=0.1)
    client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(url, tz_aware=True)
    request.addfinalizer(client.close)  # closed whatever the outcome
    db = client["app"]
    with HeadlessNode(path, tmp_path) as node:
        wait_for(
            lambda: db.executions.count_documents({"phase": "end"}) >= 40,
            timeout=60,
            what="a third of the jobs",
        )
        boot(str(path))
        stop_db()
        try:  # the outage: a push fails loudly after its timeout, naming the job it could not write
            for _ in range(2):
                with pytest.raises(
                    DatabaseUnavailable, match=r"could not push SleepJob \(id \w+\)"
                ):
                    Job.push(SleepJob(seconds=0))
        finally:
            shutdown()
        start_db()
        wait_for(lambda: by_status(db)["completed"] == 120, timeout=180, what="all 120 jobs")
        assert node.stop() == 0
        output = node.output()
    jobs = {d["_id"]: d for d in db["workers.jobs"].find()}
    assert set(jobs) == ids and by_status(db) == Counter({"completed": 120})
    ends = Counter(e["job_id"] for e in db.executions.find({"phase": "end"}))
    assert set(ends) == ids  # every job ran to its end at least once
    # and was recorded complete once
    assert {job_id: completions(doc) for job_id, doc in jobs.items()} == dict.fromkeys(ids, 1)
    # the outage was seen: every write that met it says so (a heartbeat beats every lease/3
    # and so always meets it; an outcome write only when a job ended during it)
    assert "MongoDB is unreachable" in output
