"""Celery on Redis as most users run it: the Redis broker, no result backend."""

from __future__ import annotations

from celery import Celery

from bench import redis_tasks

app = Celery("bench_redis_peer", broker=redis_tasks.URL)
app.conf.update(broker_connection_retry_on_startup=True, worker_hijack_root_logger=False)
app.task(name="noop")(redis_tasks.noop)
