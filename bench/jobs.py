"""The job the benchmark runs: it does nothing, so the queue's own cost is what is measured."""

from __future__ import annotations

from workers import Job


class NoopJob(Job):
    def handle_job(self) -> None:
        return None
