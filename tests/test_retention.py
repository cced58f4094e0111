"""Retention: a finished job gets `expire_at` (its finish + the retention of its status) and
the TTL index removes it then; `null` keeps it."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

import workers
import workers.jobs
from tests.conftest import wait_for
from tests.jobs import FailJob, RecordJob
from tests.test_worker import finished, running
from workers import Job
from workers.app import App
from workers.settings import Settings

# The server's TTL monitor runs once a minute (MongoDB's default, and SecantusDB's, whose
# `[storage] ttl_sweep_seconds` its command line does not pass on): the removal is awaited
# for up to two sweeps.
SWEEPS = 130


@pytest.fixture
def short_retention(make_settings: Callable[..., Settings]) -> Iterator[App]:
    settings = make_settings(workers__retention={"completed": 1, "failed": None, "cancelled": 2})
    yield workers.boot(settings=settings)
    workers.shutdown()


@pytest.mark.slow
def test_finished_jobs_expire_by_status_and_the_ttl_index_removes_them(
    short_retention: App,
) -> None:
    app = short_retention
    done = Job.push(RecordJob())
    kept = Job.push(FailJob(), retry=0)
    cancelled = Job.push(RecordJob(), delay=3600)
    workers.jobs.cancel([cancelled])
    with running(app):
        for job_id in (done, kept):
            wait_for(lambda job_id=job_id: finished(app, job_id), timeout=20, what="the jobs")
    docs = {job_id: app.store.get_job(job_id) or {} for job_id in (done, kept, cancelled)}
    for job_id, seconds in ((done, 1), (cancelled, 2)):
        kept_for = (docs[job_id]["expire_at"] - docs[job_id]["finished"]).total_seconds()
        assert kept_for == pytest.approx(seconds, abs=0.01)
    assert docs[kept]["expire_at"] is None
    ttl = app.store.jobs.index_information()["expire_at"]
    assert ttl["expireAfterSeconds"] == 0
    wait_for(
        lambda: app.store.get_job(done) is None and app.store.get_job(cancelled) is None,
        timeout=SWEEPS,
        what="the TTL monitor to remove the expired jobs",
        every=0.5,
    )
    assert app.store.get_job(kept) is not None


def test_a_restarted_job_no_longer_expires(app: App, db: Any) -> None:
    job_id = Job.push(RecordJob(), delay=3600)
    workers.jobs.cancel([job_id])
    assert (app.store.get_job(job_id) or {})["expire_at"] is not None
    workers.jobs.restart([job_id])
    assert (app.store.get_job(job_id) or {})["expire_at"] is None
