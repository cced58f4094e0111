"""Jobs for the many-host tests. They touch no database themselves (a host cut off from it
must still run them) and note each start and each `after_job` in a file of their own
process, under $NETJOBS_OUT, which the test reads once every host has stopped."""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path
from typing import Any

from workers import Job

OUT_ENV = "NETJOBS_OUT"


def note(event: str, job: Job, **fields: Any) -> None:
    folder = os.environ.get(OUT_ENV)
    if not folder:
        return
    line = {
        "event": event,
        "job": job.id,
        "type": type(job).__name__,
        "attempt": job.attempt.number if job.attempt else None,
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "at": time.time(),
        **fields,
    }
    path = Path(folder) / f"{socket.gethostname()}-{os.getpid()}.jsonl"
    with path.open("a", encoding="utf-8") as out:  # one short line per write: O_APPEND
        out.write(json.dumps(line) + "\n")


def notes(folder: Path) -> list[dict[str, Any]]:
    return [
        json.loads(line)
        for path in sorted(folder.glob("*.jsonl"))
        for line in path.read_text().splitlines()
    ]


class Noted(Job):
    """Sleeps `seconds` (work that takes time and needs no database), noting its start and
    its `after_job` with the `version` of the code that ran it. Not a `*Job` name: only its
    subclasses are job types."""

    version = 0

    def handle_job(self) -> None:
        note("start", self, version=self.version)
        time.sleep(float(self.params.get("seconds", 0.2)))

    def after_job(self, error: BaseException | None) -> None:
        note("after", self, version=self.version, error=type(error).__name__ if error else None)


class NapJob(Noted):
    pass


class TickJob(Job):
    """Every second; every missed tick fired after an outage, so none may go missing."""

    cron_missed = "all"

    @classmethod
    def setup_cron(cls) -> str:
        return "* * * * * *"

    def handle_job(self) -> str:
        return str(self.params["tick"])
