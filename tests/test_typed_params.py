"""Typed params: a job class's annotated fields are checked where the job is made, by push
by name, and by the HTTP push; typed on `self` in the worker; published in the OpenAPI
document; and a stored job whose params no longer fit its class fails, named, not crashes."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any

import pytest

import workers
from tests.conftest import wait_for
from tests.test_worker import finished, running
from tests.typedjobs import FreeJob, Level, LoadRetentionJob
from tests.web_support import bearer, client_for, token_settings
from workers import Job
from workers.app import App
from workers.cron import schedules_of
from workers.errors import CronError
from workers.params import ParamsError
from workers.settings import Settings


@pytest.fixture
def typed_app(make_settings: Callable[..., Settings]) -> Iterator[App]:
    booted = workers.boot(
        settings=make_settings(jobs=["tests.typedjobs"], web__tokens=token_settings())
    )
    yield booted
    workers.shutdown()


def test_typed_params_are_checked_and_typed_where_the_job_is_made() -> None:
    job = LoadRetentionJob(project_id="p1", since=datetime(2026, 1, 1), level=Level.HIGH)
    assert (job.project_id, job.days, job.since, job.level) == (
        "p1",
        30,
        datetime(2026, 1, 1),
        Level.HIGH,
    )
    # what is stored is plain JSON: a client in any language reads it
    assert job.params == {
        "project_id": "p1",
        "days": 30,
        "since": "2026-01-01T00:00:00",
        "level": "high",
    }


@pytest.mark.parametrize(
    ("given", "said"),
    [
        ({}, "LoadRetentionJob params: project_id: Field required"),
        ({"project_id": "p", "projct": 1}, "LoadRetentionJob params: projct: not a field"),
        ({"project_id": 7}, "LoadRetentionJob params: project_id: Input should be a valid string"),
        ({"project_id": "p", "days": "30"}, "days: Input should be a valid integer"),
        ({"project_id": "p", "level": "middling"}, "level: Input should be an instance of Level"),
    ],
    ids=["missing", "unknown", "mistyped", "text for a number", "not an enum value"],
)
def test_a_missing_unknown_or_mistyped_param_is_refused_naming_the_class_and_field(
    given: dict[str, Any], said: str
) -> None:
    with pytest.raises(ParamsError, match=said):
        LoadRetentionJob(**given)


def test_settings_and_class_constants_are_not_params() -> None:
    model = LoadRetentionJob.params_model
    assert model is not None
    assert set(model.model_fields) == {"project_id", "days", "since", "level"}
    assert LoadRetentionJob.timeout == 60 and LoadRetentionJob.batch == 500


def test_a_class_without_annotations_keeps_free_form_params() -> None:
    assert FreeJob.params_model is None
    assert FreeJob(anything=[1, "two"]).params == {"anything": [1, "two"]}


def test_the_worker_reads_stored_params_back_as_their_types(typed_app: App) -> None:
    job_id = Job.push(LoadRetentionJob(project_id="p1", since=datetime(2026, 1, 1)))
    with running(typed_app):
        doc = wait_for(lambda: finished(typed_app, job_id), timeout=30, what="the typed job")
    assert doc["status"] == "completed", doc.get("error")
    assert doc["result"]["since"] == "datetime" and doc["result"]["level"] == "LOW"
    assert doc["params"] == doc["result"]["params"]


def test_a_push_by_name_is_checked_against_the_class(typed_app: App) -> None:
    # by name, params come as JSON would bring them: a date as text is a date
    pushed = typed_app.push_named("LoadRetentionJob", {"project_id": "p", "since": "2026-01-01"})
    stored = typed_app.store.get_job(pushed)
    assert stored is not None and stored["params"]["since"] == "2026-01-01T00:00:00"
    with pytest.raises(ParamsError, match="LoadRetentionJob params: days: Input should be"):
        typed_app.push_named("LoadRetentionJob", {"project_id": "p", "days": "many"})


def test_a_stored_job_whose_params_no_longer_fit_fails_named_without_retries(
    typed_app: App,
) -> None:
    # Given a job pushed before a deploy renamed its param (its document written as then)
    job_id = typed_app.push_named("FreeJob", {}, retry=3)
    typed_app.store.jobs.update_one(
        {"_id": job_id}, {"$set": {"type": "LoadRetentionJob", "params": {"project": "p1"}}}
    )
    with running(typed_app):
        doc = wait_for(lambda: finished(typed_app, job_id), timeout=30, what="the old job")
    # Then it fails at once, naming what does not fit, and is not retried
    assert doc["status"] == "failed" and doc["attempts"] == 1
    assert "LoadRetentionJob params: project_id: Field required" in doc["error"]["message"]
    assert "project: not a field of this job" in doc["error"]["message"]


def test_the_http_push_checks_params_and_the_openapi_document_publishes_them(
    typed_app: App,
) -> None:
    with client_for(typed_app, headers=bearer("admin")) as api:
        bad = api.post("/api/jobs", json={"type": "LoadRetentionJob", "params": {"days": 3}})
        good = api.post(
            "/api/jobs", json={"type": "LoadRetentionJob", "params": {"project_id": "p"}}
        )
        schema = api.get("/openapi.json").json()
    assert bad.status_code == 422 and "project_id: Field required" in bad.text
    assert good.status_code == 201
    ref = schema["x-job-params"]["LoadRetentionJob"]["$ref"]
    params = schema["components"]["schemas"][ref.rsplit("/", 1)[1]]
    assert params["required"] == ["project_id"] and params["additionalProperties"] is False
    assert "FreeJob" not in schema["x-job-params"]


def test_the_job_page_shows_params_by_field(typed_app: App) -> None:
    job_id = Job.push(LoadRetentionJob(project_id="p-by-field", days=9))
    with client_for(typed_app, headers=bearer("viewer")) as web:
        page = web.get(f"/jobs/{job_id}", headers={"Accept": "text/html"}).text
    assert '<table id="params">' in page
    assert "<td><code>project_id</code></td><td>p-by-field</td>" in page
    assert "<td><code>days</code></td><td><code>9</code></td>" in page


def test_a_typed_class_s_cron_params_are_checked_and_get_a_tick_only_if_it_has_one() -> None:
    class NightlyJob(Job):
        project_id: str

        @classmethod
        def setup_cron(cls) -> Any:
            return ("0 3 * * *", {"project_id": "p1"})

    class TickedJob(Job):
        tick: datetime

        @classmethod
        def setup_cron(cls) -> Any:
            return "0 3 * * *"

    class BrokenJob(Job):
        project_id: str

        @classmethod
        def setup_cron(cls) -> Any:
            return "0 3 * * *"  # no project_id: every tick's job would fail

    (nightly,) = schedules_of(NightlyJob)
    (ticked,) = schedules_of(TickedJob)
    assert (nightly.ticked, ticked.ticked) == (False, True)
    with pytest.raises(CronError, match=r"BrokenJob.setup_cron\(\): '0 3 \* \* \*': BrokenJob "):
        schedules_of(BrokenJob)
