"""Delayed jobs in the jobs collection: the stager that makes due `scheduled` jobs ready,
and the next due time an idle claimer sleeps until.

A job due later than the HORIZON is `scheduled`, on a partial index of its own
(`schedule`, led by `run_at`), so the claim index holds only what runs now or
soon: a claim never reads the jobs of tomorrow (Oban's stager, jobCollection's
promote). The next due time reads the first key of two index ranges, never a sort.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from workers.record import HORIZON, READY, SCHEDULED
from workers.store.base import Connection, Document, translated, type_runs
from workers.store.indexes import IndexSpec

# Scheduled jobs by due time, partial on status scheduled: what is due now is a range at the
# index's start, the next due its first key. The range leads the index (no type before it):
# SecantusDB bounds a scan by a leading range, not by one after an equality (a stage read
# 50,000 scheduled jobs in 1.3 s with `type` first, 10 due ones in 3 ms with `run_at` first).
SCHEDULE_INDEX = "schedule"
SCHEDULE_KEYS = [("run_at", 1)]
# The ready jobs by type and due time (partial: only ready ones), for the next due time: on
# the claim index `priority` sits between the equalities and `run_at`, so MongoDB would sort
# every ready job of the types, the ones not due yet included, to find the earliest.
READY_TIMES_INDEX = "ready_times"
READY_TIMES_KEYS = [("type", 1), ("run_at", 1)]
STAGE_BATCH = 1000
# How far ahead `next_due` looks: the scan is bounded by the jobs due in this window, and a
# claimer that finds none there looks again at its end (a stream reports new ones sooner).
NEXT_DUE_WINDOW = timedelta(seconds=30)
INDEXES = (
    # partial: on MongoDB it holds the scheduled jobs only, however many are finished
    IndexSpec("jobs", SCHEDULE_INDEX, tuple(SCHEDULE_KEYS), partial={"status": SCHEDULED}),
    IndexSpec("jobs", READY_TIMES_INDEX, tuple(READY_TIMES_KEYS), partial={"status": READY}),
)


class ScheduleQueries(Connection):
    @translated
    def stage_due(self) -> int:
        """Scheduled jobs due within the HORIZON become ready (Oban's stager, jobCollection's
        promote, ahead of time), so that claims scan only what runs now or soon; the claim
        still takes a job only once its `run_at` has come. Every type: staging runs
        nothing, and a job of a type no node here runs waits as ready for a node that does.

        The ids are read on the `schedule` index (a range of `run_at`, bounded by what is
        due), then changed by `_id` in one `update_many` per batch, conditional on still
        being scheduled and due: claimers staging at once change each job once. The writes
        reach the wake-up streams as jobs becoming ready."""
        staged = 0
        while True:
            due = self._stage_query(self.now())
            hint = self.scan_hint(SCHEDULE_INDEX)
            ids = [d["_id"] for d in self.jobs.find(due, {"_id": 1}, hint=hint, limit=STAGE_BATCH)]
            if not ids:
                return staged
            still = {**due, "_id": {"$in": ids}}
            staged += self.jobs.update_many(
                still, [{"$set": {"status": READY, "updated": "$$NOW"}}]
            ).modified_count
            if len(ids) < STAGE_BATCH:
                return staged

    @translated
    def next_due(self, types: list[str], after: datetime | None = None) -> datetime | None:
        """When to look again (None: no types, nothing to run): when the earliest ready job
        of `types` not due at `after` comes due, or when the earliest scheduled job is to be
        staged (its `run_at` less the HORIZON), or else at the end of `NEXT_DUE_WINDOW`. Read
        when a claim came back short, so the claimer can sleep until then. `after` is when
        that claim looked (default: now): a job that came due while the claim ran is past
        by now, yet the claim did not see it, so the answer is then a moment past and the
        claimer looks again at once rather than at the end of the window.

        The ready ones on `ready_times` (partial on ready: one range of `run_at` per type,
        in index order; only what is due within the HORIZON is ready). The scheduled ones on
        the `schedule` index: a range of `run_at` in index order, its first key (no sort
        stage), bounded by the jobs due within the window; any type's, as the claimer
        stages every type's when it wakes."""
        if not types:
            return None
        now = self.now()
        soonest = [now + NEXT_DUE_WINDOW]
        looked = now if after is None else min(after, now)
        firsts = [
            self._first_run_at(self._next_ready_query(run, looked), READY_TIMES_INDEX)
            for run in type_runs(types)
        ]
        ready = min((first for first in firsts if first), default=None)
        staged = self._first_run_at(self._next_due_query(now), SCHEDULE_INDEX)
        soonest += [ready] if ready else []
        soonest += [staged - HORIZON] if staged else []
        return min(soonest)

    def _first_run_at(self, query: Document, index: str) -> datetime | None:
        found = self.jobs.find(
            query, {"run_at": 1}, sort=[("run_at", 1)], hint=self.scan_hint(index)
        ).limit(1)
        for doc in found:
            run_at = doc.get("run_at")
            return run_at if isinstance(run_at, datetime) else None
        return None

    @staticmethod
    def _next_ready_query(types: list[str], after: datetime) -> Document:
        return {"status": READY, "type": {"$in": types}, "run_at": {"$gt": after}}

    @staticmethod
    def _next_due_query(now: datetime) -> Document:
        return {"status": SCHEDULED, "run_at": {"$lte": now + HORIZON + NEXT_DUE_WINDOW}}

    @staticmethod
    def _stage_query(now: datetime) -> Document:
        return {"status": SCHEDULED, "run_at": {"$lte": now + HORIZON}}
