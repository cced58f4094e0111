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

The scan is shared: a claimer that scans keeps a share of the candidates it did
not take (its spare) and publishes the rest in `<prefix>.candidates` (one
document per set of types, by `_id`); a claimer whose spare ran dry takes its
next share from that list in one atomic write (the share leaves the list), so
no two claimers hold the same candidates and their picks do not collide. The list
also records the ids it handed out (`out`, the scanner's own share included): the
claimer that scans when the list is used up leaves those out while their spares
live, since they are still ready and head the queue, and picking them would only
collide with their holders. The list is only a hint (every take is still
conditional on `status: ready`), so scans cost the cluster about one per
`SPARE_SECONDS` (or per `scan_candidates` jobs, or per `SCANS_APART` scan
durations where scans are slow) however many processes claim, not one per process.
"""

from __future__ import annotations

import contextlib
import hashlib
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from pymongo import ReturnDocument
from pymongo.errors import OperationFailure, PyMongoError

from workers.errors import ClaimIncomplete
from workers.record import FAILED, HORIZON, READY, RUNNING, SCHEDULED, error_document
from workers.store.base import Connection, Document, after_now, hashable, number, translated
from workers.store.indexes import IndexSpec
from workers.store.stream import ReadyStream

CLAIM_INDEX = "claim_queue"
CLAIM_KEYS = [("status", 1), ("type", 1), ("priority", 1), ("run_at", 1)]
CLAIM_SORT = [("priority", 1), ("run_at", 1)]
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
_STAGE_BATCH = 1000
# How far ahead `next_due` looks: the scan is bounded by the jobs due in this window, and a
# claimer that finds none there looks again at its end (a stream reports new ones sooner).
NEXT_DUE_WINDOW = timedelta(seconds=30)
INDEXES = (
    IndexSpec("jobs", CLAIM_INDEX, tuple(CLAIM_KEYS)),
    # partial: on MongoDB it holds the scheduled jobs only, however many are finished
    IndexSpec("jobs", SCHEDULE_INDEX, tuple(SCHEDULE_KEYS), partial={"status": SCHEDULED}),
    IndexSpec("jobs", READY_TIMES_INDEX, tuple(READY_TIMES_KEYS), partial={"status": READY}),
)
# (status, priority, run_at), before `type` joined the index
RETIRED_INDEXES = (IndexSpec("jobs", "claim", (("status", 1), ("priority", 1), ("run_at", 1))),)
# A scan reads the server profile's `scan_candidates` (on MongoDB a short index range; on
# SecantusDB a scan costs the same whatever its limit: it reads every ready job). No list
# holds more than this:
_LIST_CAP = 1 << 16
# Candidates a claimer takes from the shared list at a time, at least one claim's worth.
_SHARE = 32
# How long the rest of a scan may be claimed from without scanning again: SPARE_SECONDS,
# or SCANS_APART times the scan's own duration where scans are slow (this server at a
# large backlog), so that scanning takes at most about a twentieth of the time. A job
# pushed meanwhile with a better priority waits at most this long behind the older
# candidates: 1 s on MongoDB, whose scans take milliseconds; on the embedded server 5 s
# at a backlog of 5,000 and 20 s at 20,000 (5 x apart, 2 x 4 at backlog 5,000 drained
# 161 jobs/s, 20 x apart with 1,024 candidates 218/s; 2026-12-05).
SPARE_SECONDS = 1.0
SCANS_APART = 20
_SPARE_MISSES = 2  # picks in a row that found every job taken: the spare is stale
_END_OF_TIME = datetime(9999, 12, 31, tzinfo=UTC)
# A scanning turn lasts twice the last scan, within these bounds (seconds): a claimer that
# found the list used up waits for the holder's list at most that long, then scans itself.
# The floor is long on purpose: the last scan may have read an empty queue in a
# millisecond while this one reads a backlog that came due at once (0.2-0.4 s here at
# 5,000), and a turn that runs out mid-scan has the waiters scan beside the holder, each
# scan slowing the other and their picks colliding. A waiter stops waiting as soon as the
# holder publishes, so a long turn costs only when the holder died mid-scan.
_TURN_MIN, _TURN_MAX = 1.0, 10.0
_LOOK_MIN = 0.05  # seconds between a waiter's looks for the holder's list

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
    """The candidates a claimer holds and did not try yet: its next claims try them first,
    by `_id`, and so pay for one scan per several batches, not one per batch (on a server
    whose scan reads every ready job, the scan is most of a claim's cost). What a spare
    holds no other claimer holds: each share leaves the shared list as it is taken."""

    ids: list[Any] = field(default_factory=list)
    until: float = 0.0
    misses: int = 0
    # how the claimer waits for another's scan: its own stop-aware wait (True: stop), so a
    # claimer told to stop does not sleep in the store
    pause: Callable[[float], Any] = time.sleep

    def take(self, count: int) -> list[Any]:
        """The next `count`, in queue order."""
        if time.monotonic() > self.until or self.misses >= _SPARE_MISSES:
            self.ids = []
        taken = self.ids[:count]
        del self.ids[:count]
        return taken

    def taken(self, got: int) -> None:
        """How a pick went: one that found every job taken counts toward a stale spare."""
        self.misses = 0 if got else self.misses + 1

    def keep(self, ids: list[Any], age: float = 0.0, scan_seconds: float = 0.0) -> None:
        """Hold `ids` for the life of the scan that found them (`age` ago, in `scan_seconds`)."""
        self.ids, self.misses = ids, 0
        self.until = time.monotonic() + _lifetime(scan_seconds) - age


class ClaimQueries(Connection):
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
            ids = [d["_id"] for d in self.jobs.find(due, {"_id": 1}, hint=hint, limit=_STAGE_BATCH)]
            if not ids:
                return staged
            still = {**due, "_id": {"$in": ids}}
            staged += self.jobs.update_many(
                still, [{"$set": {"status": READY, "updated": "$$NOW"}}]
            ).modified_count
            if len(ids) < _STAGE_BATCH:
                return staged

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
                held = self._share(types, spare, now, max(_SHARE, limit - len(claimed)))
                now = self.now()  # it may have waited for a turn: jobs came due meanwhile
                claimed += self._from_spare(token, spare, now, lease, limit - len(claimed), tried)
        if len(claimed) < limit:
            began = time.monotonic()
            candidates = _unheld(
                self._candidates(types, now, len(held)), held, limit - len(claimed)
            )
            took = time.monotonic() - began
            if spare is None:
                claimed += self._take_in_turn(
                    token, candidates, now, lease, limit - len(claimed), tried
                )
            else:
                mine, kept, shared = _split(candidates, limit - len(claimed))
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

    def _share(self, types: list[str], spare: Spare, now: datetime, count: int) -> list[Any]:
        """Move the next `count` candidates of the shared list into `spare`, if the list is
        fresh; if it is used up, take the turn to scan, or, when another claimer holds it,
        wait for its list (looking again every third of a scan, at most `_TURN_MAX` s in
        all) rather than scan beside it. Claimers woken together by the clock so scan once,
        not once each. All by `_id` (IDHACK); on any error, scan (the list is a hint).

        Returns, with the turn, the ids the used-up list handed out that live spares still
        hold: they are still ready, so they head the next scan, and picking them would
        only collide with their holders."""
        deadline = time.monotonic() + _TURN_MAX
        me = secrets.token_hex(8)  # whose verdict the list records
        try:
            while True:
                doc = self._take_share(types, now, count, me)
                ids, turn = _granted(doc, me)
                if ids and doc is not None:
                    spare.keep(ids, _age(doc, now), _scan_seconds(doc))
                    return []
                if turn:
                    return _held_out(doc, now)
                wait = min(_turn_left(doc, now), deadline - time.monotonic(), _look_every(doc))
                if wait <= 0 or spare.pause(wait):
                    return []  # the holder is late, or the claimer stops: scan beside it
                now = self.now()
        except PyMongoError:
            return []

    def _take_share(self, types: list[str], now: datetime, count: int, me: str) -> Document | None:
        """The shared list after one atomic write that gave this claimer (`me`) its verdict
        in `grant`: the list's first `count` ids if it is fresh (they leave the list, so a
        share goes to one claimer only, and join `out`, the ids live spares hold), or else,
        when it had no ids left and no turn was held, the turn to scan (twice the last scan,
        within `_TURN_MIN`..`_TURN_MAX`).

        The verdict is read from the document as this write left it: SecantusDB may hand
        a findAndModify the document as it was before an earlier concurrent write, which
        told two claimers woken together that each held the turn, and both scanned."""
        at = _millis(now)
        life_ms = {"$max": [SPARE_SECONDS * 1000, {"$multiply": ["$scan_seconds", _APART_MS]}]}
        fresh_until = {"$add": [{"$toLong": "$scanned"}, life_ms]}
        fresh = {"$and": [{"$isArray": "$ids"}, {"$gt": [fresh_until, at]}]}
        ids = {"$cond": [{"$isArray": "$ids"}, "$ids", []]}
        has_ids = {"$and": [fresh, {"$gt": [{"$size": ids}, 0]}]}
        free = {"$lte": [{"$toLong": "$scanning_until"}, at]}  # a missing turn is null: free
        turn = {"$and": [{"$not": [has_ids]}, free]}
        scan_ms = {"$multiply": [{"$ifNull": ["$scan_seconds", 0]}, 2000]}
        turn_ms = {"$min": [_TURN_MAX * 1000, {"$max": [_TURN_MIN * 1000, scan_ms]}]}
        until = {"$toDate": {"$add": [at, {"$toLong": turn_ms}]}}
        share = {"$cond": [has_ids, {"$slice": [ids, count]}, []]}
        share_set = {
            "ids": {"$cond": [fresh, {"$slice": ["$ids", count, _LIST_CAP]}, "$ids"]},
            "out": {
                "$cond": [has_ids, {"$concatArrays": [{"$ifNull": ["$out", []]}, share]}, "$out"]
            },
            "scanning_until": {"$cond": [turn, until, "$scanning_until"]},
            "grant": {"by": {"$literal": me}, "ids": share, "turn": turn},
        }
        return self.candidates.find_one_and_update(
            {"_id": _list_key(types)},
            [{"$set": share_set}],
            upsert=True,
            return_document=ReturnDocument.AFTER,
        )

    def _publish(self, types: list[str], ids: list[Any], took: float, out: list[Any]) -> None:
        """Offer the rest of a scan to the claimers of these types (best effort), and end
        this claimer's turn. `out`: what this claimer took of the scan (its claim and spare)."""
        fields: Document = {"ids": ids, "scan_seconds": took, "out": out}
        stamped = {"$currentDate": {"scanned": True}}
        update = {"$set": fields, "$unset": {"scanning_until": ""}, **stamped}
        with contextlib.suppress(PyMongoError):  # the others scan for themselves
            self.candidates.update_one({"_id": _list_key(types)}, update, upsert=True)

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

    def _candidates(self, types: list[str], now: datetime, held: int = 0) -> list[Document]:
        """The first candidates in queue order, `held` more for those that live spares hold."""
        most = self.profile.scan_candidates
        limit = most + min(held, most)
        found = self.jobs.find(
            self._due_query(types, now),
            {"_id": 1, "priority": 1},
            sort=CLAIM_SORT,
            hint=self.scan_hint(CLAIM_INDEX),
            limit=limit,
            batch_size=limit,  # one reply, no getMore
        )
        return list(found)

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

    @translated
    def next_due(self, types: list[str]) -> datetime | None:
        """When to look again (None: no types, nothing to run): when the earliest ready job
        of `types` not due yet comes due, or when the earliest scheduled job is to be staged
        (its `run_at` less the HORIZON), or else at the end of `NEXT_DUE_WINDOW`. Read when a
        claim came back short, so the claimer can sleep until then.

        The ready ones on `ready_times` (partial on ready: one range of `run_at` per type,
        in index order; only what is due within the HORIZON is ready). The scheduled ones on
        the `schedule` index: a range of `run_at` in index order, its first key (no sort
        stage), bounded by the jobs due within the window; any type's, as the claimer
        stages every type's when it wakes."""
        if not types:
            return None
        now = self.now()
        soonest = [now + NEXT_DUE_WINDOW]
        ready = self._first_run_at(self._next_ready_query(types, now), READY_TIMES_INDEX)
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
    def _due_query(types: list[str], now: datetime) -> Document:
        return {"status": READY, "type": {"$in": types}, "run_at": {"$lte": now}}

    @staticmethod
    def _next_ready_query(types: list[str], now: datetime) -> Document:
        return {"status": READY, "type": {"$in": types}, "run_at": {"$gt": now}}

    @staticmethod
    def _next_due_query(now: datetime) -> Document:
        return {"status": SCHEDULED, "run_at": {"$lte": now + HORIZON + NEXT_DUE_WINDOW}}

    @staticmethod
    def _stage_query(now: datetime) -> Document:
        return {"status": SCHEDULED, "run_at": {"$lte": now + HORIZON}}

    # -- explain, for the index tests -----------------------------------------------

    def hot_path_queries(self, types: list[str]) -> dict[str, tuple[Document, Document]]:
        """Every query of the claim path as (find command, the server's plan for it).

        Updates are explained as a find with the same filter: the plan is the same,
        and not every server explains an update command."""
        now = self.now()
        ids = ["explain-a", "explain-b"]
        by_claim_index = {"sort": dict(CLAIM_SORT), "hint": self.index(CLAIM_INDEX), "limit": 4}
        commands: dict[str, Document] = {
            "claim candidates": {"filter": self._due_query(types, now), **by_claim_index},
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
                "limit": _STAGE_BATCH,
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
        command = {
            "find": self.jobs.name,
            "filter": self._due_query(types, self.now()),
            "projection": {"_id": 1},
            "sort": dict(CLAIM_SORT),
            "hint": self.index(CLAIM_INDEX),
            "limit": limit,
        }
        stats: Document = self._explain(command, "executionStats")["executionStats"]
        return stats


def _list_key(types: list[str]) -> str:
    """One shared candidate list per set of types: claimers of other sets cannot use it."""
    digest = hashlib.sha256("\0".join(sorted(types)).encode()).hexdigest()[:24]
    return f"types:{digest}"


def _millis(moment: datetime) -> int:
    """Milliseconds since the epoch: BSON dates are compared as these (`$toLong`)."""
    return int(moment.timestamp() * 1000)


_APART_MS = SCANS_APART * 1000


def _lifetime(scan_seconds: float) -> float:
    """Seconds a scan's candidates may be claimed from (see SPARE_SECONDS)."""
    return max(SPARE_SECONDS, SCANS_APART * scan_seconds)


def _scan_seconds(doc: Document) -> float:
    last = doc.get("scan_seconds")
    return float(last) if isinstance(last, int | float) and not isinstance(last, bool) else 0.0


def _granted(doc: Document | None, me: str) -> tuple[list[Any], bool]:
    """What `_take_share` gave `me`, as the write recorded it: (a share's ids, the turn)."""
    grant = doc.get("grant") if doc else None
    if not isinstance(grant, dict) or grant.get("by") != me:
        return [], False
    ids = grant.get("ids")
    return (ids if isinstance(ids, list) else []), grant.get("turn") is True


def _age(doc: Document, now: datetime) -> float:
    """Seconds since the list's scan."""
    scanned = doc.get("scanned")
    return max(0.0, (now - scanned).total_seconds()) if isinstance(scanned, datetime) else 0.0


def _turn_left(doc: Document | None, now: datetime) -> float:
    """Seconds until the turn another claimer holds runs out."""
    scanning = doc.get("scanning_until") if doc else None
    return (_millis(scanning) - _millis(now)) / 1000 if isinstance(scanning, datetime) else 0.0


def _look_every(doc: Document | None) -> float:
    """While another claimer scans, look for its list every third of its last scan, but not
    more often than every `_LOOK_MIN` (the last scan may have read an empty queue)."""
    last = doc.get("scan_seconds") if doc else None
    return max(_LOOK_MIN, last / 3) if isinstance(last, float) else _LOOK_MIN


def _held_out(doc: Document | None, now: datetime) -> list[Any]:
    """The ids the list had handed out, while their spares live (as long as the list); a
    write that gave the turn left `out`, `scanned` and `scan_seconds` as they were."""
    out = doc.get("out") if doc else None
    return out if doc is not None and isinstance(out, list) and _fresh(doc, now) else []


def _unheld(candidates: list[Document], held: list[Any], fill: int) -> list[Document]:
    """The candidates no live spare holds (an `_id` that is a document is kept: it only costs a
    collision, which the claim write settles); then, up to `fill`, the held ones after all.
    A held id may be back to ready already (claimed from the spare, then retried at once or
    handed back) and no event will name it again: left out of every scan for the list's
    life, it would wait for a poll. Picking it costs at most a collision."""
    if not held:
        return candidates
    out = {job_id for job_id in held if hashable(job_id)}
    free = [doc for doc in candidates if not hashable(doc["_id"]) or doc["_id"] not in out]
    if len(free) < fill:
        free += [doc for doc in candidates if hashable(doc["_id"]) and doc["_id"] in out][
            : fill - len(free)
        ]
    return free


def _fresh(doc: Document, now: datetime) -> bool:
    """The freshness test of `_take_share`, on the list's scan: the same verdict."""
    scanned = doc.get("scanned")
    if not isinstance(scanned, datetime):
        return False
    life_ms = max(SPARE_SECONDS * 1000, _scan_seconds(doc) * _APART_MS)  # as the server does
    return _millis(scanned) + life_ms > _millis(now)


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


def _split(candidates: list[Document], count: int) -> tuple[list[Any], list[Any], list[Any]]:
    """A scan's ids as (this claim's, this claimer's spare, the shared list's), split before
    the claim so that the shared list is published at once: claimers waiting for this
    scan take their shares while this one claims. The spare fills the claim when some of
    its first picks were taken meanwhile."""
    mine = candidates[:count]
    rest = _same_priority(candidates[count:], mine)
    kept = max(_SHARE, count)
    return [doc["_id"] for doc in mine], rest[:kept], rest[kept:]


def _same_priority(candidates: list[Document], claimed: list[Document]) -> list[Any]:
    """The candidates a spare may keep: those of the priority of the last one claimed. Picking among
    equals bends only the run_at order; a worse priority never jumps the queue by a spare
    (a better one pushed after the scan waits at most a scan's lifetime, see SPARE_SECONDS)."""
    if not claimed:
        return []
    priority = claimed[-1].get("priority")
    return [doc["_id"] for doc in candidates if doc.get("priority") == priority]


def _in_order(docs: list[Document], ids: list[Any]) -> list[Document]:
    rank = {job_id: position for position, job_id in enumerate(ids)}
    return sorted(docs, key=lambda doc: rank.get(doc["_id"], len(rank)))
