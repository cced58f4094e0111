"""Push options as people write them, and retry timing with jitter, on a controllable draw
(no sleeping)."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

import workers.jobs
from tests.jobs import RecordJob
from workers import Job, PushError
from workers.app import App
from workers.options import parse_when
from workers.record import RetryPolicy


@pytest.mark.parametrize(
    ("delay", "after", "seconds", "at"),
    [
        (dt.timedelta(minutes=2), None, 120.0, None),
        (None, "in 5 minutes", 300.0, None),
        (None, "in 1 hour", 3600.0, None),
        (None, "in 2.5 secs", 2.5, None),
        (None, "in 3 days", 259200.0, None),
        (None, "2026-12-01T09:00:00Z", 0.0, dt.datetime(2026, 12, 1, 9, tzinfo=dt.UTC)),
        (None, "2026-12-01T10:00:00+01:00", 0.0, dt.datetime(2026, 12, 1, 9, tzinfo=dt.UTC)),
        (None, dt.datetime(2026, 12, 1, 9), 0.0, dt.datetime(2026, 12, 1, 9, tzinfo=dt.UTC)),
    ],
)
def test_delays_people_write_are_understood(
    delay: Any, after: Any, seconds: float, at: Any
) -> None:
    assert parse_when(delay, after) == (seconds, at)


@pytest.mark.parametrize(
    ("options", "quoted"),
    [
        ({"after": "in five minutes"}, "'in five minutes'"),
        ({"after": "in 5 fortnights"}, "unknown unit 'fortnight'"),
        ({"after": "next tuesday"}, "'next tuesday' is neither an ISO-8601 time"),
        ({"delay": dt.timedelta(seconds=-1)}, "delay must be a number of seconds >= 0"),
        ({"retry": {"jitter": 1.5}}, "retry.jitter must be a fraction from 0.0 to 1.0"),
        ({"repeat": {"repeats": -1}}, "repeat.repeats must be an int >= 0 or 'forever'"),
        ({"repeat": {"every": 3}}, "unknown repeat option"),
        ({"depends": "abc"}, "depends must be a list of job ids"),
        ({"unique": ""}, "unique must be a non-empty string"),
        ({"delay": 2.5e11}, "delay=250000000000.0 is more than a century from now"),
        ({"after": "in 9000000 weeks"}, "after='in 9000000 weeks' is more than a century"),
        ({"priority": 2**63}, "priority must be an int or one of"),
        ({"retry": 2**63}, "retry.retries must be an int >= 0"),
        ({"retry": {"wait": 1e12}}, "retry.wait must be a number of seconds from 0 to a century"),
        ({"repeat": {"repeats": 2**64}}, "repeat.repeats must be an int >= 0"),
        ({"repeat": {"wait": 1e12}}, "repeat.wait must be seconds from 0 to a century"),
    ],
)
def test_unparseable_options_are_refused_quoting_the_text(
    app: App, options: dict[str, Any], quoted: str
) -> None:
    with pytest.raises(PushError, match=quoted.replace("(", r"\(").replace(".", r"\.")):
        Job.push(RecordJob(), **options)
    assert app.store.jobs.count_documents({}) == 0


def test_a_relative_after_is_counted_on_the_database_clock(app: App) -> None:
    job = workers.jobs.get(Job.push(RecordJob(), after="in 10 minutes"))
    assert job is not None and job.run_at is not None and job.created is not None
    assert (job.run_at - job.created).total_seconds() == pytest.approx(600, abs=0.01)


def test_jitter_moves_each_wait_by_at_most_its_fraction_either_way() -> None:
    policy = RetryPolicy(retries=5, wait=10.0, backoff="exponential", jitter=0.5)
    assert policy.delay_after(1, draw=lambda: 0.0) == pytest.approx(5.0)
    assert policy.delay_after(1, draw=lambda: 0.5) == pytest.approx(10.0)
    assert policy.delay_after(1, draw=lambda: 0.999999) == pytest.approx(15.0, abs=1e-4)
    assert policy.delay_after(3, draw=lambda: 0.0) == pytest.approx(20.0)  # 40 s, less half
    fixed = RetryPolicy(retries=5, wait=10.0, backoff="fixed", jitter=0.2)
    assert fixed.delay_after(4, draw=lambda: 1.0) == pytest.approx(12.0)
    assert RetryPolicy(retries=5, wait=10.0).delay_after(2, draw=lambda: 0.0) == 20.0


def test_jitter_is_stored_with_the_job_and_read_back(app: App) -> None:
    job_id = Job.push(RecordJob(), retry={"retries": 3, "wait": 2, "jitter": 0.25})
    from workers.record import JobRecord

    record = JobRecord.from_document(app.store.get_job(job_id) or {})
    assert record.retry.jitter == 0.25
    waits = [record.retry.delay_after(1) for _ in range(200)]
    assert all(1.5 <= wait <= 2.5 for wait in waits) and len(set(waits)) > 1
