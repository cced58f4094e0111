"""The claimer of one worker process: batches of jobs for its idle threads.

Each batch is claimed under a token of its own (`<process>#<n>`), which every
later write for those jobs must name, so writes are fenced per attempt, not
per process. A claim interrupted after its write was sent is recovered (its
jobs read back by token) before anything new is claimed: a job taken by a
failed claim still runs instead of lapsing into a rescue that counts an
attempt it never had.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

from workers.errors import ClaimIncomplete, WorkersError
from workers.store import Document, Store
from workers.store.shared_scans import Spare

log = logging.getLogger(__name__)


class Claimer:
    def __init__(
        self,
        store: Store,
        owner: str,
        types: list[str],
        lease: float,
        pause: Callable[[float], Any] = time.sleep,
    ) -> None:
        """`pause`: how to wait for another claimer's scan (the worker's stop-aware wait)."""
        self.store = store
        self.owner = owner
        self.types = types
        self.lease = lease
        self._batches = itertools.count(1)
        self._interrupted: ClaimIncomplete | None = None
        # shared scans where the server profile says they pay (profile.py); else the plain
        # claim: a scan of the claim index, a write by _id, a read-back
        self._spare = Spare(pause=pause) if store.profile.shared_scans else None

    @property
    def shares_scans(self) -> bool:
        return self._spare is not None

    def claim(self, limit: int, woken: list[Any] | None = None) -> list[Document]:
        """Up to `limit` jobs, now held under a fresh token: those of `woken` (ids the wake-up
        stream reported ready) that are still ready, or else the queue's best; raises
        WorkersError on failure (an interrupted claim is then recovered by the next call)."""
        if self._interrupted is not None:
            return self._recover(self._interrupted)
        token = f"{self.owner}#{next(self._batches)}"
        try:
            if woken:
                return self.store.claim_ids(token, self.types, self.lease, woken[:limit])
            return self.store.claim(token, self.types, self.lease, limit, self._spare)
        except ClaimIncomplete as exc:
            self._interrupted = exc
            raise

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

    def next_due(self) -> tuple[bool, datetime | None]:
        """(known, when the next delayed job of our types is due: None if none)."""
        try:
            return True, self.store.next_due(self.types)
        except WorkersError as exc:
            log.debug("could not read the next due time: %s", exc)
            return False, None
