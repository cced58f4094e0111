"""The job threads of one worker process and the jobs it holds.

The claimer hands a batch over in memory (`hand_over`), `cargo` jobs to a thread at a
time; a thread marks each job started under the pool's lock, so a hand-back at shutdown
and a start never both win (`take_unstarted`). `free` counts the slots not holding a job:
a claim never takes more than fit in them now.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from workers.app import App
from workers.execution import Held, run_attempt

log = logging.getLogger(__name__)


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
        return cls(app.node_types, app.settings.workers.count, _run_each)

    @property
    def slots(self) -> int:
        """Jobs held at most: a claim never takes more than fit in them now."""
        return self.threads * self.cargo + self.prefetch


def _run_each(app: App, held: list[Held]) -> None:
    for one in held:
        run_attempt(app, one)


class Pool:
    def __init__(
        self, app: App, profile: Profile, ended: Callable[[Any], Any] | None = None
    ) -> None:
        """`ended(job_type)` is told of every job that leaves this process's hands."""
        self.app = app
        self.profile = profile
        self._ended = ended
        self.cond = threading.Condition()  # guards held, free and paused; re-entrant for stop()
        self.held: dict[Any, Held] = {}
        self.slots = profile.slots
        self.free = self.slots  # slots not holding a job
        self.paused = False
        self._inbox: queue.Queue[list[Held] | None] = queue.Queue()  # a thread's cargo each

    def start(self) -> None:
        for number in range(self.profile.threads):
            threading.Thread(target=self._work, name=f"job-{number}", daemon=True).start()

    def end(self) -> None:
        """The threads return once they finished what they hold."""
        for _ in range(self.profile.threads):
            self._inbox.put(None)

    def notify(self) -> None:
        with self.cond:
            self.cond.notify_all()

    def pause(self, paused: bool) -> None:
        with self.cond:
            self.paused = paused
            self.cond.notify_all()

    def idle(self, stopping: threading.Event, poll: float, linger: float | None) -> int:
        """Wait for an idle slot (at most `poll`); with `linger`, while jobs are waiting,
        give the busy ones up to that long to finish too, so the next batch takes more than
        one job. 0 while paused."""
        with self.cond:
            self.cond.wait_for(
                lambda: (self.free > 0 and not self.paused) or stopping.is_set(), poll
            )
            if self.paused:
                return 0
            if linger and 0 < self.free < self.slots:
                self.cond.wait_for(lambda: self.free == self.slots or stopping.is_set(), linger)
            return self.free

    def hand_over(self, docs: list[dict[str, Any]]) -> None:
        """Queue the claimed jobs for the threads, `cargo` to an item. A job this process still
        holds under an older token (its lease lapsed, it was rescued and claimed again) is
        abandoned first: the old attempt's writes are refused by its token, and it is not
        run twice from here."""
        cargo: list[Held] = []
        for token in {str(doc["lease_owner"]) for doc in docs}:  # before any can finish
            ids = [doc["_id"] for doc in docs if str(doc["lease_owner"]) == token]
            self.app.completions.expect(token, ids)
        with self.cond:
            for doc in docs:
                held = Held(doc, token=str(doc["lease_owner"]))
                stale = self.held.get(held.job_id)
                if stale is not None:
                    stale.abandon()
                    log.warning(
                        "claimed a job this process held under an older lease; the old "
                        "attempt is abandoned",
                        extra={"action": "stale_attempt", "job_id": held.job_id},
                    )
                self.held[held.job_id] = held
                self.free -= 1
                cargo.append(held)
                if len(cargo) == self.profile.cargo:
                    self._inbox.put(cargo)
                    cargo = []
            if cargo:
                self._inbox.put(cargo)

    # -- what the heartbeat, the watchdog and the shutdown read -----------------------

    def counts(self) -> tuple[int, int]:
        """(jobs claimed and not started, jobs running)."""
        with self.cond:
            started = len(self.running())
            return len(self.held) - started, started

    def held_types(self) -> dict[str, int]:
        """Jobs held (claimed or running) by type: what `concurrency` counts."""
        with self.cond:
            return dict(Counter(str(h.doc.get("type")) for h in self.held.values()))

    def running(self) -> list[Any]:
        with self.cond:
            return [h.job_id for h in self.held.values() if h.started is not None]

    def held_tokens(self) -> dict[Any, str]:
        """Job id -> the claim token of the attempt this process runs (or will run)."""
        with self.cond:
            return {job_id: held.token for job_id, held in self.held.items()}

    def lose(self, job_ids: list[Any]) -> None:
        """These jobs are no longer ours (taken over, or handed back): stop writing for them."""
        with self.cond:
            for job_id in job_ids:
                held = self.held.pop(job_id, None)
                if held is not None:
                    held.abandon()
            self.cond.notify_all()

    def take_unstarted(self) -> dict[Any, str]:
        """Claimed jobs no thread has started, atomically given up (see `_start`)."""
        with self.cond:
            unstarted = {h.job_id: h.token for h in self.held.values() if h.started is None}
            self.lose(list(unstarted))
            return unstarted

    def take_overdue(self, now: float) -> list[Held]:
        """The jobs past their timeout, given up as timed out."""
        with self.cond:
            overdue = [h for h in self.held.values() if h.time_out(now)]
            for held in overdue:
                self.held.pop(held.job_id, None)
                held.abandon(timed_out=True)
            return overdue

    def wait_empty(self, timeout: float, hard: Callable[[], bool]) -> None:
        """Until no job is held, `hard()` says to stop waiting, or `timeout` seconds."""
        with self.cond:
            self.cond.wait_for(lambda: not self.held or hard(), timeout)

    # -- job threads ----------------------------------------------------------------------

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
        with self.cond:
            for held in taken:
                held.done.set()
                if self.held.get(held.job_id) is held:
                    del self.held[held.job_id]
                self.free += 1
            self.cond.notify_all()
        if self._ended is not None:
            for held in taken:
                self._ended(held.doc.get("type"))

    def _start(self, held: Held) -> bool:
        """Mark a job started, unless it was handed back meanwhile (one lock decides)."""
        with self.cond:
            if held.abandoned:
                return False
            held.started = time.monotonic()
            return True
