"""Unique jobs: while a job with a key is unfinished, pushing the key again returns that job;
the partial unique index decides, so concurrent pushers make one document."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

import workers.jobs
from tests.conftest import ROOT, workers_env
from tests.jobs import RecordJob, UniqueByProjectJob
from workers import Job
from workers.app import App


def test_a_second_push_while_the_first_is_unfinished_returns_the_first(app: App) -> None:
    first = Job.push(RecordJob(n=1), unique="retention:42")
    second = Job.push(RecordJob(n=2), unique="retention:42")
    assert (first.existing, second.existing) == (False, True)
    assert second == first
    assert app.store.jobs.count_documents({}) == 1


def test_the_key_is_free_again_once_the_job_finished(app: App) -> None:
    first = Job.push(RecordJob(), unique="k")
    workers.jobs.cancel([first])
    again = Job.push(RecordJob(), unique="k")
    assert again != first and not again.existing
    assert workers.jobs.get(first).unique == "k"  # type: ignore[union-attr]


def test_a_class_can_name_its_own_key(app: App) -> None:
    a = Job.push(UniqueByProjectJob(project_id=7))
    b = Job.push(UniqueByProjectJob(project_id=7))
    c = Job.push(UniqueByProjectJob(project_id=8))
    assert b == a and b.existing and c != a


def test_a_restart_is_refused_while_another_job_holds_the_key(app: App) -> None:
    first = Job.push(RecordJob(), unique="k")
    workers.jobs.cancel([first])
    Job.push(RecordJob(), unique="k")
    result = workers.jobs.restart([first])
    assert result.changed == [] and "unique key" in result.errors[first]


def test_two_threads_pushing_one_key_make_one_job(app: App) -> None:
    for round_ in range(10):
        key = f"race:{round_}"
        barrier = threading.Barrier(2)
        ids: list[str] = []

        def push(
            key: str = key, barrier: threading.Barrier = barrier, ids: list[str] = ids
        ) -> None:
            barrier.wait()
            ids.append(Job.push(RecordJob(), unique=key))

        threads = [threading.Thread(target=push) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert ids[0] == ids[1]
        assert app.store.jobs.count_documents({"unique": key}) == 1


PUSHER = """
import sys, json
import workers
from tests.jobs import RecordJob
app = workers.boot(settings=workers.settings.validate(json.loads(sys.argv[1])))
app.store.now()  # the clock measured: the push is one insert
print("ready", flush=True)
sys.stdin.readline()  # both processes are booted: go
print(workers.Job.push(RecordJob(), unique="two-processes"))
"""


@pytest.mark.processes
def test_two_processes_pushing_one_key_make_one_job(
    app: App, mongo_url: str, db_name: str, tmp_path: Path
) -> None:
    settings = app.settings.model_dump_json()
    script = tmp_path / "push.py"
    script.write_text(PUSHER)
    processes: list[subprocess.Popen[str]] = [
        subprocess.Popen(
            [sys.executable, str(script), settings],
            cwd=ROOT,
            env=workers_env(),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outputs: list[Any] = []
    for process in processes:
        assert process.stdout is not None
        assert process.stdout.readline().strip() == "ready"
    for process in processes:
        assert process.stdin is not None
        process.stdin.write("go\n")
        process.stdin.flush()
    for process in processes:
        out, _ = process.communicate(timeout=60)
        assert process.returncode == 0
        outputs.append(out.strip())
    assert outputs[0] == outputs[1]
    assert app.store.jobs.count_documents({"unique": "two-processes"}) == 1


def test_a_restart_takes_back_the_key_in_its_owners_scope(app: App) -> None:
    """The restart's pipeline builds the scoped key as a push does (record.unique_key_of):
    the owner's later job holds it, another owner's does not."""
    first = app.push_named("RecordJob", {}, owner="al:ice", unique="k")
    workers.jobs.cancel([first])
    app.push_named("RecordJob", {}, owner="bob", unique="k")
    app.push_named("RecordJob", {}, unique="k")
    assert workers.jobs.restart([first]).changed == [first]
    workers.jobs.cancel([first])
    app.push_named("RecordJob", {}, owner="al:ice", unique="k")
    refused = workers.jobs.restart([first])
    assert refused.changed == [] and "unique key" in refused.errors[first]
