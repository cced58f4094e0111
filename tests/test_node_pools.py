"""Node pools: a node runs only the job types it is given (`--types`, workers.types); jobs
of other types wait for a node that runs them, and a name no class has stops startup."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import run_workers, wait_for, workers_command, workers_env
from tests.headless_node import HeadlessNode
from workers.app import App
from workers.errors import DiscoveryError
from workers.registry import discover


def statuses(db: Any, job_type: str) -> list[str]:
    return [doc["status"] for doc in db["workers.jobs"].find({"type": job_type})]


@pytest.mark.processes
@pytest.mark.slow
def test_a_pool_runs_its_types_and_the_others_wait_for_their_own_node(
    settings_file: Callable[..., Path], tmp_path: Path, db: Any, app: App
) -> None:
    path = settings_file()
    # the other type first and more urgent: a node that ignored its pool would take it first
    sleepers = [app.push_named("SleepJob", {"seconds": 0}, priority="high") for _ in range(4)]
    records = [app.push_named("RecordJob", {"n": n}) for n in range(6)]
    command = workers_command("--headless", "--types", "RecordJob", "--settings", str(path))
    with HeadlessNode(path, tmp_path, *command) as pool:
        wait_for(
            lambda: statuses(db, "RecordJob") == ["completed"] * 6, timeout=60, what="the pool"
        )
        assert statuses(db, "SleepJob") == ["ready"] * 4  # waiting, not failed or taken
        status = run_workers("status", "--settings", str(path), cwd=tmp_path).stdout
        assert "runs RecordJob, last beat" in status
        # the type no live node runs is named, not left to wait in silence
        assert "no live worker process runs SleepJob: its 4 job(s) to run wait for one" in status
        report = run_workers("status", "--json", "--settings", str(path), cwd=tmp_path).stdout
        assert json.loads(report)["without_node"] == {"SleepJob": 4}
        # a second node for the other type, given by the environment
        env = workers_env(WORKERS_WORKERS__TYPES__INCLUDE="SleepJob")
        worker = subprocess.Popen(
            workers_command("worker", "--settings", str(path)), cwd=tmp_path, env=env
        )
        try:
            wait_for(
                lambda: statuses(db, "SleepJob") == ["completed"] * 4,
                timeout=60,
                what="the SleepJob node",
            )
        finally:
            worker.terminate()
            assert worker.wait(timeout=60) == 0
        assert pool.stop() == 0
    ran = {doc["job_id"]: doc["pid"] for doc in db.executions.find({"phase": {"$ne": "end"}})}
    assert {ran[job] for job in sleepers} == {worker.pid}
    assert worker.pid not in {ran[job] for job in records}
    assert len(ran) == 10


@pytest.mark.processes
@pytest.mark.parametrize(
    "args",
    [
        ("--headless", "--types", "RecordJob,NoSuchJob"),
        ("worker", "--types", "NoSuchJob"),
    ],
)
def test_a_type_no_class_has_stops_startup_naming_it(
    settings_file: Callable[..., Path], tmp_path: Path, args: tuple[str, ...]
) -> None:
    done = run_workers(*args, "--settings", str(settings_file()), cwd=tmp_path)
    assert done.returncode == 1
    assert "names NoSuchJob, which no job class is called; the job types are " in done.stderr
    assert "RecordJob" in done.stderr.split("the job types are ")[1]


def test_the_settings_select_by_include_and_exclude() -> None:
    jobs = discover(["tests.jobs"])
    assert jobs.select(None) == jobs.types
    assert jobs.select(["SleepJob", "RecordJob", "SleepJob"]) == ["RecordJob", "SleepJob"]
    assert jobs.select(None, ["RecordJob"]) == [t for t in jobs.types if t != "RecordJob"]
    assert jobs.select(["RecordJob", "SleepJob"], ["SleepJob"]) == ["RecordJob"]
    with pytest.raises(DiscoveryError, match="names Typo, which no job class is called"):
        jobs.select(None, ["Typo"])
    with pytest.raises(DiscoveryError, match="leaves this node no job type to run"):
        jobs.select(["RecordJob"], ["RecordJob"])
