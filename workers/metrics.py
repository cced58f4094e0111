"""What a worker process counts for /metrics, kept in memory and written by the heartbeat.

Counting costs a job nothing on the database: outcomes, durations and pickup
latencies are added up here, in the process, and each heartbeat adds what
accrued since the last one to the cluster-wide totals in the `metrics`
collection (one `$inc` per job type, store/metrics.py). So the totals are the
sum over every process and node that ever ran, they survive restarts, and a
process that dies loses at most one heartbeat interval of counts (lease/3 s).
"""

from __future__ import annotations

import threading
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

# Upper bounds in seconds, as Prometheus' default buckets with a longer tail for jobs.
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800)
PICKUP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
COUNTERS = ("completed", "failed", "retried", "rescued")
HISTOGRAMS = {"duration": DURATION_BUCKETS, "pickup": PICKUP_BUCKETS}


@dataclass
class Histogram:
    """Counts per bucket (not cumulative; the last one is +Inf), sum and count."""

    bounds: tuple[float, ...]
    buckets: list[int] = field(default_factory=list)
    total: float = 0.0
    count: int = 0

    def __post_init__(self) -> None:
        self.buckets = self.buckets or [0] * (len(self.bounds) + 1)

    def observe(self, value: float) -> None:
        index = next((i for i, bound in enumerate(self.bounds) if value <= bound), -1)
        self.buckets[index] += 1
        self.total += value
        self.count += 1


@dataclass
class TypeTally:
    counters: dict[str, int] = field(default_factory=lambda: dict.fromkeys(COUNTERS, 0))
    histograms: dict[str, Histogram] = field(
        default_factory=lambda: {name: Histogram(b) for name, b in HISTOGRAMS.items()}
    )

    def increments(self) -> dict[str, float]:
        """This tally as `$inc` fields of a metrics document."""
        inc: dict[str, float] = {f"c.{name}": n for name, n in self.counters.items() if n}
        for name, hist in self.histograms.items():
            if not hist.count:
                continue
            inc[f"h.{name}.sum"] = hist.total
            inc[f"h.{name}.count"] = hist.count
            inc.update({f"h.{name}.b{i}": n for i, n in enumerate(hist.buckets) if n})
        return inc


class Tally:
    """The counts of this process since the last flush, by job type; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._types: dict[str, TypeTally] = defaultdict(TypeTally)
        self._minute: dict[str, int] = defaultdict(int)

    def outcome(self, job_type: str, outcome: str, duration: float | None) -> None:
        """`outcome` is completed, failed (for good) or retried."""
        with self._lock:
            tally = self._types[job_type]
            tally.counters[outcome] += 1
            if duration is not None:
                tally.histograms["duration"].observe(max(duration, 0.0))
            self._minute["completed" if outcome == "completed" else "failed"] += 1

    def rescued(self, job_type: str) -> None:
        with self._lock:
            self._types[job_type].counters["rescued"] += 1

    def picked_up(self, job_type: str, due: Any, started: Any) -> None:
        """Pickup latency: from when the job was due to when a worker started it (both times
        written by the database clock)."""
        if isinstance(due, datetime) and isinstance(started, datetime):
            with self._lock:
                seconds = max((started - due).total_seconds(), 0.0)
                self._types[job_type].histograms["pickup"].observe(seconds)

    def drain(self) -> tuple[dict[str, dict[str, float]], dict[str, int]]:
        """Take what accrued: `$inc` fields per type, and the finished counts for the
        current minute's throughput."""
        with self._lock:
            types, self._types = self._types, defaultdict(TypeTally)
            minute, self._minute = dict(self._minute), defaultdict(int)
        by_type = {name: tally.increments() for name, tally in types.items()}
        return {name: inc for name, inc in by_type.items() if inc}, minute

    def restore(self, by_type: dict[str, dict[str, float]], minute: dict[str, int]) -> None:
        """Put back what a failed flush could not write, so the next beat writes it."""
        with self._lock:
            for name, inc in by_type.items():
                _add_back(self._types[name], inc)
            for key, n in minute.items():
                self._minute[key] += n


def _add_back(tally: TypeTally, inc: dict[str, float]) -> None:
    for key, value in inc.items():
        kind, name, *rest = key.split(".")
        if kind == "c":
            tally.counters[name] += int(value)
            continue
        hist = tally.histograms[name]
        part = rest[0]
        if part == "sum":
            hist.total += value
        elif part == "count":
            hist.count += int(value)
        else:
            hist.buckets[int(part[1:])] += int(value)
