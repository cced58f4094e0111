"""Who may do what: every role x every action, ownership, tokens, the host app's resolver,
CSRF on every state-changing request, and deny by default."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from starlette.requests import Request
from starlette.testclient import TestClient

import workers
from tests.conftest import run_workers
from tests.web_support import (
    LOCAL,
    REMOTE,
    bearer,
    client_for,
    page_csrf,
    token_of,
    token_settings,
)
from workers.app import App
from workers.errors import SettingsError
from workers.settings import ROLES, Settings
from workers.web.auth import hash_token

# The status each action needs, to set up a job it applies to.
NEEDS = {"pause": "ready", "resume": "paused", "cancel": "ready", "restart": "failed",
         "rerun": "completed", "remove": "completed"}  # fmt: skip
READERS = {"admin", "manager", "creator", "viewer"}


@pytest.fixture
def web_app(make_settings: Callable[..., Settings]) -> Iterator[App]:
    tokens = token_settings(("alice", "creator"), ("bob", "creator"))
    booted = workers.boot(settings=make_settings(web__tokens=tokens))
    yield booted
    workers.shutdown()


def job_in(app: App, status: str, owner: str | None = "admin") -> str:
    job_id = str(app.push_named("RecordJob", {}, owner=owner))
    app.store.jobs.update_one({"_id": job_id}, {"$set": {"status": status}})
    return job_id


@pytest.mark.parametrize("role", ROLES)
def test_each_role_reads_only_if_it_is_a_reader(web_app: App, role: str) -> None:
    client = client_for(web_app, headers=bearer(role))
    codes = {
        "api": client.get("/api/stats").status_code,
        "page": client.get("/", headers={"Accept": "text/html"}).status_code,
        "metrics": client.get("/metrics").status_code,
        "job list": client.get("/api/jobs").status_code,
    }
    expected = 200 if role in READERS else 403
    assert codes == dict.fromkeys(codes, expected)


@pytest.mark.parametrize("role", ROLES)
def test_only_admins_and_creators_push(web_app: App, role: str) -> None:
    client = client_for(web_app, headers=bearer(role))

    response = client.post("/api/jobs", json={"type": "RecordJob"})

    assert response.status_code == (201 if role in ("admin", "creator") else 403)
    if response.status_code == 201:
        assert web_app.store.get_job(response.json()["id"])["owner"] == role  # type: ignore[index]


@pytest.mark.slow
@pytest.mark.parametrize("action", list(NEEDS))
@pytest.mark.parametrize("role", ROLES)
def test_each_role_and_each_action_on_someone_elses_job(
    web_app: App, role: str, action: str
) -> None:
    job_id = job_in(web_app, NEEDS[action], owner="somebody")
    client = client_for(web_app, headers=bearer(role))

    response = client.post(f"/api/jobs/{job_id}/{action}")

    allowed = role in ("admin", "manager")
    assert response.status_code == (200 if allowed else 403), response.text
    doc = web_app.store.get_job(job_id)
    assert (doc is None or doc["status"] != NEEDS[action]) == allowed or action == "rerun"


@pytest.mark.parametrize("action", list(NEEDS))
def test_a_creator_acts_on_its_own_jobs_and_not_on_another_creators(
    web_app: App, action: str
) -> None:
    mine = job_in(web_app, NEEDS[action], owner="alice")
    theirs = job_in(web_app, NEEDS[action], owner="bob")
    alice = client_for(web_app, headers=bearer("creator", "alice"))

    own = alice.post(f"/api/jobs/{mine}/{action}")
    other = alice.post(f"/api/jobs/{theirs}/{action}")
    bulk = alice.post(f"/api/actions/{action}", json={"ids": [mine, theirs]})

    assert own.status_code == 200
    assert other.status_code == 403 and other.json()["jobs"] == [theirs]
    assert bulk.status_code == 403 and bulk.json()["jobs"] == [theirs]
    assert web_app.store.get_job(theirs)["status"] == NEEDS[action]  # type: ignore[index]


def test_a_job_pushed_through_the_api_belongs_to_its_creator(web_app: App) -> None:
    alice = client_for(web_app, headers=bearer("creator", "alice"))
    bob = client_for(web_app, headers=bearer("creator", "bob"))
    job_id = alice.post("/api/jobs", json={"type": "RecordJob"}).json()["id"]

    assert bob.post(f"/api/jobs/{job_id}/cancel").status_code == 403
    assert alice.post(f"/api/jobs/{job_id}/cancel").status_code == 200


def test_no_or_a_wrong_token_is_401(web_app: App) -> None:
    anonymous = client_for(web_app).get("/api/jobs")
    wrong = client_for(web_app, headers={"Authorization": "Bearer not-a-token"}).get("/api/jobs")
    page = client_for(web_app).get("/jobs", headers={"Accept": "text/html"})

    assert anonymous.status_code == wrong.status_code == 401
    assert anonymous.headers["www-authenticate"] == "Bearer"
    assert page.status_code == 303 and page.headers["location"] == "/login?next=%2Fjobs"


def test_a_person_logs_in_with_a_token_and_forms_need_the_csrf_token(web_app: App) -> None:
    job_id = job_in(web_app, "ready")
    browser = client_for(web_app)
    login_csrf = page_csrf(browser)

    refused = browser.post("/login", data={"token": "guess", "csrf": login_csrf})
    logged_in = browser.post(
        "/login", data={"token": token_of("manager"), "csrf": login_csrf, "next": "/jobs"}
    )
    csrf = page_csrf(browser)  # a token is the session's and the login's: a new one
    login_token_after_login = browser.post(
        "/act", data={"action": "cancel", "ids": job_id, "confirm": "yes", "csrf": login_csrf}
    )
    forged = browser.post("/act", data={"action": "cancel", "ids": job_id, "confirm": "yes"})
    forged_wrong = browser.post(
        "/act", data={"action": "cancel", "ids": job_id, "confirm": "yes", "csrf": "x" * 43}
    )
    still_ready = web_app.store.get_job(job_id)["status"]  # type: ignore[index]
    confirm = browser.post("/act", data={"action": "cancel", "ids": job_id, "csrf": csrf})
    done = browser.post(
        "/act", data={"action": "cancel", "ids": job_id, "csrf": csrf, "confirm": "yes"}
    )

    assert refused.status_code == 401
    assert logged_in.status_code == 303 and logged_in.headers["location"] == "/jobs"
    assert forged.status_code == forged_wrong.status_code == 403 and still_ready == "ready"
    assert login_token_after_login.status_code == 403
    assert confirm.status_code == 200 and "Yes, cancel" in confirm.text
    assert done.status_code == 303 and "done=cancel&changed=1" in done.headers["location"]
    assert web_app.store.get_job(job_id)["status"] == "cancelled"  # type: ignore[index]


def test_a_forged_cross_site_api_post_with_the_login_cookie_is_refused(web_app: App) -> None:
    browser = client_for(web_app)
    logged = browser.post("/login", data={"token": token_of("admin"), "csrf": page_csrf(browser)})
    assert logged.status_code == 303

    forged = browser.post("/api/jobs", json={"type": "RecordJob"})
    csrf = page_csrf(browser)
    allowed = browser.post("/api/jobs", json={"type": "RecordJob"}, headers={"X-CSRF-Token": csrf})

    assert forged.status_code == 403 and forged.json()["title"] == "CSRF check failed"
    assert allowed.status_code == 201


def test_the_host_apps_resolver_decides_for_people(
    make_settings: Callable[..., Settings],
) -> None:
    app = workers.boot(settings=make_settings())

    def resolver(request: Request) -> tuple[str, str] | None:
        user = request.headers.get("x-user")
        return (user, {"carol": "creator", "vic": "viewer"}[user]) if user else None

    try:
        client = client_for(app, auth=resolver)
        vics = page_csrf(client, {"x-user": "vic"})
        carols = page_csrf(client, {"x-user": "carol"})
        nobody = client.get("/api/stats")
        viewer_push = client.post("/api/jobs", json={"type": "RecordJob"},
                                  headers={"x-user": "vic", "X-CSRF-Token": vics})  # fmt: skip
        carol_with_vics = client.post(
            "/api/jobs",
            json={"type": "RecordJob"},
            headers={"x-user": "carol", "X-CSRF-Token": vics},
        )
        carol_no_csrf = client.post(
            "/api/jobs", json={"type": "RecordJob"}, headers={"x-user": "carol"}
        )
        carol = client.post("/api/jobs", json={"type": "RecordJob"},
                            headers={"x-user": "carol", "X-CSRF-Token": carols})  # fmt: skip
    finally:
        workers.shutdown()
    assert nobody.status_code == 401 and viewer_push.status_code == 403
    assert carol_no_csrf.status_code == carol_with_vics.status_code == 403
    assert carol.status_code == 201


def test_without_auth_only_this_machine_gets_in(make_settings: Callable[..., Settings]) -> None:
    from workers.web.server import served_app

    app = workers.boot(settings=make_settings())
    try:
        web = served_app(app.settings, booted_app=app, host="127.0.0.1")

        def get(client: tuple[str, int], path: str, **headers: str) -> Any:
            served = TestClient(web, client=client, base_url="http://127.0.0.1:8181")
            return served.get(path, headers={"Accept": "text/html", **headers})

        local = get(LOCAL, "/")
        remote = get(REMOTE, "/api/stats")
        # a proxy on this machine says so in one header or another: none is this machine's
        proxied = [
            get(LOCAL, "/api/stats", **{header: value})
            for header, value in (
                ("X-Forwarded-For", "198.51.100.7"),
                ("X-Forwarded-Host", "jobs.example.com"),
                ("Via", "1.1 proxy"),
                ("CF-Connecting-IP", "198.51.100.7"),
                ("True-Client-IP", "198.51.100.7"),
                ("X-Client-IP", "198.51.100.7"),
            )
        ]
    finally:
        workers.shutdown()
    assert local.status_code == 200 and "No authentication is configured" in local.text
    assert remote.status_code == 403
    assert [answer.status_code for answer in proxied] == [403] * 6
    assert "only clients on this machine" in remote.json()["detail"]


@pytest.mark.parametrize("name", ["*", "jobs.example.com"])
def test_loopback_trust_with_another_machine_s_name_allowed_is_refused(
    make_settings: Callable[..., Settings], name: str
) -> None:
    from workers.web.server import served_app

    settings = make_settings(web__allowed_hosts=["localhost", name])
    with pytest.raises(SettingsError, match=r"web.allowed_hosts names .* web.trust_loopback"):
        served_app(settings, host="127.0.0.1")
    # with tokens, or without loopback trust, the same names are fine
    served_app(make_settings(web__allowed_hosts=[name], web__trust_loopback=False), host="::1")


@pytest.mark.processes
def test_workers_web_refuses_to_listen_beyond_this_machine_without_tokens(
    settings_file: Callable[..., Any], tmp_path: Any
) -> None:
    path = settings_file()

    result = run_workers("web", "--settings", str(path), "--host", "0.0.0.0", cwd=tmp_path)

    assert result.returncode == 1
    assert "no API tokens are configured" in result.stderr and "0.0.0.0" in result.stderr


@pytest.mark.processes
def test_workers_token_prints_a_token_and_only_its_digest_for_the_settings(tmp_path: Any) -> None:
    result = run_workers("token", "--name", "ci", "--role", "creator", cwd=tmp_path)

    token = result.stdout.split("): ", 1)[1].split()[0]
    entry = json.loads(result.stdout.split("settings: ", 1)[1])
    assert entry == {"name": "ci", "role": "creator", "sha256": hash_token(token)}
    assert token not in result.stdout.split("settings: ", 1)[1]


def test_a_token_setting_that_is_not_a_digest_is_refused_naming_it(
    make_settings: Callable[..., Settings],
) -> None:
    with pytest.raises(SettingsError, match=r"web\.tokens\.0\.sha256"):
        make_settings(web__tokens=[{"name": "ci", "role": "admin", "sha256": "plain-token"}])
    with pytest.raises(SettingsError, match="ci appear twice"):
        make_settings(web__tokens=token_settings(("ci", "admin"), ("ci", "viewer")))
