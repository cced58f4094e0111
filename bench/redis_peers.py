"""The queues users pick instead, on Redis: Celery 5, RQ and Dramatiq, each on a Redis server the
bench starts on a free port of 127.0.0.1 with persistence off (as most of them run it), at the
same processes x threads, backlogs and window as ours, and timed alike (`bench.redis_tasks`).

RQ has no threads: a worker runs one job at a time, in a forked child by default. It gets
processes x threads workers, so its concurrency matches. None of the three keeps a job's
record once it ran (no result backend is set), and all three take a message off Redis when
they fetch it: a killed Celery worker with `acks_late` off loses what it prefetched, RQ and
Dramatiq move it to a list their maintenance requeues later. Cheaper promises than ours."""

from __future__ import annotations

import functools
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bench.measure import ROOT, _percentile, _wait
from bench.peers import stop
from bench.server import _wait_listening

DONE = "bench:done"
BIN = Path(sys.executable).parent


def available() -> str | None:
    """Why the Redis peers cannot run here, or None."""
    if not shutil.which("redis-server"):
        return "no redis-server: `make bench` installs Debian's redis-server"
    try:
        import celery  # noqa: F401
        import dramatiq  # noqa: F401
        import redis  # noqa: F401
        import rq  # noqa: F401
    except ImportError as missing:
        return f"{missing.name} is not installed: pip install -e '.[bench]'"
    return None


@contextmanager
def redis_url() -> Iterator[str]:
    """A Redis server of the bench's own, no RDB snapshots and no AOF; stopped on exit."""
    folder = tempfile.mkdtemp(prefix="workers-bench-redis-")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = ["redis-server", "--bind", "127.0.0.1", "--port", str(port), "--save", "",
               "--appendonly", "no", "--dir", folder, "--daemonize", "no"]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_listening(port)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        process.terminate()
        process.wait(timeout=30)
        shutil.rmtree(folder, ignore_errors=True)


def _client(url: str) -> Any:
    import redis

    return redis.Redis.from_url(url)


# -- each peer: how it is pushed to, and how its workers are started ------------------------


def _push_celery(url: str, numbers: range) -> None:
    from celery import Celery

    app = Celery("bench_producer", broker=url)
    try:
        for n in numbers:
            app.send_task("noop", args=[n])
    finally:
        app.close()


def _push_rq(url: str, numbers: range) -> None:
    from rq import Queue

    queue = Queue(connection=_client(url))
    for at in range(numbers.start, numbers.stop, 1000):
        chunk = range(at, min(at + 1000, numbers.stop))
        queue.enqueue_many([Queue.prepare_data("bench.redis_tasks.noop", (n,)) for n in chunk])


def _push_dramatiq(url: str, numbers: range) -> None:
    from dramatiq import Message
    from dramatiq.brokers.redis import RedisBroker

    broker = RedisBroker(url=url)  # type: ignore[no-untyped-call]
    broker.declare_queue("default")
    try:
        for n in numbers:
            broker.enqueue(Message("default", "noop", (n,), {}, {}))
    finally:
        broker.close()


def _celery_workers(processes: int, threads: int) -> list[list[str]]:
    command = [sys.executable, "-m", "celery", "-A", "bench.celery_redis_peer", "worker",
               "-P", "threads", "-c", str(threads), "--loglevel=WARNING"]  # fmt: skip
    return [[*command, "-n", f"bench{n}@%h"] for n in range(processes)]


def _rq_workers(processes: int, threads: int) -> list[list[str]]:
    return [[str(BIN / "rq"), "worker", "--quiet"] for _ in range(processes * threads)]


def _dramatiq_workers(processes: int, threads: int) -> list[list[str]]:
    return [[str(BIN / "dramatiq"), "bench.dramatiq_peer", "--processes", str(processes),
             "--threads", str(threads)]]  # fmt: skip


PEERS: dict[str, tuple[Callable[[str, range], None], Callable[[int, int], list[list[str]]]]] = {
    "Celery (Redis)": (_push_celery, _celery_workers),
    "RQ (Redis)": (_push_rq, _rq_workers),
    "Dramatiq (Redis)": (_push_dramatiq, _dramatiq_workers),
}


@contextmanager
def _workers(peer: str, url: str, processes: int, threads: int) -> Iterator[None]:
    """The peer's worker processes on `url`; TERM on exit (each peer's warm shutdown)."""
    env = {**os.environ, "BENCH_REDIS_URL": url, "PYTHONPATH": str(ROOT)}
    if peer == "RQ (Redis)":
        env["RQ_REDIS_URL"] = url
    started = [
        subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for command in PEERS[peer][1](processes, threads)
    ]
    try:
        yield
    finally:
        stop(started)


def _done(url: str) -> list[tuple[int, float]]:
    """(n, epoch seconds) of every task that ran, in the order they ran."""
    return [(int(n), float(at)) for n, at in (e.split() for e in _client(url).lrange(DONE, 0, -1))]


def throughput(
    peer: str, url: str, processes: int, threads: int, backlog: int, window: int
) -> float:
    """Completed tasks/s over `window` of a `backlog` pushed before the workers start: from the
    first task's completion to the window-th, so start-up is not counted (as for Celery on
    MongoDB in `bench.peers`)."""
    client = _client(url)
    client.flushdb()
    PEERS[peer][0](url, range(backlog))
    with _workers(peer, url, processes, threads):
        _wait(lambda: client.llen(DONE) >= window, 600, every=0.2)
    done = sorted(at for _, at in _done(url))
    return (window - 1) / (done[window - 1] - done[0])


def pickup(peer: str, url: str, count: int = 200, gap: float = 0.02) -> dict[str, float]:
    """Push → done latency (ms) of tasks pushed one at a time to an idle 2 x 4 service."""
    client = _client(url)
    client.flushdb()
    pushed: dict[int, float] = {}
    with _workers(peer, url, 2, 4):
        PEERS[peer][0](url, range(-1, 0))
        _wait(lambda: client.llen(DONE) >= 1, 60, every=0.2)
        time.sleep(3)
        for n in range(count):
            pushed[n] = time.time()
            PEERS[peer][0](url, range(n, n + 1))
            time.sleep(gap)
        _wait(lambda: client.llen(DONE) >= count + 1, 120, every=0.2)
    latencies = sorted((at - pushed[n]) * 1000 for n, at in _done(url) if n >= 0)
    return {f"p{q}": _percentile(latencies, q) for q in (50, 95, 99)}


def run(
    runs: int, backlogs: list[int], window: int, configs: list[tuple[int, int]],
    median: Callable[[int, Callable[[], float]], float],
    median_of: Callable[[int, Callable[[], dict[str, float]]], dict[str, float]],
    step: Callable[[str], None],
) -> dict[str, Any]:  # fmt: skip
    """Every Redis peer's throughput and pickup, on one Redis server of the bench's own."""
    found: dict[str, Any] = {}
    with redis_url() as url:
        for peer in PEERS:
            figures: dict[str, Any] = {"throughput": {}}
            for backlog in backlogs:
                for processes, threads in configs:
                    step(f"{peer} {processes} x {threads} at backlog {backlog}")
                    drain = functools.partial(
                        throughput, peer, url, processes, threads, backlog, window
                    )
                    figures["throughput"][f"{processes}x{threads}@{backlog}"] = median(runs, drain)
            step(f"{peer} pickup")
            figures["pickup"] = median_of(runs, functools.partial(pickup, peer, url))
            found[peer] = figures
    return found
