"""What one request may cost the web process: a list reads the fields it shows, a text
search reads each job bounded (params while small, the error's message, the start of the
newest log lines), and only a few searches run at once."""

from __future__ import annotations

import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

import workers
from tests.conftest import free_port, wait_for, workers_command, workers_env
from tests.web_support import bearer, client_for, token_settings
from workers.app import App
from workers.settings import Settings
from workers.store import new_id
from workers.web import views

JOBS, PARAMS_BYTES = 60, 900_000
# what six searches and six lists of 200 may add to the web process's peak memory: with
# whole documents read, the same requests added over 400 MB
BOUND_MB = 64


@pytest.fixture
def web_app(make_settings: Callable[..., Settings]) -> Iterator[App]:
    yield workers.boot(settings=make_settings(web__tokens=token_settings()))
    workers.shutdown()


def test_a_search_reads_small_params_the_error_and_the_log_and_not_large_params(
    web_app: App,
) -> None:
    small = workers.push_named("RecordJob", {"note": "needle in small params"})
    workers.push_named("RecordJob", {"note": "needle " + "x" * 20_000})
    logged = workers.push_named("RecordJob", {})
    web_app.store.jobs.update_one(
        {"_id": logged}, {"$push": {"log": {"message": "a NEEDLE in the log", "level": "info"}}}
    )
    failed = workers.push_named("RecordJob", {})
    web_app.store.jobs.update_one(
        {"_id": failed}, {"$set": {"error": {"message": "needle!", "traceback": "t" * 50_000}}}
    )
    api = client_for(web_app, headers=bearer("viewer"))

    page = api.get("/api/jobs", params={"q": "needle"}).json()

    assert {job["id"] for job in page["jobs"]} == {small, logged, failed}
    assert page["searched"] == 4


def test_a_search_beyond_the_searches_at_once_is_503_with_retry_after(
    web_app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(views, "SEARCH_QUEUE_WAIT", 0.05)
    api = client_for(web_app, headers=bearer("viewer"))
    held = [views._searches.acquire(timeout=5) for _ in range(views.SEARCHES_AT_ONCE)]
    try:
        busy = api.get("/api/jobs", params={"q": "anything"})
        listed = api.get("/api/jobs")  # a list is not a search: never queued
    finally:
        for _ in held:
            views._searches.release()
    again = api.get("/api/jobs", params={"q": "anything"})

    assert all(held)
    assert busy.status_code == 503 and busy.headers["retry-after"] == "2"
    assert "text searches are running" in busy.json()["detail"]
    assert listed.status_code == 200 and again.status_code == 200


def _peak_mb(pid: int) -> float:
    """The process's peak resident memory (VmHWM), MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmHWM for {pid}")


@pytest.mark.slow
@pytest.mark.processes
def test_six_searches_and_six_lists_over_large_params_stay_under_a_memory_bound(
    settings_file: Callable[..., Path], tmp_path: Path, app: App
) -> None:
    """A real `workers web` over 60 jobs with 900 kB params each: the peak memory six
    concurrent searches (that match nothing, so each examines every job) and six lists
    of 200 add stays under BOUND_MB."""
    big = "y" * PARAMS_BYTES
    for _ in range(JOBS // 10):
        app.store.insert_jobs(
            [app.job_document(new_id(), "RecordJob", {"blob": big}) for _ in range(10)]
        )
    port = free_port()
    settings = settings_file(web__tokens=token_settings())
    server = subprocess.Popen(
        workers_command("web", "--settings", str(settings), "--port", str(port)),
        cwd=tmp_path, env=workers_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}/api/jobs"
    headers = bearer("viewer")
    try:
        wait_for(lambda: _answers(base, headers), timeout=60, what="workers web")
        before = _peak_mb(server.pid)
        answers = _at_once(
            [(base, {"q": "no such text"}) for _ in range(6)]
            + [(base, {"limit": "200"}) for _ in range(6)],
            headers,
        )
        after = _peak_mb(server.pid)
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert [a["searched"] for a in answers[:6]] == [JOBS] * 6, answers[:6]
    assert [len(a["jobs"]) for a in answers[6:]] == [JOBS] * 6
    print(f"web process peak: {before:.0f} MB -> {after:.0f} MB")
    assert after - before < BOUND_MB, f"peak {before:.0f} MB -> {after:.0f} MB"


def _answers(url: str, headers: dict[str, str]) -> bool:
    try:
        return httpx.get(url, headers=headers, timeout=10).status_code == 200
    except httpx.HTTPError:
        return False


def _at_once(requests: list[tuple[str, dict[str, str]]], headers: dict[str, str]) -> list[Any]:
    """Each request from its own thread, released together; their JSON in order."""
    barrier = threading.Barrier(len(requests))
    answers: list[Any] = [None] * len(requests)

    def one(n: int, url: str, params: dict[str, str]) -> None:
        barrier.wait()
        response = httpx.get(url, params=params, headers=headers, timeout=120)
        answers[n] = response.json() if response.status_code == 200 else response.text

    threads = [threading.Thread(target=one, args=(n, *r)) for n, r in enumerate(requests)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=180)
    return answers
