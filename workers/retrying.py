"""What every retry loop of the runtime shares: doubling waits with a cap, and where to find
the programs we start (supervisord, the embedded server)."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path


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


def executable(name: str) -> str | None:
    """A program installed beside this Python (the virtualenv's bin), else on the PATH."""
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.exists() else shutil.which(name)
