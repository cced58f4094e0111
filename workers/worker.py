"""One worker process: a claimer feeding `workers.count` job threads.

Only the claimer queries the queue head: it takes as many jobs as there are
idle threads in one batch and hands them over in memory, so the threads never
race each other for the head (DESIGN.md §5). While jobs are waiting it lingers
briefly for more threads to free up, so batches stay large; when the queue is
empty it sleeps until the wake-up stream, the next due time or the poll
fallback says otherwise. The job threads and what they hold: pool.py; the
heartbeat keeps the leases of held jobs (heartbeat.py); the watchdog enforces
per-job timeouts (watchdog.py); the end by level: stopping.py.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from datetime import datetime
from typing import Any

from workers import tracing
from workers.app import App
from workers.claimer import Claimer
from workers.cron import Scheduler
from workers.errors import DatabaseUnavailable, SettingsError, WorkersError
from workers.heartbeat import Heartbeat
from workers.peers import Peers
from workers.pool import Pool, Profile
from workers.retrying import Backoff
from workers.stopping import shut_down
from workers.store import needs_transactions
from workers.version import __version__
from workers.wakeup import Wakeup
from workers.watchdog import EXIT_RECYCLE, Watchdog

log = logging.getLogger(__name__)

EXIT_OK = 0
_BACKOFF_FIRST = 0.5  # a claim that failed (the database is away) is tried again after this,
_BACKOFF_MAX = 10.0  # doubling up to this, or at once when the wake-up stream reopens
_LINGER_MAX = 0.05  # at most this long for more threads to free up while jobs are waiting

__all__ = ["EXIT_OK", "EXIT_RECYCLE", "Profile", "Worker", "new_owner_id"]


def new_owner_id() -> str:
    """Unique per process incarnation: a restarted process never inherits old leases."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class Worker:
    def __init__(self, app: App, *, owner: str | None = None, profile: Profile | None = None):
        self.app = app
        self.store = app.store
        self.owner = owner or new_owner_id()
        self.profile = profile or Profile.headless(app)
        self.count = self.profile.threads
        self.queue_settings = app.settings.workers.queue
        self.shutdown_settings = app.settings.workers.shutdown
        self._poll = self.profile.poll_interval or self.queue_settings.poll_interval
        self._pool = Pool(app, self.profile, self._ended)
        self._stopping = threading.Event()
        self._finished = threading.Event()
        self._level: str = self.shutdown_settings.level
        self._exit_code = EXIT_OK
        self._stop_requests = 0
        self._grace_ends = float("inf")  # monotonic; set by the first stop request
        self._peers = Peers(self.owner, self.profile.types)
        self._heartbeat = Heartbeat(
            self.store,
            self.owner,
            self.queue_settings.lease,
            self._pool.held_tokens,
            self._pool.lose,
            self.node_info,
            app.tally,
            on_peers=self._peers.update,
        )
        self._watchdog = Watchdog(app, self._pool, self.stop, self._stopping, self._finished)
        types = self.profile.types
        self._claimer = Claimer(
            self.store,
            self.owner,
            types,
            self.queue_settings.lease,
            self._stopping.wait,
            limits=app.limits,
            held=self._pool.held_types,
            recheck=self._poll,
        )
        self._wakeup = Wakeup(
            self.store, self._poll, stream=self.queue_settings.change_streams, peers=self._peers
        )
        self._linger = 0.0
        self._due: tuple[bool, datetime | None] = (False, None)  # the last next-due read
        self._due_opens = -1  # the stream's opens at that read
        self._claimed_at: datetime | None = None  # when the last claim began (database clock)

    # -- lifecycle -------------------------------------------------------------------

    def run(self) -> int:
        """Claim and run jobs until stopped; returns the process exit code."""
        log.info(
            "worker started",
            extra={
                "action": "worker_started",
                "node": self.owner,
                "threads": self.count,
                "types": self.profile.types,
            },
        )
        self._check_limits()
        tracing.load()
        self._pool.start()
        self._watchdog.start()
        self._heartbeat.start()
        self._wakeup.start()
        scheduler = self._start_cron()
        self._claim_loop()
        self._pool.hand_over(self._claimer.pending())  # a failed claim's jobs: handed back below
        self._wakeup.stop()
        if scheduler is not None:
            scheduler.stop()  # resign first: another node takes over cron while we drain
        shut_down(self._pool, self.store, self.owner, lambda: self._level, self._grace_ends)
        self._finished.set()
        self._heartbeat.stop()
        log.info(
            "worker stopped",
            extra={"action": "worker_stopped", "node": self.owner, "exit_code": self._exit_code},
        )
        return self._exit_code

    def stop(self, level: str | None = None, exit_code: int | None = None) -> None:
        """Stop claiming and shut down at `level` (default: settings). Safe in a signal handler;
        a second request escalates to `hard`."""
        self._stop_requests += 1
        if self._stop_requests == 1:  # the grace period runs from here, not from the drain
            self._grace_ends = time.monotonic() + self.shutdown_settings.grace
        self._level = "hard" if self._stop_requests > 1 else level or self._level
        if exit_code is not None:
            self._exit_code = exit_code
        self._stopping.set()
        self._wakeup.poke()
        self._pool.notify()

    def pause(self, paused: bool = True) -> None:
        """Stop (or go on) claiming; the jobs this process holds run on."""
        self._pool.pause(paused)
        self._wakeup.poke()

    def counts(self) -> tuple[int, int]:
        """(jobs claimed and not started, jobs running) in this process."""
        return self._pool.counts()

    def _check_limits(self) -> None:
        """A cluster-wide limit needs transactions: refuse to start without them, by name."""
        limited = [t for t in self.profile.types if t in self.app.limits]
        wide = [t for t in limited if self.app.limits[t].cluster_wide]
        if wide and not self.store.has_transactions():
            raise SettingsError(needs_transactions(wide[0]))

    def _ended(self, job_type: Any) -> None:
        """A job left the pool: a limited type held back by it may be claimed again now."""
        if self._claimer.ended(job_type):
            self._wakeup.poke()

    def _start_cron(self) -> Scheduler | None:
        schedules = self.app.registry.schedules
        if not self.profile.cron or not schedules or self.app.settings.workers.cron.disable:
            return None
        scheduler = Scheduler(self.app, self.owner, schedules)
        scheduler.start()
        return scheduler

    def node_info(self) -> dict[str, Any]:
        """What the heartbeat reports of this process."""
        return {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "threads": self.count,
            "types": self.profile.types,
            "pool": self.profile.types != self.app.registry.types,  # a pool of some types
            "running": self._pool.running(),
            "version": __version__,
            "state": "stopping" if self._stopping.is_set() else "running",
        }

    # -- the claimer ---------------------------------------------------------------------

    def _claim_loop(self) -> None:
        poll = self._poll
        backoff = Backoff(min(poll, _BACKOFF_FIRST), _BACKOFF_MAX)
        more_waiting = False  # the last claim filled every idle thread: jobs are likely waiting
        woken: list[Any] | None = None  # jobs the stream reported ready: claimed by _id
        waited = False  # the claim follows a wait: every limited type is looked at
        while not self._stopping.is_set():
            linger = self._linger if more_waiting else None
            free = self._pool.idle(self._stopping, self._poll, linger)
            if self._stopping.is_set() or free == 0:
                continue
            self._wakeup.clear()
            if woken is None:
                self._stage_if_due()
            began = time.monotonic()
            self._claimed_at = self.store.now_or_none()
            try:
                docs = self._claimer.claim(
                    free, woken, after_wait=waited, confirm=self._wakeup.confirm
                )
            except WorkersError as exc:
                level = logging.WARNING if isinstance(exc, DatabaseUnavailable) else logging.ERROR
                backoff.wait_after(
                    exc, "claim", "claim_failed", self._stopping, level, self._wakeup.nap
                )
                continue
            backoff.reset()
            self._linger = min(_LINGER_MAX, time.monotonic() - began)
            self._pool.hand_over(docs)
            self._forget_due_if_undated_missed(docs)
            # a burst woke us with more ids than we tried, and others took those we tried:
            # the rest may still be ready, so look by a scan now rather than at the next wake
            lost_a_burst = woken is not None and len(woken) > free and len(docs) < free
            more_waiting, woken, waited = len(docs) >= free, None, False
            if more_waiting:
                self._wakeup.busy()
            elif not self._stopping.is_set() and not lost_a_burst:
                woken = self._wakeup.wait(_soonest(self._next_due(), self._claimer.next_look()))
                waited = True

    def _stage_if_due(self) -> None:
        """Before a scan: scheduled jobs that came due become ready, when the wait ended on a
        due time, when none is known yet (start-up, a failed read), or when the known one
        passed. Otherwise nothing is due, and the scan need not wait for a stage."""
        known, due = self._due
        if self._wakeup.due_reached or not known or self._passed(due):
            if self._wakeup.due_reached:  # the stream keeps only the soonest due time: the
                self._due = (False, None)  # next one (a second retry's) is read again
            self._wakeup.due_reached = False
            self._claimer.stage()

    def _forget_due_if_undated_missed(self, docs: list[dict[str, Any]]) -> None:
        """A job the stream reported ready without its run_at (a resume, a release) that
        the claim did not take may come due before the last answer: read it again."""
        undated, self._wakeup.undated = self._wakeup.undated, frozenset()
        if undated - {doc.get("_id") for doc in docs}:
            self._due = (False, None)

    def _next_due(self) -> datetime | None:
        """When the next delayed job is due: one indexed read when the last answer may be
        stale (none yet, the answer passed, the stream not delivering, or reopened since:
        it may have missed events while down or resting). While it delivers, the last
        answer stands after any claim, by scan or by woken ids: the stream reports every
        job that becomes ready or scheduled later, with its `run_at`, which the wait keeps
        until it comes (and a wait that ends past it makes the next claim a scan). One read
        less per claim per process. The read counts from when the last claim looked: a job
        that came due while that claim ran is then a moment past, so the wait ends at once
        and a scan takes it."""
        known, due = self._due
        opens = self._wakeup.opens
        reopened = opens != self._due_opens
        if not known or reopened or not self._wakeup.streaming or self._passed(due):
            self._due_opens = opens
            self._due = self._claimer.next_due(self._claimed_at)
        return self._due[1]

    def _passed(self, due: datetime | None) -> bool:
        try:
            return due is not None and due <= self.store.now()
        except WorkersError:
            return True


def _soonest(*moments: datetime | None) -> datetime | None:
    return min((moment for moment in moments if moment is not None), default=None)
