"""Flow control per type: `concurrency` per process, `global_concurrency` and `rate_limit`
across the cluster, enforced in the claim; measured from the jobs' own records of when
each attempt began and ended (by the server's clock), on real worker processes."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import bson
import pymongo
import pytest

import workers
from tests.conftest import settings_dict, wait_for, workers_command, workers_env
from tests.headless_node import HeadlessNode
from tests.limitjobs import HoldJob
from tests.web_support import client_for
from workers.app import App
from workers.claimer import Claimer
from workers.errors import DiscoveryError, SettingsError
from workers.job import Job
from workers.limits import Limit, Rate, limits_for, parse_rate
from workers.settings import validate
from workers.store import LimitedAsk
from workers.store import limits as store_limits

LIMIT_JOBS = ["tests.limitjobs"]


@pytest.fixture
def limited_settings(settings_file: Callable[..., Path]) -> Callable[..., Path]:
    def write(**overrides: Any) -> Path:
        return settings_file(jobs=LIMIT_JOBS, **overrides)

    return write


@pytest.fixture
def limited_app(mongo_url: str, db_name: str, db: Any) -> Iterator[App]:
    settings = settings_dict(mongo_url, db_name, jobs=LIMIT_JOBS)
    yield workers.boot(settings=validate(settings))
    workers.shutdown()


def push(app: App, job_type: str, count: int, **params: Any) -> list[str]:
    return [app.push_named(job_type, dict(params)) for _ in range(count)]


def all_completed(db: Any, ids: list[str]) -> bool:
    done = db["workers.jobs"].count_documents({"_id": {"$in": ids}, "status": "completed"})
    return done == len(ids)


def most_at_once(intervals: list[tuple[datetime, datetime]]) -> int:
    """The largest number of intervals open at one instant (an end before a start at a tie)."""
    edges = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals])
    most = running = 0
    for _, step in edges:
        running += step
        most = max(most, running)
    return most


def intervals(db: Any, job_type: str, pid: int | None = None) -> list[tuple[datetime, datetime]]:
    query: dict[str, Any] = {"type": job_type, "end": {"$exists": True}}
    if pid is not None:
        query["pid"] = pid
    return [(run["start"], run["end"]) for run in db.runs.find(query)]


@pytest.mark.processes
@pytest.mark.slow
@pytest.mark.serial
def test_global_concurrency_caps_two_processes_of_four_threads(
    limited_settings: Callable[..., Path], tmp_path: Path, db: Any, limited_app: App
) -> None:
    ids = push(limited_app, "CappedJob", 10, seconds=0.4)
    path = limited_settings(cluster__count=2, workers__count=4)
    with HeadlessNode(path, tmp_path) as node:
        wait_for(lambda: all_completed(db, ids), timeout=90, what="the capped jobs")
        assert node.stop() == 0
    ran = intervals(db, "CappedJob")
    assert len(ran) == 10
    # never more than 2 at once, and the cap is used: a claim takes both free slots at once
    assert most_at_once(ran) == 2, sorted(ran)
    # a freed slot is taken by the next claim (the end here wakes it, a recheck there), never
    # left to the 30 s safety poll: 5 s is a hundred rechecks of these settings
    starts, ends = sorted(start for start, _ in ran), sorted(end for _, end in ran)
    gaps = [start - end for end, start in zip(ends, starts[2:], strict=False)]
    assert max(gaps) < timedelta(seconds=5), gaps


@pytest.mark.processes
@pytest.mark.slow
def test_concurrency_caps_each_process_on_its_own(
    limited_settings: Callable[..., Path], tmp_path: Path, db: Any, limited_app: App
) -> None:
    ids = push(limited_app, "LocalJob", 6, seconds=0.3)
    path = limited_settings(cluster__count=2, workers__count=4)
    with HeadlessNode(path, tmp_path) as node:
        wait_for(lambda: all_completed(db, ids), timeout=90, what="the local jobs")
        assert node.stop() == 0
    pids = db.runs.distinct("pid")
    for pid in pids:
        assert most_at_once(intervals(db, "LocalJob", pid)) == 1
    assert len(intervals(db, "LocalJob")) == 6


@pytest.mark.processes
@pytest.mark.slow
@pytest.mark.serial
def test_rate_limit_holds_in_every_one_second_window(
    limited_settings: Callable[..., Path], tmp_path: Path, db: Any, limited_app: App
) -> None:
    ids = push(limited_app, "RatedJob", 15)
    path = limited_settings(cluster__count=2, workers__count=4)
    with HeadlessNode(path, tmp_path) as node:
        wait_for(lambda: all_completed(db, ids), timeout=90, what="the rated jobs")
        assert node.stop() == 0
    # the claim's own start times ($$NOW): 5 per second means the 6th start after any start
    # comes a second or more after it
    starts = sorted(doc["started"] for doc in db["workers.jobs"].find({"_id": {"$in": ids}}))
    gaps = [later - earlier for earlier, later in zip(starts, starts[5:], strict=False)]
    assert min(gaps) >= timedelta(seconds=1), starts
    # and the rate is used: the first five start together, within the first second
    assert starts[4] - starts[0] < timedelta(seconds=1), starts


@pytest.mark.processes
@pytest.mark.slow
def test_other_types_flow_while_one_waits_for_its_window_without_spinning(
    limited_settings: Callable[..., Path], tmp_path: Path, db: Any, limited_app: App
) -> None:
    rated = push(limited_app, "SlowRatedJob", 5)  # 2 a minute
    free = push(limited_app, "FreeJob", 20)
    path = limited_settings(workers__count=4)
    limits = db["workers.limits"]
    with HeadlessNode(path, tmp_path) as node:
        wait_for(lambda: all_completed(db, free), timeout=60, what="the free jobs")
        wait_for(lambda: all_completed(db, rated[:2]), timeout=60, what="two rated jobs")
        # every look at the type bumps its document; held back until the window opens,
        # in 60 s, the claimer does not try again (the free jobs ran meanwhile)
        looks = limits.find_one({"_id": "SlowRatedJob"})["looks"]
        assert looks == 2  # the one that took two, the one that found the window full
        time.sleep(2)  # a span observed: nothing may happen in it, however long it is
        assert limits.find_one({"_id": "SlowRatedJob"})["looks"] == looks
        statuses = [doc["status"] for doc in db["workers.jobs"].find({"_id": {"$in": rated}})]
        assert sorted(statuses) == ["completed"] * 2 + ["ready"] * 3
        assert node.stop() == 0


@pytest.mark.processes
@pytest.mark.slow
def test_a_killed_holders_slot_frees_when_its_lease_is_rescued(
    limited_settings: Callable[..., Path], tmp_path: Path, db: Any, limited_app: App
) -> None:
    held = limited_app.push_named("HoldJob", {"first": 120})  # its first attempt never ends
    path = limited_settings(workers__count=2)
    env = workers_env()
    holder = subprocess.Popen(workers_command("worker", "--settings", str(path)), env=env)
    taker: subprocess.Popen[bytes] | None = None
    try:
        wait_for(lambda: db.runs.find_one({"job_id": held}), timeout=60, what="the holder")
        other = limited_app.push_named("HoldJob", {"seconds": 0.2})
        taker = subprocess.Popen(workers_command("worker", "--settings", str(path)), env=env)
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait(timeout=30)
        wait_for(lambda: all_completed(db, [held, other]), timeout=90, what="both HoldJobs")
    finally:
        for process in (holder, taker):
            if process is not None and process.poll() is None:
                process.terminate()
                process.wait(timeout=60)
    # the killed attempt held its slot until the rescue; nothing overlapped it or each other
    job = db["workers.jobs"].find_one({"_id": held})
    rescued = next(e["time"] for e in job["log"] if str(e.get("message")).startswith("lost"))
    killed = db.runs.find_one({"job_id": held, "attempt": 1})
    assert "end" not in killed
    ran = [*intervals(db, "HoldJob"), (killed["start"], rescued)]
    assert len(ran) == 3
    assert most_at_once(ran) == 1, sorted(ran)


def test_the_dashboard_and_metrics_show_each_cap_its_use_and_who_waits(
    limited_app: App, db: Any
) -> None:
    ids = push(limited_app, "HoldJob", 3)
    held = limited_app.store.claim_limited(LimitedAsk("test#1", "HoldJob", 30, 3, cap=1))
    assert [doc["_id"] for doc in held.jobs] == ids[:1]  # the cap: one of three
    assert held.waiting
    again = limited_app.store.claim_limited(LimitedAsk("test#2", "HoldJob", 30, 3, cap=1))
    assert again.jobs == [] and again.waiting and again.retry_at is None

    client = client_for(limited_app, trust_loopback=True)
    metrics = client.get("/metrics").text
    assert 'workers_limit{limit="global_concurrency",type="HoldJob"} 1.0' in metrics
    assert 'workers_limit_in_use{limit="global_concurrency",type="HoldJob"} 1.0' in metrics
    assert 'workers_limit_waiting_jobs{type="HoldJob"} 2.0' in metrics
    assert 'workers_limit{limit="rate_limit",type="RatedJob"} 5.0' in metrics
    assert 'workers_limit{limit="concurrency",type="LocalJob"} 1.0' in metrics
    stats = client.get("/api/stats").json()
    row = next(r for r in stats["limits"] if r["type"] == "HoldJob")
    assert (row["running"], row["global_concurrency"], row["waiting"]) == (1, 1, 2)
    assert row["at_cap"] is True
    page = client.get("/", headers={"Accept": "text/html"}).text
    assert '<tr data-type="HoldJob" class="at-cap">' in page


def test_a_limited_types_backlog_is_counted_up_to_a_cap(
    limited_app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each page view and scrape counts it: it reads at most BACKLOG_CAP index keys."""
    push(limited_app, "HoldJob", 3)
    monkeypatch.setattr(store_limits, "BACKLOG_CAP", 2)
    assert limited_app.store.limit_use("HoldJob", None)["ready"] == 2


def test_a_rate_claim_says_when_its_window_opens(limited_app: App) -> None:
    push(limited_app, "SlowRatedJob", 3)
    first = limited_app.store.claim_limited(
        LimitedAsk("test#1", "SlowRatedJob", 30, 3, rate=(2, 60.0))
    )
    assert len(first.jobs) == 2 and first.waiting
    second = limited_app.store.claim_limited(
        LimitedAsk("test#2", "SlowRatedJob", 30, 3, rate=(2, 60.0))
    )
    assert second.jobs == [] and second.retry_at is not None
    opens = second.retry_at - min(doc["started"] for doc in first.jobs)
    assert timedelta(seconds=59) < opens <= timedelta(seconds=61)


def test_the_rate_window_is_a_few_counters_however_many_jobs_start(limited_app: App) -> None:
    """A claim rewrote the window's record whole, and it kept one date per start (up to
    the rate's count, 10,000 at most). It keeps a counter per slice of the window now: a
    few dozen bytes per slice, however many start, and the count it allows is exact."""
    limited_app.push_many([HoldJob() for _ in range(700)])
    taken = 0
    for n in range(14):
        ask = LimitedAsk(f"test#{n}", "HoldJob", 30, 50, rate=(600, 60.0))
        taken += len(limited_app.store.claim_limited(ask).jobs)
    assert taken == 600  # the window's count, to the job
    record = limited_app.store.limits.find_one({"_id": "HoldJob"})
    assert record is not None
    assert len(bson.encode(record)) <= 200 + 40 * (store_limits.SLICES + 1), record
    refused = limited_app.store.claim_limited(LimitedAsk("t#x", "HoldJob", 30, 1, rate=(600, 60.0)))
    assert refused.jobs == [] and refused.waiting and refused.retry_at is not None
    assert limited_app.store.limit_use("HoldJob", 60.0)["starts"] == 600


def test_the_window_counts_an_earlier_versions_starts_and_opens_when_they_leave() -> None:
    """A rolling deploy: nodes of the earlier version log one date per start in `starts`."""
    now = datetime(2026, 12, 8, 12, 0, 0, tzinfo=UTC)
    end_ms = store_limits._epoch_ms(now - timedelta(seconds=30))
    doc = {
        "starts": [now - timedelta(seconds=90), now - timedelta(seconds=50)],  # one too old
        "spans": [{"end": end_ms, "n": 2}, {"end": end_ms - 70_000, "n": 9}],  # one too old
    }
    spans = store_limits._in_window(doc, now, 60.0)
    assert sum(n for _, n in spans) == 3
    opens = store_limits._window_opens(spans, (3, 60.0))  # full: the oldest must leave
    assert opens == now - timedelta(seconds=50) + timedelta(seconds=60, milliseconds=1)
    assert store_limits._window_opens(spans, (4, 60.0)) is None


# -- what is read and checked ------------------------------------------------------------


def test_rates_read_as_starts_per_window() -> None:
    assert parse_rate("100/m", "x") == Rate(100, 60.0, "100/m")
    assert parse_rate(" 5 / s ", "x") == Rate(5, 1.0, "5 / s")
    assert parse_rate("1000/h", "x").seconds == 3600.0
    assert parse_rate("3/10s", "x") == Rate(3, 10.0, "3/10s")
    for bad in ("100", "100/min", "0/s", "-1/s", "1/0s", "100000/s", 100, None):
        with pytest.raises(ValueError, match="where"):
            parse_rate(bad, "where")


def test_a_bad_limit_names_the_class_or_the_settings_key() -> None:
    class BadJob(Job):
        rate_limit = "fast"

    class ZeroJob(Job):
        global_concurrency = 0

    class FineJob(Job):
        concurrency = 2

    with pytest.raises(DiscoveryError, match=r"test_limits.BadJob.rate_limit must be"):
        limits_for({"BadJob": BadJob}, {})
    with pytest.raises(DiscoveryError, match=r"ZeroJob.global_concurrency must be a whole"):
        limits_for({"ZeroJob": ZeroJob}, {})
    with pytest.raises(SettingsError, match=r"workers\.limits names NoSuchJob, which no job"):
        limits_for({"FineJob": FineJob}, {"NoSuchJob": {"concurrency": 1}})
    with pytest.raises(SettingsError, match=r"workers.limits.FineJob.rate_limit must be"):
        limits_for({"FineJob": FineJob}, {"FineJob": {"rate_limit": "often"}})
    # the settings win, key by key
    limits = limits_for({"FineJob": FineJob}, {"FineJob": {"global_concurrency": 3}})
    assert limits == {"FineJob": Limit(concurrency=2, global_concurrency=3)}
    assert limits_for({"FineJob": FineJob}, {"FineJob": {"concurrency": None}}) == {
        "FineJob": Limit(concurrency=2)
    }


def test_the_settings_refuse_a_bad_rate_naming_it(mongo_url: str, db_name: str) -> None:
    raw = settings_dict(mongo_url, db_name, workers__limits={"RatedJob": {"rate_limit": "1/y"}})
    with pytest.raises(SettingsError, match=r"workers\.limits\.RatedJob\.rate_limit"):
        validate(raw)


@pytest.mark.processes
@pytest.mark.slow
@pytest.mark.serial
@pytest.mark.parametrize(
    "limit",
    [
        {"global_concurrency": 2},
        {"rate_limit": "5/s"},
        {"concurrency": 1},
        {},
    ],
    ids=["global_concurrency", "rate_limit", "concurrency", "no limit"],
)
def test_a_retry_of_a_limited_type_starts_when_its_wait_ends(
    limit: dict[str, Any],
    limited_settings: Callable[..., Path],
    tmp_path: Path,
    db: Any,
    limited_app: App,
) -> None:
    # the default poll interval: the retry must not wait for the next poll or cron tick.
    # Two jobs: the second retry comes due after the first, which the claimer must not lose
    path = limited_settings(
        workers__queue__poll_interval=1.0, workers__limits={"FlakyJob": limit}, workers__count=2
    )
    with HeadlessNode(path, tmp_path) as node:
        ids = [
            str(limited_app.push_named("FlakyJob", {}, retry={"retries": 2, "wait": 1}))
            for _ in range(2)
        ]
        wait_for(lambda: all_completed(db, ids), timeout=60, what="the flaky jobs")
        assert node.stop() == 0
    for job_id in ids:
        runs = sorted(db.runs.find({"job_id": job_id}), key=lambda run: run["attempt"])
        assert [run["attempt"] for run in runs] == [1, 2]
        late = runs[1]["start"] - runs[0]["end"]
        # its wait (1 s) plus a second: a poll or a cron tick is not what starts it
        assert late < timedelta(seconds=2), f"{job_id}: the retry began {late} after the failure"


def test_a_limited_type_whose_claim_fails_does_not_stop_the_other_types(
    limited_app: App, db: Any, caplog: pytest.LogCaptureFixture
) -> None:
    # Given a server that refuses every write of one limited type's document (as it refuses
    # all of workers.limits to a role without privileges on it)
    name = limited_app.store.limits.name
    if name not in db.list_collection_names():
        db.create_collection(name)
    db.command("collMod", name, validator={"_id": {"$ne": "CappedJob"}})
    capped = push(limited_app, "CappedJob", 1)
    free = push(limited_app, "FreeJob", 2)
    types = limited_app.registry.types
    claimer = Claimer(limited_app.store, "me", types, 30, limits=limited_app.limits)
    # When the claimer looks, twice
    first = [doc["_id"] for doc in claimer.claim(5)]
    again = claimer.claim(5)
    # Then the other types are claimed, the refused one waits, named once in the log
    assert sorted(first) == sorted(free) and again == []
    assert limited_app.store.get_job(capped[0])["status"] == "ready"  # type: ignore[index]
    said = [r.getMessage() for r in caplog.records if "cannot claim CappedJob" in r.getMessage()]
    assert len(said) == 1 and "Document failed validation" in said[0]


def test_the_documented_role_covers_every_collection_the_service_uses(limited_app: App) -> None:
    """docs/mongodb.md's least-privilege role: read and write on each of the store's
    collections (a missing `workers.limits` once stalled every process with a limited type)."""
    text = (Path(__file__).parent.parent / "docs" / "mongodb.md").read_text()
    role = text[text.index("createRole({") : text.index("roles: [],")]
    named = set(re.findall(r'collection: p \+ "(\w+)" \}, actions: \[?(?:\.\.\.)?rw', role))
    store = limited_app.store
    used = {
        collection.name.removeprefix(f"{store._prefix}.")
        for collection in vars(store).values()
        if isinstance(collection, pymongo.collection.Collection)
    }
    assert used and used <= named, f"the role misses {sorted(used - named)}"
