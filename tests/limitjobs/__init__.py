"""Job classes under flow control (`jobs: ["tests.limitjobs"]`): each records when its
attempt began and ended, by the server's clock, in `runs`."""

from __future__ import annotations

import os
import time
from typing import Any

from workers import Job, database


class Recorded(Job):
    """Sleeps `seconds` (`first` on the first attempt, when given) between two records."""

    def handle_job(self) -> None:
        runs = database()["runs"]
        attempt = self.attempt.number if self.attempt else None
        began = runs.insert_one(
            {
                "job_id": self.id,
                "type": type(self).__name__,
                "attempt": attempt,
                "pid": os.getpid(),
                "start": _server_now(),
            }
        ).inserted_id
        seconds = self.params.get("seconds", 0)
        if attempt == 1 and "first" in self.params:
            seconds = self.params["first"]
        time.sleep(seconds)
        runs.update_one({"_id": began}, {"$set": {"end": _server_now()}})


def _server_now() -> Any:
    return database().client.admin.command("hello")["localTime"]


class CappedJob(Recorded):
    global_concurrency = 2


class HoldJob(Recorded):
    global_concurrency = 1


class LocalJob(Recorded):
    concurrency = 1


class RatedJob(Recorded):
    rate_limit = "5/s"


class SlowRatedJob(Recorded):
    rate_limit = "2/m"


class FreeJob(Recorded):
    """No limit: flows beside the limited types."""


class FlakyJob(Recorded):
    """Fails its first attempt, after its record; the tests give it a limit by settings."""

    def handle_job(self) -> None:
        super().handle_job()
        if self.attempt is not None and self.attempt.number == 1:
            raise RuntimeError("the first attempt fails")
