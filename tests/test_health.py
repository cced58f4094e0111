"""Health checks: `workers health` (a container's HEALTHCHECK, a liveness probe) and the web
app's /healthz and /readyz (no auth, no Host check, no job data)."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from starlette.testclient import TestClient

import workers
from tests.conftest import free_port, run_workers, wait_for, workers_command, workers_env
from tests.web_support import bearer, token_settings
from workers.app import App
from workers.registry import discover
from workers.settings import Settings
from workers.store import Store
from workers.web.server import create_app, served_app


@pytest.fixture
def worker(settings_file: Callable[..., Path], tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """One `workers worker` process, the container's command, with a 3 s lease."""
    path = settings_file(workers__queue={"lease": 3, "poll_interval": 0.05})
    process = subprocess.Popen(
        workers_command("worker", "--settings", str(path)), cwd=tmp_path, env=workers_env()
    )
    yield process
    process.send_signal(signal.SIGCONT)
    process.terminate()
    process.wait(timeout=60)


def health(path: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return run_workers("health", "--settings", str(path), *args, cwd=cwd)


@pytest.mark.processes
@pytest.mark.slow
def test_well_while_the_worker_beats_and_not_once_it_stops_beating(
    worker: subprocess.Popen[bytes], tmp_path: Path
) -> None:
    path = tmp_path / "settings.json"
    well = wait_for(
        lambda: (done := health(path, tmp_path)).returncode == 0 and done,
        timeout=60,
        what="the worker's first beat",
    )
    assert well.stdout.startswith("healthy: the database answers; 1 worker process(es) on ")
    worker.send_signal(signal.SIGSTOP)  # alive, but it beats no more: its jobs are stuck
    stale = wait_for(
        lambda: (done := health(path, tmp_path)).returncode == 1 and done,
        timeout=60,
        what="the stopped worker to be reported",
    )
    assert stale.stdout.startswith("unhealthy: the workers: ")
    assert "last beat" in stale.stdout and "more than the lease (3 s)" in stale.stdout
    worker.send_signal(signal.SIGCONT)
    wait_for(lambda: health(path, tmp_path).returncode == 0, timeout=60, what="well again")


@pytest.mark.processes
def test_no_worker_process_on_this_host_is_unhealthy(
    settings_file: Callable[..., Path], tmp_path: Path, app: App
) -> None:
    # a record of a process that is gone (killed: its record stays) does not count as running
    app.store.beat("gone:999999:x", {"host": socket.gethostname(), "pid": 999999})
    done = health(settings_file(), tmp_path)
    assert done.returncode == 1
    assert done.stdout.startswith("unhealthy: the workers: no worker process is running on ")


@pytest.mark.slow
@pytest.mark.processes
def test_a_database_that_does_not_answer_is_named_first(
    settings_file: Callable[..., Path], tmp_path: Path
) -> None:
    nowhere = f"mongodb://127.0.0.1:{free_port()}/?directConnection=true"
    path = tmp_path / "down.json"
    path.write_text(
        json.dumps({**json.loads(settings_file().read_text()), "mongo": {"url": nowhere}})
    )
    done = health(path, tmp_path, "--timeout", "1")
    assert done.returncode == 1
    assert done.stdout.startswith("unhealthy: the database does not answer within 1 s")


@pytest.mark.processes
def test_the_embedded_server_is_not_started_by_a_health_check(tmp_path: Path) -> None:
    env = {k: v for k, v in workers_env().items() if k != "MONGO_URL"}
    (tmp_path / "settings.json").write_text(json.dumps({"jobs": ["tests.jobs"]}))
    done = subprocess.run(
        workers_command("health"), cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 1
    assert "the embedded server of " in done.stdout and "is not running" in done.stdout
    assert not (tmp_path / ".workers" / "db" / "data").exists()


# --- the web app's probes -----------------------------------------------------------


def test_the_probes_answer_without_auth_host_check_or_job_data(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings(web__tokens=token_settings(), web__allowed_hosts=["jobs.example.com"])
    app = workers.boot(settings=settings)
    try:
        app.push_named("RecordJob", {"secret": "s3cret"})
        web = served_app(settings, booted_app=app, host="0.0.0.0", port=8181)
        # a kubelet asks by the pod's address, with no token
        probe = TestClient(web, base_url="http://10.1.2.3:8181")
        answers = {path: probe.get(path) for path in ("/healthz", "/readyz", "/api/stats", "/")}
        named = TestClient(web, base_url="http://jobs.example.com", headers=bearer("viewer"))
        stats = named.get("/api/stats")
    finally:
        workers.shutdown()
    assert answers["/healthz"].status_code == 200
    assert answers["/healthz"].json() == {"status": "ok"}
    assert answers["/readyz"].status_code == 200
    assert answers["/readyz"].json() == {"status": "ready"}
    assert answers["/api/stats"].status_code == 400 and answers["/"].status_code == 400
    assert stats.status_code == 200  # the rest still answers by name, with a token


@pytest.mark.slow
def test_readyz_is_503_while_the_database_does_not_answer(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings()
    nowhere = f"mongodb://127.0.0.1:{free_port()}/?directConnection=true"
    store = Store(nowhere, "app", timeout=1, pool_size=1)
    down = App(settings, store, discover(settings.jobs))
    try:
        probe = TestClient(create_app(booted_app=down))
        ready, alive = probe.get("/readyz"), probe.get("/healthz")
    finally:
        store.close()
    assert (ready.status_code, ready.json()["status"]) == (503, "unavailable")
    assert ready.headers["cache-control"] == "no-store"
    assert alive.status_code == 200  # the process is up: restarting it would not help
