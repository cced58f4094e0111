"""The job lifecycle in the jobs collection: push with dependencies and unique keys, find,
the actions (pause, resume, cancel, restart, rerun, remove) one or many at a time, and
the follow-ups of a finished job (its dependents, its repeat).

Every action is one conditional update per batch of ids whose filter names the
statuses the action allows (`record.ALLOWED`): a job whose status changed
meanwhile is refused, never overwritten. The write stamps `last_action` with a
token of its own, and one read-back says exactly which jobs it changed. Batches
of `BATCH` ids keep `*_many` at a bounded number of round trips.

A dependent lists its antecedents in `depends` and those not yet completed in
`pending`; each antecedent carries `followups: true`. The write that finishes a
job with follow-ups is followed by `settle`: a completion pulls the job from its
dependents' `pending` (one `update_many`: the last one to go makes the dependent
ready) and clones a repeating job; a failure for good or a cancel cancels the
dependents. `settle_finished` (each heartbeat) settles what a crash cut short.

Indexes: `by_status` (status, _id) and `by_type` (type, status, _id) for `find`,
newest first; sparse `depends`, `pending` and `followups` for the cascades and
the sweep; the partial unique `unique_live` (one unfinished job per key); the TTL
index `expire_at` (retention).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import bson
from pymongo.errors import DocumentTooLarge, DuplicateKeyError

from workers.errors import PushError
from workers.record import (
    ALLOWED,
    CANCELLED,
    COMPLETED,
    FAILED,
    FINISHED,
    FOREVER,
    PAUSED,
    READY,
    STATUSES,
    WAITING,
    ActionResult,
    clone_document,
)
from workers.store.base import Document, appended, new_id, number, translated
from workers.store.claims import CLAIM_INDEX, ClaimQueries

BATCH = 500
BY_STATUS_INDEX, BY_TYPE_INDEX = "finished_by_status", "finished_by_type"
DEPENDS_INDEX, PENDING_INDEX, FOLLOWUPS_INDEX = "depends", "pending", "followups"
UNIQUE_LIVE_INDEX, EXPIRE_INDEX = "unique_live", "expire_at"
_PUSH_TRIES = 5  # a unique key freed and taken again between our insert and our read
_SWEEP_BATCH = 100
_NEWEST_FIRST = [("_id", -1)]
_HAS_PENDING = {"$gt": [{"$size": {"$ifNull": ["$pending", []]}}, 0]}


class LifecycleQueries(ClaimQueries):
    def ensure_lifecycle_indexes(self) -> None:
        # finished jobs only: an entry is written once, when a job finishes, so the claim and
        # the outcome of a live job pay nothing for them (live jobs are found on the claim index)
        for keys, name in (
            ([("status", 1), ("_id", 1)], BY_STATUS_INDEX),
            ([("type", 1), ("status", 1), ("_id", 1)], BY_TYPE_INDEX),
        ):
            self.jobs.create_index(keys, name=name, partialFilterExpression=_IS_FINISHED)
        for name in (DEPENDS_INDEX, PENDING_INDEX, FOLLOWUPS_INDEX):
            self.jobs.create_index(name, name=name, sparse=True)
        self.jobs.create_index(
            "unique_live",
            name=UNIQUE_LIVE_INDEX,
            unique=True,
            partialFilterExpression={"unique_live": {"$type": "string"}},
        )
        self.jobs.create_index(
            "expire_at",
            name=EXPIRE_INDEX,
            expireAfterSeconds=0,
            partialFilterExpression={"expire_at": {"$type": "date"}},
        )

    # -- push ----------------------------------------------------------------------------

    @translated
    def push_job(self, document: Document) -> tuple[str, bool]:
        """Insert a pushed job: (its id, False); or (the id of the unfinished job that holds
        its `unique` key, True), inserting nothing: the unique index decides, so two
        concurrent pushers make one job. A job with `depends` is refused if an
        antecedent is missing, failed or cancelled; it waits for the others."""
        pending = list(document.get("pending") or [])
        if pending:
            document["pending"] = pending = self._check_antecedents(pending)
            document["status"] = WAITING if pending else READY
        for _ in range(_PUSH_TRIES):
            holder = self._insert_or_holder(document)
            if holder is None:
                break
            if holder:
                return holder, True
        else:
            raise PushError(f"the unique key {document.get('unique')!r} is busy; try again")
        if pending:
            self._await_antecedents(str(document["_id"]), pending)
        return str(document["_id"]), False

    def _insert_or_holder(self, document: Document) -> str | None:
        """None once inserted; the holder's id if the unique key is held; "" if the holder
        finished before it could be read (so try again)."""
        try:
            self.jobs.insert_one(document)
        except bson.errors.InvalidDocument as exc:  # raised while encoding: nothing was sent
            raise PushError(f"the job document cannot be encoded as BSON: {exc}") from exc
        except DocumentTooLarge as exc:
            raise PushError(f"the job document is too large for MongoDB: {exc}") from exc
        except DuplicateKeyError as exc:
            if "unique_live" not in str((exc.details or {}).get("keyPattern", exc)):
                key = document.get("unique_key")
                raise PushError(f"a job with the unique key {key!r} exists") from exc
            holder = self.jobs.find_one(
                {"unique_live": document["unique_live"]}, {"_id": 1}, hint=UNIQUE_LIVE_INDEX
            )
            return str(holder["_id"]) if holder else ""
        return None

    def _check_antecedents(self, ids: list[str]) -> list[str]:
        """The antecedents not completed yet; PushError if one can never complete."""
        found = {doc["_id"]: doc.get("status") for doc in self._statuses(ids)}
        for job_id in ids:
            if job_id not in found:
                raise PushError(f"push: depends names {job_id}, and no job has that id")
            if found[job_id] in (FAILED, CANCELLED):
                raise PushError(
                    f"push: depends names {job_id}, which is {found[job_id]}: the dependent "
                    "would never run (restart it first)"
                )
        return [job_id for job_id in ids if found[job_id] != COMPLETED]

    def _await_antecedents(self, job_id: str, pending: list[str], *, dead: bool = True) -> None:
        """Flag the antecedents, then look again: one that completed before the flag was set
        is pulled here (after it, its own settle pulls it), and one that went meanwhile (or,
        if `dead`, failed or was cancelled) cancels the dependent."""
        self.jobs.update_many({"_id": {"$in": pending}}, {"$set": {"followups": True}})
        found = {doc["_id"]: doc.get("status") for doc in self._statuses(pending)}
        done = [a for a in pending if found.get(a) == COMPLETED]
        if done:
            self._release(done, {"_id": job_id})
        ended = (FAILED, CANCELLED, None) if dead else (None,)
        if any(found.get(a) in ended for a in pending):
            self.act("cancel", [job_id], note="an antecedent failed, was cancelled or removed")

    def _statuses(self, ids: list[Any]) -> Iterator[Document]:
        for batch in _batches(ids):
            fields = {"status": 1, "depends": 1}
            yield from self.jobs.find({"_id": {"$in": batch}}, fields, batch_size=BATCH)

    # -- find ------------------------------------------------------------------------------

    @translated
    def find_jobs(
        self, *, type: str | None = None, status: str | None = None, limit: int = 50
    ) -> list[Document]:
        """Newest first (ids are ObjectIds: creation order): live jobs on the claim index,
        finished ones on `finished_by_type` / `finished_by_status`, merged."""
        found = [
            doc
            for query, hint in _find_queries(type, status)
            for doc in self.jobs.find(query, sort=_NEWEST_FIRST, limit=limit, hint=hint)
        ]
        return sorted(found, key=lambda doc: str(doc["_id"]), reverse=True)[:limit]

    @translated
    def job_ids(self, *, type: str | None = None, status: str | None = None) -> list[Any]:
        """Every id matching the filter (a bulk action from the command line), on an index."""
        return [
            doc["_id"]
            for query, hint in _find_queries(type, status)
            for doc in self.jobs.find(query, {"_id": 1}, hint=hint, batch_size=BATCH)
        ]

    # -- actions ------------------------------------------------------------------------

    @translated
    def act(self, action: str, ids: list[Any], **options: Any) -> ActionResult:
        """Apply `action` to `ids`, batch by batch, with its cascades (see the module doc).

        Options: cancel(dependents=True, antecedents=False), restart(antecedents=True,
        dependents=False, retries=0), rerun(delay=0), and `note` for the job's log."""
        ids = list(dict.fromkeys(ids))
        if action == "rerun":
            return self._rerun(ids, float(options.get("delay") or 0))
        if action == "remove":
            return self._remove(ids)
        if action == "cancel":
            return self._cancel(ids, **options)
        if action == "restart":
            return self._restart(ids, **options)
        stage = {"pause": _paused, "resume": _resumed}[action]
        return self._update(action, ids, stage, options.get("note"))

    def _update(
        self, action: str, ids: list[Any], stage: Callable[[], Document], note: str | None
    ) -> ActionResult:
        """The conditional update of `action` on `ids`, and the read-back by its token."""
        result = ActionResult(action)
        allowed = list(ALLOWED[action])
        for batch in _batches(ids):
            token = new_id()
            changes = {**stage(), **self._stamp(action, token, note)}
            where = {"_id": {"$in": batch}, "status": {"$in": allowed}}
            try:
                self.jobs.update_many(where, [{"$set": changes}])
            except DuplicateKeyError:  # restart: a unique key another job took meanwhile
                self._update_each(batch, allowed, changes, result)
            self._read_back(batch, token, result)
        return result

    def _update_each(
        self, ids: list[Any], allowed: list[str], changes: Document, result: ActionResult
    ) -> None:
        for job_id in ids:
            try:
                self.jobs.update_one(
                    {"_id": job_id, "status": {"$in": allowed}}, [{"$set": changes}]
                )
            except DuplicateKeyError:
                result.errors[job_id] = (
                    "its unique key is held by another unfinished job; finish or cancel that one"
                )

    def _read_back(self, ids: list[Any], token: str, result: ActionResult) -> None:
        docs = self.jobs.find({"_id": {"$in": ids}}, _READ_BACK, batch_size=BATCH)
        found = {d["_id"]: d for d in docs}
        for job_id in ids:
            doc = found.get(job_id)
            if doc is not None and (doc.get("last_action") or {}).get("token") == token:
                result.changed.append(job_id)
            elif job_id not in result.errors:
                result.refused[job_id] = doc.get("status") if doc else None

    def _stamp(self, action: str, token: str, note: str | None) -> Document:
        message = f"{_PAST[action]}" + (f": {note}" if note else "")
        return {
            "last_action": {"$literal": {"action": action, "token": token}},
            "log": appended("$log", {"level": "warning", "message": message}),
            "updated": "$$NOW",
        }

    def _cancel(
        self,
        ids: list[Any],
        *,
        dependents: bool = True,
        antecedents: bool = False,
        note: str | None = None,
    ) -> ActionResult:
        """Cancel; then, as asked, the jobs that depend on these (all the way down) and the
        ones these depend on (all the way up)."""
        result = self._update("cancel", ids, self._cancelled_stage, note)
        if antecedents:
            above = self._antecedents_of(result.changed, ALLOWED["cancel"])
            if above:
                result.add(self._cancel(above, dependents=dependents, antecedents=True))
        if dependents:
            result.add(self._cancel_dependents(result.changed))
        return result

    def _cancel_dependents(self, ids: list[Any]) -> ActionResult:
        """Cancel every job that depends on `ids`, level by level (on the `depends` index)."""
        result = ActionResult("cancel")
        frontier = list(ids)
        while frontier:
            below = self._dependents_of(frontier, ALLOWED["cancel"])
            note = "an antecedent did not complete"
            level = self._update("cancel", below, self._cancelled_stage, note)
            result.add(level)
            frontier = level.changed
        return result

    def _cancelled_stage(self) -> Document:
        cancelled = {"status": CANCELLED, "lease_owner": None, "lease_expires": None}
        return {**cancelled, **self.finished(CANCELLED), "followups": None}

    def _restart(
        self,
        ids: list[Any],
        *,
        antecedents: bool = True,
        dependents: bool = False,
        retries: int = 0,
        note: str | None = None,
    ) -> ActionResult:
        """Failed or cancelled jobs run again, `retries` retries beyond one more attempt;
        first, as asked, their failed or cancelled antecedents; after, their dependents."""
        result = ActionResult("restart")
        if antecedents:
            above = self._antecedents_of(ids, ALLOWED["restart"])
            if above:
                result.add(self._restart(above, antecedents=True, retries=retries))
        own = self._update("restart", ids, lambda: _restarted(retries), note)
        result.add(own)
        waiting = [doc["_id"] for doc in self._statuses(own.changed) if doc.get("depends")]
        for job_id in waiting:
            pending = self._check_pending(job_id)
            if pending:
                self._await_antecedents(job_id, pending, dead=False)
        if dependents and own.changed:
            below = self._dependents_of(own.changed, ALLOWED["restart"])
            if below:
                result.add(
                    self._restart(below, antecedents=False, dependents=True, retries=retries)
                )
        return result

    def _check_pending(self, job_id: Any) -> list[str]:
        doc = self.jobs.find_one({"_id": job_id}, {"pending": 1})
        return list((doc or {}).get("pending") or [])

    def _rerun(self, ids: list[Any], delay: float) -> ActionResult:
        """A completed job runs again as a clone with a new id; the original stays."""
        result = ActionResult("rerun")
        now = self.now()
        for batch in _batches(ids):
            docs = self.jobs.find({"_id": {"$in": batch}}, batch_size=BATCH)
            found = {d["_id"]: d for d in docs}
            clones = []
            for job_id in batch:
                doc = found.get(job_id)
                if doc is None or doc.get("status") != COMPLETED:
                    result.refused[job_id] = doc.get("status") if doc else None
                    continue
                clone = clone_document(doc, new_id(), now, delay)
                clone.pop("unique_live", None)  # a rerun is asked for: it runs whatever the key
                clones.append(clone)
                result.changed.append(job_id)
                result.created[job_id] = clone["_id"]
            if clones:
                self.jobs.insert_many(clones, ordered=False)
        return result

    def _remove(self, ids: list[Any]) -> ActionResult:
        """Delete finished jobs; the jobs still waiting on one are cancelled."""
        result = ActionResult("remove")
        allowed = list(ALLOWED["remove"])
        for batch in _batches(ids):
            before = {d["_id"]: d.get("status") for d in self._statuses(batch)}
            self.jobs.delete_many({"_id": {"$in": batch}, "status": {"$in": allowed}})
            left = {d["_id"]: d.get("status") for d in self._statuses(batch)}
            for job_id in batch:
                if job_id in before and job_id not in left:
                    result.changed.append(job_id)
                else:
                    result.refused[job_id] = left.get(job_id)
        if result.changed:
            self._cancel_waiting_on(result.changed)
        return result

    def _cancel_waiting_on(self, ids: list[Any]) -> None:
        waiting = [
            doc["_id"]
            for batch in _batches(ids)
            for doc in self.jobs.find(
                {"pending": {"$in": batch}, "status": {"$in": [WAITING, PAUSED]}},
                {"_id": 1},
                batch_size=BATCH,
            )
        ]
        if waiting:
            self._cancel(waiting, note="an antecedent was removed")

    def _dependents_of(self, ids: list[Any], statuses: tuple[str, ...]) -> list[Any]:
        return [
            doc["_id"]
            for batch in _batches(ids)
            for doc in self.jobs.find(
                {"depends": {"$in": batch}, "status": {"$in": list(statuses)}},
                {"_id": 1},
                hint=DEPENDS_INDEX,
                batch_size=BATCH,
            )
        ]

    def _antecedents_of(self, ids: list[Any], statuses: tuple[str, ...]) -> list[Any]:
        above = {a for doc in self._statuses(ids) for a in doc.get("depends") or []}
        return [doc["_id"] for doc in self._statuses(list(above)) if doc.get("status") in statuses]

    # -- follow-ups -------------------------------------------------------------------

    @translated
    def settle(self, job_id: Any) -> None:
        """The follow-ups of a finished job: its dependents released (completed) or cancelled
        (failed, cancelled), its repeat cloned; then its flag is cleared. Idempotent:
        a repeat is cloned once (its `unique_key` names the job it repeats)."""
        doc = self.jobs.find_one({"_id": job_id})
        if doc is None or not doc.get("followups") or doc.get("status") not in FINISHED:
            return
        if doc["status"] == COMPLETED:
            self._release([job_id], {})
            self._repeat(doc)
        else:
            self._cancel_dependents([job_id])
        self.jobs.update_one(
            {"_id": job_id, "status": doc["status"]}, {"$unset": {"followups": ""}}
        )

    @translated
    def settle_finished(self) -> int:
        """Settle finished jobs whose follow-ups a crash left undone (on `followups`)."""
        query = {"followups": True, "status": {"$in": list(FINISHED)}}
        found = list(self.jobs.find(query, {"_id": 1}, hint=FOLLOWUPS_INDEX, limit=_SWEEP_BATCH))
        for doc in found:
            self.settle(doc["_id"])
        return len(found)

    def _release(self, completed: list[Any], where: Document) -> None:
        """Pull completed antecedents from their dependents' `pending`, in one update per
        batch: a waiting dependent whose `pending` empties is ready in the same write."""
        for batch in _batches(completed):
            pulled = {"$setDifference": [{"$ifNull": ["$pending", []]}, batch]}
            ready = {"$and": [{"$eq": ["$status", WAITING]}, {"$not": [_HAS_PENDING]}]}
            self.jobs.update_many(
                {"pending": {"$in": batch}, **where},
                [
                    {"$set": {"pending": pulled}},
                    {"$set": {"status": {"$cond": [ready, READY, "$status"]}, "updated": "$$NOW"}},
                ],
            )

    def _repeat(self, doc: Document) -> None:
        left = doc.get("repeats_left")
        if left is None or left == 0:
            return
        repeat = doc.get("repeat") or {}
        clone = clone_document(doc, new_id(), self.now(), float(repeat.get("wait") or 0))
        clone["repeats_left"] = left if left == FOREVER else int(left) - 1
        clone["unique_key"] = f"repeat:{doc['_id']}"
        clone["series"] = doc.get("series", doc["_id"])
        # a duplicate: cloned already (a settle ran twice), or its unique key is taken again
        with contextlib.suppress(DuplicateKeyError):
            self.jobs.insert_one(clone)

    # -- explain, for the index tests -----------------------------------------------------

    def lifecycle_queries(self) -> dict[str, tuple[Document, Document]]:
        """The queries of find, the cascades and the sweep, as (find command, plan)."""
        ids = ["explain-a", "explain-b"]
        statuses = {"$in": [WAITING, PAUSED]}
        commands: dict[str, Document] = {
            **{
                f"find {name} #{n}": {**command, "sort": dict(_NEWEST_FIRST), "limit": 50}
                for name, (job_type, status) in _FIND_EXAMPLES.items()
                for n, command in enumerate(_find_commands(job_type, status), 1)
            },
            "dependents": {
                "filter": {"depends": {"$in": ids}, "status": statuses},
                "hint": DEPENDS_INDEX,
            },
            "release": {"filter": {"pending": {"$in": ids}}},
            "followups sweep": {
                "filter": {"followups": True, "status": {"$in": list(FINISHED)}},
                "hint": FOLLOWUPS_INDEX,
            },
            "unique holder": {"filter": {"unique_live": "k"}, "hint": UNIQUE_LIVE_INDEX},
        }
        return {name: self.explain_find(command) for name, command in commands.items()}


_READ_BACK = {"status": 1, "last_action": 1}
_PAST = {"pause": "paused", "resume": "resumed", "cancel": "cancelled", "restart": "restarted"}


def _batches(ids: list[Any]) -> Iterator[list[Any]]:
    for start in range(0, len(ids), BATCH):
        yield ids[start : start + BATCH]


_IS_FINISHED = {"finished": {"$type": "date"}}
_LIVE = [status for status in STATUSES if status not in FINISHED]
_FIND_EXAMPLES = {
    "by type and finished status": ("LoadRetentionJob", FAILED),
    "by finished status": (None, FAILED),
    "by type and live status": ("LoadRetentionJob", READY),
    "by live status": (None, READY),
    "by type": ("LoadRetentionJob", None),
}


def _find_queries(type: str | None, status: str | None) -> list[tuple[Document, str]]:
    """The queries (filter, index) whose results, merged, are the jobs of `type` and `status`.

    Live jobs (not finished) are on the claim index, whose prefix is (status, type);
    finished jobs on the partial indexes of finished jobs (the filter repeats their
    partial expression, so the planner may use them)."""
    typed: Document = {} if type is None else {"type": type}
    if status is None and type is None:
        return [({}, "_id_")]
    if status is None:
        return [
            ({"status": {"$in": _LIVE}, **typed}, CLAIM_INDEX),
            ({"status": {"$in": list(FINISHED)}, **typed, **_IS_FINISHED}, BY_TYPE_INDEX),
        ]
    if status in FINISHED:
        index = BY_TYPE_INDEX if type is not None else BY_STATUS_INDEX
        return [({**typed, "status": status, **_IS_FINISHED}, index)]
    return [({"status": status, **typed}, CLAIM_INDEX)]


def _find_commands(type: str | None, status: str | None) -> list[Document]:
    return [{"filter": query, "hint": hint} for query, hint in _find_queries(type, status)]


def _paused() -> Document:
    return {"status": PAUSED}


def _resumed() -> Document:
    return {"status": {"$cond": [_HAS_PENDING, WAITING, READY]}}


def _restarted(retries: int) -> Document:
    """Back to ready (or waiting for its antecedents): one more attempt plus `retries`."""
    has_depends = {"$gt": [{"$size": {"$ifNull": ["$depends", []]}}, 0]}
    return {
        "status": {"$cond": [has_depends, WAITING, READY]},
        "pending": {"$ifNull": ["$depends", None]},
        "retries": {"$add": [number("$attempts"), int(retries)]},
        "run_at": "$$NOW",
        "finished": None,
        "expire_at": None,
        "unique_live": {"$ifNull": ["$unique", None]},
        "followups": True,
        "lease_owner": None,
        "lease_expires": None,
    }
