"""Narrowed tokens and the host app's allow and deny rules, as jobCollection's: a token may
be limited to job types and to actions (deny wins), and `workers.web.app(allow=, deny=)`
callables see (principal, action, job type, params). Every route that pushes, takes work,
reads or acts applies them, with a 403 that names the rule."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from starlette.testclient import TestClient

import workers
import workers.jobs
from tests.jobs import FailJob, RecordJob
from tests.web_support import bearer, client_for, page_csrf, token_of, token_settings
from workers import Job
from workers.app import App
from workers.settings import Settings
from workers.web.auth import Principal, hash_token


def narrowed(name: str, role: str, **rules: Any) -> dict[str, Any]:
    return {"name": name, "role": role, "sha256": hash_token(token_of(role, name)), **rules}


TOKENS = [
    narrowed("mailer", "worker", types=["RecordJob"]),
    narrowed("emailer", "creator", types=["RecordJob"]),
    narrowed("typed", "manager", types=["RecordJob"]),
    narrowed("nocancel", "admin", deny=["cancel"]),
    narrowed("pushonly", "admin", allow=["push"]),
    narrowed("both", "admin", allow=["push", "cancel"], deny=["cancel"]),
]


@pytest.fixture
def web_app(make_settings: Callable[..., Settings]) -> Iterator[App]:
    booted = workers.boot(settings=make_settings(web__tokens=token_settings() + TOKENS))
    yield booted
    workers.shutdown()


def as_(app: App, role: str, name: str, **options: Any) -> TestClient:
    return client_for(app, headers=bearer(role, name), **options)


def test_a_worker_token_for_one_type_never_receives_another(web_app: App) -> None:
    Job.push(FailJob())
    record = Job.push(RecordJob())
    with as_(web_app, "worker", "mailer") as mailer:
        refused = mailer.post("/api/work", json={"types": ["FailJob"], "worker": "m"})
        mixed = mailer.post("/api/work", json={"types": ["RecordJob", "FailJob"], "worker": "m"})
        taken = mailer.post("/api/work", json={"types": ["RecordJob"], "max": 5, "worker": "m"})
    assert refused.status_code == 403 and mixed.status_code == 403
    assert (
        "mailer (worker) may not work FailJob: it is limited to the types RecordJob"
        in (refused.json()["detail"])
    )
    assert [job["id"] for job in taken.json()["jobs"]] == [record]


def test_a_creator_for_one_type_cannot_push_another(web_app: App) -> None:
    emailer = as_(web_app, "creator", "emailer")
    refused = emailer.post("/api/jobs", json={"type": "FailJob"})
    pushed = emailer.post("/api/jobs", json={"type": "RecordJob"})
    assert refused.status_code == 403 and "may not push FailJob" in refused.json()["detail"]
    assert refused.json()["rule"] == "it is limited to the types RecordJob"
    assert pushed.status_code == 201


def test_a_manager_for_one_type_acts_on_that_type_alone_one_or_many(web_app: App) -> None:
    mine, other = Job.push(RecordJob()), Job.push(FailJob())
    typed = as_(web_app, "manager", "typed")
    assert typed.post(f"/api/jobs/{other}/cancel").status_code == 403
    assert typed.post("/api/actions/cancel", json={"ids": [mine, other]}).status_code == 403
    assert [workers.jobs.get(i).status for i in (mine, other)] == ["ready", "ready"]  # type: ignore[union-attr]
    assert typed.post(f"/api/jobs/{mine}/cancel").status_code == 200


@pytest.mark.parametrize(
    ("name", "action", "allowed"),
    [
        ("nocancel", "cancel", False),
        ("nocancel", "pause", True),
        ("nocancel", "push", True),
        ("nocancel", "read", True),
        ("pushonly", "push", True),
        ("pushonly", "read", False),
        ("pushonly", "pause", False),
        ("pushonly", "work", False),
        ("both", "push", True),
        ("both", "cancel", False),  # deny wins over allow
    ],
)
def test_allow_and_deny_per_token_on_every_route(
    web_app: App, name: str, action: str, allowed: bool
) -> None:
    job_id = Job.push(RecordJob())
    client = as_(web_app, "admin", name)
    answer = _do(client, action, job_id)
    assert (answer.status_code < 400) is allowed, (answer.status_code, answer.text)
    if not allowed:
        assert answer.status_code == 403 and f"may not {action}" in answer.json()["detail"]


def _do(client: TestClient, action: str, job_id: str) -> Any:
    if action == "read":
        return client.get("/api/jobs")
    if action == "push":
        return client.post("/api/jobs", json={"type": "RecordJob"})
    if action == "work":
        return client.post("/api/work", json={"types": ["RecordJob"], "worker": "w"})
    return client.post(f"/api/jobs/{job_id}/{action}")


def test_a_denied_reader_gets_no_page_either(web_app: App) -> None:
    page = as_(web_app, "admin", "pushonly").get("/jobs", headers={"Accept": "text/html"})
    assert page.status_code == 403


def test_the_rules_of_a_token_are_checked_when_the_settings_load(
    make_settings: Callable[..., Settings],
) -> None:
    with pytest.raises(workers.WorkersError, match=r"web\.tokens\.0\.deny\.0"):
        make_settings(web__tokens=[narrowed("x", "admin", deny=["explode"])])
    with pytest.raises(ValueError, match="unknown action explode"):
        Principal("x", "admin", deny=frozenset({"explode"}))


# -- the host app's rules: every (rule, action) cell ----------------------------------------


def deny_secrets(who: Principal, action: str, job_type: str | None, params: Any) -> bool:
    return bool(params and params.get("secret"))


def allow_only_alice_to_change(who: Principal, action: str, job_type: str | None, _: Any) -> bool:
    return action == "read" or who.name == "alice"


HOST_CELLS = [
    # (rule, principal, action, on a secret job, allowed)
    ("deny", "admin", "push", True, False),
    ("deny", "admin", "push", False, True),
    ("deny", "admin", "cancel", True, False),
    ("deny", "admin", "cancel", False, True),
    ("deny", "admin", "read", False, True),
    ("allow", "alice", "push", False, True),
    ("allow", "bob", "push", False, False),
    ("allow", "bob", "cancel", False, False),
    ("allow", "bob", "read", False, True),
    ("allow", "bob", "work", False, False),
    ("allow", "alice", "work", False, True),
]


@pytest.mark.parametrize(("rule", "who", "action", "secret", "allowed"), HOST_CELLS)
def test_the_host_app_s_allow_and_deny_see_the_caller_the_action_and_the_job(
    web_app: App, rule: str, who: str, action: str, secret: bool, allowed: bool
) -> None:
    params = {"secret": 1} if secret else {}
    job_id = Job.push(RecordJob(**params))
    rules = {"deny": deny_secrets} if rule == "deny" else {"allow": allow_only_alice_to_change}
    client = client_for(web_app, auth=lambda request: (who, "admin"), **rules)
    client.headers["X-CSRF-Token"] = page_csrf(client)  # the host app's login is a browser's
    if action == "push":
        answer = client.post("/api/jobs", json={"type": "RecordJob", "params": params})
    else:
        answer = _do(client, action, job_id)
    assert (answer.status_code < 400) is allowed, (answer.status_code, answer.text)
    if not allowed:
        assert "the host app's" in answer.json()["rule"]
