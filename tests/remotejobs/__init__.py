"""Job classes a remote worker runs (`workers remote --jobs tests.remotejobs`): they touch
no database, so what they did shows in their results, progress and logs alone."""

from __future__ import annotations

import os
import time
from typing import Any

from workers import Job


class EchoJob(Job):
    """Reports progress and a log line, and returns who ran it and which attempt."""

    def handle_job(self) -> dict[str, Any]:
        self.progress(1, 2)
        self.log("echoing", level="info")
        self.progress(2, 2)
        attempt = self.attempt.number if self.attempt else None
        return {"echo": self.params.get("echo"), "pid": os.getpid(), "attempt": attempt}


class FlakyEchoJob(Job):
    """Fails its first attempt, then returns who ran it."""

    def handle_job(self) -> dict[str, Any]:
        if self.attempt is not None and self.attempt.number == 1:
            raise ConnectionError("the first attempt fails")
        return {"pid": os.getpid()}


class NapJob(Job):
    """Sleeps `seconds` (default 30): a job a worker holds while it is killed."""

    def handle_job(self) -> dict[str, Any]:
        time.sleep(float(self.params.get("seconds", 30)))
        return {"pid": os.getpid()}
