"""The same figures for Celery (kombu's MongoDB transport) on the same server: throughput of
2 worker processes x 4 threads over a backlog, and push → done latency on an idle service.

Celery's worker deletes a message from MongoDB when it fetches it and keeps the ack in memory,
so a killed worker loses what it prefetched: a cheaper promise than ours, said beside the figures.
"""

from __future__ import annotations

import datetime as dt
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pymongo

from bench.measure import ROOT, _percentile, _wait

UTC = dt.UTC


def available() -> bool:
    try:
        import celery  # noqa: F401
    except ImportError:
        return False
    return True


@contextmanager
def _database(url: str) -> Iterator[tuple[str, Any]]:
    """(broker url, database) of a fresh database, dropped afterwards."""
    name = f"celery_{uuid.uuid4().hex[:8]}"
    client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(url)
    base, _, query = url.partition("?")
    try:
        yield f"{base.rstrip('/')}/{name}" + (f"?{query}" if query else ""), client[name]
    finally:
        client.drop_database(name)
        client.close()


def _env(broker: str) -> dict[str, str]:
    return {**os.environ, "BENCH_CELERY_URL": broker, "PYTHONPATH": str(ROOT)}


@contextmanager
def _producer(broker: str) -> Iterator[Any]:
    """A Celery app of the bench's own on this run's database, to push with."""
    from celery import Celery

    app = Celery("bench_producer", broker=broker, backend=broker)
    app.conf.update(mongodb_backend_settings={"taskmeta_collection": "taskmeta"})
    try:
        yield app
    finally:
        app.close()


@contextmanager
def _workers(broker: str, processes: int, threads: int) -> Iterator[None]:
    """`celery worker -P threads -c threads`, `processes` of them; TERM on exit."""
    command = [sys.executable, "-m", "celery", "-A", "bench.celery_peer", "worker",
               "-P", "threads", "-c", str(threads), "--loglevel=WARNING"]  # fmt: skip
    started = [
        subprocess.Popen(
            [*command, "-n", f"bench{n}@%h"],
            env=_env(broker),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for n in range(processes)
    ]
    try:
        yield
    finally:
        stop(started)


def stop(started: list[subprocess.Popen[bytes]]) -> None:
    """TERM every process (each peer's warm shutdown), then wait; KILL one still up at 60 s."""
    for process in started:
        process.send_signal(signal.SIGTERM)
    for process in started:
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def throughput(url: str, processes: int, threads: int, backlog: int, window: int) -> float:
    """Completed tasks/s over `window` of a `backlog` pushed before the workers start: from the
    first task's `date_done` to the window-th, so start-up is not counted."""
    with _database(url) as (broker, db):
        with _producer(broker) as producer:
            for n in range(backlog):
                producer.send_task("noop", args=[n])
        with _workers(broker, processes, threads):
            _wait(lambda: db.taskmeta.count_documents({}) >= window, 600)
        done = sorted(d["date_done"] for d in db.taskmeta.find({}, {"date_done": 1}))
        return float((window - 1) / (done[window - 1] - done[0]).total_seconds())


def pickup(url: str, count: int = 200, gap: float = 0.02) -> dict[str, float]:
    """Push → done latency (ms) of tasks pushed one at a time to an idle 2 x 4 service (a no-op
    task is done as it starts; Celery records no start time without events)."""
    with _database(url) as (broker, db):
        pushed: dict[str, dt.datetime] = {}
        with _producer(broker) as producer, _workers(broker, 2, 4):
            producer.send_task("noop", args=[-1]).get(timeout=60)
            time.sleep(3)
            for n in range(count):
                at = dt.datetime.now(UTC).replace(tzinfo=None)
                pushed[producer.send_task("noop", args=[n]).id] = at
                time.sleep(gap)
            _wait(lambda: db.taskmeta.count_documents({"_id": {"$in": list(pushed)}}) >= count, 120)
        latencies = sorted(
            (d["date_done"] - pushed[d["_id"]]).total_seconds() * 1000
            for d in db.taskmeta.find({"_id": {"$in": list(pushed)}}, {"date_done": 1})
        )
    return {f"p{q}": _percentile(latencies, q) for q in (50, 95, 99)}
