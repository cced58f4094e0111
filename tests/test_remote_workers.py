"""Remote workers and clients against a live `workers web`, in real processes: `workers
remote` runs a jobs package's classes with a token and no database; a killed remote
worker's jobs are rescued by the web process and run by another; the Python client pushes,
reads and acts as its role allows; a JobQueue pauses, resumes and shuts down by level."""

from __future__ import annotations

import asyncio
import shutil
import signal
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import workers
from tests.conftest import free_port, wait_for, workers_command, workers_env
from tests.remotejobs import EchoJob
from tests.web_support import token_of, token_settings
from workers import remote
from workers.app import App
from workers.remote_worker import JobQueue, RemoteJob
from workers.settings import Settings

pytestmark = [pytest.mark.processes, pytest.mark.slow]  # each starts workers web and workers
LEASE = 3.0


@pytest.fixture
def service(
    settings_file: Callable[..., Path], make_settings: Callable[..., Settings], tmp_path: Path
) -> Iterator[tuple[str, App]]:
    """`workers web` on a free port (its URL), and an app on the same database to look."""
    overrides: dict[str, Any] = {
        "web__tokens": token_settings(),
        "workers__queue": {"poll_interval": 0.5, "lease": LEASE},
        "jobs": ["tests.remotejobs"],
    }
    path, port = settings_file(**overrides), free_port()
    web = subprocess.Popen(
        workers_command("web", "--settings", str(path), "--port", str(port)),
        cwd=tmp_path, env=workers_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    app = workers.boot(settings=make_settings(**overrides))
    try:
        with remote.connect(url, token_of("admin"), timeout=5) as client:
            wait_for(lambda: _answers(client), timeout=60, what="workers web")
        yield url, app
    finally:
        workers.shutdown()
        web.terminate()
        web.communicate(timeout=30)


def _answers(client: remote.Client) -> bool:
    try:
        client.request("GET", "/healthz", retry=False)
    except workers.WorkersError:
        return False
    return True


def start_remote(url: str, tmp_path: Path, name: str, *extra: str) -> subprocess.Popen[str]:
    token_file = tmp_path / f"{name}.token"
    token_file.write_text(token_of("worker") + "\n")
    command = workers_command(
        "remote", "--url", url, "--token-file", str(token_file), "--jobs", "tests.remotejobs",
        "--name", name, *extra,
    )  # fmt: skip
    env = {k: v for k, v in workers_env().items() if not k.startswith("WORKERS_REMOTE")}
    return subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)  # fmt: skip


def stop(process: subprocess.Popen[str]) -> str:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    said, _ = process.communicate(timeout=60)
    return said


def test_workers_remote_runs_the_job_classes_with_only_a_token(
    service: tuple[str, App], tmp_path: Path
) -> None:
    url, app = service
    with remote.connect(url, token_of("creator")) as client:
        ids = [client.push_named("EchoJob", {"echo": n}) for n in range(20)]
        flaky = client.push_named("FlakyEchoJob", retry=1)
    worker = start_remote(url, tmp_path, "far-1", "--threads", "3")
    try:
        wait_for(
            lambda: all(app.store.get_job(i)["status"] == "completed" for i in [*ids, flaky]),  # type: ignore[index]
            timeout=60,
            what="the remote worker to run every job",
        )
    finally:
        said = stop(worker)
    assert worker.returncode == 0, said
    for n, job_id in enumerate(ids):
        doc = app.store.get_job(job_id)
        assert doc is not None and doc["result"]["echo"] == n
        assert doc["result"]["pid"] == worker.pid and doc["progress"]["percent"] == 100.0
        assert any(entry["message"] == "echoing" for entry in doc["log"])
    retried = app.store.get_job(flaky)
    assert retried is not None and retried["attempts"] == 2
    assert "ConnectionError" in retried["error"]["type"]
    assert "far-1 works CountedJob, EchoJob, FlakyEchoJob, NapJob" in said


@pytest.mark.slow
def test_a_killed_remote_worker_s_jobs_are_rescued_and_run_by_another(
    service: tuple[str, App], tmp_path: Path
) -> None:
    url, app = service
    with remote.connect(url, token_of("admin")) as client:
        naps = [client.push_named("NapJob", {"seconds": 60}, retry=2) for _ in range(2)]
        doomed = start_remote(url, tmp_path, "doomed", "--types", "NapJob", "--threads", "2")
        try:
            wait_for(
                lambda: all(app.store.get_job(i)["status"] == "running" for i in naps),  # type: ignore[index]
                timeout=30,
                what="the doomed worker to hold both jobs",
            )
        finally:
            doomed.kill()
            doomed.communicate(timeout=30)
        for job_id in naps:  # they run short now, on the next worker
            app.store.jobs.update_one({"_id": job_id}, {"$set": {"params.seconds": 0.1}})
        survivor = start_remote(url, tmp_path, "survivor", "--types", "NapJob")
        try:
            wait_for(
                lambda: all(app.store.get_job(i)["status"] == "completed" for i in naps),  # type: ignore[index]
                timeout=LEASE * 10,
                what="the web process to rescue them and the survivor to run them",
            )
        finally:
            stop(survivor)
    for job_id in naps:
        doc = app.store.get_job(job_id)
        assert doc is not None and doc["attempts"] == 2 and doc["result"]["pid"] == survivor.pid


def test_the_client_pushes_reads_and_acts_as_its_role_allows(service: tuple[str, App]) -> None:
    url, _ = service
    with remote.connect(url, token_of("creator")) as creator:
        job_id = creator.push_named("EchoJob", {"echo": "hi"}, delay=3600, priority="high")
        job = creator.get(job_id)
        assert job is not None and job["status"] == "scheduled" and job["owner"] == "creator"
        assert [j["id"] for j in creator.find(type="EchoJob")] == [job_id]
        assert creator.cancel(job_id)["status"] == "cancelled"
        assert creator.get("6b16b79df59465c1914904f5") is None
    viewer = remote.connect(url, token_of("viewer"))
    with viewer, pytest.raises(remote.RemoteError, match="403: the viewer role cannot push"):
        viewer.push_named("EchoJob")
    worker = remote.connect(url, token_of("worker"))
    with worker, pytest.raises(remote.RemoteError, match="403"):
        worker.find()


def test_a_pushed_job_is_waited_for_and_its_result_read_over_http(
    service: tuple[str, App], tmp_path: Path
) -> None:
    url, _ = service
    with remote.connect(url, token_of("creator")) as client:
        echo = client.push_named("EchoJob", {"echo": "back"})
        with pytest.raises(TimeoutError, match=f"job {echo} did not finish within 0.2 s"):
            echo.wait(0.2)
        fatal = client.push_named("FlakyEchoJob", retry=0)  # its first attempt fails it
        worker = start_remote(url, tmp_path, "waited-for")
        try:
            assert echo.result(30)["echo"] == "back"
            with pytest.raises(workers.JobFailed, match="the first attempt fails"):
                fatal.result(30)
        finally:
            stop(worker)
        with pytest.raises(workers.JobNotFound):
            client.wait("6b16b79df59465c1914904f5", 1)


def test_the_client_follows_the_job_events_live(service: tuple[str, App]) -> None:
    url, _ = service
    seen: list[dict[str, Any]] = []
    done: list[str] = []
    with remote.connect(url, token_of("admin")) as client:

        def follow() -> None:
            for event in client.events(kinds=["completed"], types="EchoJob"):
                seen.append(event)
                return

        follower = threading.Thread(target=follow, daemon=True)
        follower.start()
        # the feed opens in the background: complete EchoJobs until it reports one
        wait_for(lambda: _complete_one(client, done) and bool(seen), timeout=30, what="an event")
        follower.join(timeout=10)
    assert seen[0]["kind"] == "completed" and seen[0]["type"] == "EchoJob"
    assert seen[0]["job_id"] in done
    viewer = remote.connect(url, token_of("viewer"))
    with viewer, pytest.raises(remote.RemoteError, match="422: events: nope is not an event"):
        next(iter(viewer.events(kinds="nope")))


def test_the_async_client_pushes_waits_acts_and_follows_events(
    service: tuple[str, App], tmp_path: Path
) -> None:
    url, _ = service

    async def scenario() -> tuple[Any, ...]:
        async with remote.connect_async(url, token_of("admin")) as client:
            feed = client.events(kinds="completed", types="EchoJob")
            first = asyncio.ensure_future(anext(feed))  # the feed opens while we push
            echo = await client.push(EchoJob(echo="async"))
            later = await client.push_named("EchoJob", {"echo": 2}, delay=3600)
            with pytest.raises(TimeoutError, match=r"did not finish within 0\.2 s"):
                await echo.wait(0.2)
            worker = start_remote(url, tmp_path, "async-fed", "--types", "EchoJob")
            try:
                result = await echo.result(30)
                event = await asyncio.wait_for(first, 30)
            finally:
                stop(worker)
            await feed.aclose()
            found = [job["id"] for job in await client.find(type="EchoJob", status="scheduled")]
            cancelled = (await client.cancel(later))["status"]
            missing = await client.get("6b16b79df59465c1914904f5")
        async with remote.connect_async(url, token_of("viewer")) as viewer:
            with pytest.raises(remote.RemoteError, match="403: the viewer role cannot push"):
                await viewer.push_named("EchoJob")
        return echo, later, result, event, found, cancelled, missing

    echo, later, result, event, found, cancelled, missing = asyncio.run(scenario())
    assert result["echo"] == "async"
    assert event["kind"] == "completed" and event["job_id"] == echo
    assert found == [later] and cancelled == "cancelled" and missing is None


def _complete_one(client: remote.Client, done: list[str]) -> bool:
    """Push an EchoJob, take it and complete it (its id joins `done`)."""
    client.push_named("EchoJob")
    answer = client.request("POST", "/api/work", json={"types": ["EchoJob"], "worker": "t"})
    for job in answer["jobs"]:
        client.request("POST", f"/api/work/{job['id']}/done", json={"token": job["token"]})
        done.append(job["id"])
    return True


def test_connect_names_what_is_missing(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(remote.URL_ENV, raising=False)
    with pytest.raises(workers.WorkersError, match="WORKERS_REMOTE__URL is not set"):
        remote.connect()
    with pytest.raises(workers.WorkersError, match="'ftp://x' is not an http"):
        remote.connect("ftp://x")
    empty = tmp_path / "empty"
    empty.write_text("")
    monkeypatch.setenv(remote.URL_ENV, "http://127.0.0.1:9")
    monkeypatch.setenv(remote.TOKEN_FILE_ENV, str(empty))
    with pytest.raises(workers.WorkersError, match=r"the token file .*empty is empty"):
        remote.connect()


def test_an_unreachable_service_is_retried_then_named(tmp_path: Path) -> None:
    client = remote.Client(f"http://127.0.0.1:{free_port()}", "t", retry_for=0.5)
    with pytest.raises(remote.Unreachable, match="ConnectError"):
        client.find()
    client.close()


def test_a_job_queue_pauses_resumes_and_hands_back_by_level(service: tuple[str, App]) -> None:
    url, app = service
    gate = threading.Event()
    seen: list[str] = []

    def handler(job: RemoteJob) -> str:
        seen.append(job.id)
        gate.wait(30)
        return "ok"

    with remote.connect(url, token_of("admin")) as client:
        ids = [client.push_named("EchoJob", {"echo": n}) for n in range(4)]
        queue: JobQueue = client.process_jobs("EchoJob", handler, concurrency=2, wait=1)
        wait_for(lambda: queue.running() == 2, timeout=30, what="two jobs running")
        assert queue.full() and not queue.idle()
        queue.pause()
        gate.set()
        wait_for(lambda: queue.idle(), timeout=30, what="the queue to go idle while paused")
        assert len(seen) == 2  # paused: no more taken
        queue.resume()
        wait_for(lambda: len(seen) == 4, timeout=30, what="the rest after resume")
        queue.shutdown("normal", timeout=30)
    statuses = [app.store.get_job(i)["status"] for i in ids]  # type: ignore[index]
    assert statuses == ["completed"] * 4


NODE, CURL, JQ = shutil.which("node"), shutil.which("curl"), shutil.which("jq")
EXAMPLES = Path(__file__).parent.parent / "examples"


@pytest.mark.skipif(NODE is None, reason="node (Node.js 18+) is not installed on this machine")
def test_a_worker_in_node_with_fetch_alone_runs_jobs(service: tuple[str, App]) -> None:
    url, app = service
    with remote.connect(url, token_of("admin")) as client:
        ids = [client.push_named("EchoJob", {"echo": n}) for n in range(5)]
    env = {**workers_env(), "WORKERS_URL": url, "WORKERS_TOKEN": token_of("worker")}
    command = [str(NODE), str(EXAMPLES / "remote-node" / "worker.mjs"), "EchoJob"]
    worker = subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        wait_for(
            lambda: all(app.store.get_job(i)["status"] == "completed" for i in ids),  # type: ignore[index]
            timeout=60,
            what="the node worker to run every job",
        )
    finally:
        said = stop(worker)
    assert worker.returncode == 0 and "stopped" in said, said
    for n, job_id in enumerate(ids):
        doc = app.store.get_job(job_id)
        assert doc is not None and doc["result"] == {
            "echo": n, "pid": worker.pid, "attempt": 1, "by": "node"
        }  # fmt: skip
        assert doc["progress"]["percent"] == 50.0
        assert any(entry["message"] == "echoing from node" for entry in doc["log"])


@pytest.mark.skipif(CURL is None or JQ is None, reason="curl and jq are not both installed")
def test_curl_takes_and_completes_one_job(service: tuple[str, App], tmp_path: Path) -> None:
    url, app = service
    with remote.connect(url, token_of("admin")) as client:
        job_id = client.push_named("EchoJob", {"echo": "curl"})
    env = {**workers_env(), "WORKERS_URL": url, "WORKERS_TOKEN": token_of("worker")}
    script = EXAMPLES / "remote-curl.sh"
    done = subprocess.run(["sh", str(script), "EchoJob"], env=env, capture_output=True,
                          text=True, timeout=60, cwd=tmp_path)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert '{"status":"completed"}' in done.stdout
    doc = app.store.get_job(job_id)
    assert doc is not None and doc["result"] == {"by": "curl"} and doc["progress"]["percent"] == 100
