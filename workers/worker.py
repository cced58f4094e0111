"""One worker process: a claimer feeding `workers.count` job threads.

Only the claimer queries the queue head: it takes as many jobs as there are
idle threads and hands them over in memory, so the threads never race each
other on `find_one_and_update` (DESIGN.md §5).
"""

from __future__ import annotations

import logging
import os
import queue
import socket
import threading
import uuid
from dataclasses import dataclass
from typing import Any

from workers.app import App
from workers.errors import DatabaseUnavailable, WorkersError
from workers.execution import run_attempt

log = logging.getLogger(__name__)

_BACKOFF_MAX = 10.0


def new_owner_id() -> str:
    """Unique per process incarnation: a restarted process never inherits old leases."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


@dataclass
class _Slots:
    """Idle job threads, counted under a condition the claimer waits on."""

    free: int
    cond: threading.Condition
    stopping: threading.Event

    def wait_for_free(self, timeout: float) -> int:
        with self.cond:
            self.cond.wait_for(lambda: self.free > 0 or self.stopping.is_set(), timeout)
            return self.free

    def take(self, n: int) -> None:
        with self.cond:
            self.free -= n

    def give_back(self) -> None:
        with self.cond:
            self.free += 1
            self.cond.notify_all()


class Worker:
    def __init__(self, app: App, *, owner: str | None = None) -> None:
        self.app = app
        self.store = app.store
        self.owner = owner or new_owner_id()
        self.count = app.settings.workers.count
        self.queue_settings = app.settings.workers.queue
        self._inbox: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self._stopping = threading.Event()
        self._slots = _Slots(self.count, threading.Condition(), self._stopping)
        self._threads: list[threading.Thread] = []

    # -- lifecycle ---------------------------------------------------------------

    def run(self) -> int:
        """Claim and run jobs until stop() is called; returns the process exit code."""
        log.info(
            "worker started",
            extra={
                "action": "worker_started",
                "node": self.owner,
                "threads": self.count,
                "types": self.app.registry.types,
            },
        )
        self._start_threads()
        self._claim_loop()
        self._drain()
        log.info("worker stopped", extra={"action": "worker_stopped", "node": self.owner})
        return 0

    def stop(self) -> None:
        """Stop claiming; jobs already running finish (signal-handler safe: only sets events)."""
        self._stopping.set()
        with self._slots.cond:
            self._slots.cond.notify_all()

    def _start_threads(self) -> None:
        for number in range(self.count):
            thread = threading.Thread(target=self._work, name=f"job-{number}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def _drain(self) -> None:
        """Hand back what was claimed but not started, then let running jobs finish."""
        unstarted = []
        while True:
            try:
                doc = self._inbox.get_nowait()
            except queue.Empty:
                break
            if doc is not None:
                unstarted.append(str(doc["_id"]))
        if unstarted:
            self._release(unstarted)
        for _ in self._threads:
            self._inbox.put(None)
        for thread in self._threads:
            thread.join()

    def _release(self, job_ids: list[str]) -> None:
        try:
            released = self.store.release(job_ids, self.owner)
        except WorkersError as exc:
            log.error("could not hand jobs back: %s", exc, extra={"action": "release_failed"})
            return
        log.info("handed jobs back", extra={"action": "jobs_released", "count": released})

    # -- the claimer ---------------------------------------------------------------

    def _claim_loop(self) -> None:
        types = self.app.registry.types
        poll = self.queue_settings.poll_interval
        backoff = poll
        while not self._stopping.is_set():
            free = self._slots.wait_for_free(timeout=poll)
            if self._stopping.is_set():
                break
            if free == 0:
                continue
            try:
                docs = self.store.claim(self.owner, types, self.queue_settings.lease, free)
            except DatabaseUnavailable as exc:
                log.warning(
                    "database unavailable, retrying in %.1f s: %s",
                    backoff,
                    exc,
                    extra={"action": "db_unavailable"},
                )
                self._stopping.wait(backoff)
                backoff = min(backoff * 2, _BACKOFF_MAX)
                continue
            backoff = poll
            self._slots.take(len(docs))
            for doc in docs:
                self._inbox.put(doc)
            if len(docs) < free:
                self._stopping.wait(poll)  # the queue is empty: poll again later

    # -- job threads ------------------------------------------------------------------

    def _work(self) -> None:
        while True:
            doc = self._inbox.get()
            if doc is None:
                return
            try:
                run_attempt(self.app, self.owner, doc)
            except Exception:
                log.exception("job attempt crashed the runner", extra={"action": "runner_error"})
            finally:
                self._slots.give_back()
