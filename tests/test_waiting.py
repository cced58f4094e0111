"""Waiting for a result from app code: `Pushed.wait` / `result`, `workers.wait`, and their
async forms, against jobs a real worker process runs."""

from __future__ import annotations

import asyncio
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import workers
from tests.conftest import workers_command, workers_env
from workers import JobCancelled, JobFailed, JobNotFound
from workers.app import App
from workers.settings import Settings
from workers.store import new_id
from workers.waiting import waiters_of


@pytest.fixture
def worker(settings_file: Callable[..., Path], tmp_path: Path) -> Iterator[None]:
    """One `workers worker` process running the test jobs."""
    path = settings_file()
    process = subprocess.Popen(
        workers_command("worker", "--settings", str(path)), cwd=tmp_path, env=workers_env()
    )
    yield
    process.terminate()
    assert process.wait(timeout=60) == 0


@pytest.fixture
def pushing(make_settings: Callable[..., Settings]) -> Iterator[App]:
    """The app's own process: web mode, where app code pushes and waits."""
    yield workers.boot(settings=make_settings())
    workers.shutdown()


@pytest.mark.slow
@pytest.mark.processes
def test_result_and_wait_for_completed_failed_and_cancelled_jobs(
    pushing: App, worker: None
) -> None:
    done = pushing.push_named("RecordJob", {"echo": "hello"})
    assert done.result(timeout=60) == {"echo": "hello"}
    job = done.wait(timeout=5)  # finished already: at once
    assert (job.id, job.status, job.result) == (done, "completed", {"echo": "hello"})

    failed = pushing.push_named("FailJob", {"message": "no stock"}, retry=0)
    with pytest.raises(JobFailed) as raised:
        failed.result(timeout=60)
    assert raised.value.job_id == failed
    assert raised.value.error["message"] == "no stock"
    assert (
        raised.value.error["type"] == "builtins.ValueError"
        and "Traceback" in raised.value.error["traceback"]
    )
    assert str(raised.value) == f"FailJob {failed} failed: no stock"

    later = pushing.push_named("RecordJob", {}, after="in 1 hour")
    threading.Timer(0.5, lambda: _get(later).cancel()).start()
    with pytest.raises(JobCancelled) as cancelled:
        later.result(timeout=60)
    assert cancelled.value.job_id == later
    assert later.wait(timeout=5).status == "cancelled"


def test_a_timeout_and_an_unknown_id_are_told_apart(pushing: App) -> None:
    later = pushing.push_named("RecordJob", {}, after="in 1 hour")
    started = time.monotonic()
    with pytest.raises(TimeoutError, match=rf"wait: job {later} did not finish within 0.3 s"):
        later.wait(timeout=0.3)
    assert 0.3 <= time.monotonic() - started < 5
    unknown = new_id()
    with pytest.raises(JobNotFound, match=f"no job has the id {unknown}"):
        workers.wait([unknown], timeout=30)
    with pytest.raises(JobNotFound):  # one unknown among known ones: named, not waited on
        workers.wait([unknown, later], timeout=30)


@pytest.mark.slow
@pytest.mark.processes
def test_wait_for_many_all_or_the_first(pushing: App, worker: None) -> None:
    slow = pushing.push_named("SleepJob", {"seconds": 3})
    fast = [pushing.push_named("RecordJob", {"echo": n}) for n in range(3)]
    first = workers.wait([slow, *fast], timeout=60, return_when="first")
    assert first and {job.id for job in first} <= set(fast)
    jobs = workers.wait([slow, *fast], timeout=60)
    assert [job.id for job in jobs] == [slow, *fast]  # in the order asked
    assert {job.status for job in jobs} == {"completed"}
    with pytest.raises(Exception, match="return_when must be 'all' or 'first'"):
        workers.wait(fast, return_when="any")  # type: ignore[arg-type]


@pytest.mark.slow
@pytest.mark.processes
def test_a_thousand_async_waiters_share_one_stream_and_few_reads(
    pushing: App, worker: None
) -> None:
    jobs = [pushing.push_named("RecordJob", {"echo": n}) for n in range(100)]
    waiters = waiters_of(pushing.store)

    async def wait_all() -> list[Any]:
        return await asyncio.gather(
            *(jobs[n % len(jobs)].result_async(timeout=120) for n in range(1000))
        )

    results = asyncio.run(wait_all())
    assert results == [{"echo": n % len(jobs)} for n in range(1000)]
    assert waiters.streams_opened == 1  # one stream for the process, not one per waiter
    assert waiters.reads < 150  # reads by wake, each for every waiter it concerns
    assert threading.active_count() < 40  # no thread per waiter


@pytest.mark.slow
@pytest.mark.processes
def test_without_a_change_stream_waiting_polls_for_everyone(pushing: App, worker: None) -> None:
    waiters = waiters_of(pushing.store)
    waiters.polling = True  # as on a server without change streams
    jobs = [pushing.push_named("RecordJob", {"echo": n}) for n in range(20)]
    threads = [threading.Thread(target=job.wait, args=(60,)) for job in jobs for _ in range(5)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=90)
    assert [job.wait(5).result for job in jobs] == [{"echo": n} for n in range(20)]
    assert waiters.streams_opened == 0
    assert waiters.reads < 100  # one read per poll for all 100 waiters


def test_in_inline_mode_the_job_has_finished_when_push_returns(
    make_settings: Callable[..., Settings],
) -> None:
    app = workers.boot(settings=make_settings(mode="inline"))
    try:
        pushed = app.push_named("RecordJob", {"echo": "inline"})
        assert pushed.result(timeout=5) == {"echo": "inline"}
        failed = app.push_named("FailJob", {}, retry=0)
        with pytest.raises(JobFailed):
            failed.result(timeout=5)
    finally:
        workers.shutdown()


@pytest.mark.processes
def test_a_pushed_id_alone_waits_on_the_booted_app(pushing: App, worker: None) -> None:
    pushed = pushing.push_named("RecordJob", {"echo": 1})
    again = workers.Pushed(str(pushed))  # an id kept as text and made a Pushed again
    assert again.result(timeout=60) == {"echo": 1}
    assert _get(pushed).wait(5).status == "completed"  # a StoredJob waits too


def _get(job_id: str) -> workers.StoredJob:
    found = workers.jobs.get(job_id)
    assert found is not None
    return found
