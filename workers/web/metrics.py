"""/metrics in Prometheus' text format (prometheus_client), read from the database.

- `workers_jobs{status,type}`: one aggregation, shared by every process as a snapshot and
  taken again in the background once older than `web.cache` seconds (views.Counts);
  `workers_jobs_counted_age_seconds` says how old it is.
- `workers_jobs_{completed,failed,retried,rescued}_total{type}` and the histograms
  `workers_job_duration_seconds` and `workers_job_pickup_latency_seconds` by type: the
  cluster-wide totals the heartbeats of every worker process add up in the `metrics`
  collection (workers/metrics.py says how); any replica of the web app reports the same.
- `workers_node_heartbeat_age_seconds{node,host}`, `workers_oldest_ready_job_age_seconds`,
  `workers_cron_lag_seconds{schedule}` (how long the latest due tick has waited to be fired)
  and `workers_cron_leader` (1 while a live leader holds the lease).
- `workers_jobs_without_node{type}`: jobs still to run of a type that no live worker
  process runs (they wait in silence until a node that runs the type starts).
- `workers_limit{type,limit}`, `workers_limit_in_use{type,limit}` and
  `workers_limit_waiting_jobs{type}`: each limited type's caps, their use now, and its
  due jobs held back by a full cap (views.limits).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

import workers.web.views as views
from workers.app import App
from workers.metrics import COUNTERS, HISTOGRAMS

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_HISTOGRAM_NAMES = {
    "duration": ("workers_job_duration_seconds", "Job attempt run time"),
    "pickup": ("workers_job_pickup_latency_seconds", "From due to started, by the database clock"),
}


class QueueCollector(Collector):
    def __init__(self, app: App, counts: views.Counts) -> None:
        self._app, self._counts = app, counts

    def collect(self) -> Iterator[Metric]:
        counts = self._counts.get()
        jobs = GaugeMetricFamily(
            "workers_jobs", "Jobs by status and type", labels=["status", "type"]
        )
        for job_type, statuses in counts["by_type"].items():
            for status, n in statuses.items():
                jobs.add_metric([status, job_type], n)
        yield jobs
        oldest = counts["oldest_ready_seconds"]
        yield GaugeMetricFamily(
            "workers_oldest_ready_job_age_seconds",
            "How long the oldest due ready job has waited",
            value=oldest or 0,
        )
        unrun = GaugeMetricFamily(
            "workers_jobs_without_node",
            "Jobs still to run (ready, scheduled, waiting) of a type no live worker process runs",
            labels=["type"],
        )
        for job_type, n in counts["unrun"].items():
            unrun.add_metric([job_type], n)
        yield unrun
        yield GaugeMetricFamily(
            "workers_jobs_counted_age_seconds",
            "How long ago workers_jobs was counted (a snapshot shared by every process)",
            value=counts["counted_seconds_ago"],
        )
        yield from self._totals()
        yield from self._limits()
        yield from self._nodes()
        yield from self._cron()

    def _totals(self) -> Iterator[Metric]:
        docs = self._app.store.type_metrics()
        for name in COUNTERS:
            family = CounterMetricFamily(
                f"workers_jobs_{name}", f"Job attempts {name}", labels=["type"]
            )
            for doc in docs:
                family.add_metric([str(doc.get("type"))], _number(doc, "c", name))
            yield family
        for key, bounds in HISTOGRAMS.items():
            metric, help_text = _HISTOGRAM_NAMES[key]
            histogram = HistogramMetricFamily(metric, help_text, labels=["type"])
            for doc in docs:
                hist = (doc.get("h") or {}).get(key) or {}
                cumulative, buckets = 0.0, []
                for i, bound in [*enumerate(bounds), (len(bounds), float("inf"))]:
                    cumulative += float(hist.get(f"b{i}", 0))
                    buckets.append((_le(bound), cumulative))
                histogram.add_metric([str(doc.get("type"))], buckets, float(hist.get("sum", 0)))
            yield histogram

    def _limits(self) -> Iterator[Metric]:
        cap = GaugeMetricFamily(
            "workers_limit",
            "A type's cap: running per process or cluster, starts per window",
            labels=["type", "limit"],
        )
        use = GaugeMetricFamily(
            "workers_limit_in_use",
            "Running across the cluster, or starts in the window",
            labels=["type", "limit"],
        )
        waiting = GaugeMetricFamily(
            "workers_limit_waiting_jobs", "Due jobs held back by a full cap", labels=["type"]
        )
        for row in views.limits(self._app):
            name = row["type"]
            if row["concurrency"] is not None:
                cap.add_metric([name, "concurrency"], row["concurrency"])
            if row["global_concurrency"] is not None:
                cap.add_metric([name, "global_concurrency"], row["global_concurrency"])
                use.add_metric([name, "global_concurrency"], row["running"])
            if row["rate_count"] is not None:
                cap.add_metric([name, "rate_limit"], row["rate_count"])
                use.add_metric([name, "rate_limit"], row["starts_in_window"])
            waiting.add_metric([name], row["waiting"])
        yield cap
        yield use
        yield waiting

    def _nodes(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(
            "workers_node_heartbeat_age_seconds",
            "Seconds since the worker process last beat",
            labels=["node", "host"],
        )
        for node in views.nodes(self._app):
            family.add_metric([node["id"], str(node["host"])], node["heartbeat_age"] or 0)
        yield family

    def _cron(self) -> Iterator[Metric]:
        state = views.cron(self._app)
        lag = GaugeMetricFamily(
            "workers_cron_lag_seconds",
            "How long the latest due tick has waited to fire",
            labels=["schedule"],
        )
        for schedule in state["schedules"]:
            if schedule["lag_seconds"] is not None:
                lag.add_metric([schedule["id"]], schedule["lag_seconds"])
        yield lag
        yield GaugeMetricFamily(
            "workers_cron_leader",
            "1 while a live cron leader holds the lease",
            value=1 if state["leader"] else 0,
        )


def _number(doc: dict[str, Any], section: str, name: str) -> float:
    value = (doc.get(section) or {}).get(name, 0)
    return float(value) if isinstance(value, int | float) else 0.0


def _le(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(float(bound))


def render(app: App, counts: views.Counts) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(QueueCollector(app, counts))
    return generate_latest(registry)
