"""One worker process: a claimer feeding `workers.count` job threads.

Only the claimer queries the queue head: it takes as many jobs as there are
idle threads in one batch and hands them over in memory, so the threads never
race each other for the head (DESIGN.md §5). While jobs are waiting it lingers
briefly for more threads to free up, so batches stay large; when the queue is
empty it sleeps until the wake-up stream, the next due time or the poll
fallback says otherwise. A heartbeat thread keeps the leases of held jobs; a
watchdog enforces per-job timeouts.
"""

from __future__ import annotations

import logging
import os
import queue
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from workers.app import App
from workers.claimer import Claimer
from workers.cron import Scheduler
from workers.errors import DatabaseUnavailable, WorkersError
from workers.execution import Held, record_timeout, run_attempt
from workers.headless import SUPERVISED_ENV
from workers.heartbeat import Heartbeat
from workers.retrying import Backoff
from workers.version import __version__
from workers.wakeup import Wakeup

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_RECYCLE = 3  # a job would not return after its timeout: supervisord starts a fresh process
_BACKOFF_MAX = 10.0
_WATCH_TICK = 0.1
_LINGER_MAX = 0.05  # at most this long for more threads to free up while jobs are waiting


def new_owner_id() -> str:
    """Unique per process incarnation: a restarted process never inherits old leases."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


@dataclass(frozen=True)
class Profile:
    """What a worker runs: its types, threads and how a thread runs what it takes. Headless
    mode runs the registered classes (`headless`); `process_jobs` a function of its own."""

    types: list[str]
    threads: int
    run: Callable[[App, list[Held]], None]
    cargo: int = 1  # jobs a thread takes at once
    prefetch: int = 0  # jobs claimed beyond what the threads can start now
    poll_interval: float | None = None  # None: settings
    cron: bool = True

    @classmethod
    def headless(cls, app: App) -> Profile:
        return cls(app.registry.types, app.settings.workers.count, _run_each)

    @property
    def slots(self) -> int:
        """Jobs held at most: a claim never takes more than fit in them now."""
        return self.threads * self.cargo + self.prefetch


def _run_each(app: App, held: list[Held]) -> None:
    for one in held:
        run_attempt(app, one)


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
        self._inbox: queue.Queue[list[Held] | None] = queue.Queue()  # a thread's cargo each
        self._cond = threading.Condition()  # guards _held and _free; re-entrant for stop()
        self._held: dict[Any, Held] = {}
        self._slots = self.profile.slots
        self._free = self._slots  # slots not holding a job
        self._paused = False
        self._stuck: list[Held] = []
        self._stopping = threading.Event()
        self._finished = threading.Event()
        self._level: str = self.shutdown_settings.level
        self._exit_code = EXIT_OK
        self._stop_requests = 0
        self._grace_ends = float("inf")  # monotonic; set by the first stop request
        self._heartbeat = Heartbeat(
            self.store,
            self.owner,
            self.queue_settings.lease,
            self.held_tokens,
            self.lose,
            self.node_info,
            app.tally,
        )
        types = self.profile.types
        self._claimer = Claimer(
            self.store, self.owner, types, self.queue_settings.lease, self._stopping.wait
        )
        self._wakeup = Wakeup(self.store, self._poll, stream=self.queue_settings.change_streams)
        self._linger = 0.0
        self._due: tuple[bool, datetime | None] = (False, None)  # the last next-due read
        self._due_opens = -1  # the stream's opens at that read
        # under our supervisord: its pid, so that the worker notices when it is gone
        self._supervisor = os.getppid() if os.environ.get(SUPERVISED_ENV) else None

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
        for number in range(self.count):
            threading.Thread(target=self._work, name=f"job-{number}", daemon=True).start()
        threading.Thread(target=self._watch, name="watchdog", daemon=True).start()
        self._heartbeat.start()
        self._wakeup.start()
        scheduler = self._start_cron()
        self._claim_loop()
        self._wakeup.stop()
        if scheduler is not None:
            scheduler.stop()  # resign first: another node takes over cron while we drain
        self._shut_down()
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
        with self._cond:
            self._cond.notify_all()

    def pause(self, paused: bool = True) -> None:
        """Stop (or go on) claiming; the jobs this process holds run on."""
        with self._cond:
            self._paused = paused
            self._cond.notify_all()
        self._wakeup.poke()

    def counts(self) -> tuple[int, int]:
        """(jobs claimed and not started, jobs running) in this process."""
        with self._cond:
            started = sum(1 for held in self._held.values() if held.started is not None)
            return len(self._held) - started, started

    def _start_cron(self) -> Scheduler | None:
        schedules = self.app.registry.schedules
        if not self.profile.cron or not schedules or self.app.settings.workers.cron.disable:
            return None
        scheduler = Scheduler(self.app, self.owner, schedules)
        scheduler.start()
        return scheduler

    # -- what the heartbeat reads and reports -------------------------------------------

    def held_ids(self) -> list[Any]:
        with self._cond:
            return list(self._held)

    def held_tokens(self) -> dict[Any, str]:
        """Job id -> the claim token of the attempt this process runs (or will run)."""
        with self._cond:
            return {job_id: held.token for job_id, held in self._held.items()}

    def lose(self, job_ids: list[Any]) -> None:
        """These jobs are no longer ours (taken over, or handed back): stop writing for them."""
        with self._cond:
            for job_id in job_ids:
                held = self._held.pop(job_id, None)
                if held is not None:
                    held.abandon()
            self._cond.notify_all()

    def node_info(self) -> dict[str, Any]:
        with self._cond:
            running = [h.job_id for h in self._held.values() if h.started is not None]
        return {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "threads": self.count,
            "running": running,
            "version": __version__,
            "state": "stopping" if self._stopping.is_set() else "running",
        }

    # -- the claimer ---------------------------------------------------------------------

    def _claim_loop(self) -> None:
        poll = self._poll
        backoff = Backoff(poll, _BACKOFF_MAX)
        more_waiting = False  # the last claim filled every idle thread: jobs are likely waiting
        woken: list[Any] | None = None  # jobs the stream reported ready: claimed by _id
        while not self._stopping.is_set():
            free = self._idle_threads(linger=more_waiting)
            if self._stopping.is_set() or free == 0:
                continue
            self._wakeup.clear()
            if woken is None:
                self._stage_if_due()
            began = time.monotonic()
            try:
                docs = self._claimer.claim(free, woken)
            except WorkersError as exc:
                level = logging.WARNING if isinstance(exc, DatabaseUnavailable) else logging.ERROR
                backoff.wait_after(exc, "claim", "claim_failed", self._stopping, level)
                continue
            backoff.reset()
            self._linger = min(_LINGER_MAX, time.monotonic() - began)
            self._hand_over(docs)
            more_waiting, woken = len(docs) >= free, None
            if more_waiting:
                self._wakeup.busy()
            elif not self._stopping.is_set():
                woken = self._wakeup.wait(self._next_due())

    def _stage_if_due(self) -> None:
        """Before a scan: scheduled jobs that came due become ready, when the wait ended on a
        due time, when none is known yet (start-up, a failed read), or when the known one
        passed. Otherwise nothing is due, and the scan need not wait for a stage."""
        known, due = self._due
        if self._wakeup.due_reached or not known or self._passed(due):
            self._wakeup.due_reached = False
            self._claimer.stage()

    def _next_due(self) -> datetime | None:
        """When the next delayed job is due: one indexed read when the last answer may be
        stale (none yet, the answer passed, the stream not delivering, or reopened since:
        it may have missed events while down or resting). While it delivers, the last
        answer stands after any claim, by scan or by woken ids: the stream reports every
        job that becomes ready or scheduled later, with its `run_at`, which the wait keeps
        until it comes. One read less per claim per process."""
        known, due = self._due
        opens = self._wakeup.opens
        reopened = opens != self._due_opens
        if not known or reopened or not self._wakeup.streaming or self._passed(due):
            self._due_opens = opens
            self._due = self._claimer.next_due()
        return self._due[1]

    def _passed(self, due: datetime | None) -> bool:
        try:
            return due is not None and due <= self.store.now()
        except WorkersError:
            return True

    def _idle_threads(self, *, linger: bool) -> int:
        """Wait for an idle thread; while jobs are waiting, give the busy ones up to one
        claim's duration to finish too, so the next batch takes more than one job."""
        with self._cond:
            self._cond.wait_for(
                lambda: (self._free > 0 and not self._paused) or self._stopping.is_set(),
                self._poll,
            )
            if self._paused:
                return 0
            if linger and 0 < self._free < self._slots:
                self._cond.wait_for(
                    lambda: self._free == self._slots or self._stopping.is_set(), self._linger
                )
            return self._free

    def _hand_over(self, docs: list[dict[str, Any]]) -> None:
        """Queue the claimed jobs for the threads, `cargo` to an item. A job this process still
        holds under an older token (its lease lapsed, it was rescued and claimed again) is
        abandoned first: the old attempt's writes are refused by its token, and it is not
        run twice from here."""
        cargo: list[Held] = []
        for token in {str(doc["lease_owner"]) for doc in docs}:  # before any can finish
            ids = [doc["_id"] for doc in docs if str(doc["lease_owner"]) == token]
            self.app.completions.expect(token, ids)
        with self._cond:
            for doc in docs:
                held = Held(doc, token=str(doc["lease_owner"]))
                stale = self._held.get(held.job_id)
                if stale is not None:
                    stale.abandon()
                    log.warning(
                        "claimed a job this process held under an older lease; the old "
                        "attempt is abandoned",
                        extra={"action": "stale_attempt", "job_id": held.job_id},
                    )
                self._held[held.job_id] = held
                self._free -= 1
                cargo.append(held)
                if len(cargo) == self.profile.cargo:
                    self._inbox.put(cargo)
                    cargo = []
            if cargo:
                self._inbox.put(cargo)

    # -- job threads ------------------------------------------------------------------------

    def _work(self) -> None:
        while True:
            taken = self._inbox.get()
            if taken is None:
                return
            try:
                started = [held for held in taken if self._start(held)]
                if started:
                    self.profile.run(self.app, started)
            except Exception:
                log.exception("job attempt crashed the runner", extra={"action": "runner_error"})
            finally:
                self._done(taken)

    def _done(self, taken: list[Held]) -> None:
        for held in taken:  # a writer stops waiting for these (failed, abandoned, over)
            self.app.completions.settle(held.token, held.job_id)
        with self._cond:
            for held in taken:
                held.done.set()
                if self._held.get(held.job_id) is held:
                    del self._held[held.job_id]
                self._free += 1
            self._cond.notify_all()

    def _start(self, held: Held) -> bool:
        """Mark a job started, unless it was handed back meanwhile (one lock decides)."""
        with self._cond:
            if held.abandoned:
                return False
            held.started = time.monotonic()
            return True

    # -- timeouts ------------------------------------------------------------------------------

    def _watch(self) -> None:
        """Fail jobs past their timeout; recycle the process if one will not return."""
        while not self._finished.wait(_WATCH_TICK):
            now = time.monotonic()
            with self._cond:
                overdue = [h for h in self._held.values() if h.time_out(now)]
                for held in overdue:
                    self._held.pop(held.job_id, None)
                    held.abandon(timed_out=True)
                    self._stuck.append(held)
            for held in overdue:  # each on a thread of its own: it may wait out an outage
                threading.Thread(
                    target=record_timeout, args=(self.app, held), name="timeout", daemon=True
                ).start()
            self._recycle_if_stuck(now)
            self._stop_if_orphaned()

    def _stop_if_orphaned(self) -> None:
        """supervisord died (kill -9, OOM): an unsupervised worker would run on with old
        code and be doubled by the next start, so it shuts down (handing jobs back)."""
        if self._supervisor is None or os.getppid() == self._supervisor:
            return
        if not self._stopping.is_set():
            log.error(
                "supervisord (pid %d) is gone; shutting down this orphaned worker",
                self._supervisor,
                extra={"action": "orphaned"},
            )
            self.stop()

    def _recycle_if_stuck(self, now: float) -> None:
        self._stuck = [held for held in self._stuck if not held.done.is_set()]
        if any(held.stuck(now) for held in self._stuck) and not self._stopping.is_set():
            log.error(
                "a job did not return after its timeout; recycling this process",
                extra={"action": "recycle", "job_ids": [h.job_id for h in self._stuck]},
            )
            self.stop("normal", EXIT_RECYCLE)

    # -- shutdown ------------------------------------------------------------------------------

    def _shut_down(self) -> None:
        """soft: finish running and claimed jobs; normal: finish running ones and hand back
        the claimed rest; hard: hand back everything now. Past the grace period, hard."""
        deadline = self._grace_ends
        grace_left = max(0.0, deadline - time.monotonic())
        log.info(
            "shutting down",
            extra={"action": "shutdown", "level": self._level, "grace_left": round(grace_left, 1)},
        )
        if self._level != "soft":
            self._hand_back(self._take_unstarted(), "not started before shutdown")
        with self._cond:
            self._cond.wait_for(
                lambda: not self._held or self._level == "hard",
                max(0.0, deadline - time.monotonic()),
            )
        reason = "shutdown (hard)" if self._level == "hard" else "grace period over at shutdown"
        self._hand_back(self.held_tokens(), reason)
        for _ in range(self.count):
            self._inbox.put(None)

    def _take_unstarted(self) -> dict[Any, str]:
        """Claimed jobs no thread has started, atomically given up (see _start)."""
        with self._cond:
            unstarted = {h.job_id: h.token for h in self._held.values() if h.started is None}
            self.lose(list(unstarted))
            return unstarted

    def _hand_back(self, held: dict[Any, str], reason: str) -> None:
        if not held:
            return
        self.lose(list(held))  # our threads must not write for them any more
        try:
            count = self.store.release(held, f"handed back by {self.owner}: {reason}")
        except WorkersError as exc:
            log.error(
                "could not hand jobs back; their leases will expire: %s",
                exc,
                extra={"action": "release_failed", "job_ids": list(held)},
            )
            return
        log.info(
            "handed jobs back", extra={"action": "jobs_released", "count": count, "reason": reason}
        )
