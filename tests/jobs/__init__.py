"""Job classes the tests push; discovered through settings `jobs: ["tests.jobs"]`."""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

from pymongo import CursorType

from workers import Job, database
from workers.store import Store


def _record(collection: str, job: Job, **fields: Any) -> None:
    """One document per call, stamped with the server's clock (ms resolution), in the
    database of the app that runs the attempt: an attempt a stopped worker left running
    finishes later into its own test's database, never into the next test's."""
    store = job.attempt.store if job.attempt else None
    db = store.app_database() if isinstance(store, Store) else database()
    server_time = db.client.admin.command("hello")["localTime"]
    attempt = job.attempt.number if job.attempt else None
    db[collection].insert_one(
        {
            "job_id": job.id,
            "attempt": attempt,
            "pid": os.getpid(),
            "params": job.params,
            "server_time": server_time,
            **fields,
        }
    )


class RecordJob(Job):
    """Records each execution in `executions` and echoes a param as its result."""

    def handle_job(self) -> Any:
        _record("executions", self)
        return {"echo": self.params.get("echo")}


class FailJob(Job):
    def handle_job(self) -> None:
        _record("executions", self)
        raise ValueError(self.params.get("message", "boom"))

    def after_job(self, error: BaseException | None) -> None:
        _record("after_job", self, error=repr(error) if error else None)


class AfterJobRecorderJob(Job):
    def handle_job(self) -> str:
        return "done"

    def after_job(self, error: BaseException | None) -> None:
        _record("after_job", self, error=repr(error) if error else None)


class BeforeFailsJob(Job):
    def before_job(self) -> None:
        raise PermissionError("not allowed yet")

    def handle_job(self) -> None:
        _record("executions", self)

    def after_job(self, error: BaseException | None) -> None:
        _record("after_job", self, error=repr(error) if error else None)


class AfterRaisesJob(Job):
    def handle_job(self) -> str:
        return "fine"

    def after_job(self, error: BaseException | None) -> None:
        raise RuntimeError("after_job is broken")


class BadResultJob(Job):
    def handle_job(self) -> Any:
        return {"value": object()}


class ProgressJob(Job):
    def handle_job(self) -> None:
        self.progress(1, 4)
        self.log("quarter done", level="info", step=1)
        self.progress(4, 4)


class SleepJob(Job):
    def handle_job(self) -> None:
        _record("executions", self, phase="start")
        time.sleep(self.params.get("seconds", 1.0))
        _record("executions", self, phase="end")


class SpinJob(Job):
    """Burns CPU in pure Python for `seconds`: the GIL is shared, never released voluntarily."""

    def handle_job(self) -> int:
        _record("executions", self, phase="start")
        end = time.monotonic() + self.params.get("seconds", 1.0)
        spins = 0
        while time.monotonic() < end:
            spins += 1
        _record("executions", self, phase="end")
        return spins


class TimeoutAfterJob(Job):
    """Has a class-level timeout and sleeps past it, then returns."""

    timeout = 0.5

    def handle_job(self) -> str:
        time.sleep(self.params.get("seconds", 1.0))
        return "returned late"

    def after_job(self, error: BaseException | None) -> None:
        _record("after_job", self, error=repr(error) if error else None)


class NeedsCountJob(Job):
    def handle_job(self) -> int:
        return int(self.params["count"] + 1)


class SlowEchoJob(Job):
    """Records its start, sleeps `seconds`, and returns the attempt that produced the result."""

    def handle_job(self) -> Any:
        _record("executions", self, phase="start")
        time.sleep(self.params.get("seconds", 1.0))
        return {"attempt": self.attempt.number if self.attempt else None}

    def after_job(self, error: BaseException | None) -> None:
        _record("after_job", self, error=repr(error) if error else None)


class LogManyJob(Job):
    """Logs `count` entries of `size` characters each, numbered, then returns."""

    def handle_job(self) -> int:
        for n in range(self.params["count"]):
            self.log(f"{n}:" + "x" * self.params.get("size", 10))
        return int(self.params["count"])


class RaiseHugeJob(Job):
    """Raises an error whose message is `size` characters long."""

    def handle_job(self) -> None:
        raise ValueError("y" * self.params["size"])


class HoldConnectionJob(Job):
    """Holds one of the app's pooled connections for `seconds`, as a slow query of the app's
    own would: an exhaust cursor keeps its connection checked out until it is closed."""

    def handle_job(self) -> None:
        _record("executions", self, phase="start")
        rows = database()["rows"]
        rows.insert_many([{"job": self.id, "n": n} for n in range(2)])
        cursor = rows.find({"job": self.id}, batch_size=1, cursor_type=CursorType.EXHAUST)
        try:
            next(cursor)
            time.sleep(self.params.get("seconds", 5))
        finally:
            cursor.close()


class WaitForCancelJob(Job):
    """Reports progress until it is cancelled (JobCancelled raised by progress), recording
    what it saw; gives up after `seconds`."""

    def handle_job(self) -> str:
        _record("executions", self)
        deadline = time.monotonic() + float(self.params.get("seconds", 20))
        step = 0
        while time.monotonic() < deadline:
            step = min(step + 1, 1000)
            self.progress(step, 1000)
            time.sleep(0.05)
        return "not cancelled"

    def after_job(self, error: BaseException | None) -> None:
        _record("after_job", self, error=type(error).__name__ if error else None)


class SelfFailJob(Job):
    """Fails itself through `self.fail` (fatal when asked), without raising."""

    def handle_job(self) -> str:
        _record("executions", self)
        self.fail(self.params.get("message", "cannot go on"), fatal=self.params.get("fatal", False))
        return "ignored"

    def after_job(self, error: BaseException | None) -> None:
        _record("after_job", self, error=type(error).__name__ if error else None)


class AsyncJob(Job):
    """An async handler and async hooks; sleeps `sleep` seconds on the event loop."""

    async def before_job(self) -> None:
        await asyncio.sleep(0)

    async def handle_job(self) -> dict[str, Any]:
        await asyncio.sleep(float(self.params.get("sleep", 0)))
        return {"async": True, "loop": type(asyncio.get_running_loop()).__name__}

    async def after_job(self, error: BaseException | None) -> None:
        await asyncio.sleep(0)
        _record("after_job", self, error=type(error).__name__ if error else None)


class UniqueByProjectJob(Job):
    """Unique by its project: a second push while one is unfinished finds the first."""

    def unique_key(self) -> str:
        return f"project:{self.params['project_id']}"

    def handle_job(self) -> None:
        _record("executions", self)
