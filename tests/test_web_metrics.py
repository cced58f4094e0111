"""/metrics and the overview's numbers: read from the database, counted by the worker
processes without a write per job, summed across processes; every query on an index."""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

import workers
from tests.conftest import ROOT, wait_for
from tests.faulty import FaultyCollection
from tests.plans import assert_on_index
from tests.web_support import bearer, client_for, token_settings
from workers import Job
from workers.app import App
from workers.metrics import Tally
from workers.settings import Settings
from workers.store.claims import CLAIM_INDEX
from workers.worker import Worker

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def samples(text: str) -> Samples:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(found: Samples, name: str, **labels: str) -> float | None:
    return found.get((name, tuple(sorted(labels.items()))))


@pytest.fixture
def metrics_app(make_settings: Callable[..., Settings]) -> Iterator[App]:
    booted = workers.boot(settings=make_settings(web__tokens=token_settings(), web__cache=0))
    yield booted
    workers.shutdown()


@pytest.mark.slow
def test_a_worker_s_counts_reach_metrics_through_its_heartbeat(metrics_app: App) -> None:
    from tests.jobs import FailJob, RecordJob

    for n in range(3):
        Job.push(RecordJob(echo=n))
    Job.push(FailJob(message="boom"), retry={"retries": 1, "wait": 0})
    metrics_app.store.jobs.insert_one(_expired_lease("GhostJob"))
    worker = Worker(metrics_app)
    thread = threading.Thread(target=worker.run)
    thread.start()
    try:
        scrape = client_for(metrics_app, headers=bearer("viewer"))

        def counted() -> Samples | None:
            found = samples(scrape.get("/metrics").text)
            done = value(found, "workers_jobs_completed_total", type="RecordJob") == 3
            failed = value(found, "workers_jobs_failed_total", type="FailJob") == 1
            return found if done and failed else None

        found = wait_for(counted, timeout=30, what="the heartbeat's counts in /metrics")
    finally:
        worker.stop()
        thread.join(timeout=30)
    assert value(found, "workers_jobs_retried_total", type="FailJob") == 1
    assert value(found, "workers_jobs_rescued_total", type="GhostJob") == 1
    assert value(found, "workers_job_duration_seconds_count", type="RecordJob") == 3
    assert value(found, "workers_job_duration_seconds_bucket", type="FailJob", le="+Inf") == 2
    assert value(found, "workers_job_pickup_latency_seconds_count", type="RecordJob") == 3
    assert value(found, "workers_jobs", status="completed", type="RecordJob") == 3
    assert value(found, "workers_jobs", status="failed", type="FailJob") == 1
    ages = [v for (name, _), v in found.items() if name == "workers_node_heartbeat_age_seconds"]
    assert len(ages) == 1 and 0 <= ages[0] < 30
    minutes = metrics_app.store.minutes_since(metrics_app.store.now() - timedelta(minutes=5))
    assert sum(doc.get("completed", 0) for doc in minutes) == 3
    assert sum(doc.get("failed", 0) for doc in minutes) == 2  # the retried attempt, and the last


def _expired_lease(job_type: str) -> dict[str, Any]:
    long_ago = datetime(2020, 1, 1, tzinfo=UTC)
    return {"_id": "0" * 24, "type": job_type, "params": {}, "status": "running", "priority": 0,
            "run_at": long_ago, "attempts": 1, "retries": 0, "lease_owner": "dead-process",
            "lease_expires": long_ago, "log": [], "created": long_ago}  # fmt: skip


def test_the_counts_of_many_processes_add_up_and_a_failed_flush_loses_nothing(
    metrics_app: App,
) -> None:
    now = metrics_app.store.now()
    processes = [Tally(), Tally()]
    for number, tally in enumerate(processes, 1):
        for _ in range(number):
            tally.outcome("RecordJob", "completed", 0.2)
        tally.picked_up("RecordJob", now, now + timedelta(seconds=0.03))
    kept = processes[1].drain()
    processes[1].restore(*kept)  # what a heartbeat does when the write fails

    for tally in processes:
        metrics_app.store.add_metrics(*tally.drain(), now)

    found = samples(client_for(metrics_app, headers=bearer("viewer")).get("/metrics").text)
    assert value(found, "workers_jobs_completed_total", type="RecordJob") == 3
    assert value(found, "workers_job_duration_seconds_bucket", type="RecordJob", le="0.25") == 3
    assert value(found, "workers_job_duration_seconds_bucket", type="RecordJob", le="0.1") == 0
    assert value(found, "workers_job_duration_seconds_sum", type="RecordJob") == pytest.approx(0.6)
    assert (
        value(found, "workers_job_pickup_latency_seconds_bucket", type="RecordJob", le="0.05") == 2
    )


def test_cron_lag_and_leader_come_from_the_schedules_state(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings(jobs=["tests.jobs", "tests.cronjobs"], web__tokens=token_settings())
    app = workers.boot(settings=settings)
    try:
        app.store.mark_fired("EverySecondJob", app.store.now() - timedelta(seconds=60))
        viewer = client_for(app, headers=bearer("viewer"))
        found = samples(viewer.get("/metrics").text)
        cron = viewer.get("/api/cron").json()
    finally:
        workers.shutdown()

    lag = value(found, "workers_cron_lag_seconds", schedule="EverySecondJob")
    assert lag is not None and 55 <= lag <= 65
    assert value(found, "workers_cron_leader") == 0
    assert {s["type"] for s in cron["schedules"]} == {"EverySecondJob", "ReportJob"}


def test_the_counts_are_one_cached_aggregation(make_settings: Callable[..., Settings]) -> None:
    from tests.jobs import RecordJob

    app = workers.boot(settings=make_settings(web__tokens=token_settings(), web__cache=3600))
    try:
        scrape = client_for(app, headers=bearer("viewer"))
        first = samples(scrape.get("/metrics").text)
        Job.push(RecordJob())
        cached = samples(scrape.get("/metrics").text)
    finally:
        workers.shutdown()
    assert value(first, "workers_jobs", status="ready", type="RecordJob") is None
    assert (
        cached == first or value(cached, "workers_jobs", status="ready", type="RecordJob") is None
    )


def _count_aggregations(app: App) -> dict[str, int]:
    counted = {"n": 0}

    def count(name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        counted["n"] += name == "aggregate"

    app.store.jobs = FaultyCollection(app.store.jobs, count, AssertionError)  # type: ignore[assignment]
    return counted


def test_a_web_app_just_started_reads_the_counts_another_process_took(
    make_settings: Callable[..., Settings],
) -> None:
    """The counts are one snapshot every process shares: a cold page or scrape reads one
    document, not an aggregation over every job (5 s at 200,000 on the embedded server)."""
    from tests.jobs import RecordJob

    app = workers.boot(settings=make_settings(web__tokens=token_settings(), web__cache=60))
    try:
        Job.push_many([RecordJob(n=n) for n in range(3)])
        first = samples(client_for(app, headers=bearer("viewer")).get("/metrics").text)
        counted = _count_aggregations(app)
        Job.push(RecordJob(n=3))  # not in the snapshot until it is taken again
        cold = samples(client_for(app, headers=bearer("viewer")).get("/metrics").text)
        page = client_for(app, headers=bearer("viewer")).get("/api/stats").json()
    finally:
        workers.shutdown()
    assert value(first, "workers_jobs", status="ready", type="RecordJob") == 3
    assert value(cold, "workers_jobs", status="ready", type="RecordJob") == 3
    assert counted["n"] == 0, "a new web app counted instead of reading the snapshot"
    assert page["by_status"]["ready"] == 3 and 0 <= page["counted_seconds_ago"] < 60
    age = value(cold, "workers_jobs_counted_age_seconds")
    assert age is not None and 0 <= age < 60


def test_a_stale_snapshot_is_served_at_once_and_counted_again_by_one_process(
    make_settings: Callable[..., Settings], db: Any
) -> None:
    from tests.jobs import RecordJob

    app = workers.boot(settings=make_settings(web__tokens=token_settings(), web__cache=1))
    try:
        Job.push(RecordJob(n=0))
        client_for(app, headers=bearer("viewer")).get("/metrics")  # the first snapshot
        Job.push(RecordJob(n=1))
        long_ago = datetime.now(UTC) - timedelta(minutes=5)
        db["workers.metrics"].update_one({"_id": "counts"}, {"$set": {"at": long_ago}})
        stale = samples(client_for(app, headers=bearer("viewer")).get("/metrics").text)
        snapshot = wait_for(
            lambda: (
                (doc := db["workers.metrics"].find_one({"_id": "counts"}))["at"]
                > long_ago + timedelta(minutes=1)
                and doc
            ),
            timeout=30,
            what="the recount in the background",
        )
    finally:
        workers.shutdown()
    assert value(stale, "workers_jobs", status="ready", type="RecordJob") == 1  # served stale
    assert (value(stale, "workers_jobs_counted_age_seconds") or 0) >= 290
    assert ["ready", "RecordJob", 2] in snapshot["pairs"]
    assert "counting_until" not in snapshot  # the turn ended with the count


def test_every_overview_query_runs_on_an_index(app: App) -> None:
    expected = {"count by status and type": CLAIM_INDEX, "oldest ready": "ready_times",
                "waiting on": "links_status"}  # fmt: skip
    queries = app.store.overview_queries()
    assert set(queries) == set(expected)
    for name, (command, plan) in queries.items():
        explain = lambda cmd: app.store.explain_find(cmd)  # noqa: E731
        if name == "count by status and type":
            assert "COLLSCAN" not in str(plan), f"{name}: collection scan"
            continue
        assert_on_index(name, command, plan, expected[name], explain)


def test_the_grafana_dashboard_queries_only_metrics_that_exist(metrics_app: App) -> None:
    dashboard = json.loads((ROOT / "deploy" / "grafana-dashboard.json").read_text())
    queried = {
        name
        for panel in dashboard["panels"]
        for target in panel["targets"]
        for name in re.findall(r"\bworkers_[a-z_]+", target["expr"])
    }
    text = client_for(metrics_app, headers=bearer("viewer")).get("/metrics").text
    served = {family.name for family in text_string_to_metric_families(text)}
    served |= {name for (name, _) in samples(text)}
    served |= {f"{name}_total" for name in served}  # counters: the family drops `_total`
    served |= {f"{name}_bucket" for name in served}  # histograms: likewise `_bucket`

    assert len(queried) >= 9
    assert queried <= served, f"the dashboard queries {sorted(queried - served)}"
