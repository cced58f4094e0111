"""The claim path of the jobs collection: batch claims, their recovery, and the next due time.

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
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pymongo.errors import OperationFailure, PyMongoError

from workers.errors import ClaimIncomplete
from workers.record import FAILED, READY, RUNNING, error_document
from workers.store.base import Connection, Document, after_now, number, translated
from workers.store.stream import ReadyStream

CLAIM_INDEX = "claim_queue"
CLAIM_KEYS = [("status", 1), ("type", 1), ("priority", 1), ("run_at", 1)]
CLAIM_SORT = [("priority", 1), ("run_at", 1)]
LEGACY_CLAIM_INDEX = "claim"  # (status, priority, run_at), before `type` joined the index
# Candidates read per slot: a claimer that loses the head to another process takes the
# next candidates with one more write by _id, instead of paying for another scan.
_SPREAD = 32
_MAX_CANDIDATES = 256
# How long the rest of a scan may be claimed from without scanning again. A job pushed
# meanwhile with a better priority waits at most this long behind the older candidates.
SPARE_SECONDS = 1.0
_SPARE_MISSES = 2  # picks in a row that found every job taken: the spare is stale
_CONTESTED_SECONDS = 5.0  # after a lost pick, pick at random (not in queue order) this long

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


@dataclass
class Spare:
    """The candidates a claimer's last scan found and did not try yet: its next claim tries
    them first, by `_id`, and so pays for one scan per several batches, not one per batch
    (on a server whose scan reads every ready job, the scan is most of a claim's cost)."""

    ids: list[Any] = field(default_factory=list)
    until: float = 0.0
    misses: int = 0
    contested_until: float = 0.0

    def take(self, count: int) -> list[Any]:
        """The next `count`, in queue order; once another claimer has been met here, from a
        random place instead, where the other's picks rarely land."""
        if time.monotonic() > self.until or self.misses >= _SPARE_MISSES:
            self.ids = []
        contested = time.monotonic() < self.contested_until
        start = random.randrange(max(1, len(self.ids) - count + 1)) if contested else 0
        taken = self.ids[start : start + count]
        del self.ids[start : start + count]
        return taken

    def taken(self, picked: int, got: int) -> None:
        """How a pick went: a short one means another claimer works these jobs too."""
        if got < picked:
            self.contested_until = time.monotonic() + _CONTESTED_SECONDS
        self.misses = 0 if got else self.misses + 1

    def keep(self, ids: list[Any]) -> None:
        self.ids, self.until, self.misses = ids, time.monotonic() + SPARE_SECONDS, 0


class ClaimQueries(Connection):
    def ensure_claim_indexes(self) -> None:
        self.jobs.create_index(CLAIM_KEYS, name=CLAIM_INDEX)

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
        while spare is not None and len(claimed) < limit:
            if not (ids := spare.take(limit - len(claimed))):
                break
            got = self._take_or_interrupt(token, ids, now, lease, tried)
            spare.taken(len(ids), len(got))
            claimed += got
        if len(claimed) < limit:
            candidates = self._candidates(types, now, limit)
            while len(claimed) < limit and (batch := candidates[: limit - len(claimed)]):
                candidates = candidates[len(batch) :]
                ids = [doc["_id"] for doc in batch]
                claimed += self._take_or_interrupt(token, ids, now, lease, tried)
            if spare is not None:
                spare.keep(_same_priority(candidates, claimed))
        return claimed

    def _take_or_interrupt(
        self, token: str, ids: list[Any], now: datetime, lease: float, tried: list[Any]
    ) -> list[Document]:
        tried += ids
        try:
            return self._take(token, ids, now, lease)
        except PyMongoError as exc:
            raise ClaimIncomplete(token, list(tried), exc) from exc

    @translated
    def recover_claim(self, token: str, ids: list[Any]) -> list[Document]:
        """The jobs of an interrupted claim that are held under `token` (by `_id`)."""
        return self._held_under(token, ids)

    def _held_under(self, token: str, ids: list[Any]) -> list[Document]:
        return _in_order(list(self.jobs.find(_held_by(ids, token))), ids)

    def _candidates(self, types: list[str], now: datetime, limit: int) -> list[Document]:
        found = self.jobs.find(
            self._due_query(types, now),
            {"_id": 1, "priority": 1},
            sort=CLAIM_SORT,
            hint=CLAIM_INDEX,
            limit=min(limit * _SPREAD, _MAX_CANDIDATES),
        )
        return list(found)

    def _take(self, token: str, ids: list[Any], now: datetime, lease: float) -> list[Document]:
        """Claim whichever of `ids` are still ready and due; read them back in `ids` order."""
        update = [{"$set": _claimed(token, lease)}]
        try:
            result = self.jobs.update_many(_still_ready(ids, now), update)
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
        self.jobs.update_one(
            {"_id": job_id, "status": READY},  # a plain $set: no expression over its fields
            {"$set": {"status": FAILED, "error": error, "finished": stamp, "updated": stamp}},
        )

    def ready_stream(self) -> ReadyStream:
        """A change stream of jobs becoming ready, on its own connection (see stream.py)."""
        return ReadyStream(self.url, self.db.name, self.jobs.name, self.timeout)

    @translated
    def next_due(self, types: list[str]) -> datetime | None:
        """When the earliest ready job of `types` is due (None: there is none).

        On the claim index (IXSCAN on the status and type equalities); read
        when a claim came back short, so the claimer can sleep until then.
        """
        if not types:
            return None
        found = self.jobs.find(
            self._next_due_query(types), {"run_at": 1}, sort=[("run_at", 1)], hint=CLAIM_INDEX
        ).limit(1)
        for doc in found:
            run_at = doc.get("run_at")
            return run_at if isinstance(run_at, datetime) else None
        return None

    @staticmethod
    def _due_query(types: list[str], now: datetime) -> Document:
        return {"status": READY, "type": {"$in": types}, "run_at": {"$lte": now}}

    @staticmethod
    def _next_due_query(types: list[str]) -> Document:
        return {"status": READY, "type": {"$in": types}}

    # -- explain, for the index tests -----------------------------------------------

    def hot_path_queries(self, types: list[str]) -> dict[str, tuple[Document, Document]]:
        """Every query of the claim path as (find command, the server's plan for it).

        Updates are explained as a find with the same filter: the plan is the same,
        and not every server explains an update command."""
        now = self.now()
        ids = ["explain-a", "explain-b"]
        by_claim_index = {"sort": dict(CLAIM_SORT), "hint": CLAIM_INDEX, "limit": 4}
        commands: dict[str, Document] = {
            "claim candidates": {"filter": self._due_query(types, now), **by_claim_index},
            "claim write": {"filter": _still_ready(ids, now)},
            "claim read-back": {"filter": _held_by(ids, "token")},
            "next due": {
                "filter": self._next_due_query(types),
                "sort": {"run_at": 1},
                "hint": CLAIM_INDEX,
                "limit": 1,
            },
        }
        return {name: self.explain_find(command) for name, command in commands.items()}

    @translated
    def explain_find(self, command: Document) -> tuple[Document, Document]:
        find = {"find": self.jobs.name, **command}
        return find, self._explain(find)

    @translated
    def claim_keys_examined(self, types: list[str]) -> int:
        """How many index keys the candidate scan examines (executionStats), for the test
        that a backlog of other nodes' types is not scanned."""
        command = {
            "find": self.jobs.name,
            "filter": self._due_query(types, self.now()),
            "projection": {"_id": 1},
            "sort": dict(CLAIM_SORT),
            "hint": CLAIM_INDEX,
            "limit": 4,
        }
        stats = self._explain(command, "executionStats")["executionStats"]
        return int(stats["totalKeysExamined"])


def _still_ready(ids: list[Any], now: datetime) -> Document:
    return {"_id": {"$in": ids}, "status": READY, "run_at": {"$lte": now}}


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


def _same_priority(candidates: list[Document], claimed: list[Document]) -> list[Any]:
    """The candidates a spare may keep: those of the priority just claimed. Picking among
    equals bends only the run_at order; a worse priority never jumps the queue by a spare
    (a better one pushed after the scan waits at most SPARE_SECONDS)."""
    if not claimed:
        return []
    priority = claimed[-1].get("priority")
    return [doc["_id"] for doc in candidates if doc.get("priority") == priority]


def _in_order(docs: list[Document], ids: list[Any]) -> list[Document]:
    rank = {job_id: position for position, job_id in enumerate(ids)}
    return sorted(docs, key=lambda doc: rank.get(doc["_id"], len(rank)))
