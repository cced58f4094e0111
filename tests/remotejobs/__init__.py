"""Job classes a remote worker runs (`workers remote --jobs tests.remotejobs`): they touch
no database, so what they did shows in their results, progress and logs alone."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
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


OUT_ENV = "REMOTEJOBS_OUT"


class CountedJob(Job):
    """Sleeps `seconds` (default 0.05) between progress and a log line (none if `reports`
    is false), and notes its start and end (`start|end <job id> <attempt> <lease token>`)
    in a file of its process under $REMOTEJOBS_OUT: what ran, and what ran to the end,
    counted where no report can hide it."""

    def handle_job(self) -> dict[str, Any]:
        attempt = self.attempt.number if self.attempt else 0
        reports = self.params.get("reports", True)  # progress and a log line, or neither
        self._note("start", attempt)
        if reports:
            self.progress(1, 2)
        time.sleep(float(self.params.get("seconds", 0.05)))
        if reports:
            self.log("counted", level="info")
            self.progress(2, 2)
        self._note("end", attempt)
        return {"pid": os.getpid(), "attempt": attempt}

    def _note(self, event: str, attempt: int) -> None:
        folder = os.environ.get(OUT_ENV)
        if folder:
            token = self.attempt.owner if self.attempt else "-"
            with open(os.path.join(folder, f"{os.getpid()}.txt"), "a") as out:
                out.write(f"{event} {self.id} {attempt} {token}\n")


@dataclass(frozen=True)
class Note:
    event: str
    job_id: str
    attempt: int
    token: str
    pid: int


def notes(folder: str) -> list[Note]:
    """Every note CountedJob made under `folder`."""
    found = []
    for name in sorted(os.listdir(folder)):
        pid = int(name.removesuffix(".txt"))
        with open(os.path.join(folder, name)) as lines:
            for line in lines:
                event, job_id, attempt, token = line.split()
                found.append(Note(event, job_id, int(attempt), token, pid))
    return found
