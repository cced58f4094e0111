"""The watchdog of one worker process: per-job timeouts, and the process's own end when it
cannot go on well (a job that will not return, or supervisord gone)."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable

from workers.app import App
from workers.execution import Held, record_timeout
from workers.headless import SUPERVISED_ENV
from workers.pool import Pool

log = logging.getLogger(__name__)

EXIT_RECYCLE = 3  # a job would not return after its timeout: supervisord starts a fresh process
_WATCH_TICK = 0.1


class Watchdog:
    def __init__(
        self,
        app: App,
        pool: Pool,
        stop: Callable[[str | None, int | None], None],
        stopping: threading.Event,
        finished: threading.Event,
    ) -> None:
        self.app = app
        self.pool = pool
        self._stop = stop
        self._stopping = stopping
        self._finished = finished
        self._stuck: list[Held] = []
        # under our supervisord: its pid, so that the worker notices when it is gone
        self._supervisor = os.getppid() if os.environ.get(SUPERVISED_ENV) else None

    def start(self) -> None:
        threading.Thread(target=self._watch, name="watchdog", daemon=True).start()

    def _watch(self) -> None:
        """Fail jobs past their timeout; recycle the process if one will not return."""
        while not self._finished.wait(_WATCH_TICK):
            now = time.monotonic()
            overdue = self.pool.take_overdue(now)
            self._stuck += overdue
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
            self._stop(None, None)

    def _recycle_if_stuck(self, now: float) -> None:
        self._stuck = [held for held in self._stuck if not held.done.is_set()]
        if any(held.stuck(now) for held in self._stuck) and not self._stopping.is_set():
            log.error(
                "a job did not return after its timeout; recycling this process",
                extra={"action": "recycle", "job_ids": [h.job_id for h in self._stuck]},
            )
            self._stop("normal", EXIT_RECYCLE)
