"""The `metrics` collection: cluster-wide counters that the heartbeats add to.

One document per job type (`_id` "type:<name>") holds the totals of every
process that ran the type: counters under `c`, histogram buckets under `h`.
One document per minute (`_id` "minute:<UTC minute>") holds how many jobs
finished and failed in it, for the dashboard's last-hour chart; the TTL index
`metrics_ttl` drops those after two hours. Every read and write is on `_id`.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from pymongo import UpdateOne

from workers.store.base import Connection, Document, translated
from workers.store.indexes import IndexSpec

_TYPE, _MINUTE = "type:", "minute:"
MINUTE_KEEP = timedelta(hours=2)
INDEXES = (IndexSpec("metrics", "metrics_ttl", (("expire_at", 1),), ttl=0),)


def minute_key(moment: datetime) -> str:
    return _MINUTE + moment.strftime("%Y-%m-%dT%H:%M")


class MetricsQueries(Connection):
    @translated
    def add_metrics(
        self, by_type: dict[str, dict[str, float]], minute: dict[str, int], at: datetime
    ) -> None:
        """One unordered bulk of `$inc` upserts: what one process counted since its last beat."""
        writes = [
            UpdateOne({"_id": _TYPE + name}, {"$inc": inc, "$set": {"type": name}}, upsert=True)
            for name, inc in sorted(by_type.items())
        ]
        if minute:
            start = at.replace(second=0, microsecond=0)
            writes.append(
                UpdateOne(
                    {"_id": minute_key(start)},
                    {
                        "$inc": minute,
                        "$setOnInsert": {"at": start, "expire_at": start + MINUTE_KEEP},
                    },
                    upsert=True,
                )
            )
        if writes:
            self.metrics.bulk_write(writes, ordered=False)

    @translated
    def type_metrics(self) -> list[Document]:
        return list(self.metrics.find({"_id": {"$gte": _TYPE, "$lt": "type;"}}))

    @translated
    def minutes_since(self, since: datetime) -> list[Document]:
        """The per-minute finished counts from `since` on, oldest first."""
        query = {"_id": {"$gte": minute_key(since), "$lt": "minute;"}}
        return list(self.metrics.find(query).sort("_id", 1))
