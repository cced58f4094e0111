"""The HTTP API: push, get, find, every lifecycle action one job or many at a time, stats,
nodes and cron; errors as RFC 9457 problem details; refused transitions are 409."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from starlette.testclient import TestClient

import workers
import workers.jobs
from tests.jobs import RecordJob
from tests.web_support import bearer, client_for, token_settings
from workers import Job
from workers.app import App
from workers.settings import Settings

PROBLEM = "application/problem+json"


@pytest.fixture
def web_app(make_settings: Callable[..., Settings]) -> Iterator[App]:
    booted = workers.boot(
        settings=make_settings(web__tokens=token_settings(("alice", "creator"), ("bob", "creator")))
    )
    yield booted
    workers.shutdown()


@pytest.fixture
def api(web_app: App) -> TestClient:
    return client_for(web_app, headers=bearer("admin"))


def push(api: TestClient, job_type: str = "RecordJob", **body: Any) -> str:
    response = api.post("/api/jobs", json={"type": job_type, **body})
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def test_a_pushed_job_can_be_read_back_whole(api: TestClient) -> None:
    job_id = push(api, params={"echo": "<b>hi</b>"}, priority="high", retries=2)

    job = api.get(f"/api/jobs/{job_id}").json()

    assert job["type"] == "RecordJob" and job["status"] == "ready"
    assert job["params"] == {"echo": "<b>hi</b>"} and job["priority"] == -10
    assert job["retries"] == 2 and job["owner"] == "admin"
    assert [event["event"] for event in job["timeline"]][:1] == ["pushed"]


def test_a_push_of_an_unknown_type_or_bad_options_is_a_problem_naming_it(api: TestClient) -> None:
    unknown = api.post("/api/jobs", json={"type": "NoSuchJob"})
    bad_after = api.post("/api/jobs", json={"type": "RecordJob", "after": "next tuesday-ish"})
    bad_body = api.post("/api/jobs", json={"type": "RecordJob", "params": [1]})

    assert unknown.status_code == 422 and unknown.headers["content-type"] == PROBLEM
    assert "NoSuchJob" in unknown.json()["detail"] and "RecordJob" in unknown.json()["detail"]
    assert bad_after.status_code == 422 and "next tuesday-ish" in bad_after.json()["detail"]
    assert bad_body.status_code == 422 and bad_body.json()["errors"][0]["where"] == "body.params"
    for field in ("timeout", "delay", "retries", "priority"):  # true is not a number in JSON
        boolean = api.post("/api/jobs", json={"type": "RecordJob", field: True})
        assert boolean.status_code == 422, (field, boolean.text)
        assert boolean.json()["errors"][0]["where"].startswith(f"body.{field}")
    assert workers.jobs.find(limit=5) == []


def test_a_unique_push_says_the_existing_job(api: TestClient) -> None:
    first = api.post("/api/jobs", json={"type": "RecordJob", "unique": "report-7"}).json()
    second = api.post("/api/jobs", json={"type": "RecordJob", "unique": "report-7"}).json()

    assert second == {"id": first["id"], "existing": True}


def test_find_pages_newest_first_by_filter(api: TestClient) -> None:
    ids = [push(api, params={"n": n}) for n in range(5)]
    push(api, "FailJob", params={"message": "needle in the params"})

    first = api.get("/api/jobs", params={"type": "RecordJob", "limit": 2}).json()
    second = api.get(
        "/api/jobs", params={"type": "RecordJob", "limit": 2, "before": first["next"]}
    ).json()
    found = api.get("/api/jobs", params={"q": "needle"}).json()
    ready = api.get("/api/jobs", params={"status": "ready", "limit": 50}).json()

    assert [j["id"] for j in first["jobs"] + second["jobs"]] == ids[::-1][:4]
    assert [j["type"] for j in found["jobs"]] == ["FailJob"] and found["searched"] == 6
    assert len(ready["jobs"]) == 6 and ready["next"] is None


def test_every_action_on_one_job_and_a_refusal_is_409_with_the_statuses(api: TestClient) -> None:
    job_id = push(api)

    paused = api.post(f"/api/jobs/{job_id}/pause").json()
    again = api.post(f"/api/jobs/{job_id}/pause")
    resumed = api.post(f"/api/jobs/{job_id}/resume").json()
    cancelled = api.post(f"/api/jobs/{job_id}/cancel", json={"dependents": False}).json()
    restarted = api.post(f"/api/jobs/{job_id}/restart", json={"retries": 1}).json()
    api.post(f"/api/jobs/{job_id}/cancel")
    removed = api.post(f"/api/jobs/{job_id}/remove").json()
    gone = api.get(f"/api/jobs/{job_id}")

    assert paused["status"] == "paused" and resumed["status"] == "ready"
    assert cancelled["status"] == "cancelled" and restarted["status"] == "ready"
    assert again.status_code == 409 and again.headers["content-type"] == PROBLEM
    assert again.json()["job_status"] == "paused" and again.json()["allowed"] == [
        "ready",
        "scheduled",
        "waiting",
    ]
    assert again.json()["status"] == 409 and again.json()["job"] == job_id
    assert removed == {
        "action": "remove",
        "id": job_id,
        "status": None,
        "created": None,
        "spared": [],
    }
    assert gone.status_code == 404 and gone.headers["content-type"] == PROBLEM


def test_rerun_makes_a_new_job_and_wrong_options_are_refused(api: TestClient, web_app: App) -> None:
    job_id = push(api)
    web_app.store.jobs.update_one({"_id": job_id}, {"$set": {"status": "completed"}})

    wrong = api.post(f"/api/jobs/{job_id}/rerun", json={"retries": 3})
    rerun = api.post(f"/api/jobs/{job_id}/rerun", json={"delay": 60}).json()

    assert wrong.status_code == 422 and "rerun takes no retries" in wrong.json()["detail"]
    assert rerun["created"] and rerun["created"] != job_id
    assert api.get(f"/api/jobs/{rerun['created']}").json()["status"] == "ready"  # in 60 s


def test_a_bulk_action_reports_each_job(api: TestClient) -> None:
    ids = [push(api) for _ in range(3)]
    api.post(f"/api/jobs/{ids[0]}/pause")

    result = api.post("/api/actions/pause", json={"ids": [*ids, "nope"]}).json()
    empty = api.post("/api/actions/pause", json={"ids": []})

    assert sorted(result["changed"]) == sorted(ids[1:])
    assert result["refused"] == {ids[0]: "paused", "nope": None}
    assert empty.status_code == 422


def test_stats_nodes_and_cron_describe_the_queue(api: TestClient) -> None:
    push(api)
    push(api, "FailJob")

    stats = api.get("/api/stats").json()
    nodes = api.get("/api/nodes").json()
    cron = api.get("/api/cron").json()

    assert stats["by_status"]["ready"] == 2 and stats["by_type"]["FailJob"]["ready"] == 1
    assert stats["oldest_ready_seconds"] is not None and len(stats["throughput"]) == 60
    assert nodes == [] and cron == {"leader": None, "disabled": False, "schedules": []}


def test_the_openapi_document_describes_every_endpoint(api: TestClient) -> None:
    document = api.get("/openapi.json").json()

    paths = set(document["paths"])
    assert {"/api/jobs", "/api/jobs/{job_id}", "/api/jobs/{job_id}/{action}",
            "/api/actions/{action}", "/api/stats", "/api/nodes", "/api/cron"} <= paths  # fmt: skip
    refusal = document["paths"]["/api/jobs/{job_id}/{action}"]["post"]["responses"]["409"]
    assert PROBLEM in refusal["content"]


# shapes the JSON schema allows and the database cannot take: a time whose UTC leaves the
# years 1-9999, a lone surrogate in any string (params keys and values, depends, bulk ids)
_SURROGATE = st.characters(categories=["Cs"]).map(
    lambda c: f"x{c}"
)  # alone: a pair is a code point
_EDGE_TIMES = st.sampled_from(
    ["0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-14:00", "0001-01-01T13:59:59+14:00"]
)
_UNSTORABLE = st.one_of(
    _EDGE_TIMES.map(lambda t: ("/api/jobs", {"type": "RecordJob", "after": t}, "after")),
    _SURROGATE.map(lambda s: ("/api/jobs", {"type": "RecordJob", "params": {s: 1}}, "params")),
    _SURROGATE.map(lambda s: ("/api/jobs", {"type": "RecordJob", "params": {"a": [s]}}, "params")),
    _SURROGATE.map(lambda s: ("/api/jobs", {"type": "RecordJob", "depends": [s]}, "depends")),
    _SURROGATE.map(lambda s: ("/api/jobs", {"type": s}, "type")),
    _SURROGATE.map(lambda s: ("/api/actions/cancel", {"ids": ["a", s]}, "ids")),
)


def test_schema_valid_bodies_the_database_cannot_store_are_422_naming_the_field(
    web_app: App,
) -> None:
    with client_for(web_app, headers=bearer("admin")) as admin:

        @given(case=_UNSTORABLE)
        @settings(max_examples=40, deadline=None, database=None, derandomize=True)
        def check(case: tuple[str, dict[str, Any], str]) -> None:
            path, body, field = case
            # json.dumps escapes the surrogate as \ud800, as any client's JSON would carry it
            answer = admin.post(path, content=json.dumps(body), headers=JSON)
            assert answer.status_code == 422, (body, answer.text)
            assert field in answer.json()["detail"], (body, answer.text)

        check()


JSON = {"Content-Type": "application/json"}


def test_a_unique_key_is_scoped_by_type_and_by_the_owner_who_pushed(web_app: App) -> None:
    """A creator who pushes first with another owner's key (or the app's, far in the
    future) must not make the other's push return the squatter's job."""
    alice = client_for(web_app, headers=bearer("creator", "alice"))
    bob = client_for(web_app, headers=bearer("creator", "bob"))
    body = {"type": "RecordJob", "unique": "report-7", "delay": 86400}
    squatted = alice.post("/api/jobs", json=body).json()

    bobs = bob.post("/api/jobs", json=body).json()
    apps = Job.push(RecordJob(), unique="report-7")
    alices_again = alice.post("/api/jobs", json=body).json()
    other_type = alice.post("/api/jobs", json={**body, "type": "FailJob"}).json()

    assert bobs["id"] != squatted["id"] and bobs["existing"] is False
    assert str(apps) not in (squatted["id"], bobs["id"]) and not apps.existing
    assert Job.push(RecordJob(), unique="report-7") == apps  # the app's own key still holds
    assert alices_again == {"id": squatted["id"], "existing": True}
    assert other_type["id"] != squatted["id"] and other_type["existing"] is False
    owners = {job.owner for job in workers.jobs.find(limit=10)}
    assert owners == {"alice", "bob", None}
