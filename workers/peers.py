"""Which worker process goes first: a herd of idle processes woken by one event split it.

Every idle process's wake-up stream sees every job that becomes ready, and every
process knows the same next due time. Each used to claim at once, and all but one
found the job taken: a wasted write per process per job. Now each event has one
preferred process, the same one in every process's eyes (rendezvous hashing of the job
id, or the due time, with each live peer's name: no coordination, and a peer that
comes or goes moves only its own share). The preferred one acts at once; the others
wait `DEFER` seconds, then confirm by a read that the job is still there before they
claim it. A preferred process that is busy, slow or dead delays a job by `DEFER` only.

The peers are the worker processes whose heartbeat is within a lease (the `nodes`
collection), read by this process's heartbeat on each beat: one small read per beat.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterable, Sequence

DEFER = 0.1  # seconds another process waits before it confirms and takes a job


class Peers:
    """The live worker processes and the job types each runs, as of the last beat."""

    def __init__(self, me: str, types: Sequence[str]) -> None:
        self.me = me
        self._types = frozenset(types)
        self._lock = threading.Lock()
        self._all: tuple[str, ...] = (me,)
        self._by_type: dict[str, tuple[str, ...]] = {}

    def update(self, nodes: Iterable[tuple[str, Sequence[str]]]) -> None:
        """The live processes (name, types) as a beat read them; this one always counts."""
        listed = dict(nodes)
        listed[self.me] = sorted(self._types)
        by_type: dict[str, list[str]] = {}
        for name, types in listed.items():
            for job_type in types:
                by_type.setdefault(str(job_type), []).append(name)
        with self._lock:
            self._all = tuple(sorted(listed))
            self._by_type = {t: tuple(sorted(names)) for t, names in by_type.items()}

    def runs(self, job_type: str) -> bool:
        """Whether this process runs `job_type` (a woken id of another type is not ours)."""
        return job_type in self._types

    def prefers_me(self, key: str, job_type: str | None = None) -> bool:
        """Whether this process goes first for `key` (a job id, a due time) among the live
        processes that run `job_type` (any type, when the event did not say)."""
        with self._lock:
            names = self._by_type.get(job_type, self._all) if job_type else self._all
        if len(names) <= 1:
            return True
        return max(names, key=lambda name: _score(name, key)) == self.me


def _score(name: str, key: str) -> bytes:
    return hashlib.blake2b(f"{name}\x00{key}".encode(), digest_size=8).digest()
