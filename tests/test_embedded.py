"""The embedded default: no MONGO_URL, no mongo.url -> a local SecantusDB shared by the folder."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pymongo

from tests.conftest import run_command, run_workers, wait_for
from tests.headless_node import HeadlessNode, alive

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
    done = run_workers("status", cwd=cwd)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[0])  # type: ignore[no-any-return]


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
            lambda: read_json(state_file),
            timeout=60,
            what="the embedded server to start",
        )
        pushed = run_command([sys.executable, "-c", PUSH], cwd=tmp_path)
        assert pushed.returncode == 0, pushed.stderr
        assert (
            f"using the embedded SecantusDB server at mongodb://127.0.0.1:{state['port']}"
            in pushed.stderr
        )
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
        assert "started the embedded SecantusDB server" in node.output()
    assert not state_file.exists()  # the last user stopped it
    assert not alive(state["pid"])
    # the data folder survives: a new server on the same folder still has the job
    assert status(tmp_path) == {"completed": 1}
    assert (tmp_path / ".workers" / "db" / "data").is_dir()


def test_db_stop_stops_a_server_left_running(tmp_path: Path) -> None:
    folder = tmp_path / ".workers" / "db"
    from workers import embedded

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
