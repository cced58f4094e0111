"""The embedded default: no MONGO_URL, no mongo.url -> a local SecantusDB shared by the folder."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pymongo
import pytest

from tests.conftest import (
    free_port,
    listening,
    run_command,
    run_workers,
    wait_for,
    workers_command,
    workers_env,
)
from tests.headless_node import HeadlessNode, alive, descendants, supervisord_of
from workers import embedded

PUSH = """
from tests.jobs import RecordJob
from workers import Job
print(Job.push(RecordJob(echo="from the web process")))
"""


def read_json(path: Path) -> Any:
    """The file's JSON, or None while it is absent or half-written (no check-then-read)."""
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def status(cwd: Path) -> dict[str, int]:
    done = run_workers("status", "--json", cwd=cwd)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)["jobs"]  # type: ignore[no-any-return]


@pytest.mark.processes
@pytest.mark.slow
def test_web_and_headless_processes_of_one_folder_share_one_embedded_server(tmp_path: Path) -> None:
    (tmp_path / "settings.json").write_text(
        json.dumps(
            {
                "jobs": ["tests.jobs"],
                "cluster": {"count": 1},
                "workers": {"count": 2, "queue": {"poll_interval": 0.1}},
            }
        )
    )
    state_file = tmp_path / ".workers" / "db" / "server.json"
    with HeadlessNode(tmp_path / "settings.json", tmp_path) as node:
        state = wait_for(
            lambda: (state := read_json(state_file)) and "pid" in state and state,
            timeout=60,
            what="the embedded server to start",
        )
        pushed = run_command([sys.executable, "-c", PUSH], cwd=tmp_path)
        assert pushed.returncode == 0, pushed.stderr
        assert "started the embedded server" not in pushed.stderr  # only its starter says so
        with pymongo.MongoClient(
            f"mongodb://127.0.0.1:{state['port']}/?directConnection=true"
        ) as raw:
            jobs = raw["app"]["workers.jobs"]
            wait_for(
                lambda: jobs.count_documents({"status": "completed"}) == 1,
                timeout=60,
                what="the headless node to run the web process's job",
            )
        assert alive(state["pid"])  # the web process left; the headless node still uses it
        assert node.stop() == 0
        assert "started the embedded server on 127.0.0.1:" in node.output()
    assert "pid" not in read_json(state_file)  # the last user stopped it (the port is kept)
    assert not alive(state["pid"])
    # the data folder survives: a new server on the same folder still has the job
    assert status(tmp_path) == {"completed": 1}
    assert (tmp_path / ".workers" / "db" / "data").is_dir()


@pytest.mark.processes
@pytest.mark.slow
def test_a_command_leaves_the_server_it_started_for_the_next_one(tmp_path: Path) -> None:
    folder = tmp_path / ".workers" / "db"
    first = run_workers("status", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert "it stays up for the next command: `workers db stop` stops it" in first.stderr
    started = embedded.status(folder)
    assert started is not None and alive(started["pid"])
    try:
        again = run_workers("jobs", "ls", cwd=tmp_path)
        assert again.returncode == 0, again.stderr
        assert "started the embedded server" not in again.stderr  # the same server, reused
        assert embedded.status(folder) == started
    finally:
        assert run_workers("db", "stop", cwd=tmp_path).stdout.strip() == "stopped"
    assert not alive(started["pid"])


@pytest.mark.slow
@pytest.mark.processes
def test_db_stop_stops_a_server_left_running(tmp_path: Path) -> None:
    folder = tmp_path / ".workers" / "db"

    server = embedded.acquire(folder, announce=False)
    try:
        assert embedded.status(folder) == {
            "pid": server.pid,
            "port": int(server.url.split(":")[2].split("/")[0]),
        }
        done = run_workers("db", "stop", cwd=tmp_path)
        assert done.stdout.strip() == "stopped"
        assert embedded.status(folder) is None and not alive(server.pid)
    finally:
        server.release()


def _server_cpus(pid: int) -> list[set[int]]:
    return [os.sched_getaffinity(int(thread)) for thread in os.listdir(f"/proc/{pid}/task")]


@pytest.mark.slow
@pytest.mark.skipif(
    len(os.sched_getaffinity(0)) < 2, reason="keeping the server on one CPU needs two"
)
@pytest.mark.parametrize("one_cpu", [True, False], ids=["kept on one", "left free"])
def test_the_embedded_server_is_kept_on_one_cpu_and_this_process_is_not(
    tmp_path: Path, one_cpu: bool
) -> None:
    cpus = os.sched_getaffinity(0)
    server = embedded.acquire(tmp_path / "db", announce=False, one_cpu=one_cpu)
    try:
        # A thread the server starts for a new connection is kept there too
        with pymongo.MongoClient(server.url, serverSelectionTimeoutMS=10_000) as client:
            client.admin.command("ping")
            expected = {max(cpus)} if one_cpu else cpus
            assert _server_cpus(server.pid) and all(
                threads == expected for threads in _server_cpus(server.pid)
            )
        assert os.sched_getaffinity(0) == cpus
    finally:
        server.release()


@pytest.mark.slow
def test_a_forked_child_never_stops_the_server_under_its_parent(tmp_path: Path) -> None:
    folder = tmp_path / "db"
    server = embedded.acquire(folder, announce=False)
    try:
        child = os.fork()
        if child == 0:  # gunicorn --preload: a worker forked after the app booted exits
            os._exit(0 if server.release() is False else 1)
        _, code = os.waitpid(child, 0)
        assert os.waitstatus_to_exitcode(code) == 0, "the child's release stopped the server"
        assert alive(server.pid)
    finally:
        assert server.release() is True  # the parent is the last user: it stops it
    assert not alive(server.pid)


@pytest.mark.slow
def test_a_restarted_server_comes_back_on_the_port_running_processes_know(tmp_path: Path) -> None:
    folder = tmp_path / "db"
    first = embedded.acquire(folder, announce=False)
    port = first.url
    embedded.stop(folder)  # the server dies under its users (workers db stop, a crash)
    first.release()
    again = embedded.acquire(folder, announce=False)
    try:
        assert again.url == port and again.pid != first.pid
    finally:
        again.release()


@pytest.mark.slow
def test_a_port_taken_by_another_program_is_not_mistaken_for_the_server(tmp_path: Path) -> None:
    folder = tmp_path / "db"
    first = embedded.acquire(folder, announce=False)
    taken = int(first.url.split(":")[2].split("/")[0])
    embedded.stop(folder)
    first.release()
    with socket.socket() as squatter:  # another program listens on the server's last port
        squatter.bind(("127.0.0.1", taken))
        squatter.listen()
        server = embedded.acquire(folder, announce=False)
        try:
            assert f":{taken}/" not in server.url
            with pymongo.MongoClient(server.url, serverSelectionTimeoutMS=5000) as client:
                assert client.admin.command("ping")["ok"] == 1
        finally:
            server.release()


PUSH_LONG = """
from tests.jobs import SleepJob
from workers import Job
print(Job.push(SleepJob(name="long", seconds=60)))
"""


@pytest.mark.processes
@pytest.mark.slow
def test_the_embedded_server_outlives_workers_handing_jobs_back_after_supervisord_died(
    tmp_path: Path,
) -> None:
    (tmp_path / "settings.json").write_text(
        json.dumps(
            {
                "jobs": ["tests.jobs"],
                "cluster": {"count": 1},
                "workers": {"count": 1, "shutdown": {"grace": 1}},
            }
        )
    )
    with HeadlessNode(tmp_path / "settings.json", tmp_path) as node:
        pushed = run_command([sys.executable, "-c", PUSH_LONG], cwd=tmp_path)
        assert pushed.returncode == 0, pushed.stderr
        job_id = pushed.stdout.strip()
        state_file = tmp_path / ".workers" / "db" / "server.json"
        state = wait_for(lambda: (state := read_json(state_file)) and "pid" in state and state,
                         timeout=60, what="the embedded server")  # fmt: skip
        url = f"mongodb://127.0.0.1:{state['port']}/?directConnection=true"
        with pymongo.MongoClient(url) as raw:
            jobs = raw["app"]["workers.jobs"]
            wait_for(lambda: jobs.find_one({"_id": job_id, "status": "running"}),
                     timeout=60, what="the long job to start")  # fmt: skip
        assert node.process is not None
        supervisord = supervisord_of(node.process.pid)
        workers = descendants(supervisord)
        os.kill(supervisord, signal.SIGKILL)  # headless then exits and lets go of the server
        node.process.wait(timeout=30)
        wait_for(lambda: not any(alive(p) for p in workers), timeout=30, what="workers to exit")
    # the worker handed the job back before the server stopped (the data says so)
    server = embedded.acquire(tmp_path / ".workers" / "db", announce=False)
    try:
        with pymongo.MongoClient(server.url) as raw:
            doc = raw["app"]["workers.jobs"].find_one({"_id": job_id})
    finally:
        server.release()
    assert doc is not None and doc["status"] == "ready", doc and doc["status"]
    assert doc["log"][-1]["message"].startswith("handed back by")


@pytest.mark.slow
@pytest.mark.processes
def test_workers_web_stopped_by_sigterm_stops_the_server_it_started(tmp_path: Path) -> None:
    state_file = tmp_path / ".workers" / "db" / "server.json"
    port = free_port()
    command = workers_command("web", "--port", str(port))
    web = subprocess.Popen(command, cwd=tmp_path, env=workers_env(), stdout=subprocess.PIPE)
    try:
        state = wait_for(
            lambda: (state := read_json(state_file)) and "pid" in state and state,
            timeout=60,
            what="the embedded server to start",
        )
        wait_for(lambda: listening(port), timeout=60, what="workers web to listen")
        web.send_signal(signal.SIGTERM)
        assert web.wait(timeout=30) == 0
    finally:
        web.kill()
        web.communicate()
        left = read_json(state_file)
        run_workers("db", "stop", cwd=tmp_path)  # a failing test leaves no server behind
    assert "pid" not in left
    assert not alive(state["pid"])
