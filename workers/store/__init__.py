"""Every MongoDB query and index. Nothing outside this package imports pymongo.

The atomic operations are named methods; each docstring says what makes it
atomic and which index serves it. One module per collection.
"""

from __future__ import annotations

from workers.store import (
    claims,
    dependencies,
    jobs,
    lifecycle,
    metrics,
    nodes,
    outcomes,
    schedule,
    web,
)
from workers.store.base import Document, bson_problem, new_id
from workers.store.claims import CLAIM_INDEX
from workers.store.cron import CronQueries
from workers.store.indexes import IndexQueries, IndexSpec, IndexState
from workers.store.jobs import LOST_MESSAGE, RESCUE_INDEX, UNIQUE_INDEX, Completion, JobQueries
from workers.store.limits import Limited, LimitedAsk, LimitQueries, needs_transactions
from workers.store.metrics import MetricsQueries
from workers.store.nodes import NodeQueries
from workers.store.outcomes import FinishedStream, JobState, OutcomeQueries, StateStream
from workers.store.overview import OverviewQueries
from workers.store.stream import AnyChange, ReadyChange, ReadyStream
from workers.store.web import WebQueries

# every index of the service, by the module whose queries it serves
INDEXES: tuple[IndexSpec, ...] = (
    *claims.INDEXES,
    *schedule.INDEXES,
    *jobs.INDEXES,
    *dependencies.INDEXES,
    *lifecycle.INDEXES,
    *outcomes.INDEXES,
    *nodes.INDEXES,
    *metrics.INDEXES,
    *web.INDEXES,
)
RETIRED_INDEXES = (
    *claims.RETIRED_INDEXES,
    *dependencies.RETIRED_INDEXES,
    *jobs.RETIRED_INDEXES,
    *lifecycle.RETIRED_INDEXES,
)


class Store(
    JobQueries,
    LimitQueries,
    OverviewQueries,
    OutcomeQueries,
    NodeQueries,
    CronQueries,
    MetricsQueries,
    WebQueries,
    IndexQueries,
):
    """The job, node, cron, metrics and web collections of one database."""

    def required_indexes(self) -> tuple[IndexSpec, ...]:
        return INDEXES

    def retired_indexes(self) -> tuple[IndexSpec, ...]:
        return RETIRED_INDEXES


__all__ = [
    "CLAIM_INDEX",
    "INDEXES",
    "LOST_MESSAGE",
    "RESCUE_INDEX",
    "UNIQUE_INDEX",
    "AnyChange",
    "Completion",
    "Document",
    "FinishedStream",
    "IndexSpec",
    "IndexState",
    "JobState",
    "Limited",
    "LimitedAsk",
    "ReadyChange",
    "ReadyStream",
    "StateStream",
    "Store",
    "bson_problem",
    "needs_transactions",
    "new_id",
]
