"""An idle worker wakes when a job becomes ready, not one poll later.

Every test here sets `poll_interval` to 30 s: a job that runs within the
waits below was picked up by the change stream (or the next due time), never
by a poll.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

import workers
from tests.conftest import settings_dict, wait_for
from tests.faulty import count_candidate_scans
from tests.jobs import FailJob, ProgressJob, RecordJob, SleepJob
from tests.test_worker import finished, running
from workers import Job
from workers.app import App
from workers.settings import Settings, validate
from workers.store.stream import ReadyStream
from workers.worker import Worker

NO_POLL = {"poll_interval": 30.0, "lease": 5}
SOON = 15  # seconds: well under one 30 s poll


@pytest.fixture
def idle_app(make_settings: Callable[..., Settings]) -> Iterator[App]:
    booted = workers.boot(settings=make_settings(workers__queue=NO_POLL))
    yield booted
    workers.shutdown()


def streaming(worker: Worker) -> bool:
    return worker._wakeup.streaming


def test_an_idle_worker_wakes_for_a_pushed_job(idle_app: App) -> None:
    with running(idle_app) as worker:
        wait_for(lambda: streaming(worker), timeout=SOON, what="the wake-up stream")
        job_id = Job.push(RecordJob())
        doc = wait_for(lambda: finished(idle_app, job_id), timeout=SOON, what="the job")
    assert doc["status"] == "completed"


def test_a_job_handed_back_by_another_node_wakes_an_idle_worker(idle_app: App) -> None:
    job_id = Job.push(RecordJob())
    idle_app.store.claim("other-node#1", idle_app.registry.types, 30, 1)
    with running(idle_app) as worker:
        wait_for(lambda: streaming(worker), timeout=SOON, what="the wake-up stream")
        assert idle_app.store.release({job_id: "other-node#1"}, "handed back") == 1
        doc = wait_for(lambda: finished(idle_app, job_id), timeout=SOON, what="the job")
    assert doc["status"] == "completed" and doc["attempts"] == 1


def test_a_retried_job_wakes_the_worker_at_once_or_when_its_wait_is_over(
    idle_app: App, db: Any
) -> None:
    at_once = Job.push(FailJob(), retry={"retries": 1, "wait": 0})
    later = Job.push(FailJob(), retry={"retries": 1, "wait": 1.5, "backoff": "fixed"})
    with running(idle_app):
        for job_id in (at_once, later):
            doc = wait_for(lambda j=job_id: finished(idle_app, j), timeout=SOON, what="retries")
            assert doc["status"] == "failed" and doc["attempts"] == 2
    runs = {
        (e["job_id"], e["attempt"]): e["server_time"] for e in db.executions.find({"job_id": later})
    }
    failed_at = next(e["time"] for e in idle_app.store.get_job(later)["log"])  # type: ignore[index]
    assert (runs[(later, 2)] - failed_at).total_seconds() >= 1.5 - 0.05  # not before its time


@pytest.mark.slow
def test_a_delayed_job_wakes_the_worker_at_its_run_at(idle_app: App, db: Any) -> None:
    with running(idle_app) as worker:
        wait_for(lambda: streaming(worker), timeout=SOON, what="the wake-up stream")
        job_id = Job.push(RecordJob(), delay=2)
        doc = wait_for(lambda: finished(idle_app, job_id), timeout=SOON, what="the delayed job")
    run = db.executions.find_one({"job_id": job_id})
    assert run["server_time"] >= doc["run_at"]  # never early, by the server's clock


def test_without_change_streams_the_worker_polls(make_settings: Callable[..., Settings]) -> None:
    app = workers.boot(
        settings=make_settings(workers__queue={"poll_interval": 0.2, "change_streams": False})
    )
    try:
        with running(app) as worker:
            job_id = Job.push(RecordJob())
            doc = wait_for(lambda: finished(app, job_id), timeout=SOON, what="the job")
            assert not streaming(worker)
        assert doc["status"] == "completed"
    finally:
        workers.shutdown()


@pytest.mark.slow
def test_the_stream_resumes_after_the_server_restarts(
    restartable_server: tuple[str, Callable[[], None], Callable[[], None]],
    db_name: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    url, stop_db, start_db = restartable_server
    raw = settings_dict(url, db_name, workers__queue=NO_POLL, mongo__timeout=1)
    app = workers.boot(settings=validate(raw))
    try:
        with running(app) as worker:
            wait_for(lambda: streaming(worker), timeout=SOON, what="the wake-up stream")
            stop_db()
            wait_for(lambda: not streaming(worker), timeout=SOON, what="the stream to fail")
            # a claim fails while the server is away (a poke makes one now): the claimer
            # backs off, and the stream reopening ends that wait, not a 30 s poll later
            worker.pause(False)
            wait_for(
                lambda: any(r.getMessage().startswith("claim failed") for r in caplog.records),
                timeout=SOON,  # each read waits out server selection (1 s here) first
                what="a claim to fail",
            )
            start_db()
            # pushed while the stream is still down or reconnecting: the resumed stream
            # replays it, or a stream that could not resume looks once for missed jobs
            job_id = Job.push(RecordJob())
            wait_for(lambda: streaming(worker), timeout=30, what="the stream to resume")
            doc = wait_for(lambda: finished(app, job_id), timeout=SOON, what="the job")
        assert doc["status"] == "completed"
    finally:
        workers.shutdown()


@pytest.mark.slow
def test_a_busy_worker_rests_its_stream_and_an_idle_one_wakes_by_it_again(
    make_settings: Callable[..., Settings],
) -> None:
    # Given one thread and jobs for it back to back: every claim fills the idle threads
    app = workers.boot(settings=make_settings(workers__count=1, workers__queue=NO_POLL))
    try:
        backlog = [Job.push(SleepJob(seconds=1)) for _ in range(4)]
        with running(app) as worker:
            # Then the busy claimer's stream is closed (it costs the server on every write)
            wait_for(lambda: worker._wakeup.pauses >= 1, timeout=SOON, what="the stream to rest")
            for job_id in backlog:
                wait_for(lambda j=job_id: finished(app, j), timeout=SOON, what="the backlog")
            # And once idle, a pushed job wakes it through the reopened stream, not a poll
            wait_for(lambda: streaming(worker), timeout=SOON, what="the stream to reopen")
            job_id = Job.push(RecordJob())
            doc = wait_for(lambda: finished(app, job_id), timeout=SOON, what="the job")
        assert doc["status"] == "completed"
    finally:
        workers.shutdown()


def test_an_idle_worker_claims_the_job_the_stream_reported_without_a_scan(idle_app: App) -> None:
    with running(idle_app) as worker:
        wait_for(lambda: streaming(worker), timeout=SOON, what="the wake-up stream")
        first = Job.push(RecordJob(n=1))  # whatever looked for it (the look after the open)
        wait_for(lambda: finished(idle_app, first), timeout=SOON, what="the first job")
        scans = count_candidate_scans(idle_app.store)
        job_id = Job.push(RecordJob(n=2))
        doc = wait_for(lambda: finished(idle_app, job_id), timeout=SOON, what="the job")
    assert doc["status"] == "completed"
    assert scans["n"] == 0, "the stream named the job: it should have been claimed by _id"


def test_a_stream_invalidated_by_a_drop_is_reopened_not_spun_on(
    idle_app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = {"n": 0}
    real = ReadyStream.next_change

    def counted(self: ReadyStream) -> Any:
        calls["n"] += 1
        return real(self)

    monkeypatch.setattr(ReadyStream, "next_change", counted)
    with running(idle_app) as worker:
        wait_for(lambda: streaming(worker), timeout=SOON, what="the wake-up stream")
        opens = worker._wakeup.opens
        # When the jobs collection is dropped under it (the server invalidates the stream)
        idle_app.store.jobs.drop()
        # Then the stream is opened again, and does not spin on its dead cursor meanwhile
        wait_for(lambda: worker._wakeup.opens > opens, timeout=SOON, what="a reopened stream")
        before = calls["n"]
        worker._stopping.wait(1.0)  # one second of an idle stream: two getMores of 0.5 s
        looks = calls["n"] - before
    assert looks < 20, f"{looks} looks at the stream in one idle second"


@pytest.mark.slow
def test_wakes_by_the_stream_do_not_read_the_next_due_time_again(idle_app: App, db: Any) -> None:
    """A healthy stream reports the jobs that become ready later itself: after a claim by
    woken ids the claimer keeps its last answer instead of one read per wake-up."""
    with running(idle_app) as worker:
        wait_for(lambda: streaming(worker), timeout=SOON, what="the wake-up stream")
        first = Job.push(RecordJob(n=0))
        wait_for(lambda: finished(idle_app, first), timeout=SOON, what="the first job")
        real, reads = idle_app.store.next_due, {"n": 0}

        def counted(types: list[str], after: Any = None) -> Any:
            reads["n"] += 1
            return real(types, after)

        idle_app.store.next_due = counted  # type: ignore[method-assign]
        for n in range(1, 4):
            job_id = Job.push(RecordJob(n=n))
            wait_for(lambda j=job_id: finished(idle_app, j), timeout=SOON, what="a job")
        # and a delayed job pushed now still wakes it at its run_at (its event says when)
        later = Job.push(RecordJob(n=9), delay=1.5)
        doc = wait_for(lambda: finished(idle_app, later), timeout=SOON, what="the delayed job")
    assert reads["n"] <= 2, f"{reads['n']} reads of the next due time for 3 woken claims"
    assert db.executions.find_one({"job_id": later})["server_time"] >= doc["run_at"]


def _count_next_due_reads(app: App) -> dict[str, int]:
    real, reads = app.store.next_due, {"n": 0}

    def counted(types: list[str], after: Any = None) -> Any:
        reads["n"] += 1
        return real(types, after)

    app.store.next_due = counted  # type: ignore[method-assign]
    return reads


def test_scans_while_the_stream_delivers_do_not_read_the_next_due_time_again(
    idle_app: App,
) -> None:
    """A claim by scan changes nothing the last answer needs: the stream reports every job
    that becomes ready or scheduled later, with its run_at."""
    with running(idle_app) as worker:
        wait_for(lambda: streaming(worker), timeout=SOON, what="the wake-up stream")
        first = Job.push(RecordJob(n=0))
        wait_for(lambda: finished(idle_app, first), timeout=SOON, what="the first job")
        reads = _count_next_due_reads(idle_app)
        scans = count_candidate_scans(idle_app.store)
        for n in range(1, 4):
            worker._wakeup.poke()  # a look by scan (as the clock or a stop would ask)
            wait_for(lambda n=n: scans["n"] >= n, timeout=SOON, what=f"scan {n}")
        job_id = Job.push(RecordJob(n=4))  # the claimer waits again after each of them
        wait_for(lambda: finished(idle_app, job_id), timeout=SOON, what="a job after")
        assert streaming(worker), "the stream should have delivered throughout"
    assert reads["n"] == 0, f"{reads['n']} reads of the next due time for 3 scans"


@pytest.mark.slow
def test_a_delayed_job_still_runs_at_its_time_when_another_job_wakes_the_claimer_first(
    idle_app: App, db: Any
) -> None:
    """The run_at an event carried is kept across waits until it comes: a wake by another
    job in between used to drop it, and the delayed job waited for the 30 s safety look."""
    with running(idle_app) as worker:
        wait_for(lambda: streaming(worker), timeout=SOON, what="the wake-up stream")
        first = Job.push(RecordJob(n=0))
        wait_for(lambda: finished(idle_app, first), timeout=SOON, what="the first job")
        later = Job.push(RecordJob(n=9), delay=2)
        now = Job.push(RecordJob(n=1))  # wakes the claimer before `later` is due
        wait_for(lambda: finished(idle_app, now), timeout=SOON, what="the ready job")
        doc = wait_for(lambda: finished(idle_app, later), timeout=SOON, what="the delayed job")
    assert db.executions.find_one({"job_id": later})["server_time"] >= doc["run_at"]


@pytest.mark.slow
def test_a_job_resumed_before_its_run_at_runs_at_its_time(idle_app: App, db: Any) -> None:
    """A resume makes a job ready by its status alone: the event carries no run_at, so the
    claimer cannot know when it comes due. Its woken claim finds the job not due yet; the
    claimer reads the next due time again then, instead of keeping an answer from before
    the resume (the end of the 30 s window: the job waited for it)."""
    later = Job.push(RecordJob(n=9), delay=6)
    workers.jobs.pause([later])
    with running(idle_app) as worker:
        wait_for(lambda: streaming(worker), timeout=SOON, what="the wake-up stream")
        wait_for(lambda: worker._due[0], timeout=SOON, what="the claimer's next due time")
        workers.jobs.resume([later])
        resumed = idle_app.store.get_job(later)
        assert resumed is not None and resumed["status"] == "ready"
        assert idle_app.store.now() < resumed["run_at"], "resumed after its run_at: no test"
        doc = wait_for(lambda: finished(idle_app, later), timeout=SOON, what="the resumed job")
    assert db.executions.find_one({"job_id": later})["server_time"] >= doc["run_at"]


def test_a_worker_that_loses_a_burst_it_was_woken_for_looks_for_the_rest_at_once(
    make_settings: Callable[..., Settings],
) -> None:
    """Woken by a burst, a claimer tries the best of its ids by `_id`; when those are gone
    (another node took them; here, one of a type it does not run), the rest may still be
    ready: it scans at once instead of idling until the next wake (up to a 30 s poll)."""
    settings = make_settings(
        workers__queue=NO_POLL, workers__count=1, workers__types={"include": ["RecordJob"]}
    )
    app = workers.boot(settings=settings)
    try:
        with running(app) as worker:
            wait_for(lambda: streaming(worker), timeout=SOON, what="the wake-up stream")
            # one insert: the first id (not of its types) is the one it tries first
            burst = app.push_many([ProgressJob(), *(RecordJob(echo=n) for n in range(3))])
            foreign, burst = burst[0], burst[1:]
            done = [wait_for(lambda j=j: finished(app, j), timeout=SOON, what="the burst")
                    for j in burst]  # fmt: skip
        assert {doc["status"] for doc in done} == {"completed"}
        assert app.store.get_job(foreign)["status"] == "ready"  # type: ignore[index]
    finally:
        workers.shutdown()
