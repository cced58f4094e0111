"""What ties jobs together in the jobs collection: the push of a job with dependencies or a
unique key, and the follow-ups of a finished job (its dependents, its repeat).

One sparse multikey field, `links`, indexed once, serves all of it: a
dependent holds there the antecedents not yet completed, and a job something
must happen after (an antecedent of others, a repeating job) holds the marker
FOLLOWUPS. The write that finishes a job with the marker is followed by
`settle`: a completion pulls the job from its dependents' `links` (one
`update_many`; the last antecedent to go makes the dependent ready in the same
write) and clones a repeating job; a failure for good or a cancel cancels the
dependents. `settle_finished` (each heartbeat) settles what a crash cut short.

One field for both, and unique keys in cron's `unique_key` index: on SecantusDB
every index costs every write (a sparse index too, for documents it does not
hold), so the lifecycle adds as few indexes as it can. That is also right on
MongoDB, where the same indexes serve the same queries.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

from pymongo.errors import DocumentTooLarge, DuplicateKeyError

from workers.errors import PushError
from workers.record import (
    CANCELLED,
    COMPLETED,
    FAILED,
    FINISHED,
    FOLLOWUPS,
    FOREVER,
    UNIQUE_PREFIX,
    WAITING,
    ActionResult,
    clone_document,
    due_status,
)
from workers.store.base import (
    ENCODING_ERRORS,
    Document,
    appended,
    new_id,
    ready_or_scheduled,
    translated,
)
from workers.store.claims import ClaimQueries
from workers.store.indexes import IndexSpec

_log = logging.getLogger("workers.store")
BATCH = 500
# `status` after `links`: the sweep reads the finished jobs with the marker, not the live
# ones (every repeating job, every antecedent still to run) on every heartbeat. Partial on
# `links`, not sparse: a sparse compound index holds every document with any of its keys,
# and every job has a status.
LINKS_INDEX = "links_status"
UNIQUE_KEY_INDEX = "unique_key"
INDEXES = (
    IndexSpec(
        "jobs", LINKS_INDEX, (("links", 1), ("status", 1)), partial={"links": {"$exists": True}}
    ),
    # one job per key (cron's ticks, the app's unique jobs); jobs without a key not indexed
    IndexSpec(
        "jobs",
        UNIQUE_KEY_INDEX,
        (("unique_key", 1),),
        unique=True,
        partial={"unique_key": {"$type": "string"}},
    ),
)
# `links` alone: the sweep read every job with the marker, live ones included
RETIRED_INDEXES = (IndexSpec("jobs", "links", (("links", 1),), sparse=True),)
_PUSH_TRIES = 5  # a unique key freed and taken again between our insert and our read
_SWEEP_BATCH = 100
# the antecedents a job still waits for: its links but the marker
_PENDING = {"$setDifference": [{"$ifNull": ["$links", []]}, [FOLLOWUPS]]}
HAS_PENDING = {"$gt": [{"$size": _PENDING}, 0]}


def holder_query(key: Any) -> Document:
    """The job holding a unique key, on the partial index of string keys: the filter repeats
    its `$type`, since MongoDB does not take an equality as implying it (a partial index is
    used only for a query whose predicate implies the index's filter)."""
    return {"unique_key": {"$eq": key, "$type": "string"}}


def linked(values: list[Any]) -> Document:
    """`links` holding any of `values`, as the partial `links_status` index serves it: the
    filter repeats the index's `$exists` (a partial index is used only for a query whose
    predicate implies its filter)."""
    return {"$in": values, "$exists": True}


def pending_of(doc: Document) -> list[Any]:
    return [link for link in doc.get("links") or [] if link != FOLLOWUPS]


def batches(ids: list[Any]) -> Iterator[list[Any]]:
    for start in range(0, len(ids), BATCH):
        yield ids[start : start + BATCH]


class DependencyQueries(ClaimQueries):
    # -- push -------------------------------------------------------------------------------

    @translated
    def push_job(self, document: Document) -> tuple[str, bool]:
        """Insert a pushed job: (its id, False); or (the id of the unfinished job that holds
        its unique key, True), inserting nothing: the unique index decides, so two
        concurrent pushers make one job. A job with `depends` is refused if an
        antecedent is missing, failed or cancelled; it waits for the others."""
        pending = pending_of(document)
        if pending:
            pending = self._check_antecedents(pending)
            marker = [FOLLOWUPS] if FOLLOWUPS in (document.get("links") or []) else []
            document["links"] = pending + marker
            document["status"] = WAITING if pending else due_status(document["run_at"], self.now())
        for _ in range(_PUSH_TRIES):
            holder = self._insert_or_holder(document)
            if holder is None:
                break
            if holder:
                return holder, True
        else:
            raise PushError(f"the unique key {document.get('unique')!r} is busy; try again")
        if pending:
            self.await_antecedents(str(document["_id"]), pending)
        return str(document["_id"]), False

    def _insert_or_holder(self, document: Document) -> str | None:
        """None once inserted; the holder's id if the unique key is held; "" if the holder
        finished before it could be read (so try again)."""
        try:
            self.insert_encoded(document)
        except DuplicateKeyError as exc:
            key = document.get("unique_key")
            if not str(key).startswith(UNIQUE_PREFIX):  # cron's tick key: one job per key, ever
                raise PushError(f"a job with the unique key {key!r} exists") from exc
            holder = self.jobs.find_one(
                holder_query(key), {"_id": 1}, hint=self.hint(UNIQUE_KEY_INDEX)
            )
            return str(holder["_id"]) if holder else ""
        return None

    def insert_encoded(self, document: Document) -> None:
        """One insert; a document that cannot be stored is a PushError (a duplicate key is
        left to the caller, whose key it is)."""
        try:
            self.jobs.insert_one(document)
        except ENCODING_ERRORS as exc:  # encoding: nothing was sent
            raise PushError(f"the job document cannot be encoded as BSON: {exc}") from exc
        except DocumentTooLarge as exc:
            raise PushError(f"the job document is too large for MongoDB: {exc}") from exc

    def _check_antecedents(self, ids: list[str]) -> list[str]:
        """The antecedents not completed yet; PushError if one can never complete."""
        found = {doc["_id"]: doc.get("status") for doc in self.statuses(ids)}
        for job_id in ids:
            if job_id not in found:
                raise PushError(f"push: depends names {job_id}, and no job has that id")
            if found[job_id] in (FAILED, CANCELLED):
                raise PushError(
                    f"push: depends names {job_id}, which is {found[job_id]}: the dependent "
                    "would never run (restart it first)"
                )
        return [job_id for job_id in ids if found[job_id] != COMPLETED]

    def await_antecedents(self, job_id: Any, pending: list[Any], *, dead: bool = True) -> None:
        """Mark the antecedents, then look again: one that completed before the marker was
        set is pulled here (after it, its own settle pulls it), and one that went meanwhile
        (or, if `dead`, failed or was cancelled) cancels the dependent."""
        self.jobs.update_many({"_id": {"$in": pending}}, {"$addToSet": {"links": FOLLOWUPS}})
        found = {doc["_id"]: doc.get("status") for doc in self.statuses(pending)}
        done = [a for a in pending if found.get(a) == COMPLETED]
        if done:
            self._release(done, {"_id": job_id})
        ended = (FAILED, CANCELLED, None) if dead else (None,)
        if any(found.get(a) in ended for a in pending):
            self.act("cancel", [job_id], note="an antecedent failed, was cancelled or removed")

    def statuses(self, ids: list[Any]) -> Iterator[Document]:
        for batch in batches(ids):
            fields = {"status": 1, "depends": 1, "links": 1, "owner": 1}
            yield from self.jobs.find({"_id": {"$in": batch}}, fields, batch_size=BATCH)

    def act(self, action: str, ids: list[Any], **options: Any) -> ActionResult:
        raise NotImplementedError  # the actions: lifecycle.py

    def cancel_dependents(self, ids: list[Any]) -> ActionResult:
        raise NotImplementedError  # the actions: lifecycle.py

    # -- follow-ups ----------------------------------------------------------------------------

    @translated
    def settle(self, job_id: Any) -> None:
        """The follow-ups of a finished job: its dependents released (completed) or cancelled
        (failed, cancelled), its repeat cloned; then its marker is removed. Idempotent:
        the repeat's id is reserved on the job before the clone is inserted under it."""
        doc = self.jobs.find_one({"_id": job_id})
        if doc is None or FOLLOWUPS not in (doc.get("links") or []):
            return
        if doc.get("status") not in FINISHED:
            return
        if doc["status"] == COMPLETED:
            self._release([job_id], {})
            self._repeat(doc)
        else:
            self.cancel_dependents([job_id])
        self.jobs.update_one(
            {"_id": job_id, "status": doc["status"]}, {"$pull": {"links": FOLLOWUPS}}
        )

    @translated
    def settle_finished(self) -> int:
        """Settle finished jobs whose follow-ups a crash left undone (on `links`)."""
        query = {"links": linked([FOLLOWUPS]), "status": {"$in": list(FINISHED)}}
        cursor = self.jobs.find(query, {"_id": 1}, hint=self.hint(LINKS_INDEX), limit=_SWEEP_BATCH)
        found = list(cursor)
        for doc in found:
            self.settle(doc["_id"])
        return len(found)

    def _release(self, completed: list[Any], where: Document) -> None:
        """Pull completed antecedents from their dependents' `links`, in one update per
        batch: a waiting dependent left with none is ready in the same write."""
        for batch in batches(completed):
            pulled = {"$setDifference": [{"$ifNull": ["$links", []]}, batch]}
            ready = {"$and": [{"$eq": ["$status", WAITING]}, {"$not": [HAS_PENDING]}]}
            self.jobs.update_many(
                {"links": linked(batch), **where},
                [
                    {"$set": {"links": pulled}},
                    {
                        "$set": {
                            "status": {"$cond": [ready, ready_or_scheduled(), "$status"]},
                            "updated": "$$NOW",
                        }
                    },
                ],
                hint=self.hint(LINKS_INDEX),
            )

    def _repeat(self, doc: Document) -> None:
        left = doc.get("repeats_left")
        if left is None or left == 0:
            return
        self.jobs.update_one(
            {"_id": doc["_id"], "repeat_id": None}, {"$set": {"repeat_id": new_id()}}
        )
        reserved = self.jobs.find_one({"_id": doc["_id"]}, {"repeat_id": 1}) or {}
        if not reserved.get("repeat_id"):
            return
        wait = float((doc.get("repeat") or {}).get("wait") or 0)
        clone = clone_document(doc, str(reserved["repeat_id"]), self.now(), wait)
        clone["repeats_left"] = left if left == FOREVER else int(left) - 1
        clone["series"] = doc.get("series", doc["_id"])
        try:
            self.jobs.insert_one(clone)
        except DuplicateKeyError:
            if self.jobs.find_one({"_id": clone["_id"]}, {"_id": 1}) is None:
                self._series_ended(doc, clone)  # not cloned already: its unique key is taken

    def _series_ended(self, doc: Document, clone: Document) -> None:
        """A push took the series' unique key between the completion and the clone: the
        series ends, said on the job's log and in the process's."""
        holder = self.jobs.find_one(holder_query(clone.get("unique_key")), {"_id": 1})
        by = f"job {holder['_id']}" if holder else "another job"
        message = (
            f"the repeat was not scheduled: its unique key {clone.get('unique')!r} is held by "
            f"{by}, pushed after this run completed; the series ends here"
        )
        entry = appended("$log", {"level": "warning", "message": message})
        self.jobs.update_one({"_id": doc["_id"]}, [{"$set": {"log": entry}}])
        _log.warning("job %s: %s", doc["_id"], message)
