"""The claim of a type under a cluster-wide limit: `global_concurrency` and `rate_limit`.

Such a claim runs in a transaction that first bumps the type's document in the
`limits` collection (`looks`, and `looked` by $$NOW: how often and when a claimer last
looked at the type). Every claimer of the type writes that document, so two
racing claims conflict and one of them retries on a newer snapshot: a count
read in the transaction cannot be overtaken by another claim (no write skew),
and the cap never overshoots.

- Concurrency: the type's `running` jobs are counted in the transaction, on the
  claim index (status, type); the claim takes at most cap - running. The count is
  derived from the jobs, so nothing is written when a job ends, and a crashed
  holder's slot frees when the sweep rescues its lease.
- Rate: the document keeps the starts in `spans`, a counter per slice of the window
  (SLICES to a window, each named by its end in epoch milliseconds of $$NOW at the write,
  so never before the jobs' own `started`). A slice counts while any of it is within the
  window: the claim takes at most `count` less those, never more than the rate allows in
  any window, and says when the window lets the next one start. A claim rewrites at most
  SLICES + 1 small counters, where it rewrote one date per start (up to 10,000).

Cost: one transaction per claim of a limited type (its bump, the count, the scan,
the claim write, and for a rate the log), none per job beyond the claim. Types
without a cluster-wide limit never come here. Transactions need a replica set or
mongos: on a standalone server a limited claim is refused (`needs_transactions`).
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from pymongo import ReadPreference, ReturnDocument, WriteConcern
from pymongo.client_session import ClientSession
from pymongo.errors import ConnectionFailure, OperationFailure
from pymongo.read_concern import ReadConcern

from workers.errors import ClaimIncomplete, StoreError
from workers.record import READY, RUNNING
from workers.store.base import Document, _as_write_concern, number, translated
from workers.store.claims import CLAIM_INDEX, CLAIM_SORT, ClaimQueries, _claimed, _still_ready
from workers.store.schedule import READY_TIMES_INDEX

_TRIES = 4  # transactions that lost a race to another claimer, before giving the turn up
_CONFLICT_PAUSE = (0.002, 0.02)  # seconds between tries, at random: racers drift apart
_NO_TRANSACTIONS = (20, 263)  # IllegalOperation on a standalone; not supported


@dataclass(frozen=True)
class Limited:
    """What a limited claim took, and what it learned: `waiting` due jobs of the type were
    left ready because of the limit; `retry_at` (the server's clock) is when the rate's
    window lets the next one start (None: when a running one ends)."""

    jobs: list[Document]
    waiting: bool = False
    retry_at: datetime | None = None


@dataclass(frozen=True)
class LimitedAsk:
    """One limited claim: up to `want` due ready jobs of `job_type` under `token`, within
    `cap` running and `rate` = (count, seconds) starts."""

    token: str
    job_type: str
    lease: float
    want: int
    cap: int | None = None
    rate: tuple[int, float] | None = None


class LimitQueries(ClaimQueries):
    _limit_docs: set[str]  # the types whose document this store made (or found)

    @translated
    def claim_limited(self, ask: LimitedAsk) -> Limited:
        """Claim what `ask` allows; raises ClaimIncomplete when the commit's outcome is
        unknown (the jobs it may have taken are read back by its token)."""
        if ask.want < 1 or not self._any_due(ask.job_type):
            return Limited([])
        self._make_document(ask.job_type)
        for attempt in range(_TRIES):
            tried: list[Any] = []
            try:
                with self._client.start_session() as session:
                    return self._claim_in(session, ask, tried)
            except OperationFailure as exc:
                if exc.code in _NO_TRANSACTIONS:
                    raise StoreError(needs_transactions(ask.job_type)) from exc
                if tried and exc.has_error_label("UnknownTransactionCommitResult"):
                    raise ClaimIncomplete(ask.token, tried, exc) from exc
                if not exc.has_error_label("TransientTransactionError"):
                    raise
            except ConnectionFailure as exc:
                if tried:  # the commit was sent: it may have taken them
                    raise ClaimIncomplete(ask.token, tried, exc) from exc
                raise
            if attempt < _TRIES - 1:
                time.sleep(random.uniform(*_CONFLICT_PAUSE))  # noqa: S311 (jitter)
        return Limited([], waiting=True)  # others are claiming it now: look again soon

    def _claim_in(self, session: ClientSession, ask: LimitedAsk, tried: list[Any]) -> Limited:
        job_type, cap, rate = ask.job_type, ask.cap, ask.rate
        with session.start_transaction(  # leaving it by an exception aborts
            read_concern=ReadConcern("snapshot"),
            write_concern=WriteConcern(**_as_write_concern(self.write_concern, self.timeout)),
            read_preference=ReadPreference.PRIMARY,
        ):
            doc = self.limits.find_one_and_update(
                {"_id": job_type},
                [{"$set": {"looks": {"$add": [number("$looks"), 1]}, "looked": "$$NOW"}}],
                return_document=ReturnDocument.AFTER,
                session=session,
            )
            now: datetime = doc["looked"] if doc else self.now()
            allowed, retry_at = ask.want, None
            if cap is not None:
                allowed = min(allowed, cap - self._running(job_type, session))
            if rate is not None:
                spans = _in_window(doc, now, rate[1])
                allowed = min(allowed, rate[0] - sum(n for _, n in spans))
                retry_at = _window_opens(spans, rate)
            if allowed < 1:  # committed all the same: `looks` counts every look
                return Limited([], waiting=True, retry_at=retry_at)
            ids = self._first_due(job_type, now, allowed, session)
            if not ids:
                return Limited([])
            update = [{"$set": _claimed(ask.token, ask.lease)}]
            taken = self.jobs.update_many(_still_ready(ids, now), update, session=session)
            if rate is not None and taken.matched_count:
                self._log_starts(job_type, taken.matched_count, rate[1], session)
            tried += ids
            session.commit_transaction()
        jobs = self._held_under(ask.token, ids)
        return Limited(jobs, waiting=len(ids) == allowed < ask.want)

    def _any_due(self, job_type: str) -> bool:
        """Is a job of the type due? One indexed read, outside any transaction: an idle
        limited type costs no transaction."""
        query = self._due_query([job_type], self.now())
        return self.jobs.find_one(query, {"_id": 1}, hint=self.scan_hint(CLAIM_INDEX)) is not None

    def _make_document(self, job_type: str) -> None:
        """The type's document, made once outside a transaction (a transaction's upsert
        into a new collection fails on older servers)."""
        made: set[str] = self.__dict__.setdefault("_limit_docs", set())
        if job_type not in made:
            self.limits.update_one(
                {"_id": job_type}, {"$setOnInsert": {"looks": 0, "spans": []}}, upsert=True
            )
            made.add(job_type)

    def _running(self, job_type: str, session: ClientSession) -> int:
        """The type's running jobs, on the claim index (status, type): at most the cap,
        plus any whose holders died and whose leases are not yet rescued."""
        query = {"status": RUNNING, "type": job_type}
        return self.jobs.count_documents(
            query, session=session, **self.scan_hint_option(CLAIM_INDEX)
        )

    def _first_due(
        self, job_type: str, now: datetime, limit: int, session: ClientSession
    ) -> list[Any]:
        found = self.jobs.find(
            self._due_query([job_type], now),
            {"_id": 1},
            sort=CLAIM_SORT,
            hint=self.scan_hint(CLAIM_INDEX),
            limit=limit,
            session=session,
        )
        return [doc["_id"] for doc in found]

    def _log_starts(
        self, job_type: str, taken: int, seconds: float, session: ClientSession
    ) -> None:
        """`taken` more starts in the slice of $$NOW (at the write: not earlier than the
        claimed jobs' `started`), the slices out of the window dropped."""
        self.limits.update_one({"_id": job_type}, _counted(taken, seconds), session=session)

    @translated
    def limit_use(self, job_type: str, window: float | None) -> dict[str, Any]:
        """For the dashboard: the type's running jobs, its due ready ones, and its starts in
        the last `window` seconds (None: no rate). Indexed reads and one read by `_id`."""
        now = self.now()
        starts = None
        if window is not None:
            doc = self.limits.find_one({"_id": job_type}, {"spans": 1, "starts": 1})
            starts = sum(n for _, n in _in_window(doc, now, window))
        return {
            "running": self.jobs.count_documents({"status": RUNNING, "type": job_type}),
            "ready": self.jobs.count_documents(
                _backlog(job_type, now),
                limit=BACKLOG_CAP,
                **self.scan_hint_option(READY_TIMES_INDEX),
            ),
            "starts": starts,
        }

    def hot_path_queries(
        self, types: list[str], claim_limit: int = 10
    ) -> dict[str, tuple[Document, Document]]:
        """The claim path's queries (claims.py), and a limited claim's own reads."""
        queries = super().hot_path_queries(types, claim_limit)
        for name, command in self._limited_queries(types[0]).items():
            queries[name] = self.explain_find(command)
        return queries

    def _limited_queries(self, job_type: str) -> dict[str, Document]:
        by_claim_index = {"hint": self.index(CLAIM_INDEX)}
        return {
            "limited running count": {
                "filter": {"status": RUNNING, "type": job_type},
                **by_claim_index,
            },
            "limit backlog": {
                "filter": _backlog(job_type, self.now()),
                "hint": self.index(READY_TIMES_INDEX),
                "limit": BACKLOG_CAP,
            },
            "limited due check": {
                "filter": {"status": READY, "type": job_type, "run_at": {"$lte": self.now()}},
                "sort": dict(CLAIM_SORT),
                "limit": 1,
                **by_claim_index,
            },
        }


# The most due jobs a dashboard or a scrape counts for one limited type: a count reads
# that many index keys at most (on ready_times, one range of `run_at`), where it read
# every ready job of the type on the claim index, per page view and per scrape.
BACKLOG_CAP = 10_000


def _backlog(job_type: str, now: datetime) -> Document:
    """A type's due ready jobs: on `ready_times` (partial on ready), one range of run_at."""
    return {"status": READY, "type": job_type, "run_at": {"$lte": now}}


SLICES = 100  # counters to a rate's window: a start is counted up to 1/100 of it late
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _slice_ms(seconds: float) -> int:
    return max(1, int(seconds * 1000) // SLICES)


def _counted(taken: int, seconds: float) -> list[Document]:
    """The update by pipeline that counts `taken` starts in the slice of $$NOW. In epoch
    milliseconds (numbers, not dates): date arithmetic is not compared alike on every
    server this runs on, integers are."""
    width, window = _slice_ms(seconds), int(seconds * 1000)
    end = {"$add": [{"$subtract": ["$_now", {"$mod": ["$_now", width]}]}, width]}
    live = {"$gt": ["$$this.end", {"$subtract": ["$_now", window]}]}
    same = {"$filter": {"input": "$_live", "cond": {"$eq": ["$$this.end", "$_end"]}}}
    others = {"$filter": {"input": "$_live", "cond": {"$ne": ["$$this.end", "$_end"]}}}
    count = {"$add": [{"$sum": {"$map": {"input": same, "in": "$$this.n"}}}, taken]}
    return [
        {"$set": {"_now": {"$toLong": "$$NOW"}}},
        {"$set": {"_end": end, "_live": {"$filter": {"input": {"$ifNull": ["$spans", []]},
                                                      "cond": live}}}},
        {"$set": {"spans": {"$concatArrays": [others, [{"end": "$_end", "n": count}]]}}},
        {"$unset": ["_now", "_end", "_live"]},
    ]  # fmt: skip


def _in_window(doc: Document | None, now: datetime, seconds: float) -> list[tuple[int, int]]:
    """The slices any of which is within `seconds` before `now`, as (end, starts) in
    epoch milliseconds, oldest first; an earlier version's `starts` (one date each) too,
    so that a rolling deploy counts what the old nodes started."""
    since = _epoch_ms(now) - int(seconds * 1000)
    found: list[tuple[int, int]] = []
    for span in _listed(doc, "spans"):
        end, n = (span.get("end"), span.get("n")) if isinstance(span, dict) else (None, None)
        if isinstance(end, int) and isinstance(n, int) and end > since:
            found.append((end, n))
    for start in _listed(doc, "starts"):
        if isinstance(start, datetime) and _epoch_ms(start) + 1 > since:
            found.append((_epoch_ms(start) + 1, 1))
    return sorted(found)


def _window_opens(spans: list[tuple[int, int]], rate: tuple[int, float]) -> datetime | None:
    """When enough of the oldest slices leave the window for one more start (None: one
    may start now)."""
    count, seconds = rate
    over = sum(n for _, n in spans) - count + 1  # starts that must leave first
    if over <= 0:
        return None
    for end, n in spans:
        over -= n
        if over <= 0:
            return _EPOCH + timedelta(milliseconds=end + int(seconds * 1000))
    return None


def _listed(doc: Document | None, name: str) -> list[Any]:
    found = (doc or {}).get(name)
    return found if isinstance(found, list) else []


def _epoch_ms(moment: datetime) -> int:
    return (moment - _EPOCH) // timedelta(milliseconds=1)


def needs_transactions(job_type: str) -> str:
    return (
        f"{job_type} has a global_concurrency or rate_limit, which is enforced in a "
        "transaction, and this MongoDB server has none (a standalone server): run it as a "
        "replica set (one member is enough) or drop the limit"
    )
