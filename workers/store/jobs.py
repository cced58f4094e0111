"""The jobs collection: push, finish, hand back, renew and rescue (the claim is in claims.py).

Every state change after the claim is one conditional update whose filter
holds `status: running` and `lease_owner`, the claim token of the attempt, so
an attempt that lost its job (its lease lapsed, the job was rescued or claimed
again) can never overwrite the state a newer attempt writes, and two nodes can
never both finish, fail or retry one job. The update expressions tolerate damaged
documents (a counter that is not a number, a log that is not an array), so a
bad document cannot make the write that resolves it fail.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import bson
from pymongo import UpdateMany
from pymongo.errors import (
    BulkWriteError,
    DocumentTooLarge,
    DuplicateKeyError,
    OperationFailure,
)

from workers.errors import DatabaseUnavailable, PushError, WorkersError
from workers.record import (
    COMPLETED,
    FAILED,
    FOLLOWUPS,
    HORIZON,
    READY,
    RUNNING,
    SCHEDULED,
    error_document,
)
from workers.store.base import (
    Document,
    after_now,
    appended,
    before_now,
    hashable,
    new_id,
    number,
    translated,
)
from workers.store.dependencies import UNIQUE_KEY_INDEX
from workers.store.indexes import IndexSpec
from workers.store.lifecycle import LifecycleQueries

RESCUE_INDEX = "running_leases"
RESCUE_KEYS = [("lease_expires", 1)]
# the running jobs by lease expiry, for the rescue: partial on running, so a job enters it
# when claimed and leaves it when it ends (2 entries a life), where (status, lease_expires)
# over every job took 5 (a key at the push, moved by the claim and by the end)
INDEXES = (IndexSpec("jobs", RESCUE_INDEX, tuple(RESCUE_KEYS), partial={"status": RUNNING}),)
RETIRED_INDEXES = (IndexSpec("jobs", "rescue", (("status", 1), ("lease_expires", 1))),)
_RESCUE_BATCH = 500
_CLOCK_MARGIN = timedelta(seconds=1)
_SHARED_RESULT_LIMIT = 64 * 1024
LOST_MESSAGE = "lost: worker died"
UNIQUE_INDEX = UNIQUE_KEY_INDEX  # cron's name for the one unique index (dependencies.py)


class JobQueries(LifecycleQueries):
    # -- push --------------------------------------------------------------------

    @translated
    def insert_unless_duplicate(self, document: Document) -> str | None:
        """Insert a job; None if the unique index on `unique_key` already holds its key (a
        cron tick that another leader fired already)."""
        try:
            self.insert_encoded(document)
        except DuplicateKeyError:
            return None
        return str(document["_id"])

    @translated
    def has_unique_index(self) -> bool:
        """Is the unique index on `unique_key` there, unique? Cron refuses to lead without it:
        it is what makes a tick fire once."""
        found = self.jobs.index_information().get(self.index(UNIQUE_INDEX))
        return bool(found and found.get("unique") and found.get("key") == [("unique_key", 1)])

    @translated
    def insert_jobs(self, documents: list[Document]) -> list[str]:
        """One unordered bulk insert; PushError lists the jobs the server refused, by position."""
        if not documents:
            return []
        try:
            self.jobs.insert_many(documents, ordered=False)
        except BulkWriteError as exc:
            refused = [
                f"#{error['index']}: {error.get('errmsg', 'refused')}"
                for error in exc.details.get("writeErrors", [])
            ]
            written = exc.details.get("nInserted", 0)
            raise PushError(
                f"the server refused {len(refused)} of {len(documents)} jobs "
                f"({written} were written): {'; '.join(refused)}"
            ) from exc
        except DocumentTooLarge as exc:
            raise PushError(f"a job document is too large for MongoDB: {exc}") from exc
        return [str(document["_id"]) for document in documents]

    # -- finish ------------------------------------------------------------------

    @translated
    def complete(self, job_id: str, owner: str, result: Any) -> bool:
        """Mark a running job completed; refused unless `owner` still holds it.

        The job's log records which attempt completed it, and where, in the same write.
        A job with follow-ups (dependents, a repeat) has them settled next.
        """
        return self._finish(job_id, owner, self._completed(owner, {"$literal": result}))

    @translated
    def complete_many(self, done: Sequence[Completion]) -> list[bool | WorkersError]:
        """Complete several running jobs, in one request when they can share it. The answer
        for each, in order: True (written), False (no longer held under its token) or the
        error the server refused that job's write with. What the shared write does not
        take (a job with follow-ups, a large result, one no longer held, one the server
        refused) goes through `complete` alone, which settles follow-ups and refuses what
        is not ours. An outage raises DatabaseUnavailable: a retry finds what was written
        by its token."""
        shared = [one for one in done if hashable(one.job_id) and not _large(one.result)]
        written = self._complete_together(shared) if shared else set()
        together = {id(one) for one in shared}
        return [
            True if id(one) in together and (one.job_id, one.token) in written
            else self._complete_alone(one)
            for one in done
        ]  # fmt: skip

    def _complete_alone(self, one: Completion) -> bool | WorkersError:
        try:
            return self.complete(one.job_id, one.token, one.result)
        except DatabaseUnavailable:
            raise
        except WorkersError as exc:
            return exc

    def _complete_together(self, done: list[Completion]) -> set[tuple[Any, Any]]:
        """One `update_many` by `_id` per claim token, all in one request on the `_id` index,
        each conditional on the token as `complete` is, and only for jobs without
        follow-ups. Returns the (id, token) pairs written: all of them when all matched,
        else those read back with their token in `finished_by` (tokens are unique per
        claim: exact), also after the server refused some writes (the others apply)."""
        groups: dict[str, list[Completion]] = {}
        for one in done:
            groups.setdefault(one.token, []).append(one)
        updates = [
            UpdateMany(
                _held_together(token, group), [{"$set": self._completed_together(token, group)}]
            )
            for token, group in groups.items()
        ]
        with contextlib.suppress(BulkWriteError):
            if self.jobs.bulk_write(updates, ordered=False).matched_count == len(done):
                return {(one.job_id, one.token) for one in done}
        found = self.jobs.find({"_id": {"$in": [one.job_id for one in done]}}, {"finished_by": 1})
        return {(doc["_id"], doc.get("finished_by")) for doc in found}

    def _completed_together(self, token: str, group: list[Completion]) -> Document:
        changes = {**self._completed(token, _results_by_id(group)), "finished_by": token}
        return {**_released(changes), "updated": "$$NOW"}

    def _completed(self, owner: str, result: Any) -> Document:
        """The changes that complete a job held under `owner`, `result` an expression."""
        message = {"$concat": ["attempt ", {"$toString": number("$attempts")},
                               f" completed by {owner}"]}  # fmt: skip
        entry = {"level": "info", "message": message}
        return {
            "status": COMPLETED,
            "result": result,
            **self.finished(COMPLETED),
            "log": appended("$log", entry, literal=False),
        }

    @translated
    def fail(self, job_id: str, owner: str, error: Document, retry_in: float | None) -> bool:
        """Record a failed attempt: runnable again after `retry_in` seconds (scheduled while
        that is beyond the HORIZON), or failed for good."""
        entry = {
            "level": "error",
            "message": f"attempt {error.get('attempt')} failed: "
            f"{error.get('type')}: {error.get('message')}",
        }
        changes: Document = {"error": {"$literal": error}, "log": appended("$log", entry)}
        if retry_in is not None:
            later = retry_in > HORIZON.total_seconds()
            changes.update(status=SCHEDULED if later else READY, run_at=after_now(retry_in))
            return self._owned_update(job_id, owner, changes, release=True)
        changes.update(status=FAILED, **self.finished(FAILED))
        return self._finish(job_id, owner, changes)

    def _finish(self, job_id: str, owner: str, changes: Document) -> bool:
        """The finishing write, first for a job without follow-ups (the common case: one
        write); if that misses, for one with them, which are then settled (a settle cut
        short is finished by the sweep: `settle_finished`). `finished_by` keeps the token
        of the attempt that finished the job."""
        changes = {**changes, "finished_by": owner}
        plain = {"links": {"$ne": FOLLOWUPS}}
        if self._owned_update(job_id, owner, changes, release=True, also=plain):
            return True
        if not self._owned_update(job_id, owner, changes, release=True):
            return False
        with contextlib.suppress(WorkersError):  # settle is translated: its errors are ours
            self.settle(job_id)
        return True

    @translated
    def release(self, held: Mapping[Any, str], reason: str) -> int:
        """Hand jobs back (job id -> claim token), claimable at once; the interrupted
        attempt is not counted."""
        if not held:
            return 0
        result = self.jobs.update_many(
            _held_filter(held),
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
        self,
        job_id: str,
        owner: str,
        changes: Document,
        release: bool = False,
        also: Document | None = None,
    ) -> bool:
        """One conditional update: applies only while the job is running under `owner`
        (and matches `also`).

        Matched, not modified, decides: rewriting an equal value is still ours.
        """
        if release:
            changes = _released(changes)
        result = self.jobs.update_one(
            {**_owned(job_id, owner), **(also or {})}, [{"$set": {**changes, "updated": "$$NOW"}}]
        )
        return result.matched_count == 1

    # -- leases --------------------------------------------------------------------

    @translated
    def renew_leases(self, held: Mapping[Any, str], lease: float) -> list[Any]:
        """Extend the leases of `held` (job id -> claim token) in one update by `_id`;
        returns the ids whose lease is no longer held under that token."""
        if not held:
            return []
        result = self.jobs.update_many(
            _held_filter(held), [{"$set": {"lease_expires": after_now(lease)}}]
        )
        if result.matched_count == len(held):
            return []
        current = self.jobs.find({"_id": {"$in": list(held)}}, {"status": 1, "lease_owner": 1})
        still = {
            doc["_id"]
            for doc in current
            if doc.get("status") == RUNNING and doc.get("lease_owner") == held[doc["_id"]]
        }
        return [job_id for job_id in held if job_id not in still]

    @translated
    def rescue_expired(self) -> list[Document]:
        """Jobs whose lease expired go back to ready (the attempt counts) or, out of retries,
        to failed with "lost: worker died". Returns what was rescued.

        The literal bound keeps it on the `rescue` index; the $$NOW test makes the
        server's clock the judge, so a node whose clock runs ahead cannot steal a
        live lease. The update re-checks the expiry, so two rescuers never both
        rescue one job. The candidates are read by the literal bound alone and then
        judged by `_id`: SecantusDB evaluates an `$expr` on every document of the
        collection (1.4 s at 60,000 finished jobs, against 1 ms without it).
        """
        expired = self._expired_query()
        fields = {"_id": 1, "type": 1, "lease_owner": 1, "attempts": 1}
        hint = self.scan_hint(RESCUE_INDEX)
        bound = {key: value for key, value in expired.items() if key != "$expr"}
        near = [doc["_id"] for doc in self.jobs.find(bound, {"_id": 1}, hint=hint).limit(
            _RESCUE_BATCH
        )]  # fmt: skip
        if not near:
            return []
        found = list(self.jobs.find({"_id": {"$in": near}, **expired}, fields))
        if not found:
            return []
        ids, token = [doc["_id"] for doc in found], new_id()
        mine: set[Any] = set()
        try:
            self.jobs.update_many(
                {"_id": {"$in": ids}, **expired}, [{"$set": self._rescue_stage(token)}]
            )
        except OperationFailure:
            mine = self._rescue_each(ids, expired, token)
        # ours: another process may have rescued some between our read and our write
        mine |= {doc["_id"] for doc in self.jobs.find(_rescued_by(ids, token), {"_id": 1})}
        return [doc for doc in found if doc["_id"] in mine]

    def _rescue_each(self, ids: list[Any], expired: Document, token: str) -> set[Any]:
        """One document the server cannot update must not stop the rescue of the others;
        its error is raised once they are done. The ids each write rescued."""
        refused: list[OperationFailure] = []
        mine = set()
        for job_id in ids:
            try:
                if self._rescue_one(job_id, expired, token):
                    mine.add(job_id)
            except OperationFailure as exc:
                refused.append(exc)
        if refused:
            raise refused[0]
        return mine

    def _rescue_one(self, job_id: Any, expired: Document, token: str) -> bool:
        """Rescue one job; if even that write is refused (the document is at the size limit),
        rescue it without the log entry, the error and the token, which are what would
        grow it. Whether this write rescued it."""
        stage = self._rescue_stage(token)
        try:
            done = self.jobs.update_one({"_id": job_id, **expired}, [{"$set": stage}])
        except OperationFailure:
            bare = {key: stage[key] for key in _RESCUE_BARE}
            done = self.jobs.update_one({"_id": job_id, **expired}, [{"$set": bare}])
        return done.modified_count == 1

    def _rescue_stage(self, token: str) -> Document:
        """The rescue's write, stamped with `token`: the read-back tells this process's own
        rescues (its count and metric) from another's of the same jobs."""
        stage = _rescued(self.finished(FAILED))
        stage["last_action"] = {"$literal": {"action": "rescue", "token": token}}
        return stage

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

    def lease_queries(self) -> dict[str, tuple[Document, Document]]:
        """The heartbeat's and the outcome writes' queries, as (find command, plan)."""
        held = {"explain-a": "token-1", "explain-b": "token-2"}
        shared = [Completion(job_id, "token-1", None) for job_id in held]
        return {
            "renew / release": self.explain_find({"filter": _held_filter(held)}),
            "outcome write": self.explain_find({"filter": _owned("explain-a", "token-1")}),
            "completions together": self.explain_find(
                {"filter": _held_together("token-1", shared)}
            ),
            "completions read-back": self.explain_find({"filter": {"_id": {"$in": list(held)}}}),
            "rescue": self.explain_find(
                {"filter": self._expired_query(), "hint": self.index(RESCUE_INDEX)}
            ),
        }

    # -- reading -----------------------------------------------------------------------

    @translated
    def get_job(self, job_id: str) -> Document | None:
        return self.jobs.find_one({"_id": job_id})

    @translated
    def count_by_status(self) -> dict[str, int]:
        pipeline = [{"$group": {"_id": "$status", "n": {"$sum": 1}}}]
        return {row["_id"]: row["n"] for row in self.jobs.aggregate(pipeline)}


@dataclass(frozen=True)
class Completion:
    """A job's attempt that returned: its id, claim token and result."""

    job_id: Any
    token: str
    result: Any


def _held_together(token: str, group: list[Completion]) -> Document:
    """The jobs of `group` still held under `token`, without follow-ups, by `_id`."""
    ids = [one.job_id for one in group]
    return {
        "_id": {"$in": ids},
        "status": RUNNING,
        "lease_owner": token,
        "links": {"$ne": FOLLOWUPS},
    }


def _released(changes: Document) -> Document:
    """`changes` that also give up the lease: what every finishing write sets."""
    return {**changes, "lease_owner": None, "lease_expires": None}


def _large(result: Any) -> bool:
    """Too large to share a request with others' (each may be up to 16 MB): written alone."""
    return result is not None and len(bson.encode({"r": result})) > _SHARED_RESULT_LIMIT


def _results_by_id(group: list[Completion]) -> Any:
    """The result expression of an update over `group`: each job its own result (one
    literal when they are all None, as for most jobs)."""
    if all(one.result is None for one in group):
        return {"$literal": None}
    branches = [
        {"case": {"$eq": ["$_id", {"$literal": one.job_id}]}, "then": {"$literal": one.result}}
        for one in group
    ]
    return {"$switch": {"branches": branches, "default": None}}


def _owned(job_id: Any, token: str) -> Document:
    return {"_id": job_id, "status": RUNNING, "lease_owner": token}


def _held_filter(held: Mapping[Any, str]) -> Document:
    """Running jobs among `held` whose lease is one of the tokens given, on the `_id` index.

    Each id is held under one token (a job claimed again replaces the old attempt), and
    tokens are unique per claim, so matching any of the tokens matches that job's own.
    """
    return {
        "_id": {"$in": list(held)},
        "status": RUNNING,
        "lease_owner": {"$in": sorted(set(held.values()))},
    }


# What a rescue must change for the job to run again (or end); the rest is its record.
_RESCUE_BARE = (
    "status", "run_at", "finished", "unique_key", "expire_at", "lease_owner", "lease_expires",
    "updated",
)  # fmt: skip


def _rescued_by(ids: list[Any], token: str) -> Document:
    return {"_id": {"$in": ids}, "last_action.token": token}


def _rescued(finish: Document) -> Document:
    """The pipeline stage of a rescue: retry if attempts remain, else fail as lost (and
    `finish` as every finishing write does)."""
    finished = {
        "finished": (None, finish["finished"]),
        "unique_key": ("$unique_key", finish["unique_key"]),
        "expire_at": (None, finish["expire_at"]),
    }
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
        **{name: {"$cond": [retry, keep, value]} for name, (keep, value) in finished.items()},
        "error": error_document(
            LOST_MESSAGE, "workers.errors.LeaseExpired", attempt="$attempts", node="$lease_owner"
        ),
        "log": appended("$log", {"level": "error", "message": message}, literal=False),
        "lease_owner": None,
        "lease_expires": None,
        "updated": "$$NOW",
    }
