"""The jobs the benchmark runs: they do nothing, so the queue's own cost is what is measured.

`GlobalBenchJob` and `RatedBenchJob` have no limits of their own: the flow-control line
gives them `global_concurrency` and `rate_limit` through the settings (`workers.limits`)."""

from __future__ import annotations

from workers import Job


class NoopJob(Job):
    def handle_job(self) -> None:
        return None


class GlobalBenchJob(Job):
    def handle_job(self) -> None:
        return None


class RatedBenchJob(Job):
    def handle_job(self) -> None:
        return None
