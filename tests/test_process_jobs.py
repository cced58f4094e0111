"""`process_jobs`: a function-style worker inside the test's own process, on the same claim,
lease and heartbeat code as headless mode."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from typing import Any

import pytest

import workers
import workers.jobs
from tests.conftest import wait_for
from workers import WorkersError, process_jobs
from workers.app import App
from workers.job import JobHandle


def statuses(app: App) -> list[str]:
    return sorted(doc["status"] for doc in app.store.jobs.find({}, {"status": 1}))


class Gate:
    """A handler that holds each job until the test opens the gate."""

    def __init__(self) -> None:
        self.open = threading.Event()
        self.seen: list[str] = []

    def __call__(self, job: JobHandle) -> str:
        self.seen.append(str(job.id))
        self.open.wait(30)
        return "done"


@pytest.fixture
def gate() -> Iterator[Gate]:
    opened = Gate()
    yield opened
    opened.open.set()


def test_a_handler_gets_each_job_and_its_return_value_is_the_result(app: App) -> None:
    ids = [workers.push_named("Mail", {"to": f"u{n}@example.com"}) for n in range(3)]

    def send(job: JobHandle) -> dict[str, Any]:
        job.progress(1, 1)
        job.log("sent", level="success")
        return {"sent": job.params["to"], "type": job.type}

    processor = process_jobs("Mail", send, threads=2, poll_interval=0.05)
    try:
        wait_for(lambda: statuses(app) == ["completed"] * 3, timeout=30, what="the mails")
    finally:
        processor.shutdown()
    job = workers.jobs.get(ids[0])
    assert job is not None and job.result == {"sent": "u0@example.com", "type": "Mail"}
    assert job.progress["percent"] == 100.0 and job.log[0]["level"] == "success"
    assert processor.stopped and processor.idle()


def test_cargo_five_hands_over_up_to_five_jobs_at_once_with_results_each(app: App) -> None:
    ids = workers.app.current().store.insert_jobs(
        [app.job_document(workers.store.new_id(), "Bulk", {"n": n}) for n in range(12)]
    )
    sizes: list[int] = []

    def handle(jobs: list[JobHandle]) -> list[int]:
        sizes.append(len(jobs))
        return [job.params["n"] * 10 for job in jobs]

    processor = process_jobs("Bulk", handle, cargo=5, poll_interval=0.05)
    try:
        wait_for(lambda: statuses(app) == ["completed"] * 12, timeout=30, what="the cargo")
    finally:
        processor.shutdown()
    assert sum(sizes) == 12 and max(sizes) == 5 and all(size <= 5 for size in sizes)
    assert [workers.jobs.get(job_id).result for job_id in ids] == [n * 10 for n in range(12)]  # type: ignore[union-attr]


def test_a_failing_handler_fails_the_attempt_and_fail_skips_retries(app: App) -> None:
    raising = workers.push_named("Flaky", {}, retry={"retries": 1, "wait": 0})
    fatal = workers.push_named("Fatal", {}, retry={"retries": 3, "wait": 0})

    def handle(job: JobHandle) -> None:
        if job.type == "Flaky":
            raise RuntimeError("flaky")
        job.fail("give up", fatal=True)

    processor = process_jobs(["Flaky", "Fatal"], handle, poll_interval=0.05)
    try:
        wait_for(lambda: statuses(app) == ["failed", "failed"], timeout=30, what="the failures")
    finally:
        processor.shutdown()
    assert (workers.jobs.get(raising).attempts, workers.jobs.get(raising).error["message"]) == (
        2,
        "flaky",
    )  # type: ignore[union-attr]
    assert workers.jobs.get(fatal).attempts == 1  # type: ignore[union-attr]


def test_an_async_handler_runs_on_an_event_loop(app: App) -> None:
    job_id = workers.push_named("Async", {"x": 2})

    async def handle(job: JobHandle) -> int:
        await asyncio.sleep(0.01)
        return int(job.params["x"]) * 2

    processor = process_jobs("Async", handle, poll_interval=0.05)
    try:
        wait_for(lambda: statuses(app) == ["completed"], timeout=30, what="the async job")
    finally:
        processor.shutdown()
    assert workers.jobs.get(job_id).result == 4  # type: ignore[union-attr]


def held_three(app: App, gate: Gate) -> Any:
    """One job running (held at the gate) and two prefetched, not started."""
    for n in range(3):
        workers.push_named("Held", {"n": n})
    processor = process_jobs("Held", gate, threads=1, prefetch=2, poll_interval=0.05)
    wait_for(
        lambda: (processor.running(), processor.length()) == (1, 2),
        timeout=30,
        what="1 running, 2 held",
    )
    return processor


def shutdown_in_background(processor: Any, level: str) -> threading.Thread:
    thread = threading.Thread(target=processor.shutdown, args=(level,))
    thread.start()
    return thread


def test_a_soft_shutdown_finishes_every_held_job(app: App, gate: Gate) -> None:
    processor = held_three(app, gate)
    stopping = shutdown_in_background(processor, "soft")
    gate.open.set()
    stopping.join(30)
    assert processor.stopped and statuses(app) == ["completed"] * 3


def test_a_normal_shutdown_finishes_the_running_job_and_hands_back_the_rest(
    app: App, gate: Gate
) -> None:
    processor = held_three(app, gate)
    stopping = shutdown_in_background(processor, "normal")
    wait_for(lambda: statuses(app).count("ready") == 2, timeout=30, what="two handed back")
    gate.open.set()
    stopping.join(30)
    assert processor.stopped and statuses(app) == ["completed", "ready", "ready"]
    assert len(gate.seen) == 1


def test_a_hard_shutdown_hands_back_everything_now(
    app: App, gate: Gate, caplog: pytest.LogCaptureFixture
) -> None:
    processor = held_three(app, gate)
    processor.shutdown("hard", timeout=30)
    assert processor.stopped and statuses(app) == ["ready"] * 3
    assert [doc["attempts"] for doc in app.store.jobs.find()] == [0, 0, 0]
    gate.open.set()  # the running attempt returns after the hand-back: its outcome is refused
    wait_for(
        lambda: any("outcome not written" in record.message for record in caplog.records),
        timeout=10,
        what="the late outcome to be refused",
    )
    assert statuses(app) == ["ready"] * 3


def test_a_paused_processor_claims_nothing_until_resumed(app: App) -> None:
    processor = process_jobs("Later", lambda job: "ok", poll_interval=0.05)
    try:
        processor.pause()
        job_id = workers.push_named("Later", {})
        # ten polls and a stream event later, the job is still ready: nothing claims it
        for _ in range(10):
            assert workers.jobs.get(job_id).status == "ready"  # type: ignore[union-attr]
            threading.Event().wait(0.05)
        processor.resume()
        wait_for(
            lambda: workers.jobs.get(job_id).status == "completed",
            timeout=30,
            what="the resumed claim",
        )  # type: ignore[union-attr]
    finally:
        processor.shutdown()


def test_bad_arguments_are_refused_naming_them(app: App) -> None:
    for kwargs, said in (
        ({"types": []}, "types must be job type names"),
        ({"handler": 3}, "handler must be callable"),
        ({"cargo": 0}, "cargo must be an int >= 1"),
        ({"threads": "2"}, "threads must be an int >= 1"),
        ({"prefetch": -1}, "prefetch must be an int >= 0"),
        ({"poll_interval": 0}, "poll_interval must be seconds > 0"),
    ):
        arguments: dict[str, Any] = {"types": "T", "handler": print, **kwargs}
        with pytest.raises(WorkersError, match=said):
            process_jobs(arguments.pop("types"), arguments.pop("handler"), **arguments)
