"""Job.push: options, validation, and nothing half-written."""

from __future__ import annotations

import datetime as dt
import decimal
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest

from app_jobs.retention import LoadRetentionJob
from tests.conftest import free_port
from tests.jobs import RecordJob
from workers import Job, PushError, boot, shutdown
from workers.app import App
from workers.errors import DatabaseUnavailable
from workers.settings import Settings
from workers.store import Store


def test_push_returns_the_id_of_a_ready_job_with_its_params(app: App) -> None:
    job_id = Job.push(RecordJob(echo="hi", n=3))
    assert isinstance(job_id, str)
    doc = app.store.get_job(job_id)
    assert doc is not None
    assert doc["type"] == "RecordJob"
    assert doc["params"] == {"echo": "hi", "n": 3}
    assert doc["status"] == "ready"
    assert doc["attempts"] == 0


def test_params_may_be_given_as_a_dict_or_as_keywords(app: App) -> None:
    first = app.store.get_job(Job.push(RecordJob({"a": 1}, b=2)))
    assert first is not None and first["params"] == {"a": 1, "b": 2}


def test_defaults_are_ten_attempts_with_exponential_backoff_from_one_second(app: App) -> None:
    doc = app.store.get_job(Job.push(RecordJob()))
    assert doc is not None
    assert (doc["retries"], doc["retry_wait"], doc["backoff"]) == (9, 1.0, "exponential")
    assert doc["priority"] == 0


def test_settings_queue_overrides_the_defaults_and_push_options_override_both(
    make_settings: Callable[..., Settings],
) -> None:
    app = boot(settings=make_settings(workers__queue={"retries": 3, "retry_wait": 7, "lease": 5}))
    try:
        plain = app.store.get_job(Job.push(RecordJob()))
        given = app.store.get_job(Job.push(RecordJob(), retry={"retries": 5, "wait": 20}))
        count = app.store.get_job(Job.push(RecordJob(), retry=0))
    finally:
        shutdown()
    assert plain is not None and given is not None and count is not None
    assert (plain["retries"], plain["retry_wait"]) == (3, 7.0)
    assert (given["retries"], given["retry_wait"]) == (5, 20.0)
    assert (count["retries"], count["retry_wait"]) == (0, 7.0)


@pytest.mark.parametrize(
    ("name", "value"),
    [("low", 10), ("normal", 0), ("medium", -5), ("high", -10), ("critical", -15), (3, 3)],
)
def test_priority_names_map_as_job_collection(app: App, name: Any, value: int) -> None:
    doc = app.store.get_job(Job.push(RecordJob(), priority=name))
    assert doc is not None and doc["priority"] == value


def test_delay_sets_run_at_by_the_database_clock(app: App) -> None:
    doc = app.store.get_job(Job.push(RecordJob(), delay=60))
    assert doc is not None
    assert doc["run_at"] - doc["created"] == dt.timedelta(seconds=60)
    server_now = app.store.now()
    assert abs((doc["created"] - server_now).total_seconds()) < 5


def test_after_sets_an_absolute_run_at(app: App) -> None:
    when = dt.datetime(2030, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
    doc = app.store.get_job(Job.push(RecordJob(), after=when))
    assert doc is not None and doc["run_at"] == when


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"priority": "urgent"}, "priority must be an int or one of low"),
        ({"priority": True}, "priority"),
        ({"delay": -1}, "delay must be a number of seconds >= 0"),
        ({"delay": "soon"}, "delay"),
        ({"delay": 5, "after": dt.datetime(2030, 1, 1)}, "either delay or after"),
        ({"after": "tomorrow"}, "after='tomorrow' is neither an ISO-8601 time"),
        ({"after": 12}, "after must be a datetime or a string"),
        ({"retry": {"retries": -1}}, "retry.retries must be an int >= 0"),
        ({"retry": {"wait": "long"}}, "retry.wait"),
        ({"retry": {"tries": 3}}, "unknown retry option"),
        ({"retry": {"backoff": "linear"}}, "retry.backoff"),
        ({"retry": "often"}, "retry must be a RetryPolicy, an int or a dict"),
        ({"timeout": 0}, "timeout must be a number of seconds > 0"),
    ],
)
def test_bad_options_are_refused_naming_the_option_and_write_nothing(
    app: App, options: dict[str, Any], message: str
) -> None:
    with pytest.raises(PushError, match=message):
        Job.push(RecordJob(), **options)
    assert app.store.count_by_status() == {}


def test_params_that_are_not_bson_are_refused_naming_the_key_and_write_nothing(app: App) -> None:
    with pytest.raises(PushError, match=r"RecordJob params are not BSON-encodable: nested\.when"):
        Job.push(RecordJob(ok=1, nested={"when": dt.date(2026, 1, 1)}))
    with pytest.raises(PushError, match=r"RecordJob params are not BSON-encodable: items\.1"):
        Job.push(RecordJob(items=[1, object()]))
    with pytest.raises(PushError, match=r"not BSON-encodable: big\.0: .*8-byte ints"):
        Job.push(RecordJob(big=[2**63]))
    # and each refusal says how to store it instead
    with pytest.raises(PushError, match=r"instead of a date"):
        Job.push(RecordJob(ok=1, nested={"when": dt.date(2026, 1, 1)}))
    with pytest.raises(PushError, match=r"tags: .*; use a list instead of a set"):
        Job.push(RecordJob(tags={"a", "b"}))
    with pytest.raises(PushError, match=r"items\.1: .*store the object's fields as a dict"):
        Job.push(RecordJob(items=[1, object()]))
    with pytest.raises(PushError, match=r"ok\.1 \(keys must be UTF-8 strings"):
        Job.push(RecordJob({"ok": {1: "x"}}))
    with pytest.raises(PushError, match=r"ok\.'a\\x00b' \(keys must be UTF-8 strings without NUL"):
        Job.push(RecordJob({"ok": {"a\x00b": "x"}}))
    with pytest.raises(PushError, match=r"price: .*; store a Decimal as a string"):
        Job.push(RecordJob(price=decimal.Decimal("1.50")))
    with pytest.raises(PushError, match=r"ids\.0: .*; store a UUID as a string"):
        Job.push(RecordJob(ids=[uuid.uuid4()]))
    with pytest.raises(PushError, match=r"name: .*surrogates not allowed"):
        Job.push(RecordJob(name="\ud800"))
    with pytest.raises(PushError, match=r"'\\ud800' \(keys must be UTF-8 strings"):
        Job.push(RecordJob({"\ud800": 1}))
    assert app.store.count_by_status() == {}


def test_a_job_class_outside_the_jobs_packages_is_refused(app: App) -> None:
    class StrayJob(Job):
        pass

    with pytest.raises(PushError, match="not a registered job class"):
        Job.push(StrayJob())
    with pytest.raises(PushError, match="not a registered job class"):
        Job.push(LoadRetentionJob(project_id="p1"))  # app_jobs is not in this app's settings
    with pytest.raises(PushError, match="expects a Job instance"):
        Job.push({"type": "RecordJob"})  # type: ignore[arg-type]
    assert app.store.count_by_status() == {}


def test_push_uses_the_default_settings_lookup_without_an_explicit_boot(
    settings_file: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    shutdown()
    monkeypatch.setenv("WORKERS_SETTINGS", str(settings_file()))
    try:
        job_id = Job.push(RecordJob(echo="lazy"))
        from workers.app import current

        assert current().store.get_job(job_id) is not None
    finally:
        shutdown()


@pytest.mark.serial
def test_threads_that_need_the_clock_during_an_outage_share_one_failed_measurement() -> None:
    # A store whose server is away (nothing listens on the port), 1 s timeout
    store = Store(f"mongodb://127.0.0.1:{free_port()}/?directConnection=true", "t", timeout=1)
    errors: list[BaseException] = []

    def need_the_clock() -> None:
        try:
            store.now()
        except DatabaseUnavailable as exc:
            errors.append(exc)

    threads = [threading.Thread(target=need_the_clock) for _ in range(6)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    elapsed = time.monotonic() - started
    store.close()
    assert len(errors) == 6
    # one measurement timed out and the others took its answer: about 1 s, not 6 x 1 s
    assert elapsed < 3.5, f"6 threads took {elapsed:.1f} s to learn the server is away"
