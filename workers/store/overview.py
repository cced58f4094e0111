"""Reads of the jobs collection for the dashboard and /metrics: counts, the oldest ready
job, the jobs around one job. Read-only; each says which index serves it."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from workers.record import READY
from workers.store.base import Connection, Document, translated
from workers.store.claims import CLAIM_INDEX
from workers.store.dependencies import LINKS_INDEX
from workers.store.stream import AnyChange

# Counting reads (status, type) only, sorted as the claim index is: MongoDB answers it
# from the index alone (a covered scan), never fetching a document.
COUNT_PIPELINE: list[Document] = [
    {"$sort": {"status": 1, "type": 1}},
    {"$project": {"_id": 0, "status": 1, "type": 1}},
    {"$group": {"_id": {"status": "$status", "type": "$type"}, "n": {"$sum": 1}}},
]
_SUMMARY = {
    "_id": 1,
    "type": 1,
    "status": 1,
    "progress": 1,
    "attempts": 1,
    "owner": 1,
    "created": 1,
    "finished": 1,
}


class OverviewQueries(Connection):
    @translated
    def count_by_status_and_type(self) -> dict[tuple[str, str], int]:
        """Every (status, type) and its number of jobs: one aggregation on the claim index
        (unhinted on SecantusDB, where a hint reads the whole index and then every document:
        13.4 s against 12.0 s beside 100,000 scheduled and 100,000 finished jobs)."""
        hint = self.profile.hint(CLAIM_INDEX)
        options: dict[str, Any] = {"hint": hint} if hint else {}
        rows = self.jobs.aggregate(COUNT_PIPELINE, **options)
        return {
            (str(row["_id"].get("status")), str(row["_id"].get("type"))): int(row["n"])
            for row in rows
        }

    @translated
    def oldest_ready(self, now: datetime) -> Document | None:
        """The ready job that has been due longest (the claim index's prefix, status)."""
        return self.jobs.find_one(
            {"status": READY, "run_at": {"$lte": now}},
            {"type": 1, "run_at": 1},
            sort=[("run_at", 1)],
            hint=self.profile.hint(CLAIM_INDEX),  # unhinted there, it reads the ready jobs only
        )

    @translated
    def jobs_by_id(self, ids: list[Any]) -> list[Document]:
        return list(self.jobs.find({"_id": {"$in": ids}}, _SUMMARY))

    @translated
    def waiting_on(self, job_id: Any, limit: int = 100) -> list[Document]:
        """The jobs still waiting for `job_id` to complete (the `links` index)."""
        return list(self.jobs.find({"links": job_id}, _SUMMARY, hint=LINKS_INDEX, limit=limit))

    def job_changes(self) -> AnyChange:
        """A change stream of every job change, on its own connection (the live dashboard)."""
        return AnyChange(self.url, self.db.name, self.jobs.name, self.timeout)

    def overview_queries(self) -> dict[str, tuple[Document, Document]]:
        """The queries above and a next page of find, as (command, plan): the explain tests."""
        finds: dict[str, Document] = {
            "oldest ready": {"filter": {"status": READY, "run_at": {"$lte": self.now()}},
                             "sort": {"run_at": 1}, "hint": CLAIM_INDEX, "limit": 1},
            "waiting on": {"filter": {"links": "x"}, "hint": LINKS_INDEX, "limit": 100},
            "next page of ready jobs": {"filter": {"status": READY, "_id": {"$lt": "f" * 24}},
                                        "sort": {"_id": -1}, "hint": CLAIM_INDEX, "limit": 51},
        }  # fmt: skip
        plans = {
            name: (
                {"find": self.jobs.name, **command},
                self._explain({"find": self.jobs.name, **command}),
            )
            for name, command in finds.items()
        }
        count = {"aggregate": self.jobs.name, "pipeline": COUNT_PIPELINE, "hint": CLAIM_INDEX,
                 "cursor": {}}  # fmt: skip
        plans["count by status and type"] = (count, self._explain(count))
        return plans
