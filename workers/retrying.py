"""What every retry loop of the runtime shares: doubling waits with a cap, and where to find
the programs we start (supervisord, the embedded server)."""

from __future__ import annotations

import logging
import shutil
import sys
import threading
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)


class Backoff:
    """Waits that double from `first` up to `cap` while tries fail; `reset` after a success."""

    def __init__(self, first: float, cap: float) -> None:
        self.first = first
        self.cap = cap
        self._next = first

    def next(self) -> float:
        """The wait before the next try (and double the one after it)."""
        wait = self._next
        self._next = min(self._next * 2, self.cap)
        return wait

    def reset(self) -> None:
        self._next = self.first

    def wait_after(
        self,
        failure: Exception,
        what: str,
        action: str,
        stop: threading.Event,
        level: int = logging.WARNING,
        nap: Callable[[float], object] | None = None,
    ) -> None:
        """Log that `what` failed and wait the next backoff, or until `stop` is set: the one
        shape of every retry loop of the runtime (claimer, cron, wake-up stream). `nap`, when
        given, waits instead and may end early (the claimer's ends when the stream reopens)."""
        delay = self.next()
        log.log(
            level,
            "%s failed, retrying in %.1f s: %s",
            what,
            delay,
            failure,
            extra={"action": action},
        )
        (nap or stop.wait)(delay)


def executable(name: str) -> str | None:
    """A program installed beside this Python (the virtualenv's bin), else on the PATH."""
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.exists() else shutil.which(name)
