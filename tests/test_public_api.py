"""The public API's forms: push as a class call or on the job, push_many and push_named
returning `Pushed`, policies as objects, the management verbs in `workers.jobs`; the old
forms still work and warn, naming the new; and a user's module type-checks in strict mode."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

import workers
import workers.jobs
from tests.jobs import RecordJob
from workers import Job, Pushed, Repeat, RetryPolicy
from workers.app import App

ROOT = Path(__file__).resolve().parent.parent


def test_a_job_pushes_itself_as_the_class_pushes_it(app: App) -> None:
    by_class = Job.push(RecordJob(n=1), priority="high")
    by_job = RecordJob(n=2).push(priority="high", delay=60)
    assert isinstance(by_class, Pushed) and isinstance(by_job, Pushed)
    docs = [app.store.get_job(job_id) for job_id in (by_class, by_job)]
    assert [(d["type"], d["params"], d["priority"]) for d in docs if d] == [
        ("RecordJob", {"n": 1}, -10),
        ("RecordJob", {"n": 2}, -10),
    ]
    assert docs[1] is not None and docs[1]["run_at"] > docs[0]["run_at"]  # type: ignore[index]


def test_push_many_and_push_named_give_pushed_jobs(app: App) -> None:
    many = RecordJob.push_many([RecordJob(n=n) for n in range(3)])
    also = workers.push_many([RecordJob(n=9)])
    named = workers.push_named("RecordJob", {"n": 7})
    assert all(isinstance(p, Pushed) and not p.existing for p in [*many, *also, named])
    assert app.store.get_job(named)["params"] == {"n": 7}  # type: ignore[index]


def test_retry_and_repeat_are_policy_objects_as_well_as_numbers_and_dicts(app: App) -> None:
    retry = RetryPolicy(retries=5, wait=timedelta(seconds=20), backoff="fixed", jitter=0.2)
    job_id = Job.push(RecordJob(), retry=retry, repeat=Repeat(repeats=2, wait=timedelta(hours=1)))
    doc = app.store.get_job(job_id)
    assert doc is not None
    assert (doc["retries"], doc["retry_wait"], doc["backoff"], doc["retry_jitter"]) == (
        5,
        20.0,
        "fixed",
        0.2,
    )
    assert doc["repeat"] == {"repeats": 2, "wait": 3600.0}
    counted = app.store.get_job(Job.push(RecordJob(), retry=3))
    assert counted is not None and counted["retries"] == 3


def test_the_management_verbs_live_in_workers_jobs(app: App) -> None:
    ids = [Job.push(RecordJob(n=n), delay=3600) for n in range(2)]
    assert {job.id for job in workers.jobs.find(type="RecordJob", status="scheduled")} == set(ids)
    assert set(workers.jobs.pause(ids).changed) == set(ids)
    assert set(workers.jobs.resume(ids[0]).changed) == {ids[0]}  # one id, not its characters
    assert set(workers.jobs.cancel(ids).changed) == set(ids)
    stored = workers.jobs.get(ids[0])
    assert stored is not None and stored.status == "cancelled" and stored.attempts == 0
    assert set(workers.jobs.remove(ids).changed) == set(ids)
    assert workers.jobs.get(ids[0]) is None


@pytest.mark.parametrize(
    ("old", "new"),
    [
        (lambda ids: Job.get(ids[0]), "workers.jobs.get()"),
        (lambda ids: Job.find(type="RecordJob"), "workers.jobs.find()"),
        (lambda ids: Job.pause_many(ids), "workers.jobs.pause()"),
        (lambda ids: Job.resume_many(ids), "workers.jobs.resume()"),
        (lambda ids: Job.cancel_many(ids), "workers.jobs.cancel()"),
        (lambda ids: Job.restart_many(ids), "workers.jobs.restart()"),
        (lambda ids: Job.rerun_many(ids), "workers.jobs.rerun()"),
        (lambda ids: Job.remove_many(ids), "workers.jobs.remove()"),
        (lambda ids: workers.push("RecordJob", {}), 'workers.push_named("Type", params)'),
        (lambda ids: workers.on("completed", print, type="RecordJob").close(), "types="),
    ],
    ids=["get", "find", "pause", "resume", "cancel", "restart", "rerun", "remove", "push", "on"],
)
def test_an_old_form_still_works_and_warns_naming_the_new(
    app: App, old: Callable[[list[str]], Any], new: str
) -> None:
    ids: list[str] = [Job.push(RecordJob(), delay=3600)]
    with pytest.warns(DeprecationWarning, match=re.escape(f"deprecated: use {new}")):
        old(ids)


def test_process_jobs_takes_threads_and_warns_for_concurrency(app: App) -> None:
    processor = workers.process_jobs("Handled", lambda job: None, threads=2)
    processor.shutdown()
    with pytest.warns(DeprecationWarning, match=r"process_jobs\(concurrency=\) is deprecated"):
        processor = workers.process_jobs("Handled", lambda job: None, concurrency=2)
    processor.shutdown()


@pytest.mark.tooling
def test_a_users_module_type_checks_in_strict_mode() -> None:
    """Every public name, typed params included, as a type checker follows them
    (`assert_type` in tests/typing_user/app.py): typing that regresses fails here."""
    done = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "tests/typing_user/app.py"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout + done.stderr
