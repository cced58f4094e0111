"""The jobs collection: push, claim, finish, hand back, renew and rescue.

Every state change after the claim is one conditional update whose filter
holds `status: running` and `lease_owner`, so a process that lost a job can
never overwrite the state its new owner writes, and two nodes can never both
finish, fail or retry one job. The update expressions tolerate damaged
documents (a counter that is not a number, a log that is not an array), so a
bad document cannot make the write that resolves it fail.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import timedelta
from typing import Any

from pymongo import ReturnDocument
from pymongo.errors import DocumentTooLarge, DuplicateKeyError, OperationFailure

from workers.errors import PushError
from workers.record import COMPLETED, FAILED, READY, RUNNING
from workers.store.base import (
    Connection,
    Document,
    after_now,
    appended,
    before_now,
    number,
    translated,
)

CLAIM_INDEX = "claim"
CLAIM_KEYS = [("status", 1), ("priority", 1), ("run_at", 1)]
CLAIM_SORT = [("priority", 1), ("run_at", 1)]
RESCUE_INDEX = "rescue"
UNIQUE_INDEX = "unique_key"
RESCUE_KEYS = [("status", 1), ("lease_expires", 1)]
_RESCUE_BATCH = 500
_CLOCK_MARGIN = timedelta(seconds=1)
LOST_MESSAGE = "lost: worker died"


class JobQueries(Connection):
    def ensure_job_indexes(self) -> None:
        self.jobs.create_index(CLAIM_KEYS, name=CLAIM_INDEX)
        self.jobs.create_index(RESCUE_KEYS, name=RESCUE_INDEX)
        # one job per cron tick; jobs without a key are not indexed
        self.jobs.create_index(
            "unique_key",
            name=UNIQUE_INDEX,
            unique=True,
            partialFilterExpression={"unique_key": {"$type": "string"}},
        )

    # -- push --------------------------------------------------------------------

    @translated
    def insert_job(self, document: Document) -> str:
        """One insert: the job exists whole or not at all."""
        try:
            self.jobs.insert_one(document)
        except DuplicateKeyError as exc:
            raise PushError(f"a job with this unique key already exists: {exc}") from exc
        except DocumentTooLarge as exc:
            raise PushError(f"the job document is too large for MongoDB: {exc}") from exc
        return str(document["_id"])

    # -- claim -------------------------------------------------------------------

    @translated
    def claim(self, owner: str, types: Iterable[str], lease: float, limit: int) -> list[Document]:
        """Take up to `limit` ready, due jobs of `types`, best priority first.

        Each take is one find_one_and_update on the `claim` index (equality on
        status, then the sort keys, then the run_at range): atomic per job, so
        two claimers never take the same job. The lease is computed by the
        server from $$NOW.
        """
        claimed: list[Document] = []
        query = self._claim_query(list(types))
        update = [{"$set": self._claim_update(owner, lease)}]
        while len(claimed) < limit:
            try:
                doc = self.jobs.find_one_and_update(
                    query,
                    update,
                    sort=CLAIM_SORT,
                    hint=CLAIM_INDEX,
                    return_document=ReturnDocument.AFTER,
                )
            except OperationFailure as exc:
                if self._quarantine_head(query, exc):
                    continue
                raise
            if doc is None:
                break
            claimed.append(doc)
        return claimed

    def _quarantine_head(self, query: Document, exc: OperationFailure) -> bool:
        """A document the server cannot claim would block the queue head forever: fail it
        with a plain $set (no expressions over its fields) and say why on the job."""
        head = self.jobs.find_one(query, {"_id": 1}, sort=CLAIM_SORT, hint=CLAIM_INDEX)
        if head is None:
            return False
        now = self.now()
        error = {
            "message": f"the server could not claim this job document: {exc}",
            "type": "workers.errors.StoreError",
            "traceback": None,
        }
        result = self.jobs.update_one(
            {"_id": head["_id"], "status": READY},
            {"$set": {"status": FAILED, "error": error, "finished": now, "updated": now}},
        )
        return result.matched_count == 1

    def _claim_query(self, types: list[str]) -> Document:
        return {"status": READY, "run_at": {"$lte": self.now()}, "type": {"$in": types}}

    @staticmethod
    def _claim_update(owner: str, lease: float) -> Document:
        return {
            "status": RUNNING,
            "lease_owner": owner,
            "lease_expires": after_now(lease),
            "attempts": {"$add": [number("$attempts"), 1]},
            "started": "$$NOW",
            "updated": "$$NOW",
        }

    @translated
    def explain_claim(self, types: list[str]) -> Document:
        """The server's plan for the claim, for the index test."""
        return self._explain(
            {
                "findAndModify": self.jobs.name,
                "query": self._claim_query(types),
                "sort": dict(CLAIM_SORT),
                "update": [{"$set": self._claim_update("explain", 1)}],
                "hint": CLAIM_INDEX,
            }
        )

    def _explain(self, command: Document) -> Document:
        return self.db.command("explain", command, verbosity="queryPlanner")

    # -- finish ------------------------------------------------------------------

    @translated
    def complete(self, job_id: str, owner: str, result: Any) -> bool:
        """Mark a running job completed; refused unless `owner` still holds it.

        The job's log records which attempt completed it, and where, in the same write.
        """
        message = {"$concat": ["attempt ", {"$toString": number("$attempts")},
                               f" completed by {owner}"]}  # fmt: skip
        entry = {"level": "info", "message": message}
        changes = {
            "status": COMPLETED,
            "result": {"$literal": result},
            "finished": "$$NOW",
            "log": appended("$log", entry, literal=False),
        }
        return self._owned_update(job_id, owner, changes, release=True)

    @translated
    def fail(self, job_id: str, owner: str, error: Document, retry_in: float | None) -> bool:
        """Record a failed attempt: back to ready after `retry_in` seconds, or failed for good."""
        entry = {
            "level": "error",
            "message": f"attempt {error.get('attempt')} failed: "
            f"{error.get('type')}: {error.get('message')}",
        }
        changes: Document = {"error": {"$literal": error}, "log": appended("$log", entry)}
        if retry_in is None:
            changes.update(status=FAILED, finished="$$NOW")
        else:
            changes.update(status=READY, run_at=after_now(retry_in))
        return self._owned_update(job_id, owner, changes, release=True)

    @translated
    def release(self, job_ids: list[str], owner: str, reason: str) -> int:
        """Hand jobs back, claimable at once; the interrupted attempt is not counted."""
        if not job_ids:
            return 0
        result = self.jobs.update_many(
            {"_id": {"$in": job_ids}, "status": RUNNING, "lease_owner": owner},
            [
                {
                    "$set": {
                        "status": READY,
                        "lease_owner": None,
                        "lease_expires": None,
                        "run_at": "$$NOW",
                        "attempts": {"$max": [0, {"$subtract": [number("$attempts"), 1]}]},
                        "log": appended("$log", {"level": "warning", "message": reason}),
                        "updated": "$$NOW",
                    }
                }
            ],
        )
        return result.matched_count

    @translated
    def set_progress(self, job_id: str, owner: str, progress: Document) -> bool:
        return self._owned_update(job_id, owner, {"progress": {"$literal": progress}})

    @translated
    def add_log(self, job_id: str, owner: str, entry: Document) -> bool:
        """Append to the job's log, stamped with the server's clock."""
        return self._owned_update(job_id, owner, {"log": appended("$log", entry)})

    def _owned_update(
        self, job_id: str, owner: str, changes: Document, release: bool = False
    ) -> bool:
        """One conditional update: applies only while the job is running under `owner`.

        Matched, not modified, decides: rewriting an equal value is still ours.
        """
        if release:
            changes = {**changes, "lease_owner": None, "lease_expires": None}
        result = self.jobs.update_one(
            {"_id": job_id, "status": RUNNING, "lease_owner": owner},
            [{"$set": {**changes, "updated": "$$NOW"}}],
        )
        return result.matched_count == 1

    # -- leases --------------------------------------------------------------------

    @translated
    def renew_leases(self, owner: str, job_ids: list[str], lease: float) -> list[str]:
        """Extend the leases of the jobs `owner` holds, in one update; returns the ids it lost."""
        if not job_ids:
            return []
        held = {"_id": {"$in": job_ids}, "status": RUNNING, "lease_owner": owner}
        result = self.jobs.update_many(held, [{"$set": {"lease_expires": after_now(lease)}}])
        if result.matched_count == len(job_ids):
            return []
        still = {doc["_id"] for doc in self.jobs.find(held, {"_id": 1})}
        return [job_id for job_id in job_ids if job_id not in still]

    @translated
    def rescue_expired(self) -> list[Document]:
        """Jobs whose lease expired go back to ready (the attempt counts) or, out of retries,
        to failed with "lost: worker died". Returns what was rescued.

        The literal bound keeps it on the `rescue` index; the $$NOW test makes the
        server's clock the judge, so a node whose clock runs ahead cannot steal a
        live lease. The update re-checks the expiry, so two rescuers never both
        rescue one job.
        """
        expired = self._expired_query()
        fields = {"_id": 1, "type": 1, "lease_owner": 1, "attempts": 1}
        found = list(self.jobs.find(expired, fields, hint=RESCUE_INDEX).limit(_RESCUE_BATCH))
        if found:
            ids = [doc["_id"] for doc in found]
            self.jobs.update_many({"_id": {"$in": ids}, **expired}, [{"$set": _rescued()}])
        return found

    def _expired_query(self) -> Document:
        return {
            "status": RUNNING,
            "lease_expires": {"$lt": self.now() + _CLOCK_MARGIN},
            "$expr": before_now("$lease_expires"),
        }

    @translated
    def explain_rescue(self) -> Document:
        query = self._expired_query()
        return self._explain({"find": self.jobs.name, "filter": query, "hint": RESCUE_INDEX})

    # -- reading -----------------------------------------------------------------------

    @translated
    def get_job(self, job_id: str) -> Document | None:
        return self.jobs.find_one({"_id": job_id})

    @translated
    def count_by_status(self) -> dict[str, int]:
        pipeline = [{"$group": {"_id": "$status", "n": {"$sum": 1}}}]
        return {row["_id"]: row["n"] for row in self.jobs.aggregate(pipeline)}


def _rescued() -> Document:
    """The pipeline stage of a rescue: retry if attempts remain, else fail as lost."""
    retry = {"$lte": [number("$attempts"), number("$retries")]}
    owner = {"$ifNull": [{"$toString": "$lease_owner"}, "?"]}
    message = {
        "$concat": [
            "lost: worker ",
            owner,
            " stopped renewing its lease; attempt ",
            {"$toString": number("$attempts")},
            {"$cond": [retry, " will be retried", " was the last"]},
        ]
    }
    return {
        "status": {"$cond": [retry, READY, FAILED]},
        "run_at": {"$cond": [retry, "$$NOW", "$run_at"]},
        "finished": {"$cond": [retry, None, "$$NOW"]},
        "error": {
            "message": LOST_MESSAGE,
            "type": "workers.errors.LeaseExpired",
            "attempt": "$attempts",
            "node": "$lease_owner",
            "traceback": None,
        },
        "log": appended("$log", {"level": "error", "message": message}, literal=False),
        "lease_owner": None,
        "lease_expires": None,
        "updated": "$$NOW",
    }
