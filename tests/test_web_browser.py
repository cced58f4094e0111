"""The dashboard in a real headless browser: Debian's chromium and chromedriver through
Selenium, against `workers web`'s app served by uvicorn and a worker running the jobs.

`make test` installs chromium (apt); without it these tests are skipped, saying so.
With WORKERS_SCREENSHOTS=docs/screenshots (`make screenshots`) each page is saved there.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn

import workers
from tests.conftest import ROOT, free_port, wait_for
from tests.web_support import token_of, token_settings
from workers.app import App
from workers.settings import Settings
from workers.web.server import served_app
from workers.worker import Worker

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
# both marks: a second `pytestmark =` dropped `browser`, and make check ran these (30 s)
pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        not (CHROMIUM and DRIVER),
        reason="no chromium/chromedriver installed (make test installs Debian's chromium and "
        "chromium-driver with apt)",
    ),
]
SHOTS = os.environ.get("WORKERS_SCREENSHOTS")


def swapped(action: Callable[[], Any]) -> Any:
    """`action` on an element, again if live.js swapped the page's content in between (the
    element found is gone before it is read or clicked: nothing was done)."""
    from selenium.common.exceptions import StaleElementReferenceException, WebDriverException

    for _ in range(50):
        try:
            return action()
        except StaleElementReferenceException:
            pass
        except WebDriverException as exc:
            if "does not belong to the document" not in str(exc):
                raise
        time.sleep(0.1)
    return action()


class Site:
    """The server, the worker and the browser of one test module."""

    def __init__(self, app: App, url: str, driver: Any) -> None:
        self.app, self.url, self.driver = app, url, driver

    def open(self, path: str) -> None:
        self.driver.get(self.url + path)

    def text(self, css: str) -> str:
        return str(swapped(lambda: self.driver.find_element("css selector", css).text))

    def wait_text(self, css: str, expected: str, timeout: float = 20) -> None:
        from selenium.common.exceptions import NoSuchElementException

        def shows() -> bool:
            try:
                return expected in self.text(css)
            except NoSuchElementException:  # not on the page yet
                return False

        wait_for(shows, timeout=timeout, what=f"{expected!r} in {css}", every=0.1)

    def click(self, css: str) -> None:
        """Click something that loads a page, and wait until the new page is there.

        The old page is marked on its `window`, which only a navigation replaces: live.js
        swapping the content keeps it, and no element reference can go stale under us
        (chromium reports some stale elements as "does not belong to the document")."""
        self.driver.execute_script("window.__before_click = true")
        swapped(lambda: self.driver.find_element("css selector", css).click())
        wait_for(
            lambda: self.driver.execute_script(
                "return window.__before_click === undefined && document.readyState === 'complete'"
            ),
            timeout=20,
            what="the page after clicking " + css,
            every=0.05,
        )

    def login(self, role: str, name: str | None = None) -> None:
        self.driver.delete_all_cookies()
        self.open("/login")
        self.driver.find_element("name", "token").send_keys(token_of(role, name))
        self.click("#login button")

    def api(self, method: str, path: str, body: Any = None, role: str = "admin") -> Any:
        request = urllib.request.Request(
            self.url + path,
            method=method,
            data=json.dumps(body).encode() if body else None,
            headers={
                "Authorization": f"Bearer {token_of(role)}",
                "Content-Type": "application/json",
            },
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read())

    def blocked(self) -> list[str]:
        """What the browser refused to load or run since the last call (the page's CSP)."""
        logs = self.driver.get_log("browser")
        return [entry["message"] for entry in logs if "Content Security Policy" in entry["message"]]

    def shot(self, name: str) -> None:
        if SHOTS:
            folder = ROOT / SHOTS
            folder.mkdir(parents=True, exist_ok=True)
            self.driver.save_screenshot(str(folder / f"{name}.png"))


@pytest.fixture
def site(make_settings: Callable[..., Settings], tmp_path: Path) -> Iterator[Site]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    settings = make_settings(
        jobs=["tests.webjobs"],
        web__tokens=token_settings(),
        web__cache=0,
        workers__count=2,
        workers__queue={"poll_interval": 0.2, "lease": 6},
    )
    app = workers.boot(settings=settings)
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            served_app(app.settings, booted_app=app, host="127.0.0.1", port=port),
            host="127.0.0.1",
            port=port,
            log_level="warning",
            timeout_graceful_shutdown=1,
        )
    )
    serving = threading.Thread(target=server.run, daemon=True)
    serving.start()
    wait_for(lambda: server.started, timeout=20, what="uvicorn")
    worker = Worker(app)
    working = threading.Thread(target=worker.run, daemon=True)
    working.start()
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})  # CSP reports land there
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1280,900",
        f"--user-data-dir={tmp_path / 'chromium'}",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(str(DRIVER)), options=options)
    driver.implicitly_wait(0)
    driver.set_page_load_timeout(15)  # a page that waits for a connection fails the test
    try:
        yield Site(app, f"http://127.0.0.1:{port}", driver)
    finally:
        driver.quit()
        worker.stop()
        working.join(timeout=30)
        server.should_exit = True
        serving.join(timeout=20)
        workers.shutdown()


def test_a_person_watches_jobs_run_and_steers_them(site: Site) -> None:
    site.login("admin")
    stepping = site.api(
        "POST", "/api/jobs", {"type": "StepJob", "params": {"gate": "g1", "steps": 3}}
    )["id"]
    failing = site.api(
        "POST", "/api/jobs", {"type": "ImportOrdersJob", "params": {"shop": "shop-7"}, "retries": 0}
    )["id"]
    later = site.api(
        "POST", "/api/jobs", {"type": "StepJob", "params": {"gate": "g2"}, "delay": 3600}
    )["id"]

    # one job progresses and completes while its page is open, without a reload
    site.open(f"/jobs/{stepping}")
    site.driver.execute_script("window.stillThisPage = true")
    gates = site.app.store.app_database().gates
    for step, percent in ((1, "33%"), (2, "67%")):
        gates.update_one({"_id": "g1"}, {"$set": {"open": step}}, upsert=True)
        site.wait_text("#progress", percent)
    site.wait_text("#log", "step 2 of 3 done")
    site.shot("job")
    gates.update_one({"_id": "g1"}, {"$set": {"open": 3}})
    site.wait_text("#job-status", "completed")
    assert site.driver.execute_script("return window.stillThisPage") is True

    # cancel one, with confirmation
    site.open(f"/jobs/{later}")
    site.click("#job-actions button[value=cancel]")
    assert "Cancel 1 job?" in site.text("h1")
    site.shot("confirm")
    site.click("#yes")
    site.wait_text("#message", "cancel: 1 changed")
    assert "cancelled" in site.text("#job-status")

    # restart a failed one
    site.open(f"/jobs/{failing}")
    site.wait_text("#job-status", "failed")
    assert "did not answer" in site.text("#error")
    site.click("#job-actions button[value=restart]")
    site.click("#yes")
    site.wait_text("#message", "restart: 1 changed")
    assert site.app.store.get_job(failing)["attempts"] >= 1  # type: ignore[index]

    # the list, filtered, and the overview with its numbers
    site.open("/jobs?type=StepJob")
    assert stepping in site.text("#jobs") and failing not in site.text("#jobs")
    site.open("/jobs")
    site.shot("jobs")
    site.open("/")
    site.wait_text("#totals", "completed")
    site.wait_text("figcaption", "1 completed")  # the worker's counts, through its heartbeat
    site.shot("overview")
    site.open("/api/docs")
    assert "/api/jobs/{job_id}/{action}" in site.text("#operations")
    assert site.blocked() == []  # the pages' CSP refused nothing they use


def test_a_person_sees_the_nodes_and_the_cron_schedule(site: Site) -> None:
    site.login("viewer")
    site.open("/nodes")
    site.wait_text("#nodes", str(os.getpid()))
    site.shot("nodes")
    site.open("/cron")
    site.wait_text("#schedules", "DailyReportJob")
    site.wait_text("#leader", "Leader:")
    assert "0 9 * * *" in site.text("#schedules")
    site.shot("cron")
    assert site.blocked() == []


def test_each_role_sees_and_may_do_what_its_role_allows(site: Site) -> None:
    own = site.api(
        "POST",
        "/api/jobs",
        {"type": "StepJob", "params": {"gate": "x"}, "delay": 3600},
        role="creator",
    )["id"]
    other = site.api(
        "POST", "/api/jobs", {"type": "StepJob", "params": {"gate": "y"}, "delay": 3600}
    )["id"]

    site.open("/jobs")
    assert "Log in" in site.text("h1")
    site.shot("login")
    for role in ("admin", "manager"):
        site.login(role)
        site.open(f"/jobs/{other}")
        assert site.driver.find_elements("css selector", "#job-actions button[value=pause]")
        assert role in site.text("#who")

    site.login("viewer")
    site.open(f"/jobs/{other}")
    assert not site.driver.find_elements("css selector", "#job-actions")

    site.login("creator")
    site.open(f"/jobs/{other}")
    site.click("#job-actions button[value=pause]")
    assert "may only act on jobs it pushed" in site.text("#problem")
    site.open(f"/jobs/{own}")
    site.click("#job-actions button[value=pause]")
    site.click("#yes")
    site.wait_text("#message", "pause: 1 changed")

    site.login("worker")
    site.open("/")
    assert "cannot use the dashboard" in site.text("#problem")
    assert site.blocked() == []
