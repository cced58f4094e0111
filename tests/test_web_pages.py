"""The dashboard's pages, as a browser gets them: every page renders, values are escaped,
lists page by index, a fragment is the content alone, and the live feed follows changes."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator

import pytest
from starlette.testclient import TestClient

import workers
from tests.conftest import wait_for
from tests.web_support import bearer, client_for, token_settings
from workers.app import App
from workers.settings import Settings
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
                                  "version": "0.1.0", "state": "running"})  # fmt: skip
    web_app.store.take_leadership("node-1", 30)

    overview = browser.get("/").text
    jobs = browser.get("/jobs").text
    job = browser.get(f"/jobs/{job_id}").text
    nodes = browser.get("/nodes").text
    cron = browser.get("/cron").text

    assert 'data-status="ready">1<' in overview and "RecordJob" in overview and "<svg" in overview
    assert job_id in jobs and "RecordJob" in jobs
    assert '"project": "demo"' in job and "pushed" in job
    assert "web-1" in nodes and job_id in nodes and "silent" not in nodes.split("<table")[1]
    assert "EverySecondJob" in cron and "Leader: <code>node-1</code>" in cron


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
    csrf = browser.get(f"/jobs/{job_id}").cookies["workers_csrf"]

    browser.cookies.set("workers_csrf", csrf)
    asked = browser.post("/act", data={"action": "pause", "ids": job_id, "csrf": csrf,
                                       "back": f"/jobs/{job_id}"})  # fmt: skip
    done = browser.post("/act", data={"action": "pause", "ids": job_id, "csrf": csrf,
                                      "back": f"/jobs/{job_id}", "confirm": "yes"})  # fmt: skip
    again = browser.get(done.headers["location"]).text

    assert "Pause 1 job?" in asked.text and web_app.store.get_job(job_id)["status"] == "paused"  # type: ignore[index]
    assert "pause: 1 changed" in again and 'value="resume"' in again


def test_the_live_feed_follows_job_changes_through_a_change_stream(web_app: App) -> None:
    feed = Feed(web_app.store.job_changes)
    feed.start()
    try:
        assert feed.following.wait(timeout=15), "the change stream did not open"
        before = feed.version
        web_app.push_named("RecordJob", {})
        wait_for(lambda: feed.version > before, timeout=15, what="a change from the stream")
    finally:
        feed.stop()


def test_each_connection_hears_of_a_change(web_app: App) -> None:
    feed = Feed(web_app.store.job_changes)

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
