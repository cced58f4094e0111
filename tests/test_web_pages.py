"""The dashboard's pages, as a browser gets them: every page renders, values are escaped,
lists page by index, a fragment is the content alone, and the live feed follows changes."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

import workers
from tests.conftest import free_port, wait_for, workers_command, workers_env
from tests.web_support import bearer, client_for, page_csrf, token_settings
from workers.app import App
from workers.errors import DatabaseUnavailable
from workers.settings import Settings
from workers.store import AnyChange
from workers.web.live import Feed, events

HTML = {"Accept": "text/html"}


@pytest.fixture
def web_app(make_settings: Callable[..., Settings]) -> Iterator[App]:
    settings = make_settings(
        jobs=["tests.jobs", "tests.cronjobs"], web__tokens=token_settings(), web__cache=0
    )
    booted = workers.boot(settings=settings)
    yield booted
    workers.shutdown()


@pytest.fixture
def browser(web_app: App) -> TestClient:
    return client_for(web_app, headers={**bearer("admin"), **HTML})


def test_every_page_renders_what_the_queue_holds(browser: TestClient, web_app: App) -> None:
    job_id = str(web_app.push_named("RecordJob", {"project": "demo"}))
    web_app.store.beat("node-1", {"host": "web-1", "pid": 42, "threads": 4, "running": [job_id],
                                  "version": "0.1.0", "state": "running",
                                  "types": ["RecordJob", "SleepJob"], "pool": False})  # fmt: skip
    web_app.store.beat("node-2", {"host": "reports-1", "pid": 43, "threads": 2, "running": [],
                                  "version": "0.1.0", "state": "running",
                                  "types": ["ReportJob"], "pool": True})  # fmt: skip
    web_app.store.take_leadership("node-1", 30)

    overview = browser.get("/").text
    jobs = browser.get("/jobs").text
    job = browser.get(f"/jobs/{job_id}").text
    nodes = browser.get("/nodes").text
    cron = browser.get("/cron").text

    assert 'data-status="ready">1<' in overview and "RecordJob" in overview and "<svg" in overview
    assert job_id in jobs and "RecordJob" in jobs
    assert "<td><code>project</code></td><td>demo</td>" in job and "pushed" in job
    assert "web-1" in nodes and job_id in nodes and "silent" not in nodes.split("<table")[1]
    rows = {row.split('"')[0]: row for row in nodes.split('data-node="')[1:]}
    assert '<td class="types">every type (2)</td>' in rows["node-1"]
    assert '<td class="types">ReportJob</td>' in rows["node-2"]
    assert "EverySecondJob" in cron and "Leader: <code>node-1</code>" in cron


def test_a_type_no_live_node_runs_is_named_on_the_overview_the_job_page_and_metrics(
    browser: TestClient, web_app: App
) -> None:
    job_id = str(web_app.push_named("SleepJob", {"seconds": 0}))
    # a live node that runs another type only
    web_app.store.beat("node-1", {"host": "web-1", "pid": 42, "threads": 4, "running": [],
                                  "version": "0.1.0", "state": "running",
                                  "types": ["RecordJob"], "pool": True})  # fmt: skip

    overview = browser.get("/").text
    job = browser.get(f"/jobs/{job_id}").text
    metrics = browser.get("/metrics").text
    assert 'id="unrun"' in overview and ">SleepJob</a> (1 to run)" in overview
    assert "No live worker process runs SleepJob" in job
    assert 'workers_jobs_without_node{type="SleepJob"} 1.0' in metrics
    assert browser.get("/api/stats").json()["unrun"] == {"SleepJob": 1}

    # once a live node runs it, nothing is said
    web_app.store.beat("node-2", {"host": "web-2", "pid": 43, "threads": 4, "running": [],
                                  "version": "0.1.0", "state": "running",
                                  "types": ["SleepJob"], "pool": True})  # fmt: skip
    assert 'id="unrun"' not in browser.get("/").text
    assert 'id="unrun"' not in browser.get(f"/jobs/{job_id}").text
    assert "workers_jobs_without_node{" not in browser.get("/metrics").text


def test_the_overview_says_what_its_chart_and_its_counts_count(browser: TestClient) -> None:
    overview = browser.get("/").text
    assert "<h2>Attempts in the last hour</h2>" in overview
    assert "an attempt that failed and will retry counts as failed" in overview
    assert "Jobs by status as counted 0 s ago" in overview


def test_params_logs_and_errors_are_escaped(browser: TestClient, web_app: App) -> None:
    evil = "<script>alert(1)</script>"
    job_id = str(web_app.push_named("RecordJob", {"name": evil}))
    error = {"message": evil, "type": "ValueError", "traceback": evil, "attempt": 1}
    log = [{"level": "danger", "message": evil}]
    web_app.store.jobs.update_one(
        {"_id": job_id}, {"$set": {"status": "failed", "log": log, "error": error}}
    )

    page = browser.get(f"/jobs/{job_id}").text
    found = browser.get("/jobs", params={"q": "alert"}).text

    assert evil not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert job_id in found


def test_the_job_list_pages_by_index_and_filters(browser: TestClient, web_app: App) -> None:
    ids = [str(web_app.push_named("RecordJob", {"n": n})) for n in range(55)]
    web_app.push_named("FailJob", {})

    first = browser.get("/jobs", params={"type": "RecordJob"}).text
    next_url = (
        first.split('id="next"')[0].rsplit('href="', 1)[1].split('"')[0].replace("&amp;", "&")
    )
    second = browser.get(next_url).text

    assert ids[-1] in first and ids[5] in first and ids[4] not in first
    assert all(job_id in second for job_id in ids[:5]) and 'id="next"' not in second
    assert "FailJob" not in first.split('id="jobs"')[1]


def test_a_fragment_is_the_content_alone(browser: TestClient) -> None:
    full = browser.get("/jobs").text
    fragment = browser.get("/jobs", headers={"X-Fragment": "1"}).text

    assert "<html" in full and "<html" not in fragment and 'id="jobs"' in fragment


def test_an_action_from_the_job_page_asks_then_acts(browser: TestClient, web_app: App) -> None:
    job_id = str(web_app.push_named("RecordJob", {}))
    csrf = page_csrf(browser, path=f"/jobs/{job_id}")

    asked = browser.post("/act", data={"action": "pause", "ids": job_id, "csrf": csrf,
                                       "back": f"/jobs/{job_id}"})  # fmt: skip
    done = browser.post("/act", data={"action": "pause", "ids": job_id, "csrf": csrf,
                                      "back": f"/jobs/{job_id}", "confirm": "yes"})  # fmt: skip
    again = browser.get(done.headers["location"]).text

    assert "Pause 1 job?" in asked.text and web_app.store.get_job(job_id)["status"] == "paused"  # type: ignore[index]
    assert "pause: 1 changed" in again and 'value="resume"' in again


def test_the_live_feed_follows_job_changes_through_a_change_stream(web_app: App) -> None:
    feed = Feed(lambda: web_app)
    feed.start()
    try:
        assert feed.following.wait(timeout=15), "the change stream did not open"
        before = feed.version
        web_app.push_named("RecordJob", {})
        wait_for(lambda: feed.version > before, timeout=15, what="a change from the stream")
    finally:
        feed.stop()


class DroppedChange(AnyChange):
    """The dashboard's stream, whose connection dies once on the test's word (its cursor is
    gone, as after a reset), and which reopens only once the test lets it."""

    made = 0

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        DroppedChange.made += 1
        self.drop, self.reopen = threading.Event(), threading.Event()
        self.reopen.set()

    def next_change(self) -> Any:
        if self.drop.is_set():
            self.drop.clear()
            self.close_stream()
            raise DatabaseUnavailable("MongoDB is unreachable: connection reset (the test)")
        return super().next_change()

    def open(self, max_wait: float) -> bool:
        self.reopen.wait(timeout=30)
        return super().open(max_wait)


@pytest.mark.slow
def test_a_failed_live_feed_resumes_its_stream_after_the_last_change_it_saw(
    web_app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = web_app.store
    streams: list[DroppedChange] = []

    def job_changes() -> DroppedChange:
        streams.append(DroppedChange(store.url, store.db.name, store.jobs.name, store.timeout))
        return streams[-1]

    monkeypatch.setattr(store, "job_changes", job_changes)
    feed = Feed(lambda: web_app)
    feed.start()
    try:
        assert feed.following.wait(timeout=15), "the change stream did not open"
        web_app.push_named("RecordJob", {})
        wait_for(lambda: streams[0].resume_token, timeout=15, what="a first change")
        [stream] = streams
        stream.reopen.clear()
        stream.drop.set()
        wait_for(lambda: not feed.following.is_set(), timeout=15, what="the stream to fail")
        before = feed.version
        web_app.push_named("RecordJob", {})  # while the stream is down
        stream.reopen.set()
        wait_for(lambda: feed.version > before, timeout=15, what="the change made meanwhile")
        assert feed.resumed == 1 and len(streams) == 1, "a new stream, not the failed one resumed"
    finally:
        feed.stop()


def test_each_connection_hears_of_a_change(web_app: App) -> None:
    feed = Feed(lambda: web_app)

    async def first_events() -> list[str]:
        heard: list[str] = []

        async def connected() -> bool:
            return len(heard) >= 2

        stream = events(feed, connected)
        async for message in stream:
            heard.append(message)
            feed.version += 1
        return heard

    try:
        heard = asyncio.run(first_events())
    finally:
        feed.stop()
    assert heard[0] == "retry: 2000\n\n" and heard[1].startswith("event: change\n")


def test_mounted_in_a_host_app_every_link_and_redirect_keeps_the_prefix(web_app: App) -> None:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.routing import Mount

    import workers.web

    def login(request: Request) -> tuple[str, str] | None:  # the host app's own session
        user = request.headers.get("x-user")
        return (user, "admin") if user else None

    host = Starlette(routes=[Mount("/workers", app=workers.web.app(auth=login))])
    client = TestClient(host, headers=HTML, follow_redirects=False)
    job_id = str(web_app.push_named("RecordJob", {}))

    anonymous = client.get("/workers/jobs")
    page = client.get(f"/workers/jobs/{job_id}", headers={"x-user": "ada"})
    style = client.get("/workers/static/app.css")
    csrf = page_csrf(client, {"x-user": "ada"}, path="/workers/jobs")
    form = {"action": "pause", "ids": job_id, "csrf": csrf, "confirm": "yes"}
    done = client.post("/workers/act", data=form, headers={"x-user": "ada"})

    assert anonymous.status_code == 303 and "Path=/workers" in anonymous.headers["set-cookie"]
    assert "workers_session" in anonymous.headers["set-cookie"]
    assert anonymous.headers["location"].startswith("/workers/login?next=")
    assert 'href="/workers/jobs"' in page.text and "/workers/static/app.css" in page.text
    assert 'action="/workers/act"' in page.text and 'data-base="/workers"' in page.text
    assert style.status_code == 200
    assert done.status_code == 303 and done.headers["location"].startswith("/workers/jobs")
    assert web_app.store.get_job(job_id)["status"] == "paused"  # type: ignore[index]


@pytest.mark.processes
def test_workers_web_behind_a_proxy_at_a_prefix_links_under_it(
    settings_file: Callable[..., Path], tmp_path: Path
) -> None:
    port = free_port()
    path = settings_file(web__tokens=token_settings())
    command = workers_command("web", "--settings", str(path), "--port", str(port),
                              "--root-path", "/workers")  # fmt: skip
    server = subprocess.Popen(command, cwd=tmp_path, env=workers_env(), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}/jobs"  # as the proxy forwards /workers/jobs
        page = wait_for(lambda: _fetch(url, bearer("viewer")), timeout=60, what="workers web")
    finally:
        server.terminate()
        said, _ = server.communicate(timeout=30)

    assert 'href="/workers/jobs"' in page and 'href="/workers/static/app.css"' in page
    assert f"http://127.0.0.1:{port}/workers/" in said


@pytest.mark.slow
@pytest.mark.processes
@pytest.mark.parametrize("between", [0.0, 0.3])
def test_ctrl_c_twice_stops_workers_web_without_a_traceback(
    settings_file: Callable[..., Path], tmp_path: Path, between: float
) -> None:
    """At once, the second Ctrl-C meets the server stopping; later, the process exiting."""
    port = free_port()
    path = settings_file(web__tokens=token_settings())
    command = workers_command("web", "--settings", str(path), "--port", str(port))
    server = subprocess.Popen(command, cwd=tmp_path, env=workers_env(), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}/jobs"
        wait_for(lambda: _fetch(url, bearer("viewer")), timeout=60, what="workers web")
        server.send_signal(signal.SIGINT)
        time.sleep(between)  # the moment of the second Ctrl-C, not a wait for anything
        server.send_signal(signal.SIGINT)
        said, _ = server.communicate(timeout=30)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
    assert server.returncode in (0, 130), said
    assert "Traceback" not in said, said
    assert f"workers: settings from {path.resolve()}" in said  # which file, in one line


def _fetch(url: str, headers: dict[str, str]) -> str | None:
    request = urllib.request.Request(url, headers={**headers, **HTML})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return str(response.read().decode())
    except OSError:  # not listening yet
        return None


def test_the_live_feed_ends_with_the_app_it_follows(make_settings: Callable[..., Settings]) -> None:
    booted = workers.boot(settings=make_settings(jobs=["tests.jobs"]))
    feed = Feed(lambda: booted)
    feed.start()
    try:
        assert feed.following.wait(timeout=15), "the change stream did not open"
    finally:
        workers.shutdown()

    wait_for(lambda: not feed.running, timeout=15, what="the feed thread to end")
    assert not feed.following.is_set()
