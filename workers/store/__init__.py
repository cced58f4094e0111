"""Every MongoDB query and index. Nothing outside this package imports pymongo.

The atomic operations are named methods; each docstring says what makes it
atomic and which index serves it. One module per collection.
"""

from __future__ import annotations

from workers.store.base import Document, bson_problem, new_id, translated
from workers.store.claims import CLAIM_INDEX
from workers.store.cron import CronQueries
from workers.store.jobs import LOST_MESSAGE, RESCUE_INDEX, UNIQUE_INDEX, Completion, JobQueries
from workers.store.metrics import MetricsQueries
from workers.store.nodes import NodeQueries
from workers.store.overview import OverviewQueries
from workers.store.stream import AnyChange, ReadyChange, ReadyStream
from workers.store.web import WebQueries


class Store(JobQueries, OverviewQueries, NodeQueries, CronQueries, MetricsQueries, WebQueries):
    """The job, node, cron, metrics and web collections of one database."""

    @translated
    def ensure_indexes(self) -> None:
        """Idempotent; every hot-path query names the index it relies on."""
        self.ensure_job_indexes()
        self.ensure_node_indexes()
        self.ensure_metrics_indexes()


__all__ = [
    "CLAIM_INDEX",
    "LOST_MESSAGE",
    "RESCUE_INDEX",
    "UNIQUE_INDEX",
    "AnyChange",
    "Completion",
    "Document",
    "ReadyChange",
    "ReadyStream",
    "Store",
    "bson_problem",
    "new_id",
]
