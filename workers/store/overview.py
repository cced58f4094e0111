"""Reads of the jobs collection for the dashboard and /metrics: counts, the oldest ready
job, the jobs around one job. Read-only; each says which index serves it."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from pymongo import ReturnDocument
from pymongo.errors import DuplicateKeyError

from workers.record import READY
from workers.store.base import Connection, Document, translated
from workers.store.claims import CLAIM_INDEX
from workers.store.dependencies import LINKS_INDEX, linked
from workers.store.lifecycle import SUMMARY
from workers.store.schedule import READY_TIMES_INDEX
from workers.store.stream import AnyChange

# Counting reads (status, type) only, sorted as the claim index is: MongoDB answers it
# from the index alone (a covered scan), never fetching a document.
COUNT_PIPELINE: list[Document] = [
    {"$sort": {"status": 1, "type": 1}},
    {"$project": {"_id": 0, "status": 1, "type": 1}},
    {"$group": {"_id": {"status": "$status", "type": "$type"}, "n": {"$sum": 1}}},
]
_COUNTS_ID = "counts"  # the shared snapshot of the counts, in the metrics collection


class OverviewQueries(Connection):
    @translated
    def count_by_status_and_type(self) -> dict[tuple[str, str], int]:
        """Every (status, type) and its number of jobs: one aggregation on the claim index
        (unhinted on SecantusDB, where a hint reads the whole index and then every document:
        13.4 s against 12.0 s beside 100,000 scheduled and 100,000 finished jobs)."""
        rows = self.jobs.aggregate(COUNT_PIPELINE, **self.scan_hint_option(CLAIM_INDEX))
        return {
            (str(row["_id"].get("status")), str(row["_id"].get("type"))): int(row["n"])
            for row in rows
        }

    # -- the counts, shared: one snapshot in the metrics collection ---------------------

    @translated
    def counts_snapshot(self) -> Document | None:
        """The last counts any process took (`save_counts`), with their age by the server's
        clock in `age`; None if none was ever taken. One read by `_id`."""
        doc = self.metrics.find_one({"_id": _COUNTS_ID})
        if doc is None or not isinstance(doc.get("at"), datetime):
            return None
        doc["age"] = max(0.0, (self.now() - doc["at"]).total_seconds())
        return doc

    @translated
    def recent_counts(self, max_age: float) -> tuple[dict[tuple[str, str], int], float] | None:
        """The shared snapshot's counts by (status, type) and their age, if it is younger
        than `max_age` seconds: one read by `_id` where a count reads every job."""
        snapshot = self.counts_snapshot()
        if snapshot is None or snapshot["age"] >= max_age:
            return None
        return snapshot_pairs(snapshot), float(snapshot["age"])

    @translated
    def save_counts(self, by_pair: dict[tuple[str, str], int], took: float) -> None:
        """Store counts taken in `took` seconds as the shared snapshot (and end the turn)."""
        pairs = [[status, job_type, n] for (status, job_type), n in sorted(by_pair.items())]
        self.metrics.update_one(
            {"_id": _COUNTS_ID},
            {
                "$set": {"pairs": pairs, "took": float(took)},
                "$currentDate": {"at": True},
                "$unset": {"counting_until": ""},
            },
            upsert=True,
        )

    @translated
    def take_recount(self, seconds: float) -> bool:
        """The turn to count again, held `seconds`: one process recounts at a time, the
        others go on reading the snapshot. By `_id`, in one atomic write."""
        return self._take_until(_COUNTS_ID, "counting_until", seconds, upsert=False)

    @translated
    def take_turn(self, name: str, seconds: float) -> bool:
        """The cluster's turn at `name` (the sweep), held `seconds`: one process at a time
        does what every process would otherwise do at once. One write by `_id`."""
        try:
            return self._take_until(f"turn:{name}", "until", seconds, upsert=True)
        except DuplicateKeyError:  # two made the document at once: the other has the turn
            return False

    def _take_until(self, doc_id: str, field: str, seconds: float, *, upsert: bool) -> bool:
        now = self.now()
        free = {"$or": [{field: None}, {field: {"$lt": now}}]}
        taken = self.metrics.find_one_and_update(
            {"_id": doc_id, **free},
            {"$set": {field: now + timedelta(seconds=seconds)}},
            upsert=upsert,
            return_document=ReturnDocument.AFTER,
        )
        return taken is not None

    @translated
    def oldest_ready(self, now: datetime, types: list[str]) -> Document | None:
        """The ready job that has been due longest: the first due of each of `types` (the
        types with ready jobs, from the counts), each the first key of its range on
        `ready_times` (type, run_at); across types the index has no order by `run_at`."""
        firsts = [
            self.jobs.find_one(query, {"type": 1, "run_at": 1}, sort=[("run_at", 1)], hint=hint)
            for query, hint in self._oldest_queries(now, types)
        ]
        found = [doc for doc in firsts if doc is not None]
        return min(found, key=lambda doc: doc["run_at"], default=None)

    def _oldest_queries(self, now: datetime, types: list[str]) -> list[tuple[Document, Any]]:
        hint = self.scan_hint(READY_TIMES_INDEX)  # unhinted there, it reads the ready jobs only
        return [({"status": READY, "type": t, "run_at": {"$lte": now}}, hint) for t in types]

    @translated
    def jobs_by_id(self, ids: list[Any]) -> list[Document]:
        return list(self.jobs.find({"_id": {"$in": ids}}, SUMMARY))

    @translated
    def waiting_on(self, job_id: Any, limit: int = 100) -> list[Document]:
        """The jobs still waiting for `job_id` to complete (the `links` index)."""
        return list(
            self.jobs.find(
                {"links": linked([job_id])}, SUMMARY, hint=self.hint(LINKS_INDEX), limit=limit
            )
        )

    def job_changes(self) -> AnyChange:
        """A change stream of every job change, on its own connection (the live dashboard)."""
        return AnyChange(self.url, self.db.name, self.jobs.name, self.timeout)

    def overview_queries(self) -> dict[str, tuple[Document, Document]]:
        """The queries above, as (command, plan): the explain tests (the lists: lifecycle.py)."""
        [(oldest, _)] = self._oldest_queries(self.now(), ["LoadRetentionJob"])
        finds: dict[str, Document] = {
            "oldest ready": {"filter": oldest, "sort": {"run_at": 1},
                             "hint": self.index(READY_TIMES_INDEX), "limit": 1},
            "waiting on": {"filter": {"links": linked(["x"])}, "hint": self.index(LINKS_INDEX),
                           "limit": 100},
        }  # fmt: skip
        plans = {
            name: (
                {"find": self.jobs.name, **command},
                self._explain({"find": self.jobs.name, **command}),
            )
            for name, command in finds.items()
        }
        count = {"aggregate": self.jobs.name, "pipeline": COUNT_PIPELINE,
                 "hint": self.index(CLAIM_INDEX), "cursor": {}}  # fmt: skip
        plans["count by status and type"] = (count, self._explain(count))
        return plans


def snapshot_pairs(snapshot: Document) -> dict[tuple[str, str], int]:
    """The snapshot's counts by (status, type), as `count_by_status_and_type` gives them."""
    pairs = snapshot.get("pairs") or []
    return {(str(p[0]), str(p[1])): int(p[2]) for p in pairs if len(p) == 3}
