"""The no-op task of the peers on Redis, for Celery, RQ and Dramatiq: each records the time it
ran (`n` and the epoch seconds, pushed to the `done` list on the same Redis) so all three are
timed alike, on the one clock of this machine. Broker URL from `BENCH_REDIS_URL`."""

from __future__ import annotations

import os
import time

import redis

URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
DONE = "bench:done"
_client = redis.Redis.from_url(URL)


def noop(n: int) -> None:
    """Does nothing but say when, as bench.jobs.NoopJob's completion records `finished`."""
    _client.rpush(DONE, f"{n} {time.time()}")
