"""The job lifecycle in the jobs collection: find, and the actions (pause, resume, cancel,
restart, rerun, remove) one or many at a time, with their cascades through dependencies
(dependencies.py holds the links and the follow-ups).

Every action is one conditional update per batch of ids whose filter names the
statuses the action allows (`record.ALLOWED`): a job whose status changed
meanwhile is refused, never overwritten. The write stamps `last_action` with a
token of its own, and one read-back says exactly which jobs it changed. Batches
of `BATCH` ids keep `*_many` at a bounded number of round trips.

Indexes: jobs are listed on `listing` (status, type, _id), newest first, live and
finished alike (it was partial on finished jobs, and a live list was sorted in
memory); `links_status` for the cascades; the TTL index `expire_at` (retention).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from pymongo.errors import DuplicateKeyError

from workers.record import (
    ALLOWED,
    CANCELLED,
    COMPLETED,
    FAILED,
    FINISHED,
    FOLLOWUPS,
    PAUSED,
    READY,
    STATUSES,
    UNIQUE_PREFIX,
    WAITING,
    ActionResult,
    clone_document,
)
from workers.store.base import (
    Document,
    appended,
    is_type,
    new_id,
    number,
    ready_or_scheduled,
    translated,
)
from workers.store.dependencies import (
    BATCH,
    HAS_PENDING,
    LINKS_INDEX,
    UNIQUE_KEY_INDEX,
    DependencyQueries,
    holder_query,
    linked,
    pending_of,
)
from workers.store.dependencies import batches as _batches
from workers.store.indexes import IndexSpec

LISTING_INDEX, EXPIRE_INDEX = "listing", "expire_at"
INDEXES = (
    # the lists, newest first: one range per (status, type), live and finished alike, so a
    # page reads its own jobs whatever the backlog or the retention keeps
    IndexSpec("jobs", LISTING_INDEX, (("status", 1), ("type", 1), ("_id", 1))),
    # retention: each finished job carries the date it goes (by its status); live ones none
    IndexSpec(
        "jobs", EXPIRE_INDEX, (("expire_at", 1),), ttl=0, partial={"expire_at": {"$type": "date"}}
    ),
)
# the same keys for the finished jobs only: the live lists were sorted in memory
RETIRED_INDEXES = (
    IndexSpec(
        "jobs",
        "finished",
        (("status", 1), ("type", 1), ("_id", 1)),
        partial={"finished": {"$type": "date"}},
    ),
)
_NEWEST_FIRST = [("_id", -1)]


@dataclass
class Scope:
    """Whose jobs an action may change: everyone's (owner None), or one owner's. A cascade
    run for an owner stops at the jobs of others and lists them in `spared`; each write
    also names the owner in its filter, so a job that changed hands meanwhile is refused."""

    owner: str | None = None
    spared: list[Any] = field(default_factory=list)

    def where(self) -> Document:
        return {} if self.owner is None else {"owner": self.owner}

    def keep(self, docs: Iterable[Document]) -> list[Any]:
        """The ids of `docs` this scope may change; the others are spared."""
        kept = []
        for doc in docs:
            if self.owner is None or doc.get("owner") == self.owner:
                kept.append(doc["_id"])
            elif doc["_id"] not in self.spared:
                self.spared.append(doc["_id"])
        return kept


class LifecycleQueries(DependencyQueries):
    # -- find ------------------------------------------------------------------------------

    @translated
    def find_jobs(
        self,
        *,
        type: str | None = None,
        status: str | None = None,
        limit: int = 50,
        before: str | None = None,
        projection: Document | None = None,
    ) -> list[Document]:
        """Newest first (ids are ObjectIds: creation order): live jobs on the claim index,
        finished ones on `finished`, merged; `before` an id, for the next page."""
        older: Document = {} if before is None else {"_id": {"$lt": before}}
        found = [
            doc
            for query, hint in self._find_queries(type, status)
            for doc in self.jobs.find(
                {**query, **older}, projection, sort=_NEWEST_FIRST, limit=limit, hint=hint
            )
        ]
        return sorted(found, key=lambda doc: str(doc["_id"]), reverse=True)[:limit]

    def job_summaries(
        self, *, type: str | None, status: str | None, limit: int, before: str | None
    ) -> list[Document]:
        """A page of `find_jobs` as a list shows it: the summary's fields only."""
        return self.find_jobs(type=type, status=status, limit=limit, before=before,
                              projection=SUMMARY)  # fmt: skip

    def search_chunk(
        self, *, type: str | None, status: str | None, limit: int, before: str | None
    ) -> list[Document]:
        """A chunk of `find_jobs` for a text search: each job bounded (SEARCHED), whatever
        its params and log hold."""
        return self.find_jobs(type=type, status=status, limit=limit, before=before,
                              projection=SEARCHED)  # fmt: skip

    @translated
    def job_ids(self, *, type: str | None = None, status: str | None = None) -> list[Any]:
        """Every id matching the filter (a bulk action from the command line), on an index."""
        return [
            doc["_id"]
            for query, hint in self._find_queries(type, status)
            for doc in self.jobs.find(query, {"_id": 1}, hint=hint, batch_size=BATCH)
        ]

    # -- actions ------------------------------------------------------------------------

    @translated
    def act(
        self, action: str, ids: list[Any], *, owner: str | None = None, **options: Any
    ) -> ActionResult:
        """Apply `action` to `ids`, batch by batch, with its cascades (see the module doc);
        with `owner`, only to that owner's jobs (a creator's request: see `Scope`).

        Options: cancel(dependents=True, antecedents=False), restart(antecedents=True,
        dependents=False, retries=0), rerun(delay=0), and `note` for the job's log."""
        ids = list(dict.fromkeys(ids))
        scope = Scope(owner)
        if action == "rerun":
            result = self._rerun(ids, float(options.get("delay") or 0), scope)
        elif action == "remove":
            result = self._remove(ids, scope)
        elif action == "cancel":
            result = self._cancel(ids, scope, **options)
        elif action == "restart":
            result = self._restart(ids, scope, **options)
        else:
            stage = {"pause": _paused, "resume": _resumed}[action]
            result = self._update(action, ids, stage, options.get("note"), scope)
        result.spared = scope.spared
        return result

    def _update(
        self,
        action: str,
        ids: list[Any],
        stage: Callable[[], Document],
        note: str | None,
        scope: Scope,
    ) -> ActionResult:
        """The conditional update of `action` on `ids`, and the read-back by its token."""
        result = ActionResult(action)
        allowed = list(ALLOWED[action])
        for batch in _batches(ids):
            token = new_id()
            changes = {**stage(), **self._stamp(action, token, note)}
            where = {"_id": {"$in": batch}, "status": {"$in": allowed}, **scope.where()}
            try:
                self.jobs.update_many(where, [{"$set": changes}])
            except DuplicateKeyError:  # restart: a unique key another job took meanwhile
                self._update_each(batch, where, changes, result)
            self._read_back(batch, token, result)
        return result

    def _update_each(
        self, ids: list[Any], where: Document, changes: Document, result: ActionResult
    ) -> None:
        for job_id in ids:
            try:
                self.jobs.update_one({**where, "_id": job_id}, [{"$set": changes}])
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
        scope: Scope,
        *,
        dependents: bool = True,
        antecedents: bool = False,
        note: str | None = None,
    ) -> ActionResult:
        """Cancel; then, as asked, the jobs that depend on these (all the way down) and the
        ones these depend on (all the way up), each level marked until the next is done."""
        keep = dependents and scope.owner is None
        result = self._update("cancel", ids, lambda: self._cancelled(keep=keep), note, scope)
        if antecedents:
            above = self._antecedents_of(result.changed, ALLOWED["cancel"], scope)
            if above:
                result.add(self._cancel(above, scope, dependents=dependents, antecedents=True))
        if dependents:
            result.add(self.cancel_dependents(result.changed, scope))
        return result

    def cancel_dependents(self, ids: list[Any], scope: Scope | None = None) -> ActionResult:
        """Cancel every job that depends on `ids`, level by level (on the `links` index).

        Each level keeps its follow-ups marker until the level below it is cancelled: a
        crash between two levels leaves a cancelled job with the marker, which the sweep
        (`settle_finished`) settles by cancelling the rest. For one owner, the marker goes
        in the cancel's own write: the sweep knows no owner."""
        scope = scope or Scope()
        result = ActionResult("cancel")
        frontier = list(ids)
        keep = scope.owner is None
        while frontier:
            below = self._dependents_of(frontier, ALLOWED["cancel"], scope)
            note = "an antecedent did not complete"
            cancelled = functools.partial(self._cancelled, keep=keep)
            level = self._update("cancel", below, cancelled, note, scope)
            result.add(level)
            self._unmark(frontier)
            frontier = level.changed
        return result

    def _cancelled(self, *, keep: bool) -> Document:
        """A cancel; `keep` the follow-ups marker (the cascade runs next; a crash before it
        is settled by the sweep), else drop it: the dependents stay as they are."""
        cancelled = {"status": CANCELLED, "lease_owner": None, "lease_expires": None}
        links = "$links" if keep else {"$setDifference": [{"$ifNull": ["$links", []]}, [FOLLOWUPS]]}
        return {**cancelled, **self.finished(CANCELLED), "links": links}

    def _unmark(self, ids: list[Any]) -> None:
        """Drop the marker of cancelled jobs whose cascade ran; only while they are still
        cancelled: a restart that landed meanwhile keeps it for its own follow-ups."""
        for batch in _batches(ids):
            self.jobs.update_many(
                {"_id": {"$in": batch}, "status": CANCELLED}, {"$pull": {"links": FOLLOWUPS}}
            )

    def _restart(
        self,
        ids: list[Any],
        scope: Scope,
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
            above = self._antecedents_of(ids, ALLOWED["restart"], scope)
            if above:
                result.add(self._restart(above, scope, antecedents=True, retries=retries))
        own = self._update("restart", ids, lambda: _restarted(retries), note, scope)
        result.add(own)
        for doc in self.statuses(own.changed):
            if pending_of(doc):
                self.await_antecedents(doc["_id"], pending_of(doc), dead=False)
        if dependents and own.changed:
            below = self._dependents_of(own.changed, ALLOWED["restart"], scope)
            if below:
                result.add(
                    self._restart(below, scope, antecedents=False, dependents=True, retries=retries)
                )
        return result

    def _rerun(self, ids: list[Any], delay: float, scope: Scope) -> ActionResult:
        """A completed job runs again as a clone with a new id; the original stays."""
        result = ActionResult("rerun")
        now = self.now()
        for batch in _batches(ids):
            docs = self.jobs.find({"_id": {"$in": batch}}, batch_size=BATCH)
            found = {d["_id"]: d for d in docs}
            clones = []
            for job_id in batch:
                doc = found.get(job_id)
                if doc is None or doc.get("status") != COMPLETED or not scope.keep([doc]):
                    result.refused[job_id] = doc.get("status") if doc else None
                    continue
                clone = clone_document(doc, new_id(), now, delay)
                clone.pop("unique_key", None)  # a rerun is asked for: it runs whatever the key
                clones.append(clone)
                result.changed.append(job_id)
                result.created[job_id] = clone["_id"]
            if clones:
                self.jobs.insert_many(clones, ordered=False)
        return result

    def _remove(self, ids: list[Any], scope: Scope) -> ActionResult:
        """Delete finished jobs; the jobs still waiting on one are cancelled."""
        result = ActionResult("remove")
        allowed = list(ALLOWED["remove"])
        for batch in _batches(ids):
            before = {d["_id"]: d.get("status") for d in self.statuses(batch)}
            where = {"_id": {"$in": batch}, "status": {"$in": allowed}, **scope.where()}
            self.jobs.delete_many(where)
            left = {d["_id"]: d.get("status") for d in self.statuses(batch)}
            for job_id in batch:
                if job_id in before and job_id not in left:
                    result.changed.append(job_id)
                else:
                    result.refused[job_id] = left.get(job_id)
        if result.changed:
            self._cancel_waiting_on(result.changed, scope)
        return result

    def _cancel_waiting_on(self, ids: list[Any], scope: Scope) -> None:
        waiting = self._dependents_of(ids, (WAITING, PAUSED), scope)
        if waiting:
            self._cancel(waiting, scope, note="an antecedent was removed")

    def _dependents_of(self, ids: list[Any], statuses: tuple[str, ...], scope: Scope) -> list[Any]:
        return scope.keep(
            doc
            for batch in _batches(ids)
            for doc in self.jobs.find(
                {"links": linked(batch), "status": {"$in": list(statuses)}},
                {"_id": 1, "owner": 1},
                hint=self.hint(LINKS_INDEX),
                batch_size=BATCH,
            )
        )

    def _antecedents_of(self, ids: list[Any], statuses: tuple[str, ...], scope: Scope) -> list[Any]:
        above = {a for doc in self.statuses(ids) for a in doc.get("depends") or []}
        return scope.keep(
            doc for doc in self.statuses(list(above)) if doc.get("status") in statuses
        )

    # -- explain, for the index tests -----------------------------------------------------

    def lifecycle_queries(self) -> dict[str, tuple[Document, Document]]:
        """The queries of find, the cascades and the sweep, as (find command, plan)."""
        ids = ["explain-a", "explain-b"]
        commands: dict[str, Document] = {
            f"find {name} #{n}": {**command, "sort": dict(_NEWEST_FIRST), "limit": 50}
            for name, (job_type, status) in _FIND_EXAMPLES.items()
            for n, command in enumerate(self._find_commands(job_type, status), 1)
        }
        [(ready, listing)] = self._find_queries(None, READY)
        commands.update(
            {
                "next page of ready jobs": {
                    "filter": {**ready, "_id": {"$lt": "f" * 24}},
                    "sort": dict(_NEWEST_FIRST),
                    "hint": listing,
                    "limit": 51,
                },
                "dependents": {
                    "filter": {"links": linked(ids), "status": {"$in": [WAITING, PAUSED]}},
                    "hint": self.index(LINKS_INDEX),
                },
                "release": {"filter": {"links": linked(ids)}, "hint": self.index(LINKS_INDEX)},
                "followups sweep": {
                    "filter": {"links": linked([FOLLOWUPS]), "status": {"$in": list(FINISHED)}},
                    "hint": self.index(LINKS_INDEX),
                },
                "unique holder": {
                    "filter": holder_query("unique:k"),
                    "hint": self.index(UNIQUE_KEY_INDEX),
                },
            }
        )
        return {name: self.explain_find(command) for name, command in commands.items()}

    def _find_queries(
        self, type: str | None, status: str | None
    ) -> list[tuple[Document, str | None]]:
        """The queries (filter, index) whose results, merged, are the jobs of `type` and
        `status`, newest first: on the listing index (status, type, _id), one range per
        (status, type) pair, which MongoDB merges in `_id` order (no in-memory sort); for a
        status alone, its types are listed first (a distinct on the same index)."""
        if status is None and type is None:
            return [({}, "_id_")]
        statuses = list(STATUSES) if status is None else [status]
        types = [type] if type is not None else self._types_of(statuses)
        query = {"status": {"$in": statuses}, "type": {"$in": types}}
        return [(query, self.hint(LISTING_INDEX))]

    def _types_of(self, statuses: list[str]) -> list[Any]:
        """The job types in `statuses` (null too: it matches a job without one); a damaged
        document's type that is a document, an array or a pattern is left out."""
        found = self.jobs.distinct("type", {"status": {"$in": statuses}})
        return [None, *sorted((t for t in found if isinstance(t, (str, int, float))), key=str)]

    def _find_commands(self, type: str | None, status: str | None) -> list[Document]:
        return [
            {"filter": q, **({"hint": hint} if hint else {})}
            for q, hint in self._find_queries(type, status)
        ]


# What a list reads of each job (a page of 200 with large params read every byte of them).
SUMMARY: Document = dict.fromkeys(
    ("_id", "type", "status", "progress", "attempts", "owner", "created", "finished"), 1
)
SEARCH_PARAMS_BYTES = 16_000  # params larger than this are not searched
SEARCH_LOG_ENTRIES, SEARCH_LOG_CHARS = 20, 500  # the newest entries, the start of each


# What a text search reads of each job: at most about 16 + 8 + 10 kB, whatever it holds.
SEARCHED: Document = {
    **SUMMARY,
    "params": {
        "$cond": [
            {"$and": [is_type("object", "$params"),
                      {"$lte": [{"$bsonSize": "$params"}, SEARCH_PARAMS_BYTES]}]},
            "$params",
            "$$REMOVE",
        ]
    },
    "error.message": 1,
    "error.type": 1,
    "log": {
        "$map": {
            "input": {"$slice": [{"$cond": [{"$isArray": "$log"}, "$log", []]},
                                 -SEARCH_LOG_ENTRIES]},
            "in": {"$cond": [is_type("string", "$$this.message"),
                             {"$substrCP": ["$$this.message", 0, SEARCH_LOG_CHARS]}, ""]},
        }
    },
}  # fmt: skip
_HAS_UNIQUE = is_type("string", "$unique")


def _text(field: str) -> Document:
    """A field as a string, "" if it is not one (a bad document must not fail a bulk
    restart: $strLenCP and $concat refuse anything else)."""
    return {"$cond": [is_type("string", field), field, ""]}


_TYPE, _OWNER = _text("$type"), _text("$owner")
# record.unique_key_of, built from the document's own fields
_SCOPED_UNIQUE_KEY = {
    "$concat": [
        UNIQUE_PREFIX,
        {"$toString": {"$strLenCP": _TYPE}}, ":", _TYPE,
        {"$toString": {"$strLenCP": _OWNER}}, ":", _OWNER,
        ":", "$unique",
    ]
}  # fmt: skip
_READ_BACK = {"status": 1, "last_action": 1}
_PAST = {"pause": "paused", "resume": "resumed", "cancel": "cancelled", "restart": "restarted"}
_FIND_EXAMPLES = {
    "by type and finished status": ("LoadRetentionJob", FAILED),
    "by finished status": (None, FAILED),
    "by type and live status": ("LoadRetentionJob", READY),
    "by live status": (None, READY),
    "by type": ("LoadRetentionJob", None),
}


def _paused() -> Document:
    return {"status": PAUSED}


def _resumed() -> Document:
    return {"status": {"$cond": [HAS_PENDING, WAITING, ready_or_scheduled()]}}


def _restarted(retries: int) -> Document:
    """Back to ready (or waiting for its antecedents): one more attempt plus `retries`."""
    has_depends = {"$gt": [{"$size": {"$ifNull": ["$depends", []]}}, 0]}
    return {
        "status": {"$cond": [has_depends, WAITING, READY]},
        # its antecedents again (a settle pulls those completed), and the follow-ups marker:
        # after a restart, its dependents and its repeat are settled again
        "links": {"$concatArrays": [{"$ifNull": ["$depends", []]}, [FOLLOWUPS]]},
        "retries": {"$add": [number("$attempts"), int(retries)]},
        "run_at": "$$NOW",
        "finished": None,
        "expire_at": None,
        "unique_key": {"$cond": [_HAS_UNIQUE, _SCOPED_UNIQUE_KEY, "$unique_key"]},
        "lease_owner": None,
        "lease_expires": None,
    }
