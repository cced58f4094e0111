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

from datetime import datetime
from typing import Any

from pymongo.errors import OperationFailure, PyMongoError

from workers.errors import ClaimIncomplete
from workers.record import FAILED, READY, RUNNING
from workers.store.base import Connection, Document, after_now, number, translated
from workers.store.stream import ReadyStream

CLAIM_INDEX = "claim_queue"
CLAIM_KEYS = [("status", 1), ("type", 1), ("priority", 1), ("run_at", 1)]
CLAIM_SORT = [("priority", 1), ("run_at", 1)]
LEGACY_CLAIM_INDEX = "claim"  # (status, priority, run_at), before `type` joined the index
# Candidates read per slot: a claimer that loses the head to another process takes the
# next candidates with one more write by _id, instead of paying for another scan.
_SPREAD = 4
_MAX_CANDIDATES = 256

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


class ClaimQueries(Connection):
    def ensure_claim_indexes(self) -> None:
        self.jobs.create_index(CLAIM_KEYS, name=CLAIM_INDEX)

    @translated
    def claim(self, token: str, types: list[str], lease: float, limit: int) -> list[Document]:
        """Take up to `limit` due ready jobs of `types`, best priority first, under `token`.

        One scan of the claim index for the candidates, then one `update_many`
        by `_id` (filtered on `status: ready` and a due `run_at`, so it is
        atomic per job) and one read-back by `_id` and token. If the write or
        the read-back fails, ClaimIncomplete carries what `recover_claim` needs:
        jobs already taken are never stranded. Leases are set by $$NOW.
        """
        if limit < 1 or not types:
            return []
        now = self.now()
        candidates = self._candidates(types, now, limit)
        claimed: list[Document] = []
        tried = 0
        while len(claimed) < limit and tried < len(candidates):
            batch = candidates[tried : tried + limit - len(claimed)]
            tried += len(batch)
            try:
                claimed += self._take(token, batch, now, lease)
            except PyMongoError as exc:
                raise ClaimIncomplete(token, candidates[:tried], exc) from exc
        return claimed

    @translated
    def recover_claim(self, token: str, ids: list[Any]) -> list[Document]:
        """The jobs of an interrupted claim that are held under `token` (by `_id`)."""
        return self._held_under(token, ids)

    def _held_under(self, token: str, ids: list[Any]) -> list[Document]:
        return _in_order(list(self.jobs.find(_held_by(ids, token))), ids)

    def _candidates(self, types: list[str], now: datetime, limit: int) -> list[Any]:
        found = self.jobs.find(
            self._due_query(types, now),
            {"_id": 1},
            sort=CLAIM_SORT,
            hint=CLAIM_INDEX,
            limit=min(limit * _SPREAD, _MAX_CANDIDATES),
        )
        return [doc["_id"] for doc in found]

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
        error = {
            "message": f"the server could not claim this job document: {first}",
            "type": "workers.errors.StoreError",
            "traceback": None,
        }
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


def _in_order(docs: list[Document], ids: list[Any]) -> list[Document]:
    rank = {job_id: position for position, job_id in enumerate(ids)}
    return sorted(docs, key=lambda doc: rank.get(doc["_id"], len(rank)))
