"""Inline mode (`"mode": "inline"`): `Job.push` runs the job in the pushing process before
it returns, hooks, retries and outcome included, as Celery's eager mode and RQ's
`is_async=False` do, so an app's own unit tests need no worker.

The job is stored and claimed like any other (by its id, under a token of its
own), so its document ends as a worker would leave it. Retries run at once (their
wait is not slept); a delay is not waited for; a repeat's next run is stored, not
run; a job waiting for antecedents runs when they complete, under a worker.
"""

from __future__ import annotations

import itertools
import os
import socket
import time

from workers import app as app_module
from workers.execution import Held, run_attempt

_tokens = itertools.count(1)


def run_inline(app: app_module.App, job_id: str) -> None:
    """Claim and run `job_id` here until it is finished (or not ours to run)."""
    lease = app.settings.workers.queue.lease
    owner = f"{socket.gethostname()}:{os.getpid()}:inline"
    while True:
        token = f"{owner}#{next(_tokens)}"
        docs = app.store.claim_now(token, job_id, lease)
        if not docs:
            return  # finished, waiting for antecedents, or taken by a worker
        held = Held(docs[0], token=token, started=time.monotonic())
        run_attempt(app, held)


app_module.bind_inline_runner(run_inline)
