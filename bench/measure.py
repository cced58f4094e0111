"""Each figure of the benchmark, measured once. Raw pymongo calls give the server's own rates;
`workers` is measured through its public API and real headless process trees."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import multiprocessing
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import workers
from bench.jobs import GlobalBenchJob, NoopJob, RatedBenchJob
from workers import Job
from workers.app import App
from workers.settings import validate
from workers.store import new_id
from workers.store.claims import CLAIM_INDEX, CLAIM_SORT
from workers.store.overview import COUNT_PIPELINE

ROOT = Path(__file__).resolve().parent.parent
UTC = dt.UTC


def settings(url: str, database: str, **queue: Any) -> dict[str, Any]:
    return {
        "mongo": {"url": url, "database": database},
        "jobs": ["bench.jobs"],
        "workers": {"queue": {"lease": 30, **queue}},
    }


@contextmanager
def booted(url: str, web: dict[str, Any] | None = None, **queue: Any) -> Iterator[App]:
    """An app on a fresh database, dropped afterwards."""
    database = f"bench_{uuid.uuid4().hex[:8]}"
    raw = settings(url, database, **queue)
    if web:
        raw["web"] = web
    app = workers.boot(settings=validate(raw))
    try:
        yield app
    finally:
        app.store.db.client.drop_database(database)
        workers.shutdown()


# -- ceilings: the server's own rates ------------------------------------------------------


def raw_insert_one(url: str, count: int = 1000) -> float:
    with booted(url) as app:
        return _insert_one_rate(app, count)


def _insert_one_rate(app: App, count: int) -> float:
    """The server's own `insert_one` of `count` job documents, one call each."""
    docs = _documents(app, count)
    started = time.perf_counter()
    for doc in docs:
        app.store.jobs.insert_one(doc)
    return count / (time.perf_counter() - started)


def _insert_many_rate(app: App, count: int) -> float:
    """The server's own `insert_many` of `count` job documents, 1,000 a call."""
    docs = _documents(app, count)
    started = time.perf_counter()
    for at in range(0, count, 1000):
        app.store.jobs.insert_many(docs[at : at + 1000])
    return count / (time.perf_counter() - started)


def raw_insert_many(url: str, count: int = 5000) -> float:
    with booted(url) as app:
        return _insert_many_rate(app, count)


def raw_claim(url: str, backlog: int, window: int) -> float:
    """Single-thread find_one_and_update claims of the first `window` jobs of `backlog`,
    with the same query and index as the worker's claim."""
    with booted(url) as app:
        app.store.jobs.insert_many(_documents(app, backlog))
        query = {"status": "ready", "type": {"$in": ["NoopJob"]}}
        claimed = {"status": "running", "lease_owner": "raw", "started": "$$NOW",
                   "attempts": {"$add": ["$attempts", 1]}}  # fmt: skip
        update = [{"$set": claimed}]
        started = time.perf_counter()
        for _ in range(window):
            now = app.store.now()
            app.store.jobs.find_one_and_update(
                {**query, "run_at": {"$lte": now}}, update, sort=CLAIM_SORT, hint=CLAIM_INDEX
            )
        return window / (time.perf_counter() - started)


def raw_concurrent(url: str, processes: int, threads: int, count: int = 480) -> float:
    """The server's own rate at the concurrency of `processes x threads`, with nothing of
    ours and no races: each thread claims 4 jobs by `_id` (`update_many`), reads them back
    by token and completes them (`update_many`), on jobs no other thread touches. What
    the engine itself does with more busy connections (start-up is not counted)."""
    with booted(url) as app:
        docs = _documents(app, 1000)
        app.store.jobs.insert_many(docs)
        ids = [doc["_id"] for doc in docs[:count]]
        return count / _raw_run(url, app, processes, threads, lambda: ids)


def raw_found(url: str, processes: int, threads: int, backlog: int, window: int) -> float:
    """`raw_concurrent` over the first `window` of `backlog` due jobs, with the one read no
    queue can skip: finding them, in queue order (the claim's query, sort and index),
    once, by the clock. On a server whose find reads every document its filter's equality
    matches, that read grows with the backlog whatever the query; this is the bound."""
    with booted(url) as app:
        app.store.jobs.insert_many(_documents(app, backlog))
        query = {
            "status": "ready",
            "type": {"$in": ["NoopJob"]},
            "run_at": {"$lte": app.store.now()},
        }

        def found() -> list[str]:
            hint = app.store.scan_hint(CLAIM_INDEX)
            first = app.store.jobs.find(query, {"_id": 1}, sort=CLAIM_SORT, hint=hint, limit=window)
            return [doc["_id"] for doc in first]

        return window / _raw_run(url, app, processes, threads, found)


def _raw_run(
    url: str, app: App, processes: int, threads: int, ids: Callable[[], list[str]]
) -> float:
    """Seconds from the go to the last child's end, `ids()` found after the go and split
    among `processes` children of `threads` threads each (see `_raw_batches`)."""
    context = multiprocessing.get_context("spawn")
    ready = context.Barrier(processes + 1)
    inboxes = [context.Queue() for _ in range(processes)]
    where = (url, app.store.db.name, app.store.jobs.name)
    children = [
        context.Process(target=_raw_batches, args=(*where, inboxes[n], threads, ready))
        for n in range(processes)
    ]
    for child in children:
        child.start()
    ready.wait(timeout=120)
    started = time.perf_counter()
    found = ids()
    for n, inbox in enumerate(inboxes):
        inbox.put(found[n::processes])
    for child in children:
        child.join(timeout=600)
    return time.perf_counter() - started


def _raw_batches(url: str, database: str, name: str, inbox: Any, threads: int, ready: Any) -> None:
    import pymongo

    client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(url, maxPoolSize=threads)
    jobs = client[database][name]
    jobs.find_one({}, {"_id": 1})  # connected before the clock starts
    ready.wait(timeout=120)
    ids = inbox.get(timeout=600)
    batches = [ids[at : at + 4] for at in range(0, len(ids), 4)]
    lock = threading.Lock()

    def work() -> None:
        while True:
            with lock:
                if not batches:
                    return
                batch = batches.pop()
            token = uuid.uuid4().hex
            mine = {"_id": {"$in": batch}}
            jobs.update_many({**mine, "status": "ready"}, [{"$set": {
                "status": "running", "lease_owner": token, "started": "$$NOW"}}])  # fmt: skip
            list(jobs.find({**mine, "lease_owner": token}))
            jobs.update_many({**mine, "status": "running", "lease_owner": token}, [{"$set": {
                "status": "completed", "lease_owner": None, "finished": "$$NOW"}}])  # fmt: skip

    workers_ = [threading.Thread(target=work) for _ in range(threads)]
    for thread in workers_:
        thread.start()
    for thread in workers_:
        thread.join()
    client.close()


def _documents(app: App, count: int) -> list[dict[str, Any]]:
    past = dt.datetime.now(UTC) - dt.timedelta(seconds=5)
    return [app.job_document(new_id(), "NoopJob", {"n": n}, after=past) for n in range(count)]


# -- push -----------------------------------------------------------------------------------


def push_one(url: str, count: int = 1000) -> float:
    with booted(url):
        Job.push(NoopJob(n=-1))
        return _push_rate(count)


def push_many(url: str, count: int = 5000) -> float:
    with booted(url):
        Job.push(NoopJob(n=-1))
        return _push_many_rate(count)


def _push_rate(count: int) -> float:
    """`Job.push` of `count` no-op jobs, one call each, into the booted app's database."""
    started = time.perf_counter()
    for n in range(count):
        Job.push(NoopJob(n=n))
    return count / (time.perf_counter() - started)


def _push_many_rate(count: int) -> float:
    """`Job.push_many` of `count` no-op jobs, 1,000 a call."""
    jobs = [NoopJob(n=n) for n in range(count)]
    started = time.perf_counter()
    for at in range(0, count, 1000):
        Job.push_many(jobs[at : at + 1000])
    return count / (time.perf_counter() - started)


# -- throughput, pickup and memory of real headless trees -------------------------------------


@contextmanager
def headless(
    url: str,
    database: str,
    processes: int,
    threads: int,
    limits: dict[str, Any] | None = None,
    **queue: Any,
) -> Iterator[None]:
    """`workers --headless` with its own settings file, as a user runs it; TERM on exit."""
    folder = Path(tempfile.mkdtemp(prefix="workers-bench-"))
    raw = settings(url, database, **queue)
    raw["cluster"] = {"count": processes}
    raw["workers"]["count"] = threads
    raw["workers"]["limits"] = limits or {}
    (folder / "settings.json").write_text(json.dumps(raw))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("MONGO_URL", None)
    process = subprocess.Popen(
        [sys.executable, "-m", "workers", "--headless", "--settings", "settings.json"],
        cwd=folder,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)


# -- a drain next to the work users keep: jobs scheduled for later, and finished ones -------


def crowd(app: App, scheduled: int, finished: int) -> None:
    """Fill the collection as a week of use would: `scheduled` jobs pushed for tomorrow
    (`Job.push_many`) and `finished` completed ones: documents made by `job_document` (what
    a push inserts) with the fields a completion writes, inserted 5,000 at a time (a real
    drain of 100,000 takes this server some ten minutes, and one `update_many` of 20,000
    outlasted the driver's 30 s timeout)."""
    for at in range(0, scheduled, 5000):
        jobs = [NoopJob(n=n, crowd="scheduled") for n in range(at, min(at + 5000, scheduled))]
        Job.push_many(jobs, delay=86400)
    now = app.store.now()
    keep = dt.timedelta(seconds=app.store.retention.get("completed") or 86400)
    for at in range(0, finished, 5000):
        docs = [
            {**app.job_document(new_id(), "NoopJob", {"n": n, "crowd": "finished"}),
             "status": "completed", "attempts": 1, "started": now, "finished": now,
             "updated": now, "result": None, "finished_by": "crowd#1", "expire_at": now + keep}
            for n in range(at, min(at + 5000, finished))
        ]  # fmt: skip
        app.store.jobs.insert_many(docs)


def crowded_throughput(
    url: str, processes: int, threads: int, backlog: int, window: int, scheduled: int,
    finished: int,
) -> float:  # fmt: skip
    """`throughput` with `scheduled` + `finished` other jobs in the collection; a push
    that ran past its due time is tried again with twice the time to spare."""
    crowded = (scheduled, finished)
    for attempt in range(_ATTEMPTS - 1):
        with contextlib.suppress(PushTooSlow):
            return _drain(url, processes, threads, backlog, window, crowded, 2**attempt)
    return _drain(url, processes, threads, backlog, window, crowded, 2 ** (_ATTEMPTS - 1))


def crowded_push(url: str, scheduled: int, finished: int) -> dict[str, float]:
    """`Job.push` (1,000 calls) and `Job.push_many` (5,000 jobs) into a crowded collection,
    and the server's own `insert_one` of 1,000 and `insert_many` of 5,000 of the same
    documents there: the bounds an insert into a fuller collection (and its indexes) sets
    on this server (beside 100,000 + 100,000, `insert_many` ran at 0.73x its empty rate)."""
    with booted(url) as app:
        crowd(app, scheduled, finished)
        raw = _insert_one_rate(app, 1000)
        raw_many = _insert_many_rate(app, 5000)
        one, many = _push_rate(1000), _push_many_rate(5000)
    return {"insert_one": raw, "insert_many": raw_many, "push": one, "push_many": many}


# -- what flow control costs a type without limits -------------------------------------------

LIMITS = {"GlobalBenchJob": {"global_concurrency": 1}, "RatedBenchJob": {"rate_limit": "1/h"}}


def held_back(app: App) -> None:
    """Two limited types with jobs waiting at their caps through the whole drain, which their
    claimers look at again every `poll_interval`: 20 jobs of a type whose one slot is held
    elsewhere (a running job, its lease an hour long), and 20 of a type allowed one start
    an hour, one of which starts."""
    running = {"status": "running", "lease_owner": "elsewhere#1", "attempts": 1}
    lease = {"lease_expires": app.store.now() + dt.timedelta(hours=1)}
    held = app.job_document(new_id(), "GlobalBenchJob", {"n": -1})
    app.store.jobs.insert_one({**held, **running, **lease})
    Job.push_many([GlobalBenchJob(n=n) for n in range(20)])
    Job.push_many([RatedBenchJob(n=n) for n in range(20)])


def limited_throughput(
    url: str, processes: int, threads: int, backlog: int, window: int, limited: bool
) -> float:
    """`throughput` of NoopJob, which has no limit, with (`limited`) or without two other
    types held back at their caps beside it (`held_back`)."""
    extra: dict[str, Any] = {"limits": LIMITS, "prepare": held_back} if limited else {}
    for _ in range(_ATTEMPTS - 1):
        with contextlib.suppress(PushTooSlow):
            return _drain(url, processes, threads, backlog, window, **extra)
    return _drain(url, processes, threads, backlog, window, **extra)


def throughput(
    url: str, processes: int, threads: int, backlog: int, window: int, **queue: Any
) -> float:
    """Completed jobs/s over the first `window` of `backlog` jobs, all due at one instant T:
    from T to the window-th `finished`, both by the server's clock. The service is started
    first and left to settle on an empty queue, and only then is the backlog pushed, due
    after the push: process start-up (its first scans and next-due reads, each of which reads
    the whole backlog on this server) never runs into the measured window. A push that ran
    past T (a slow moment of the machine) voids the run, which is measured again."""
    for _ in range(_ATTEMPTS - 1):
        with contextlib.suppress(PushTooSlow):
            return _drain(url, processes, threads, backlog, window, **queue)
    return _drain(url, processes, threads, backlog, window, **queue)


_SETTLE = 2.0  # seconds an idle service is given after its processes registered
_ATTEMPTS = 3


class PushTooSlow(RuntimeError):
    """Pushing the backlog ran past its due time: some jobs could start before the others."""


def _drain(
    url: str,
    processes: int,
    threads: int,
    backlog: int,
    window: int,
    crowded: tuple[int, int] = (0, 0),
    spare: float = 1.0,
    limits: dict[str, Any] | None = None,
    prepare: Callable[[App], None] | None = None,
    **queue: Any,
) -> float:
    with booted(url) as app:
        crowd(app, *crowded)
        if prepare is not None:
            prepare(app)
        with headless(url, app.store.db.name, processes, threads, limits, **queue):
            _wait(lambda: len(app.store.list_nodes()) >= processes, 60, every=0.2)
            time.sleep(_SETTLE)  # the wake-up streams open, and each claimer looks once
            due, ids = _push_due_after_the_push(app, backlog, spare)
            _wait(lambda: _drained(app, ids, crowded[1]) >= window, 600)
        finished = sorted(_finished(app, ids))
        return float(window / (finished[window - 1] - due).total_seconds())


def _finished(app: App, ids: list[str]) -> Iterator[dt.datetime]:
    """When each completed job of `ids` finished, read 1,000 ids at a time: one `$in` of
    20,000 ids outlasted the driver's 30 s timeout on this server."""
    for at in range(0, len(ids), 1000):
        query = {"_id": {"$in": ids[at : at + 1000]}, "status": "completed"}
        yield from (doc["finished"] for doc in app.store.jobs.find(query, {"finished": 1}))


def _drained(app: App, ids: list[str], finished: int) -> int:
    """How many of the backlog are done, by counting the smaller of two sets on the server
    being measured (each count reads every document it counts there): the completed jobs,
    or, beside `finished` others, what is left of the backlog ready or running. A count by
    `_id` of 1,000 ids each second slowed a 2 x 4 drain from 307 to 173 jobs/s, and one of
    20,000 ready jobs each second took a whole scan's time from the drain it measured."""
    if finished == 0:  # the backlog's type: other types may run beside it (`held_back`)
        return app.store.jobs.count_documents({"status": "completed", "type": "NoopJob"})
    left = app.store.jobs.count_documents({"status": {"$in": ["ready", "running"]}})
    return len(ids) - left


def _push_due_after_the_push(
    app: App, backlog: int, spare: float = 1.0
) -> tuple[dt.datetime, list[str]]:
    """Push `backlog` no-op jobs due at one instant after the last of them is written (a
    second to spare at 1,000 pushes/s, a third of this server's `push_many` rate with the
    workers' wake-up streams following every insert; `spare` times that); that instant and
    their ids."""
    store = app.store
    due = store.now() + dt.timedelta(seconds=(1.0 + backlog / 1000) * spare)
    ids: list[str] = []
    for at in range(0, backlog, 1000):
        jobs = [NoopJob(n=n) for n in range(at, min(at + 1000, backlog))]
        ids += Job.push_many(jobs, after=due)
    if store.now() > due - dt.timedelta(seconds=0.2):
        raise PushTooSlow(f"pushing {backlog} jobs ran past their due time")
    return due, ids


def pickup(url: str, streams: bool, count: int = 200, gap: float = 0.02) -> dict[str, float]:
    """Push → start latency (ms) for jobs pushed one at a time to an idle 2 x 4 service."""
    with booted(url) as app, headless(url, app.store.db.name, 2, 4, change_streams=streams):
        _wait(lambda: len(app.store.list_nodes()) >= 2, 60)
        time.sleep(3)  # the wake-up streams open
        return pushed_apart(app, count, gap)


def pushed_apart(app: App, count: int, gap: float) -> dict[str, float]:
    """Push `count` no-op jobs `gap` seconds apart to an idle service, wait for them all, and
    give p50, p95 and p99 of push -> start (ms, both by the server's clock)."""
    ids = []
    for n in range(count):
        ids.append(Job.push(NoopJob(n=n)))
        time.sleep(gap)
    _wait(lambda: app.store.jobs.count_documents({"status": "completed"}) >= count, 120)
    latencies = sorted(
        (doc["started"] - doc["created"]).total_seconds() * 1000
        for doc in app.store.jobs.find({"_id": {"$in": ids}}, {"started": 1, "created": 1})
    )
    return {f"p{q}": _percentile(latencies, q) for q in (50, 95, 99)}


def herd(
    url: str, processes: int, threads: int, count: int = 200, gap: float = 0.05
) -> dict[str, float]:
    """What each job pushed one at a time to an idle `processes` x `threads` service costs
    the server: its write and read commands per job (serverStatus opcounters: a claim
    that finds its job taken is a write all the same), less what the idle service costs
    in as long, and push -> start p50 (ms)."""
    with booted(url) as app, headless(url, app.store.db.name, processes, threads):
        _wait(lambda: len(app.store.list_nodes()) >= processes, 60)
        time.sleep(3)  # the wake-up streams open
        idle_began, at_rest = time.monotonic(), _opcounters(app)
        time.sleep(count * gap)
        idle = _op_delta(at_rest, _opcounters(app), time.monotonic() - idle_began)
        began, before = time.monotonic(), _opcounters(app)
        latencies = pushed_apart(app, count, gap)
        spent = _op_delta(before, _opcounters(app), time.monotonic() - began)
    per_job = {
        f"{kind}_per_job": (spent[kind] - idle[kind] * spent["seconds"] / idle["seconds"]) / count
        for kind in ("writes", "reads")
    }
    return {**per_job, "pickup_p50_ms": latencies["p50"]}


def _opcounters(app: App) -> dict[str, int]:
    counters = app.store.db.client.admin.command("serverStatus")["opcounters"]
    return {key: int(value) for key, value in counters.items()}


def _op_delta(before: dict[str, int], after: dict[str, int], seconds: float) -> dict[str, float]:
    writes = sum(after[k] - before[k] for k in ("insert", "update", "delete"))
    reads = sum(after[k] - before[k] for k in ("query", "getmore"))
    return {"writes": float(writes), "reads": float(reads), "seconds": seconds}


def memory(url: str, jobs: int = 10_000) -> dict[str, float]:
    """RSS (MB) of one worker process (1 x 4) idle, and after it ran `jobs` jobs."""
    with booted(url) as app, headless(url, app.store.db.name, 1, 4):
        _wait(lambda: len(app.store.list_nodes()) >= 1, 60)
        time.sleep(3)
        pid = app.store.list_nodes()[0]["pid"]
        idle = _rss_mb(pid)
        for at in range(0, jobs, 1000):
            Job.push_many([NoopJob(n=n) for n in range(at, at + 1000)])
            _wait(lambda a=at: app.store.jobs.count_documents({"status": "ready"}) < 500, 600)
        _wait(lambda: app.store.jobs.count_documents({"status": "completed"}) >= jobs, 600)
        after = _rss_mb(pid)
    return {"idle_mb": idle, "after_mb": after, "growth_mb": after - idle}


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def _wait(condition: Any, timeout: float, every: float = 1.0) -> None:
    """Poll rarely: each look is a query on the server being measured."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("the benchmark step did not finish in time")
        time.sleep(every)


def _percentile(values: list[float], q: int) -> float:
    if not values:
        return float("nan")
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if q < 100 else values[-1]


# -- the dashboard's reads ---------------------------------------------------------------------


def dashboard(url: str, scheduled: int, finished: int, tries: int = 3) -> dict[str, float]:
    """Milliseconds of the overview page and of `/metrics` beside `scheduled` + `finished`
    other jobs and a backlog of 1,000, each asked of a new web app (its counts not cached
    yet, as after `web.cache` seconds): the median of `tries`. The first overview counts
    inline (the database never had a shared snapshot of the counts: `first_overview_ms`);
    the others read the snapshot it left (views.Counts). `raw_ms`: the server's own
    time for the counts both show, one raw `$group` of every job by status and type."""
    from starlette.testclient import TestClient

    from workers.web.auth import hash_token
    from workers.web.server import create_app

    token = "bench-viewer-token"
    web = {"tokens": [{"name": "bench", "role": "viewer", "sha256": hash_token(token)}]}
    headers = {"Authorization": f"Bearer {token}", "Accept": "text/html"}
    with booted(url, web=web) as app:
        crowd(app, scheduled, finished)
        Job.push_many([NoopJob(n=n) for n in range(1000)])
        times: dict[str, list[float]] = {"overview_ms": [], "metrics_ms": []}
        for _ in range(tries):
            for name, path in (("overview_ms", "/"), ("metrics_ms", "/metrics")):
                with TestClient(create_app(booted_app=app), headers=headers) as client:
                    started = time.perf_counter()
                    answer = client.get(path)
                    times[name].append((time.perf_counter() - started) * 1000)
                    if answer.status_code != 200:
                        raise RuntimeError(f"GET {path}: {answer.status_code} {answer.text[:200]}")
        started = time.perf_counter()
        list(app.store.jobs.aggregate(COUNT_PIPELINE))  # the overview's own, unhinted
        raw = (time.perf_counter() - started) * 1000
    medians = {name: statistics.median(values) for name, values in times.items()}
    return {**medians, "first_overview_ms": times["overview_ms"][0], "raw_ms": raw}
