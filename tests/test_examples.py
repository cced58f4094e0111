"""The framework examples (examples/), each started as its folder says, with a headless
node beside it: a job pushed through the app's route runs, and the route reads its result."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT, free_port, wait_for, workers_command, workers_env
from tests.headless_node import HeadlessNode

EXAMPLES = ROOT / "examples"


def serve_command(example: str, port: int) -> list[str]:
    return {
        "fastapi_app": [sys.executable, "-m", "uvicorn", "app:app", "--port", str(port)],
        "flask_app": [sys.executable, "-m", "flask", "--app", "app", "run", "--port", str(port)],
        "django_app": [sys.executable, "manage.py", "runserver", "--noreload", f"127.0.0.1:{port}"],
    }[example]


def headless_command(example: str) -> list[str]:
    if example == "django_app":  # the management command, as Django users run it
        return [sys.executable, "manage.py", "workers", "--headless"]
    return workers_command("--headless")


def call(url: str, method: str = "GET") -> Any:
    request = urllib.request.Request(url, method=method, data=b"" if method == "POST" else None)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read())
    except OSError:  # not listening yet
        return None


def status_of(url: str, headers: dict[str, str] | None = None) -> int:
    """The HTTP status of a GET (an error status too, not an exception)."""
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code


@pytest.mark.slow
@pytest.mark.processes
@pytest.mark.parametrize("example", ["fastapi_app", "flask_app", "django_app"])
def test_a_job_pushed_through_the_app_runs_and_its_result_comes_back(
    example: str, tmp_path: Path, mongo_url: str, db_name: str, db: Any
) -> None:
    folder = shutil.copytree(EXAMPLES / example, tmp_path / example)
    env = workers_env(
        WORKERS_MONGO__URL=mongo_url, WORKERS_MONGO__DATABASE=db_name, DASHBOARD_PASSWORD="s3cret"
    )
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    web = subprocess.Popen(serve_command(example, port), cwd=folder, env=env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    node = HeadlessNode(folder / "settings.json", folder, *headless_command(example), env=env)
    try:
        with node:
            pushed = wait_for(lambda: call(f"{base}/reports/acme", "POST"), timeout=60,
                              what=f"{example} to take a push")  # fmt: skip
            path = "status" if example == "django_app" else ""
            url = f"{base}/reports/{pushed['id']}/{path}".rstrip("/")
            done = wait_for(lambda: _completed(call(url)), timeout=60, what="the report")
            if example == "fastapi_app":
                waited = call(f"{base}/reports/{pushed['id']}/wait")
                unknown = [status_of(f"{base}/reports/{'0' * 24}{end}") for end in ("", "/wait")]
                login = "Basic " + base64.b64encode(b"admin:s3cret").decode()
                dashboard = status_of(f"{base}/workers/", {"Authorization": login})
                # a client on this machine gets in with the password only
                refused = status_of(f"{base}/workers/api/stats")
                wrong = "Basic " + base64.b64encode(b"admin:guess").decode()
                refused_wrong = status_of(f"{base}/workers/api/stats", {"Authorization": wrong})
            assert node.stop() == 0, node.output()
    finally:
        web.terminate()
        web.wait(timeout=30)
    assert done["result"]["rows"] == 40
    assert db["workers.jobs"].count_documents({"type": "ReportJob", "status": "completed"}) == 1
    if example == "fastapi_app":
        assert waited == {"result": done["result"]}
        assert unknown == [404, 404]  # an unknown id is not a 500
        assert dashboard == 200 and refused == refused_wrong == 401
    if example == "django_app":
        assert done["result"]["debug"] is True  # the job ran with Django set up


def _completed(answer: Any) -> Any:
    return answer if answer and answer.get("status") == "completed" else None
