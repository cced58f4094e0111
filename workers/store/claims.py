"""The claim path of the jobs collection: batch claims and their recovery.

Invariant: a job becomes `running` only through `claim`, whose write filters
on `status: ready` and a due `run_at`, so two claimers never take one job.
Each batch carries its own claim token in `lease_owner`; every later write
for the job is conditional on that token, so an attempt whose lease lapsed
(a frozen or partitioned process) can never write over a newer attempt,
even one its own process claimed again (per-attempt fencing).

Index `claim_queue` = (status, type, priority, run_at): the equalities on
status and type keep the scan to this node's types (a foreign backlog costs
nothing), then priority and run_at give the order. The batch write and the
read-back go by `_id`.

Where the server profile says so (the embedded server, whose scan reads every
ready job), one scan serves many claims: shared_scans.py. Delayed jobs are staged,
and the next due time read, in schedule.py.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any

from pymongo.errors import OperationFailure, PyMongoError

from workers.errors import ClaimIncomplete
from workers.record import FAILED, READY, RUNNING, SCHEDULED, error_document
from workers.store.base import Document, after_now, number, translated, type_runs
from workers.store.indexes import IndexSpec
from workers.store.schedule import (
    READY_TIMES_INDEX,
    SCHEDULE_INDEX,
    STAGE_BATCH,
    ScheduleQueries,
)
from workers.store.shared_scans import SHARE, SharedScanQueries, Spare, split, unheld
from workers.store.stream import ReadyStream

CLAIM_INDEX = "claim_queue"
CLAIM_KEYS = [("status", 1), ("type", 1), ("priority", 1), ("run_at", 1)]
CLAIM_SORT = [("priority", 1), ("run_at", 1)]
INDEXES = (IndexSpec("jobs", CLAIM_INDEX, tuple(CLAIM_KEYS)),)
# (status, priority, run_at), before `type` joined the index
RETIRED_INDEXES = (IndexSpec("jobs", "claim", (("status", 1), ("priority", 1), ("run_at", 1))),)

_END_OF_TIME = datetime(9999, 12, 31, tzinfo=UTC)

# Errors that say nothing about the document being written: the server is stepping
# down, shutting down, timed out or conflicted. A claim that fails with one of them
# is retried later; it never quarantines a job.
_NOT_ABOUT_A_DOCUMENT = frozenset(
    {
        6, 7, 89, 9001,  # host unreachable / not found, network timeout, socket error
        24, 50, 112, 262,  # lock timeout, max time expired, write conflict, time limit
        91, 11600, 11601, 11602,  # shutting down, interrupted
        189, 10058, 10107, 13435, 13436,  # not (or no longer) primary
    }
)  # fmt: skip
_TRANSIENT_LABELS = ("RetryableWriteError", "TransientTransactionError", "NoWritesPerformed")


class ClaimQueries(SharedScanQueries, ScheduleQueries):
    @translated
    def claim(
        self, token: str, types: list[str], lease: float, limit: int, spare: Spare | None = None
    ) -> list[Document]:
        """Take up to `limit` due ready jobs of `types`, best priority first, under `token`.

        One scan of the claim index for the candidates, then one `update_many`
        by `_id` (filtered on `status: ready` and a due `run_at`, so it is
        atomic per job) and one read-back by `_id` and token. With a `spare`,
        its fresh candidates are tried first and the scan's leftovers kept in
        it. If the write or the read-back fails, ClaimIncomplete carries what
        `recover_claim` needs: jobs already taken are never stranded. Leases
        are set by $$NOW.
        """
        if limit < 1 or not types:
            return []
        now = self.now()
        tried: list[Any] = []
        claimed: list[Document] = []
        held: list[Any] = []  # ids that live spares of other claimers hold
        if spare is not None:
            claimed += self._from_spare(token, spare, now, lease, limit, tried)
            if len(claimed) < limit:
                held = self._share(types, spare, now, max(SHARE, limit - len(claimed)))
                now = self.now()  # it may have waited for a turn: jobs came due meanwhile
                claimed += self._from_spare(token, spare, now, lease, limit - len(claimed), tried)
        if len(claimed) < limit:
            began = time.monotonic()
            wanted = limit - len(claimed)
            candidates = unheld(self._candidates(types, now, wanted, len(held)), held, wanted)
            took = time.monotonic() - began
            if spare is None:
                claimed += self._take_in_turn(
                    token, candidates, now, lease, limit - len(claimed), tried
                )
            else:
                mine, kept, shared = split(candidates, limit - len(claimed))
                self._publish(types, shared, took, mine + kept)  # theirs, while we claim
                spare.keep(kept, scan_seconds=took)
                claimed += self._take_or_interrupt(token, mine, now, lease, tried)
                claimed += self._from_spare(token, spare, now, lease, limit - len(claimed), tried)
        return claimed

    def _take_in_turn(
        self,
        token: str,
        candidates: list[Document],
        now: datetime,
        lease: float,
        limit: int,
        tried: list[Any],
    ) -> list[Document]:
        """Claim from the scan's candidates in queue order until `limit` are taken."""
        claimed: list[Document] = []
        while len(claimed) < limit and (batch := candidates[: limit - len(claimed)]):
            candidates = candidates[len(batch) :]
            ids = [doc["_id"] for doc in batch]
            claimed += self._take_or_interrupt(token, ids, now, lease, tried)
        return claimed

    @translated
    def claim_ids(
        self, token: str, types: list[str], lease: float, ids: list[Any]
    ) -> list[Document]:
        """Take those of `ids` that are still ready, due and of `types`, under `token`: the
        claim of an idle claimer woken by the stream with these ids, which are all that
        became ready since it last looked, so no scan is needed. By `_id`, as `claim`."""
        if not ids or not types:
            return []
        return self._take_or_interrupt(token, ids, self.now(), lease, [], types)

    @translated
    def still_ready(self, ids: list[Any], confirm: frozenset[Any]) -> list[Any]:
        """`ids` less those of `confirm` that are no longer ready: one read by `_id`, so a
        claimer that another process went first for writes nothing when it took them."""
        asked = [job_id for job_id in ids if job_id in confirm]
        found = self.jobs.find({"_id": {"$in": asked}, "status": READY}, {"_id": 1})
        left = {doc["_id"] for doc in found}
        return [job_id for job_id in ids if job_id not in confirm or job_id in left]

    @translated
    def claim_now(self, token: str, job_id: Any, lease: float) -> list[Document]:
        """Take one ready or scheduled job by `_id` whatever its `run_at` (inline mode runs a
        push, and its retries, at once)."""
        return self._take_or_interrupt(token, [job_id], _END_OF_TIME, lease, [], anytime=True)

    def _from_spare(
        self, token: str, spare: Spare, now: datetime, lease: float, limit: int, tried: list[Any]
    ) -> list[Document]:
        claimed: list[Document] = []
        while len(claimed) < limit and (ids := spare.take(limit - len(claimed))):
            got = self._take_or_interrupt(token, ids, now, lease, tried)
            spare.taken(len(got))
            claimed += got
        return claimed

    def _take_or_interrupt(
        self,
        token: str,
        ids: list[Any],
        now: datetime,
        lease: float,
        tried: list[Any],
        types: list[str] | None = None,
        *,
        anytime: bool = False,
    ) -> list[Document]:
        if not ids:
            return []
        tried += ids
        try:
            return self._take(token, ids, now, lease, types, anytime)
        except PyMongoError as exc:
            raise ClaimIncomplete(token, list(tried), exc) from exc

    @translated
    def recover_claim(self, token: str, ids: list[Any]) -> list[Document]:
        """The jobs of an interrupted claim that are held under `token` (by `_id`)."""
        return self._held_under(token, ids)

    def _held_under(self, token: str, ids: list[Any]) -> list[Document]:
        return _in_order(list(self.jobs.find(_held_by(ids, token))), ids)

    def _candidates(
        self, types: list[str], now: datetime, wanted: int, held: int = 0
    ) -> list[Document]:
        """The first candidates in queue order (ServerProfile.scan_size); over more types
        than one sorted scan may explode into (`type_runs`), the first of each run's, in
        queue order."""
        limit = self.profile.scan_size(wanted, held)
        runs = type_runs(types)
        found = [doc for run in runs for doc in self._candidates_of(run, now, limit)]
        if len(runs) > 1:
            found.sort(key=lambda doc: _queue_place(doc, now))
        return found[:limit]

    def _candidates_of(self, types: list[str], now: datetime, limit: int) -> list[Document]:
        command = self._candidates_command(types, now, limit)
        found = self.jobs.find(
            command["filter"],
            command["projection"],
            sort=CLAIM_SORT,
            hint=self.scan_hint(CLAIM_INDEX),
            limit=limit,
            batch_size=limit,  # one reply, no getMore
        )
        return list(found)

    def _candidates_command(self, types: list[str], now: datetime, limit: int) -> Document:
        """The candidate scan as a find command: what a claim runs, and what the explain
        tests explain (hinted with the claim index, whatever the profile)."""
        return {
            "filter": self._due_query(types, now),
            "projection": {"_id": 1, "priority": 1, "run_at": 1},
            "sort": dict(CLAIM_SORT),
            "hint": self.index(CLAIM_INDEX),
            "limit": limit,
        }

    def _take(
        self,
        token: str,
        ids: list[Any],
        now: datetime,
        lease: float,
        types: list[str] | None,
        anytime: bool = False,
    ) -> list[Document]:
        """Claim whichever of `ids` are still ready and due (and of `types`, when the ids did
        not come from a scan of them); read them back in `ids` order."""
        update = [{"$set": _claimed(token, lease)}]
        try:
            result = self.jobs.update_many(_still_ready(ids, now, types, anytime), update)
            taken = result.matched_count
        except OperationFailure as exc:
            if not _about_a_document(exc):
                raise
            taken = self._take_each(ids, now, update)
        if taken == 0:
            return []
        return self._held_under(token, ids)

    def _take_each(self, ids: list[Any], now: datetime, update: list[Document]) -> int:
        """The batch write failed on a document: claim one by one, quarantining only a
        document whose own write fails twice with the same error while it is still ready."""
        taken = 0
        for job_id in ids:
            try:
                taken += self.jobs.update_one(_still_ready([job_id], now), update).matched_count
            except OperationFailure as exc:
                if not _about_a_document(exc):
                    raise
                self._quarantine_if_proven(job_id, now, update, exc)
        return taken

    def _quarantine_if_proven(
        self, job_id: Any, now: datetime, update: list[Document], first: OperationFailure
    ) -> None:
        try:
            self.jobs.update_one(_still_ready([job_id], now), update)
        except OperationFailure as again:
            if again.code != first.code or not _about_a_document(again):
                raise
        else:
            return  # it went through this time: not the document's fault
        stamp = self.now()
        error = error_document(
            f"the server could not claim this job document: {first}",
            "workers.errors.StoreError",
            attempt=None,
            node=None,
        )
        failed = {"status": FAILED, "error": error, **self._finished_at(FAILED, stamp)}
        # Plain $sets (no expression over the document's fields), each conditional on the
        # job being ready still: an app's unique key is freed in the write that fails the
        # job, never on its own (a job paused meanwhile keeps it); cron's tick key stays.
        freed = self.jobs.update_one(
            {"_id": job_id, "status": READY, "unique": {"$type": "string"}},
            {"$set": {**failed, "unique_key": None}},
        )
        if not freed.matched_count:
            self.jobs.update_one(
                {"_id": job_id, "status": READY, "unique": {"$not": {"$type": "string"}}},
                {"$set": failed},
            )

    def _finished_at(self, status: str, stamp: datetime) -> Document:
        """`finished` for a plain (non-pipeline) write, stamped by `now()`."""
        keep = self.retention.get(status)
        expire = stamp + timedelta(seconds=keep) if keep else None
        return {"finished": stamp, "updated": stamp, "expire_at": expire}

    def ready_stream(self) -> ReadyStream:
        """A change stream of jobs becoming ready, on its own connection (see stream.py)."""
        return ReadyStream(self.url, self.db.name, self.jobs.name, self.timeout)

    @staticmethod
    def _due_query(types: list[str], now: datetime) -> Document:
        return {"status": READY, "type": {"$in": types}, "run_at": {"$lte": now}}

    # -- explain, for the index tests -----------------------------------------------

    def hot_path_queries(
        self, types: list[str], claim_limit: int = 10
    ) -> dict[str, tuple[Document, Document]]:
        """Every query of the claim path as (find command, the server's plan for it); the
        candidate scan as a claim of `claim_limit` (workers.count's default) runs it.

        Updates are explained as a find with the same filter: the plan is the same,
        and not every server explains an update command."""
        now = self.now()
        ids = ["explain-a", "explain-b"]
        scan = self.profile.scan_size(claim_limit)
        commands: dict[str, Document] = {
            "claim candidates": self._candidates_command(types, now, scan),
            "claim write": {"filter": _still_ready(ids, now)},
            "claim by woken ids": {"filter": _still_ready(ids, now, types)},
            "claim read-back": {"filter": _held_by(ids, "token")},
            "next ready": {
                "filter": self._next_ready_query(types, now),
                "sort": {"run_at": 1},
                "hint": self.index(READY_TIMES_INDEX),
                "limit": 1,
            },
            "next due": {
                "filter": self._next_due_query(now),
                "sort": {"run_at": 1},
                "hint": self.index(SCHEDULE_INDEX),
                "limit": 1,
            },
            "stage due": {
                "filter": self._stage_query(now),
                "hint": self.index(SCHEDULE_INDEX),
                "limit": STAGE_BATCH,
            },
        }
        return {name: self.explain_find(command) for name, command in commands.items()}

    @translated
    def explain_find(
        self, command: Document, verbosity: str = "queryPlanner"
    ) -> tuple[Document, Document]:
        find = {"find": self.jobs.name, **command}
        return find, self._explain(find, verbosity)

    @translated
    def claim_keys_examined(self, types: list[str]) -> int:
        """How many index keys the candidate scan examines, for the test that a backlog of
        other nodes' types is not scanned."""
        return int(self.claim_scan_stats(types, 4)["totalKeysExamined"])

    @translated
    def claim_scan_stats(self, types: list[str], limit: int) -> Document:
        """The candidate scan as MongoDB runs it (hinted), explained with executionStats."""
        command = {"find": self.jobs.name, **self._candidates_command(types, self.now(), limit)}
        stats: Document = self._explain(command, "executionStats")["executionStats"]
        return stats


def _queue_place(doc: Document, now: datetime) -> tuple[float, datetime]:
    """A candidate's place in CLAIM_SORT order (priority, then due time)."""
    priority = doc.get("priority")
    run_at = doc.get("run_at")
    return (
        float(priority) if isinstance(priority, int | float) else 0.0,
        run_at if isinstance(run_at, datetime) else now,
    )


def _still_ready(
    ids: list[Any], now: datetime, types: list[str] | None = None, anytime: bool = False
) -> Document:
    status: Any = {"$in": [READY, SCHEDULED]} if anytime else READY
    ready = {"_id": {"$in": ids}, "status": status, "run_at": {"$lte": now}}
    return ready if types is None else {**ready, "type": {"$in": types}}


def _held_by(ids: list[Any], token: str) -> Document:
    return {"_id": {"$in": ids}, "status": RUNNING, "lease_owner": token}


def _claimed(token: str, lease: float) -> Document:
    return {
        "status": RUNNING,
        "lease_owner": token,
        "lease_expires": after_now(lease),
        "attempts": {"$add": [number("$attempts"), 1]},
        "started": "$$NOW",
        "updated": "$$NOW",
    }


def _about_a_document(exc: OperationFailure) -> bool:
    """Could this error be caused by the document written (and not the server's state)?"""
    if exc.code in _NOT_ABOUT_A_DOCUMENT or exc.code is None:
        return False
    return not any(exc.has_error_label(label) for label in _TRANSIENT_LABELS)


def _in_order(docs: list[Document], ids: list[Any]) -> list[Document]:
    rank = {job_id: position for position, job_id in enumerate(ids)}
    return sorted(docs, key=lambda doc: rank.get(doc["_id"], len(rank)))
