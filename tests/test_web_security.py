"""The web surface tried as an attacker would: cascades that cross owners, DNS rebinding,
loopback trust behind a proxy, pages that load from elsewhere, numbers at their extremes,
open redirects, a host app's Bearer JWTs, hardening headers and limits, and CSRF tokens
planted from another port. Every test here failed on the code before its fix."""

from __future__ import annotations

import re
import socket
import threading
from collections.abc import Callable, Iterator
from html.parser import HTMLParser
from typing import Any

import pytest
import uvicorn
from starlette.requests import Request
from starlette.testclient import TestClient

import workers
from tests.conftest import free_port, wait_for
from tests.web_support import LOCAL, bearer, client_for, page_csrf, token_of, token_settings
from workers.app import App
from workers.settings import Settings

HTML = {"Accept": "text/html"}
CREATORS = (("alice", "creator"), ("bob", "creator"))


@pytest.fixture
def web_app(make_settings: Callable[..., Settings]) -> Iterator[App]:
    booted = workers.boot(settings=make_settings(web__tokens=token_settings(*CREATORS)))
    yield booted
    workers.shutdown()


def job_in(app: App, status: str, owner: str, depends: list[str] | None = None) -> str:
    """A job of `owner` (as app code or an admin may push it, across owners) in `status`."""
    options: dict[str, Any] = {"depends": depends} if depends else {}
    job_id = str(app.push_named("RecordJob", {}, owner=owner, **options))
    if status != "waiting":
        app.store.jobs.update_one({"_id": job_id}, {"$set": {"status": status}})
    return job_id


def status_of(app: App, job_id: str) -> str | None:
    doc = app.store.get_job(job_id)
    return None if doc is None else str(doc["status"])


def served(app: App, settings: Settings | None = None, **where: Any) -> Any:
    """The app as `workers web` serves it (its bind decides the Host check and loopback trust)."""
    from workers.web.server import served_app

    return served_app(settings or app.settings, booted_app=app, **where)


# -- 1. a creator's cascade stops at jobs it does not own -----------------------------------------


@pytest.mark.parametrize("how", ["one", "bulk"])
def test_a_creator_cancelling_up_the_chain_leaves_another_owners_running_job_alone(
    web_app: App, how: str
) -> None:
    theirs = job_in(web_app, "running", "bob")
    mine = job_in(web_app, "waiting", "alice", depends=[theirs])
    alice = client_for(web_app, headers=bearer("creator", "alice"))

    if how == "one":
        response = alice.post(f"/api/jobs/{mine}/cancel", json={"antecedents": True})
    else:
        response = alice.post("/api/actions/cancel", json={"ids": [mine], "antecedents": True})

    assert response.status_code == 200, response.text
    assert response.json()["spared"] == [theirs]
    assert status_of(web_app, mine) == "cancelled"
    assert status_of(web_app, theirs) == "running"


@pytest.mark.parametrize("how", ["one", "bulk", "form"])
def test_a_creator_cancelling_down_the_chain_leaves_another_owners_dependent_alone(
    web_app: App, how: str
) -> None:
    mine = job_in(web_app, "ready", "alice")
    theirs = job_in(web_app, "waiting", "bob", depends=[mine])
    own_below = job_in(web_app, "waiting", "alice", depends=[mine])
    alice = client_for(web_app, headers=bearer("creator", "alice"))

    if how == "one":
        response = alice.post(f"/api/jobs/{mine}/cancel")
    elif how == "bulk":
        response = alice.post("/api/actions/cancel", json={"ids": [mine]})
    else:
        csrf = page_csrf(alice)
        form = {"action": "cancel", "ids": mine, "csrf": csrf, "confirm": "yes"}
        response = alice.post("/act", data=form)

    assert response.status_code in (200, 303), response.text
    assert status_of(web_app, mine) == status_of(web_app, own_below) == "cancelled"
    assert status_of(web_app, theirs) == "waiting"


def test_a_creator_restarting_its_job_leaves_another_owners_failed_antecedent_alone(
    web_app: App,
) -> None:
    theirs = job_in(web_app, "ready", "bob")
    mine = job_in(web_app, "waiting", "alice", depends=[theirs])
    web_app.store.jobs.update_one({"_id": theirs}, {"$set": {"status": "failed"}})
    web_app.store.jobs.update_one({"_id": mine}, {"$set": {"status": "cancelled"}})
    alice = client_for(web_app, headers=bearer("creator", "alice"))

    one = alice.post(f"/api/jobs/{mine}/restart")

    assert one.status_code == 200 and one.json()["spared"] == [theirs], one.text
    assert status_of(web_app, theirs) == "failed"
    assert status_of(web_app, mine) == "waiting"  # for its antecedent, whoever restarts it


def test_a_creator_removing_its_job_leaves_another_owners_waiting_dependent_alone(
    web_app: App,
) -> None:
    mine = job_in(web_app, "ready", "alice")
    theirs = job_in(web_app, "waiting", "bob", depends=[mine])
    web_app.store.jobs.update_one({"_id": mine}, {"$set": {"status": "completed"}})
    alice = client_for(web_app, headers=bearer("creator", "alice"))

    response = alice.post(f"/api/jobs/{mine}/remove")

    assert response.status_code == 200 and response.json()["spared"] == [theirs]
    assert status_of(web_app, mine) is None and status_of(web_app, theirs) == "waiting"


def test_a_managers_cascade_still_crosses_owners(web_app: App) -> None:
    theirs = job_in(web_app, "running", "bob")
    mine = job_in(web_app, "waiting", "alice", depends=[theirs])
    manager = client_for(web_app, headers=bearer("manager"))

    response = manager.post(f"/api/jobs/{mine}/cancel", json={"antecedents": True})

    assert response.status_code == 200 and response.json()["spared"] == []
    assert status_of(web_app, theirs) == status_of(web_app, mine) == "cancelled"


def test_a_creator_may_depend_only_on_its_own_jobs(web_app: App) -> None:
    theirs = job_in(web_app, "ready", "bob")
    mine = job_in(web_app, "ready", "alice")
    alice = client_for(web_app, headers=bearer("creator", "alice"))
    before = web_app.store.jobs.count_documents({})

    refused = alice.post("/api/jobs", json={"type": "RecordJob", "depends": [mine, theirs]})
    counted = web_app.store.jobs.count_documents({})
    allowed = alice.post("/api/jobs", json={"type": "RecordJob", "depends": [mine]})

    assert refused.status_code == 403 and refused.json()["jobs"] == [theirs], refused.text
    assert counted == before
    assert allowed.status_code == 201
    assert status_of(web_app, allowed.json()["id"]) == "waiting"


# -- 2 and 3. the Host check and loopback trust ---------------------------------------------------


@pytest.mark.slow
@pytest.mark.processes
def test_workers_web_refuses_a_rebound_host_name_with_400(
    settings_file: Callable[..., Any], tmp_path: Any
) -> None:
    """A real `workers web` with no auth: a page whose name rebinds to 127.0.0.1 is refused."""
    import subprocess

    from tests.conftest import workers_command, workers_env

    port = free_port()
    command = workers_command("web", "--settings", str(settings_file()), "--port", str(port))
    server = subprocess.Popen(command, cwd=tmp_path, env=workers_env(),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        wait_for(lambda: raw_status(port, "/api/stats", f"127.0.0.1:{port}"), timeout=60,
                 what="workers web")  # fmt: skip
        codes = {
            host: raw_status(port, path, host)
            for host, path in [
                ("rebind.attacker.example", "/jobs"),
                (f"rebind.attacker.example:{port}", "/api/stats"),
                (f"localhost:{port}", "/api/stats"),
                (f"[::1]:{port}", "/api/stats"),
                (f"127.0.0.1:{port}", "/jobs"),
            ]
        }
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert codes == {
        "rebind.attacker.example": 400,
        f"rebind.attacker.example:{port}": 400,
        f"localhost:{port}": 200,
        f"[::1]:{port}": 200,
        f"127.0.0.1:{port}": 200,
    }


def raw_status(port: int, path: str, host: str) -> int | None:
    """The status of a GET sent over a socket with this exact Host header."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
            conn.sendall(
                f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode()
            )
            head = conn.recv(64).decode("latin-1")
    except OSError:
        return None
    return int(head.split()[1]) if head.startswith("HTTP/") else None


def test_the_configured_host_names_are_the_only_ones_accepted(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings(web__tokens=token_settings(), web__allowed_hosts=["jobs.example.com"])
    app = workers.boot(settings=settings)
    try:
        web = served(app, host="0.0.0.0", port=8181)
        good = TestClient(web, base_url="http://jobs.example.com", headers=bearer("viewer"))
        bad = TestClient(web, base_url="http://127.0.0.1:8181", headers=bearer("viewer"))
        codes = (good.get("/api/stats").status_code, bad.get("/api/stats").status_code)
    finally:
        workers.shutdown()
    assert codes == (200, 400)


def test_mounted_in_a_host_app_the_host_apps_own_host_setting_decides(web_app: App) -> None:
    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.middleware.trustedhost import TrustedHostMiddleware
    from starlette.routing import Mount

    import workers.web

    plain = Starlette(routes=[Mount("/w", app=workers.web.app())])
    guarded = Starlette(
        routes=[Mount("/w", app=workers.web.app())],
        middleware=[Middleware(TrustedHostMiddleware, allowed_hosts=["app.example.com"])],
    )
    anywhere = TestClient(plain, base_url="http://anything.example", headers=bearer("viewer"))
    refused = TestClient(guarded, base_url="http://other.example", headers=bearer("viewer"))

    assert anywhere.get("/w/api/stats").status_code == 200
    assert refused.get("/w/api/stats").status_code == 400


def test_loopback_trust_is_a_setting_and_off_means_credentials_for_everyone(
    make_settings: Callable[..., Settings],
) -> None:
    app = workers.boot(settings=make_settings(web__trust_loopback=False))
    try:
        web = TestClient(served(app, host="127.0.0.1", port=8181), client=LOCAL,
                         base_url="http://127.0.0.1:8181")  # fmt: skip
        local = web.get("/api/stats")
    finally:
        workers.shutdown()
    assert local.status_code == 403
    assert "web.trust_loopback is off" in local.json()["detail"]


def test_loopback_trust_holds_only_for_workers_web_on_a_loopback_bind(
    make_settings: Callable[..., Settings],
) -> None:
    import workers.web

    app = workers.boot(settings=make_settings())
    try:
        on_loopback = TestClient(served(app, host="127.0.0.1", port=8181), client=LOCAL,
                                 base_url="http://127.0.0.1:8181").get("/api/stats")  # fmt: skip
        mounted = TestClient(workers.web.app(), client=LOCAL).get("/api/stats")
    finally:
        workers.shutdown()
    assert on_loopback.status_code == 200
    assert mounted.status_code == 403


def test_with_a_token_configured_a_local_client_needs_credentials(web_app: App) -> None:
    web = TestClient(served(web_app, host="127.0.0.1", port=8181), client=LOCAL,
                     base_url="http://127.0.0.1:8181")  # fmt: skip
    assert web.get("/api/stats").status_code == 401


# -- 4. nothing from another site; docs behind the reader role ------------------------------------


class Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []
        self.inline_scripts = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if name in ("src", "href", "action", "formaction", "srcset", "data", "poster"):
                self.urls.append(value or "")
            if name == "style" or name.startswith("on"):
                self.inline_scripts += 1
        if tag == "script" and not dict(attrs).get("src"):
            self.inline_scripts += 1


def external(url: str) -> bool:
    return bool(re.match(r"^\s*([a-z][a-z0-9+.-]*:|//|\\\\)", url, re.I)) and not url.startswith(
        "#"
    )


def test_no_page_loads_anything_from_another_site(web_app: App) -> None:
    job_id = job_in(web_app, "failed", "admin")
    admin = client_for(web_app, headers={**bearer("admin"), **HTML})
    csrf = page_csrf(admin)
    pages = {path: admin.get(path) for path in
             ["/", "/jobs", f"/jobs/{job_id}", "/nodes", "/cron", "/login", "/api/docs",
              "/jobs/no-such-job"]}  # fmt: skip
    pages["confirm"] = admin.post("/act", data={"action": "restart", "ids": job_id, "csrf": csrf})
    assets = [admin.get(f"/static/{name}").text for name in ("app.css", "live.js")]

    for where, page in pages.items():
        assert page.status_code in (200, 404), (where, page.status_code)
        links = Links()
        links.feed(page.text)
        assert [u for u in links.urls if external(u)] == [], where
        assert links.inline_scripts == 0, f"{where} has inline script or style"
    for text in assets:
        assert not re.search(r"(https?:)?//[a-z0-9.-]+\.[a-z]", text, re.I)


def test_the_api_docs_and_the_openapi_document_need_a_reader(web_app: App) -> None:
    anonymous = client_for(web_app)
    worker = client_for(web_app, headers=bearer("worker"))
    viewer = client_for(web_app, headers=bearer("viewer"))

    for path in ("/openapi.json", "/api/docs"):
        assert anonymous.get(path).status_code == 401, path
        assert worker.get(path).status_code == 403, path
        assert viewer.get(path).status_code == 200, path
    assert "/api/jobs" in viewer.get("/api/docs").text


# -- 5. numbers at their extremes -----------------------------------------------------------------


@pytest.mark.parametrize("delay", ["1e12", "Infinity", "1e400", "NaN"])
def test_a_rerun_delay_beyond_a_century_or_not_finite_is_a_422(web_app: App, delay: str) -> None:
    job_id = job_in(web_app, "completed", "admin")
    admin = client_for(web_app, headers={**bearer("admin"), "Content-Type": "application/json"})

    one = admin.post(f"/api/jobs/{job_id}/rerun", content=f'{{"delay": {delay}}}')
    bulk = admin.post("/api/actions/rerun", content=f'{{"ids": ["{job_id}"], "delay": {delay}}}')

    assert one.status_code == bulk.status_code == 422, (one.text, bulk.text)
    assert "delay" in one.json()["detail"]
    assert web_app.store.jobs.count_documents({}) == 1


# -- 6. no open redirect --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "back", ["https://evil.example/x", "//evil.example", "/\\evil.example", "javascript:alert(1)"]
)
def test_the_forms_back_field_never_leads_off_the_site(web_app: App, back: str) -> None:
    job_id = job_in(web_app, "ready", "admin")
    viewer = client_for(web_app, headers={**bearer("viewer"), **HTML})
    admin = client_for(web_app, headers={**bearer("admin"), **HTML})

    nothing = viewer.post("/act", data={"action": "cancel", "back": back,
                                        "csrf": page_csrf(viewer)})  # fmt: skip
    done = admin.post("/act", data={"action": "pause", "ids": job_id, "back": back,
                                    "csrf": page_csrf(admin), "confirm": "yes"})  # fmt: skip
    confirm = admin.post("/act", data={"action": "pause", "ids": job_id, "back": back,
                                       "csrf": page_csrf(admin)})  # fmt: skip

    for response in (nothing, done):
        assert response.status_code == 303
        assert response.headers["location"].startswith("/jobs?"), response.headers["location"]
    links = Links()
    links.feed(confirm.text)
    assert back not in links.urls and "/jobs" in links.urls


# -- 7. a host app's own Bearer tokens reach its resolver -----------------------------------------


def test_a_host_apps_resolver_sees_bearer_tokens_that_are_not_ours(
    make_settings: Callable[..., Settings],
) -> None:
    def from_jwt(request: Request) -> tuple[str, str] | None:
        header = request.headers.get("authorization", "")
        return ("jo", "viewer") if header == "Bearer eyJ.host-app.jwt" else None

    app = workers.boot(settings=make_settings(web__tokens=token_settings()))
    try:
        web = client_for(app, auth=from_jwt)
        jwt = web.get("/api/stats", headers={"Authorization": "Bearer eyJ.host-app.jwt"})
        ours = web.get("/api/stats", headers=bearer("viewer"))
        neither = web.get("/api/stats", headers={"Authorization": "Bearer nobody"})
    finally:
        workers.shutdown()
    assert (jwt.status_code, ours.status_code, neither.status_code) == (200, 200, 401)


# -- 8. hardening ---------------------------------------------------------------------------------


def test_every_response_sends_the_hardening_headers(web_app: App) -> None:
    viewer = client_for(web_app, headers=bearer("viewer"))

    for path in ("/", "/jobs", "/api/stats", "/login", "/no-such-page"):
        headers = viewer.get(path, headers=HTML).headers
        csp = headers.get("content-security-policy", "")
        assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp, path
        assert "unsafe-inline" not in csp and "script-src 'self'" in csp, path
        assert headers.get("x-frame-options") == "DENY", path
        assert headers.get("x-content-type-options") == "nosniff", path
        assert headers.get("referrer-policy") == "same-origin", path


def test_cookies_are_secure_over_https_and_all_of_them_http_only(web_app: App) -> None:
    https = client_for(web_app, base_url="https://jobs.example.com")
    plain = client_for(web_app)

    login = https.get("/login")
    csrf = page_csrf(https)
    logged = https.post("/login", data={"token": token_of("viewer"), "csrf": csrf})
    set_cookies = login.headers.get_list("set-cookie") + logged.headers.get_list("set-cookie")
    plain_cookies = plain.get("/login").headers.get_list("set-cookie")

    assert set_cookies and all("secure" in c.lower() for c in set_cookies), set_cookies
    assert all("httponly" in c.lower() for c in set_cookies + plain_cookies)
    assert plain_cookies and not any("secure" in c.lower() for c in plain_cookies)


@pytest.fixture
def uvicorn_web(web_app: App) -> Iterator[int]:
    """The app served by uvicorn in this process, as `workers web` serves it."""
    port = free_port()
    config = uvicorn.Config(served(web_app, host="127.0.0.1", port=port), host="127.0.0.1",
                            port=port, log_level="error", lifespan="off")  # fmt: skip
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_for(lambda: server.started, timeout=30, what="uvicorn")
    yield port
    server.should_exit = True
    thread.join(timeout=30)


def test_an_anonymous_request_is_refused_before_its_body_is_sent(uvicorn_web: int) -> None:
    """Headers that promise 50 MB, and no body: the answer comes without waiting for it."""
    with socket.create_connection(("127.0.0.1", uvicorn_web), timeout=10) as conn:
        conn.sendall(
            f"POST /api/jobs HTTP/1.1\r\nHost: 127.0.0.1:{uvicorn_web}\r\n"
            "Content-Type: application/json\r\nContent-Length: 50000000\r\n\r\n".encode()
        )
        head = conn.recv(64).decode("latin-1")
    assert head.startswith("HTTP/1.1 401"), head


def test_a_request_body_over_the_limit_is_a_413(
    make_settings: Callable[..., Settings],
) -> None:
    app = workers.boot(settings=make_settings(web__tokens=token_settings(), web__max_body=4096))
    try:
        web = client_for(app, headers=bearer("admin"))
        big = {"type": "RecordJob", "params": {"blob": "x" * 5000}}
        declared = web.post("/api/jobs", json=big)
        streamed = web.post("/api/jobs", content=iter([b'{"type": "RecordJob", "params": {"b": "',
                                                        b"x" * 5000, b'"}}']),
                            headers={"Content-Type": "application/json"})  # fmt: skip
        small = web.post("/api/jobs", json={"type": "RecordJob", "params": {"blob": "x"}})
        stored = app.store.jobs.count_documents({})
    finally:
        workers.shutdown()
    assert declared.status_code == streamed.status_code == 413, (declared.text, streamed.text)
    assert "4096" in declared.json()["detail"]
    assert small.status_code == 201 and stored == 1


# -- 9. CSRF tokens belong to the session ---------------------------------------------------------


def test_a_csrf_token_planted_from_another_port_is_refused(web_app: App) -> None:
    """A page on localhost:3000 shares the cookie jar of localhost:8181 (cookies ignore the
    port): it can plant cookies and post what it planted, or plant a session of its own
    together with that session's token (read from the login page), but it cannot make a
    token for the victim's login."""
    job_id = job_in(web_app, "ready", "admin")
    victim = client_for(web_app)
    victim.post("/login", data={"token": token_of("admin"), "csrf": page_csrf(victim)})
    attacker = client_for(web_app)
    attackers_token = page_csrf(attacker)
    planted = "p" * 43
    victim.cookies.set("workers_csrf", planted)

    forged = victim.post("/act", data={"action": "cancel", "ids": job_id, "csrf": planted,
                                       "confirm": "yes"})  # fmt: skip
    api = victim.post("/api/jobs", json={"type": "RecordJob"}, headers={"X-CSRF-Token": planted})
    honest_token = page_csrf(victim)
    victim.cookies.set("workers_session", attacker.cookies["workers_session"])
    replanted = victim.post("/act", data={"action": "cancel", "ids": job_id,
                                          "csrf": attackers_token, "confirm": "yes"})  # fmt: skip
    still_ready = status_of(web_app, job_id)
    victim.cookies.delete("workers_session")
    victim.cookies.delete("workers_csrf")
    honest = victim.post("/act", data={"action": "cancel", "ids": job_id,
                                       "csrf": page_csrf(victim), "confirm": "yes"})  # fmt: skip

    assert forged.status_code == api.status_code == replanted.status_code == 403
    assert still_ready == "ready" and honest_token
    assert honest.status_code == 303 and status_of(web_app, job_id) == "cancelled"


def test_a_csrf_token_of_one_session_is_refused_in_another(web_app: App) -> None:
    job_id = job_in(web_app, "ready", "admin")
    attacker = client_for(web_app)
    victim = client_for(web_app)
    victim.post("/login", data={"token": token_of("admin"), "csrf": page_csrf(victim)})
    theirs = page_csrf(attacker)

    forged = victim.post("/act", data={"action": "cancel", "ids": job_id, "csrf": theirs,
                                       "confirm": "yes"})  # fmt: skip

    assert forged.status_code == 403 and status_of(web_app, job_id) == "ready"


def test_answers_with_job_data_are_not_cached_and_redirects_are_relative(web_app: App) -> None:
    job_id = web_app.push_named("RecordJob", {"secret": "s3"})
    with client_for(web_app, headers=bearer("admin")) as web:
        api = web.get(f"/api/jobs/{job_id}")
        page = web.get(f"/jobs/{job_id}", headers={"Accept": "text/html"})
        static = web.get("/static/app.css")
        # the trailing-slash redirect, asked under a Host of the caller's choosing
        slash = web.get("/api/jobs/", headers={"Host": "elsewhere.example"})
    assert api.headers["cache-control"] == "no-store"
    assert page.headers["cache-control"] == "no-store"
    assert "no-store" not in static.headers.get("cache-control", "")
    assert slash.status_code in (307, 308), slash.text
    assert slash.headers["location"] == "/api/jobs"


def test_a_link_cannot_put_words_in_the_dashboard_s_notice(web_app: App) -> None:
    with client_for(web_app, headers=bearer("viewer")) as web:
        html = {"Accept": "text/html"}
        forged = web.get("/jobs?message=Your+session+expired,+log+in+at+evil.example", headers=html)
        odd = web.get("/jobs?done=cancel&changed=all+of+them&refused=2", headers=html)
        told = web.get("/jobs?done=pause&changed=3&spared=1", headers=html)
    assert "evil.example" not in forged.text and 'id="message"' not in forged.text
    assert "all of them" not in odd.text and "cancel: 0 changed, 2 refused" in odd.text
    assert "pause: 3 changed, 1 of other owners left as they were" in told.text


def test_a_500_carries_the_same_security_headers_as_every_answer(
    web_app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    from starlette.testclient import TestClient as Client

    from workers.web import views

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("a bug in a route")

    monkeypatch.setattr(views, "find_page", broken)
    client = Client(served(web_app, host="127.0.0.1"), raise_server_exceptions=False,
                    headers=bearer("viewer"), base_url="http://127.0.0.1")  # fmt: skip

    answer = client.get("/api/jobs")

    assert answer.status_code == 500
    assert answer.headers["content-type"] == "application/problem+json"
    assert "a bug" not in answer.text and "log" in answer.json()["detail"]
    assert "frame-ancestors 'none'" in answer.headers.get("content-security-policy", "")
    assert answer.headers.get("x-content-type-options") == "nosniff"
    assert answer.headers.get("cache-control") == "no-store"


def _session_cookie(web_app: App, forwarded_allow: list[str]) -> str:
    """The session cookie `workers web`'s server gives a request that a proxy on this
    machine forwarded as HTTPS, with web.forwarded_allow as given."""
    from workers.web.server import server_config

    port = free_port()
    settings = web_app.settings.model_copy(
        update={"web": web_app.settings.web.model_copy(update={"forwarded_allow": forwarded_allow})}
    )
    config = server_config(served(web_app, settings, host="127.0.0.1", port=port), settings,
                           "127.0.0.1", port)  # fmt: skip
    config.lifespan = "off"
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        wait_for(lambda: server.started, timeout=30, what="uvicorn")
        import httpx

        answer = httpx.get(
            f"http://127.0.0.1:{port}/login",
            headers={"X-Forwarded-Proto": "https", "X-Forwarded-For": "198.51.100.7"},
        )
    finally:
        server.should_exit = True
        thread.join(timeout=30)
    return next(c for c in answer.headers.get_list("set-cookie") if "workers_session" in c)


def test_the_proxy_says_https_only_from_an_address_of_web_forwarded_allow(
    web_app: App,
) -> None:
    """Behind an Ingress TLS ends at the proxy: its X-Forwarded-Proto makes the cookies
    Secure when its address is trusted (web.forwarded_allow), and only then."""
    trusted = _session_cookie(web_app, ["127.0.0.0/8"])
    untrusted = _session_cookie(web_app, ["10.9.9.9"])

    assert "secure" in trusted.lower(), trusted
    assert "secure" not in untrusted.lower(), untrusted


def test_a_forwarded_allow_that_is_no_address_is_refused_naming_it(
    mongo_url: str, db_name: str
) -> None:
    from tests.conftest import settings_dict
    from workers.errors import SettingsError
    from workers.settings import validate

    with pytest.raises(SettingsError, match=r"web\.forwarded_allow.*'ingress\.local'"):
        validate(settings_dict(mongo_url, db_name, web__forwarded_allow=["ingress.local"]))


def test_prometheus_scrapes_metrics_by_the_pods_address_with_a_token(web_app: App) -> None:
    """As the ServiceMonitor of deploy/kubernetes/prometheus scrapes: by the pod's IP, which
    no web.allowed_hosts names, with a token; a page by that address is still refused."""
    settings = web_app.settings.model_copy(
        update={
            "web": web_app.settings.web.model_copy(update={"allowed_hosts": ["jobs.example.com"]})
        }
    )
    web = served(web_app, settings, host="0.0.0.0", port=8181)
    pod = TestClient(web, base_url="http://10.1.2.3:8181", client=("10.1.0.9", 50000))

    scraped = pod.get("/metrics", headers=bearer("viewer"))
    wrong = pod.get("/metrics", headers={"Authorization": "Bearer not-a-token"})
    bare = pod.get("/metrics")
    page = pod.get("/api/stats", headers=bearer("viewer"))
    named = TestClient(web, base_url="http://jobs.example.com").get(
        "/metrics", headers=bearer("viewer")
    )

    assert scraped.status_code == 200 and "workers_jobs" in scraped.text
    assert wrong.status_code == 401
    assert bare.status_code == 400 and page.status_code == 400
    assert named.status_code == 200


def test_a_token_past_its_expiry_is_refused(make_settings: Callable[..., Settings]) -> None:
    from datetime import UTC, datetime, timedelta

    from workers.web.auth import hash_token

    soon = datetime.now(UTC) + timedelta(days=1)
    tokens = [
        {"name": "old", "role": "viewer", "sha256": hash_token("old-token"),
         "expires": (datetime.now(UTC) - timedelta(seconds=1)).isoformat()},
        {"name": "new", "role": "viewer", "sha256": hash_token("new-token"),
         "expires": soon.isoformat()},
    ]  # fmt: skip
    app = workers.boot(settings=make_settings(web__tokens=tokens))
    try:
        client = client_for(app)
        old = client.get("/api/stats", headers={"Authorization": "Bearer old-token"})
        new = client.get("/api/stats", headers={"Authorization": "Bearer new-token"})
    finally:
        workers.shutdown()
    assert old.status_code == 401 and new.status_code == 200


def test_a_client_that_fails_too_often_waits_and_the_others_do_not(web_app: App) -> None:
    """Ten failed credentials in a minute: that client's next attempts, a right token or
    the login form included, get 429 with Retry-After; another client is let in."""
    guesser = client_for(web_app, client=("198.51.100.20", 40000))
    other = client_for(web_app, client=("198.51.100.21", 40000))

    failed = [guesser.get("/api/stats", headers={"Authorization": f"Bearer guess-{n}"})
              for n in range(10)]  # fmt: skip
    locked = guesser.get("/api/stats", headers=bearer("viewer"))
    csrf = page_csrf(guesser)
    login = guesser.post("/login", data={"token": token_of("viewer"), "csrf": csrf})
    let_in = other.get("/api/stats", headers=bearer("viewer"))

    assert [answer.status_code for answer in failed] == [401] * 10
    assert locked.status_code == 429 and 0 < int(locked.headers["retry-after"]) <= 60
    assert "too many failed credentials" in locked.json()["detail"]
    assert login.status_code == 429
    assert let_in.status_code == 200


@pytest.mark.slow
@pytest.mark.processes
def test_sighup_reads_the_tokens_again_without_a_restart(
    settings_file: Callable[..., Any], tmp_path: Any
) -> None:
    """A token removed from the settings stops working, and one added works, once
    `workers web` gets SIGHUP; settings that no longer load keep the tokens in force."""
    import json
    import signal
    import subprocess

    import httpx

    from tests.conftest import workers_command, workers_env
    from workers.web.auth import hash_token

    def tokens(*names: str) -> list[dict[str, str]]:
        return [{"name": n, "role": "viewer", "sha256": hash_token(f"{n}-token")} for n in names]

    path = settings_file(web__tokens=tokens("alice"))
    port = free_port()
    log = tmp_path / "web.log"
    with log.open("wb") as out:
        server = subprocess.Popen(
            workers_command("web", "--settings", str(path), "--port", str(port)),
            cwd=tmp_path, env=workers_env(), stdout=out, stderr=out,
        )  # fmt: skip

    def status(name: str) -> int:
        headers = {"Authorization": f"Bearer {name}-token"}
        return httpx.get(f"http://127.0.0.1:{port}/api/stats", headers=headers).status_code

    try:
        wait_for(lambda: raw_status(port, "/healthz", f"127.0.0.1:{port}") == 200,
                 timeout=60, what="workers web")  # fmt: skip
        before = (status("alice"), status("bob"))
        settings = json.loads(path.read_text())
        settings["web"]["tokens"] = tokens("bob")
        path.write_text(json.dumps(settings))
        server.send_signal(signal.SIGHUP)
        wait_for(lambda: status("bob") == 200, timeout=30, what="bob's token after SIGHUP")
        after = (status("alice"), status("bob"))
        path.write_text("{not json")
        server.send_signal(signal.SIGHUP)
        wait_for(lambda: b"the tokens were not reloaded" in log.read_bytes(), timeout=30,
                 what="the failed reload to be logged")  # fmt: skip
        kept = status("bob")
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert before == (200, 401) and after == (401, 200) and kept == 200


def test_a_login_is_a_server_side_session_that_logout_ends_for_every_process(
    web_app: App,
) -> None:
    """The cookie holds a session id, never the token; a logout in one web process ends
    the session in all of them (a copy of the cookie, replayed, is refused); a session
    that ended, or whose token left the settings, lets nobody in."""
    one, other = client_for(web_app), client_for(web_app)  # two web processes, one database
    logged = one.post("/login", data={"token": token_of("viewer"), "csrf": page_csrf(one)})
    session = one.cookies.get("workers_token")
    assert logged.status_code == 303 and session and token_of("viewer") not in session
    other.cookies.set("workers_token", session)
    before = other.get("/api/stats").status_code

    csrf = page_csrf(one)
    out = one.post("/logout", data={"csrf": csrf})
    replayed = client_for(web_app)
    replayed.cookies.set("workers_token", session)
    after = (other.get("/api/stats").status_code, replayed.get("/api/stats").status_code)

    assert before == 200 and out.status_code == 303 and after == (401, 401)
    again = client_for(web_app)
    again.post("/login", data={"token": token_of("viewer"), "csrf": page_csrf(again)})
    web_app.store.web.update_many(
        {"_id": {"$regex": "^session:"}}, {"$set": {"expires": web_app.store.now()}}
    )
    assert again.get("/api/stats").status_code == 401


@pytest.mark.parametrize(("expires", "reason"), [
    ("next friday", "is not an ISO 8601 date"),
    ("2027-01-31T00:00:00", "has no time zone"),
])  # fmt: skip
def test_a_token_expiry_that_is_no_moment_is_refused_naming_it(
    mongo_url: str, db_name: str, expires: str, reason: str
) -> None:
    from tests.conftest import settings_dict
    from workers.errors import SettingsError
    from workers.settings import validate

    token = {"name": "t", "role": "viewer", "sha256": "0" * 64, "expires": expires}
    with pytest.raises(SettingsError, match=rf"web\.tokens\.0\.expires.*{reason}"):
        validate(settings_dict(mongo_url, db_name, web__tokens=[token]))
