"""Waking an idle claimer: a change stream where the server has one, polling otherwise.

An idle claimer sleeps until a job becomes ready (the stream reports it),
until the next delayed job is due (read from the claim index, or carried by
an event), or at the latest one `poll_interval` later while the stream is not
healthy: the fallback where the server has no change streams (a standalone
mongod) and after stream errors. The stream resumes from its token after an
error or a server restart, and after every (re)open the claimer is woken
once to look for anything the stream may not replay.

A claimer that stays busy (every claim fills its idle threads) has no use for
the stream, and following it costs the server a share of every write it
serves (a third of a drain's throughput on the embedded server): after
`PAUSE_AFTER` seconds of being busy the stream is closed, and it is opened
afresh (no resume: nothing that happened meanwhile needs replaying, the look
after the open covers it) the moment the claimer waits again.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from datetime import UTC, datetime
from typing import Any

from workers.errors import StreamUnavailable, WorkersError
from workers.peers import DEFER, Peers
from workers.record import HORIZON
from workers.retrying import Backoff
from workers.store import ReadyChange, ReadyStream, Store

log = logging.getLogger(__name__)

_STREAM_WAIT = 0.5  # seconds one getMore waits for events: bounds how long stop() takes
_SAFETY_POLL = 30.0  # with a healthy stream, look anyway this often
_BACKOFF_MAX = 10.0
_WOKEN_MAX = 256  # ids kept for a claim by _id; more than that, and the claimer scans
PAUSE_AFTER = 0.25  # seconds of a busy claimer before the stream is closed
_LONG_AGO = datetime(1970, 1, 1, tzinfo=UTC)


class Wakeup:
    def __init__(
        self,
        store: Store,
        poll_interval: float,
        *,
        stream: bool = True,
        peers: Peers | None = None,
    ) -> None:
        self.store = store
        self._peers = peers  # who goes first for a woken id or a due time; None: this one
        self.poll_interval = poll_interval
        self._use_stream = stream
        self._cond = threading.Condition()  # an RLock: poke() is safe in a signal handler
        self._ready = False  # a job became ready since clear()
        # the earliest future run_at an event carried: kept across waits until it comes, so
        # a wake by another job before it does not lose it
        self._due: datetime | None = None
        self._woken: dict[Any, int] = {}  # jobs the stream reported ready now -> priority
        self._scan = True  # a look by scan is due (a poke, the clock, an event without an id)
        # jobs made ready by their status alone (a resume, a release, a stage): the event
        # did not say when they come due. Kept from clear() to the wait's end, then handed
        # to the claimer as `undated`: one not claimed may be due later than it knows
        self._undated: set[Any] = set()
        self.undated: frozenset[Any] = frozenset()
        # woken ids another process goes first for: id -> (monotonic deadline, priority);
        # at the deadline they are woken ids to confirm (`confirm`) before a claim
        self._deferred: dict[Any, tuple[float, int]] = {}
        self._deferred_scan = math.inf  # more deferred than kept: a scan at this deadline
        self.confirm: frozenset[Any] = frozenset()
        self._defer_known: tuple[datetime, float] | None = None  # the last due, its wait
        self._stop = threading.Event()
        self._healthy = threading.Event()
        self._busy_since: float | None = None  # monotonic; None while the claimer waits
        self._wanted = threading.Event()  # a paused stream is wanted again
        self.pauses = 0  # how often the stream was closed for a busy claimer
        self.opens = 0  # how often it was (re)opened: events may be missing from before
        # the last wait ended because a scheduled job came due: the claimer stages first
        self.due_reached = False
        self._thread = threading.Thread(target=self._watch, name="wakeup", daemon=True)

    @property
    def streaming(self) -> bool:
        """True while the change stream is open and delivering."""
        return self._healthy.is_set()

    def start(self) -> None:
        if self._use_stream:
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self.poke()
        if self._thread.ident is not None:
            self._thread.join(timeout=_STREAM_WAIT + self.store.timeout)

    def poke(self) -> None:
        """Wake the claimer now: a job may be ready, or it should stop."""
        with self._cond:
            self._ready = self._scan = True
            self._cond.notify_all()

    def busy(self) -> None:
        """The last claim filled every idle thread: the claimer is not going to wait soon."""
        if self._busy_since is None:
            self._busy_since = time.monotonic()

    def paused(self) -> bool:
        """True while the claimer has been busy long enough that the stream can rest."""
        since = self._busy_since
        return since is not None and time.monotonic() - since >= PAUSE_AFTER

    def clear(self) -> None:
        """Called just before a claim: a job that becomes ready after this wakes the next wait."""
        with self._cond:
            self._ready = self._scan = False
            self._woken = {}
            self._undated = set()

    def wait(self, next_due: datetime | None) -> list[Any] | None:
        """Sleep until a job is ready, until the next due time (the database clock), or the
        poll fallback. Returns the ids of the jobs the stream reported ready, best priority
        first, when that is all that woke it (the claimer takes them by `_id`, without a
        scan); None when it should look by a scan (woken by the clock, a poke or stop, or
        by the stream after a due time passed: those woken ids may not include that job)."""
        began = time.monotonic()
        self._busy_since = None
        self.due_reached = False
        self._wanted.set()  # a paused stream opens again (and looks once when it has)
        with self._cond:
            while not self._ready:
                fallback = _SAFETY_POLL if self.streaming else self.poll_interval
                seconds = began + fallback - time.monotonic()
                due = min((d for d in (next_due, self._due) if d is not None), default=None)
                if due is not None:
                    seconds = min(seconds, self._seconds_until(due) + self._defer_for(due))
                seconds = min(seconds, self._deferred_until() - time.monotonic())
                if seconds <= 0:
                    break
                self._cond.wait(seconds)
            self._wake_deferred()
            self.due_reached = self._reached(next_due)
            self.undated = frozenset(self._undated)
            if not self._ready or self._scan or not self._woken or self.due_reached:
                return None
            return sorted(self._woken, key=self._woken.__getitem__)

    def _reached(self, next_due: datetime | None) -> bool:
        """True when `next_due` or the due time an event carried has come, whatever ended
        the wait: the claim that follows stages and scans for it. The event's is dropped
        then (the claimer reads the next due time again after a due time was reached)."""
        mine = self._due is not None and self._seconds_until(self._due) <= 0
        if mine:
            self._due = None
        return mine or (next_due is not None and self._seconds_until(next_due) <= 0)

    def nap(self, seconds: float) -> None:
        """The claimer's wait after a failed claim: `seconds`, or less when the stream
        reopens (the database is back) or the worker stops, both of which poke."""
        deadline = time.monotonic() + seconds
        with self._cond:
            while not self._ready and (left := deadline - time.monotonic()) > 0:
                self._cond.wait(left)

    def _seconds_until(self, moment: datetime) -> float:
        return self.store.seconds_until(moment, self.poll_interval)

    def _note(self, change: ReadyChange) -> None:
        with self._cond:
            run_at = change.run_at
            if run_at is None and not change.scheduled:
                self._undated.add(change.job_id)
            if change.scheduled:  # staged a HORIZON before it; not said when: stage at once
                run_at = run_at - HORIZON if run_at else _LONG_AGO
            elif run_at is not None and self._seconds_until(run_at) <= 0:
                run_at = None
            if run_at is not None:
                self._due = min(self._due or run_at, run_at)  # the wait recomputes its deadline
            else:
                self._wake_for(change)
            self._cond.notify_all()

    def _wake_for(self, change: ReadyChange) -> None:
        """A job ready now: woken at once if this process goes first for it (peers.py), or
        deferred; a job of a type this process does not run is not its to claim."""
        job_id, priority = change.job_id, change.priority or 0
        peers = self._peers
        if job_id is None or len(self._woken) >= _WOKEN_MAX:
            self._ready = self._scan = True  # too many, or one without an id: a scan finds them
        elif peers is not None and change.job_type and not peers.runs(change.job_type):
            return
        elif peers is None or peers.prefers_me(str(job_id), change.job_type):
            self._ready = True
            self._woken[job_id] = priority
        elif len(self._deferred) < _WOKEN_MAX:
            self._deferred[job_id] = (time.monotonic() + DEFER, priority)
        else:
            self._deferred_scan = min(self._deferred_scan, time.monotonic() + DEFER)

    def _defer_for(self, due: datetime) -> float:
        """Seconds after a due time this process looks: at once if it goes first for that
        time, else `DEFER` later (the one that goes first has taken the job by then)."""
        peers = self._peers
        if peers is None:
            return 0.0
        if self._defer_known is None or self._defer_known[0] != due:  # hashed once per due
            self._defer_known = (due, 0.0 if peers.prefers_me(due.isoformat()) else DEFER)
        return self._defer_known[1]

    def _deferred_until(self) -> float:
        soonest = min((deadline for deadline, _ in self._deferred.values()), default=math.inf)
        return min(soonest, self._deferred_scan)

    def _wake_deferred(self) -> None:
        """The deferred ids whose deadline passed become woken ids, to be confirmed still
        ready by a read before the claim (`confirm`)."""
        now = time.monotonic()
        due = [job_id for job_id, (deadline, _) in self._deferred.items() if deadline <= now]
        for job_id in due:
            _, priority = self._deferred.pop(job_id)
            if len(self._woken) < _WOKEN_MAX:
                self._woken[job_id] = priority
            else:
                self._scan = True
        if self._deferred_scan <= now:
            self._deferred_scan, self._scan = math.inf, True
        self.confirm = frozenset(due)
        self._ready = self._ready or bool(due) or self._scan

    # -- the watcher thread -------------------------------------------------------------

    def _watch(self) -> None:
        stream = self.store.ready_stream()
        backoff = Backoff(0.5, _BACKOFF_MAX)
        try:
            while not self._stop.is_set():
                try:
                    self._follow(stream)
                except StreamUnavailable as exc:
                    log.info("no change streams; waking by polling: %s", exc)
                    return
                except WorkersError as exc:
                    if self._healthy.is_set():  # it was delivering: start the backoff over
                        backoff.reset()
                    self._set_healthy(False)  # the claimer polls meanwhile
                    backoff.wait_after(exc, "wake-up stream", "stream_failed", self._stop)
        finally:
            self._set_healthy(False)
            stream.close()

    def _set_healthy(self, healthy: bool) -> None:
        """A waiting claimer re-reads its deadline: the poll fallback applies while unhealthy."""
        with self._cond:
            if healthy:
                self._healthy.set()
            else:
                self._healthy.clear()
            self._cond.notify_all()

    def _follow(self, stream: ReadyStream) -> None:
        stream.open(_STREAM_WAIT)
        self.opens += 1
        self._set_healthy(True)
        # Look once after every (re)open: whether or not the token let the stream replay
        # what happened while it was down, a claim costs less than a missed job.
        self.poke()
        while not self._stop.is_set():
            if self.paused():
                self._rest(stream)
                return
            change = stream.next_change()
            if change is not None:
                self._note(change)

    def _rest(self, stream: ReadyStream) -> None:
        """Close the stream until the claimer waits again; then it starts afresh."""
        self._wanted.clear()
        self.pauses += 1
        stream.close_stream()
        stream.resume_token = None
        self._set_healthy(False)
        log.debug("wake-up stream paused: the claimer is busy", extra={"action": "stream_paused"})
        while not self._stop.is_set() and self.paused() and not self._wanted.wait(_STREAM_WAIT):
            pass
