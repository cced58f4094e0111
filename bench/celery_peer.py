"""The peer: Celery on kombu's MongoDB transport, with Celery's MongoDB result backend so each
task's `date_done` is on record, as `finished` is for ours. Broker and backend come from
`BENCH_CELERY_URL`, so the worker processes and the bench share one database."""

from __future__ import annotations

import os

from celery import Celery

URL = os.environ["BENCH_CELERY_URL"]
app = Celery("bench_peer", broker=URL, backend=URL)
app.conf.update(
    task_ignore_result=False,
    broker_connection_retry_on_startup=True,
    mongodb_backend_settings={"taskmeta_collection": "taskmeta"},
    worker_hijack_root_logger=False,
)


@app.task(name="noop")  # type: ignore[untyped-decorator]
def noop(n: int) -> None:
    """Does nothing, as bench.jobs.NoopJob does."""
    return None
