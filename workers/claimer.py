"""The claimer of one worker process: batches of jobs for its idle threads.

Each batch is claimed under a token of its own (`<process>#<n>`), which every
later write for those jobs must name, so writes are fenced per attempt, not
per process. A claim interrupted after its write was sent is recovered (its
jobs read back by token) before anything new is claimed: a job taken by a
failed claim still runs instead of lapsing into a rescue that counts an
attempt it never had.

Types under a limit (limits.py) are claimed first, each on its own, within what
its limits allow now; the rest in one claim as before. A limited type at its cap
is not looked at again until the rate's window opens or a job of it ends here
(or, for a cap held elsewhere, `recheck` seconds later): a claimer never spins
on a type it cannot take, and the other types flow meanwhile.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from workers.errors import ClaimIncomplete, WorkersError
from workers.limits import Limit
from workers.store import Document, Limited, LimitedAsk, Store
from workers.store.shared_scans import Spare

log = logging.getLogger(__name__)

_FAILED_AGAIN = 5.0  # seconds before a limited type whose claim failed is tried again


@dataclass
class _Watched:
    """A limited type as this claimer sees it: when to look for its jobs next (monotonic;
    0: at the next claim), and whether it is held back by its limit (a wait then ends at
    `look_at`) rather than idle (the stream says when its jobs come)."""

    limit: Limit
    look_at: float = 0.0
    held_back: bool = False
    by_rate: bool = False  # held back until the window opens: a job's end does not help
    ends: int = 0  # jobs of the type that ended here: one that ends during a claim counts
    failing: bool = False  # its last claim failed (logged once until one succeeds)


class Claimer:
    def __init__(
        self,
        store: Store,
        owner: str,
        types: list[str],
        lease: float,
        pause: Callable[[float], Any] = time.sleep,
        *,
        limits: Mapping[str, Limit] | None = None,
        held: Callable[[], Mapping[str, int]] = dict,
        recheck: float = 1.0,
    ) -> None:
        """`pause`: how to wait for another claimer's scan (the worker's stop-aware wait);
        `limits`: flow control by type; `held`: this process's jobs by type; `recheck`:
        seconds before a type at a cap held elsewhere is looked at again."""
        self.store = store
        self.owner = owner
        self.types = types
        self.lease = lease
        self._batches = itertools.count(1)
        self._interrupted: ClaimIncomplete | None = None
        self._pending: list[Document] = []  # taken by a claim that then failed: handed over next
        self._watched = {t: _Watched(limit) for t, limit in (limits or {}).items() if t in types}
        self._free_types = [t for t in types if t not in self._watched]
        self._held = held
        self._ends_lock = threading.Lock()  # `ended` runs on the job threads
        self._recheck = recheck
        # shared scans where the server profile says they pay (profile.py); else the plain
        # claim: a scan of the claim index, a write by _id, a read-back
        self._spare = Spare(pause=pause) if store.profile.shared_scans else None

    @property
    def shares_scans(self) -> bool:
        return self._spare is not None

    def claim(
        self,
        limit: int,
        woken: list[Any] | None = None,
        *,
        after_wait: bool = False,
        spare: bool = True,
        confirm: frozenset[Any] = frozenset(),
    ) -> list[Document]:
        """Up to `limit` jobs, now held under fresh tokens: the limited types' first, within
        their limits; then those of `woken` (ids the wake-up stream reported ready) that are
        still ready, or else the queue's best. `after_wait`: the claimer waited before this
        claim (woken by the stream, a due time or a poke), so every limited type not held
        back is looked at; `confirm`: woken ids another process went first for, taken only
        if a read finds them still ready. Raises WorkersError on failure (an interrupted
        claim is then recovered, and what was taken handed over, next call)."""
        docs, self._pending = self._pending, []
        if self._interrupted is not None:
            return docs + self._recover(self._interrupted)
        try:
            if self._watched:
                docs += self._claim_limited(limit - len(docs), after_wait or woken is not None)
            rest = limit - len(docs)
            if rest > 0 and self._free_types:
                docs += self._claim_free(rest, woken, spare, confirm)
        except WorkersError as exc:
            if isinstance(exc, ClaimIncomplete):
                self._interrupted = exc
            self._pending = docs
            raise
        return docs

    def pending(self) -> list[Document]:
        """Jobs a failed claim had taken, not yet handed over (at a stop: hand them back)."""
        docs, self._pending = self._pending, []
        return docs

    def _token(self) -> str:
        return f"{self.owner}#{next(self._batches)}"

    def _claim_free(
        self, limit: int, woken: list[Any] | None, spare: bool, confirm: frozenset[Any]
    ) -> list[Document]:
        """The types without a limit: one claim, by the woken ids or by a scan (`spare`:
        with this claimer's spare, where the server profile keeps one)."""
        if woken:
            ids = woken[:limit]
            if confirm & set(ids):  # another process went first: what it left, if any
                ids = self.store.still_ready(ids, confirm)
            return self.store.claim_ids(self._token(), self._free_types, self.lease, ids)
        kept = self._spare if spare else None
        return self.store.claim(self._token(), self._free_types, self.lease, limit, kept)

    # -- limited types ------------------------------------------------------------------

    def _claim_limited(self, limit: int, woken: bool) -> list[Document]:
        """Each limited type whose turn it is, within its limits and `limit` in all. After a
        wait every type not held back is looked at: the woken ids may be its, and the due
        time that ended the wait may be one of its jobs' (a retry's). Only a claimer kept
        busy by other types looks at an idle limited type once per `recheck`."""
        docs: list[Document] = []
        with self._ends_lock:  # an end after this read is seen by `_settle`
            ends = {job_type: watched.ends for job_type, watched in self._watched.items()}
        held = self._held()
        now = time.monotonic()
        for job_type, watched in self._watched.items():
            room = limit - len(docs)
            due = now >= watched.look_at or (woken and not watched.held_back)
            if room < 1 or not due:
                continue
            local = watched.limit.concurrency
            if local is not None:
                room = min(room, local - held.get(job_type, 0))
                if room < 1:  # looked at again when one of ours ends (`ended`), or soon
                    self._settle(watched, Limited([], waiting=True), now, ends[job_type])
                    continue
            try:
                got = self._claim_type(job_type, watched.limit, room)
            except ClaimIncomplete:
                raise  # its jobs may be taken: recovered by the next claim
            except WorkersError as exc:  # this type's only: the others still flow
                self._failed(job_type, watched, exc, now)
                continue
            self._settle(watched, got, now, ends[job_type])
            docs += got.jobs
        return docs

    def _failed(self, job_type: str, watched: _Watched, exc: WorkersError, now: float) -> None:
        """A limited type whose claim failed (a role without `workers.limits`, a server
        refusing its transaction): looked at again `_FAILED_AGAIN` seconds later, while the
        other types are claimed as usual; said once per failure streak, at error level."""
        if not watched.failing:
            log.error(
                "cannot claim %s under its limit (the other types go on): %s",
                job_type,
                exc,
                extra={"action": "limited_claim_failed", "type": job_type},
            )
        watched.failing = True
        watched.held_back, watched.by_rate = False, False
        watched.look_at = now + max(self._recheck, _FAILED_AGAIN)

    def _claim_type(self, job_type: str, limit: Limit, room: int) -> Limited:
        if not limit.cluster_wide:  # a full room may leave more due: held back till one ends
            jobs = self.store.claim(self._token(), [job_type], self.lease, room)
            return Limited(jobs, waiting=len(jobs) == room)
        rate = (limit.rate.count, limit.rate.seconds) if limit.rate else None
        ask = LimitedAsk(self._token(), job_type, self.lease, room, limit.global_concurrency, rate)
        return self.store.claim_limited(ask)

    def _settle(self, watched: _Watched, got: Limited, now: float, ends: int) -> None:
        """`_note`, unless a job of the type ended here since `held` was read (`ends` then):
        its `ended` came too early to release a hold set only now, so the hold ends at once
        (`next_look` is now: the claimer does not wait)."""
        watched.failing = False
        with self._ends_lock:
            self._note(watched, got, now)
            if watched.ends != ends and watched.held_back and not watched.by_rate:
                watched.look_at = 0.0

    def _note(self, watched: _Watched, got: Limited, now: float) -> None:
        """When to look at the type again. Held back (due jobs left waiting by the limit, some
        taken or none): when the window opens, when one of its jobs ends here, or `recheck`
        later for a slot freed elsewhere. Otherwise at once after it gave jobs (more may be
        due), or `recheck` later (or when woken) when it had none."""
        watched.held_back = got.waiting
        watched.by_rate = got.retry_at is not None
        if got.retry_at is not None:
            watched.look_at = now + max(0.0, self.store.seconds_until(got.retry_at, self._recheck))
        elif got.jobs and not got.waiting:
            watched.look_at = 0.0
        else:
            watched.look_at = now + self._recheck

    def ended(self, job_type: Any) -> bool:
        """A job of ours ended: its type, if limited, is looked at by the next claim. True
        when the claimer should be woken for it."""
        watched = self._watched.get(job_type)
        if watched is None:
            return False
        with self._ends_lock:
            watched.ends += 1
            if not watched.held_back or watched.by_rate:
                return False
            watched.look_at, watched.held_back = 0.0, False
            return True

    def next_look(self) -> datetime | None:
        """When a limited type held back by its limit is to be looked at again (the server's
        clock), for the claimer's wait; None if none is."""
        soonest = min((w.look_at for w in self._watched.values() if w.held_back), default=None)
        if soonest is None:
            return None
        try:
            return self.store.now() + timedelta(seconds=max(0.0, soonest - time.monotonic()))
        except WorkersError:
            return None

    def _recover(self, interrupted: ClaimIncomplete) -> list[Document]:
        """The interrupted claim held no more jobs than there were idle threads then, and
        nothing was handed over since, so they all fit now."""
        docs = self.store.recover_claim(interrupted.token, interrupted.ids)
        self._interrupted = None
        log.info(
            "recovered an interrupted claim",
            extra={"action": "claim_recovered", "token": interrupted.token, "jobs": len(docs)},
        )
        return docs

    def stage(self) -> None:
        """Make the due scheduled jobs ready (store.stage_due); a failure only delays them to
        the next stage."""
        try:
            staged = self.store.stage_due()
        except WorkersError as exc:
            log.debug("could not stage the due jobs: %s", exc)
            return
        if staged:
            log.debug("staged due jobs", extra={"action": "jobs_staged", "jobs": staged})

    def next_due(self, after: datetime | None = None) -> tuple[bool, datetime | None]:
        """(known, when the next delayed job of our types not due at `after` (when the last
        claim looked) is due: None if none)."""
        try:
            return True, self.store.next_due(self.types, after)
        except WorkersError as exc:
            log.debug("could not read the next due time: %s", exc)
            return False, None
