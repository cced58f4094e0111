"""Tools for an app's own tests: `drain` runs the due jobs in the calling thread.

As Oban's `drain_queue` does, it takes jobs through the same claim and outcome paths a
worker uses (a claim under a token, the attempt with its hooks, the conditional write of
the outcome), so a job ends exactly as a worker would leave it, without a worker process,
a thread pool or a wait.
"""

from __future__ import annotations

import itertools
import os
import socket
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

from workers import app as app_module
from workers.errors import DiscoveryError
from workers.execution import Held, run_attempt

_BATCH = 10  # jobs per claim: what one test backlog needs, small enough to stop promptly
_tokens = itertools.count(1)


@dataclass(frozen=True)
class Drained:
    """What a drain ran: attempts by the status each left its job in (`ready` or
    `scheduled`: it will retry)."""

    completed: int = 0
    failed: int = 0
    retried: int = 0
    cancelled: int = 0

    @property
    def attempts(self) -> int:
        return self.completed + self.failed + self.retried + self.cancelled


def drain(
    app: app_module.App | None = None,
    *,
    types: Iterable[str] | None = None,
    timeout: float = 30.0,
) -> Drained:
    """Run every due job of `types` (default: every registered type) here, until none is
    due: a retry with no wait and a dependent whose antecedents completed run too; a job
    due later (a delay, a retry's wait) is not waited for. Flow-control limits are not
    applied. Raises TimeoutError when jobs are still due after `timeout` seconds."""
    app = app or app_module.current()
    chosen = _types(app, types)
    deadline = time.monotonic() + timeout
    ends: Counter[str] = Counter()
    while True:
        app.store.stage_due()
        token = f"{socket.gethostname()}:{os.getpid()}:drain#{next(_tokens)}"
        docs = app.store.claim(token, chosen, app.settings.workers.queue.lease, _BATCH)
        if not docs:
            return Drained(**{k: v for k, v in ends.items() if k in Drained.__annotations__})
        for position, doc in enumerate(docs):
            if time.monotonic() > deadline:  # what was not run goes back, as at a stop
                left = {later["_id"]: token for later in docs[position:]}
                app.store.release(left, "handed back: the drain ran out of time")
                raise TimeoutError(f"drain: jobs were still due after {timeout:g} s")
            run_attempt(app, Held(doc, token=token, started=time.monotonic()))
            ends[_end_of(app, doc["_id"])] += 1


def _types(app: app_module.App, types: Iterable[str] | None) -> list[str]:
    chosen = sorted(types) if types is not None else app.registry.types
    unknown = sorted(set(chosen) - set(app.registry.types))
    if unknown:
        raise DiscoveryError(
            f"drain: {', '.join(unknown)} is not a registered job type; the job types are "
            f"{', '.join(app.registry.types) or 'none'}"
        )
    return chosen


def _end_of(app: app_module.App, job_id: str) -> str:
    doc = app.store.get_job(job_id) or {}
    status = str(doc.get("status"))
    return "retried" if status in ("ready", "scheduled") else status
