"""Headless mode: real processes under supervisord, against the real server."""

from __future__ import annotations

import json
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT, run_command, run_workers, wait_for, workers_command, workers_env
from tests.headless_node import HeadlessNode, alive, descendants, supervisord_of
from tests.jobs import RecordJob, SleepJob
from workers import Job, boot, shutdown
from workers.headless import render_config
from workers.settings import validate
from workers.store import new_id


def completed(db: Any) -> int:
    return int(db["workers.jobs"].count_documents({"status": "completed"}))


@pytest.mark.processes
@pytest.mark.slow
def test_two_processes_by_three_threads_run_200_jobs_exactly_once(
    settings_file: Callable[..., Path], tmp_path: Path, db: Any
) -> None:
    path = settings_file(cluster__count=2, workers__count=3)
    boot(str(path))
    try:
        ids = {Job.push(RecordJob(n=n)) for n in range(200)}
    finally:
        shutdown()
    with HeadlessNode(path, tmp_path) as node:
        wait_for(lambda: completed(db) == 200, timeout=120, what="200 completed jobs")
        assert node.stop(signal.SIGTERM) == 0
        output = node.output()
    executions = list(db.executions.find())
    assert len(executions) == 200
    assert {e["job_id"] for e in executions} == ids
    pids = {e["pid"] for e in executions}
    assert 1 <= len(pids) <= 2
    assert output.count("worker started") == 2 and output.count("threads=3") == 2
    assert "spawned:" not in output and "Set uid to user" not in output  # supervisord's noise
    assert not any(alive(pid) for pid in pids)


@pytest.mark.processes
@pytest.mark.slow
def test_a_crashed_worker_process_is_restarted_by_supervisor(
    settings_file: Callable[..., Path], tmp_path: Path, db: Any
) -> None:
    path = settings_file(cluster__count=1, workers__count=1)
    with HeadlessNode(path, tmp_path) as node:
        boot(str(path))
        try:
            Job.push(RecordJob())
            wait_for(lambda: completed(db) == 1, timeout=60, what="the first job")
            first_pid = db.executions.find_one()["pid"]
            os.kill(first_pid, signal.SIGKILL)
            wait_for(lambda: not alive(first_pid), timeout=10, what="the worker to die")
            Job.push(RecordJob())
            wait_for(lambda: completed(db) == 2, timeout=60, what="a job on the restarted worker")
        finally:
            shutdown()
        status = run_workers("status", "--settings", str(path), cwd=tmp_path).stdout.splitlines()
        assert status[0] == "jobs: 2 completed"
        live = db.executions.find_one(sort=[("server_time", -1)])["pid"]
        (line,) = [x for x in status[1:] if f":{live}:" in x]  # the killed one is listed too
        assert line.startswith("node ") and "(running): 0/1 threads busy, runs every type (" in line
        assert node.stop(signal.SIGINT) == 0  # Ctrl-C stops it as cleanly as TERM
        output = node.output()
    pids = [e["pid"] for e in db.executions.find().sort("server_time", 1)]
    assert pids[0] == first_pid and pids[1] != first_pid
    assert "exited: workers-00 (terminated by SIGKILL" in output, output[-3000:]


@pytest.mark.processes
def test_web_mode_boots_and_runs_no_job(
    settings_file: Callable[..., Path], tmp_path: Path, db: Any
) -> None:
    path = settings_file()
    boot(str(path))
    try:
        job_id = Job.push(RecordJob())
    finally:
        shutdown()
    done = run_workers("--settings", str(path), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "web mode" in done.stdout and "RecordJob" in done.stdout
    assert db["workers.jobs"].find_one({"_id": job_id})["status"] == "ready"
    assert "claim_queue" in db["workers.jobs"].index_information()


@pytest.mark.processes
@pytest.mark.slow
def test_the_example_app_pushes_in_web_mode_and_runs_in_headless_mode(
    settings_file: Callable[..., Path], tmp_path: Path, db: Any
) -> None:
    path = settings_file(jobs=["app_jobs"], cluster__count=1, workers__count=3)
    command = [sys.executable, "-m", "app_jobs", "--settings", str(path)]
    env = workers_env()
    pushed = run_command(command, cwd=ROOT, env=env)
    assert pushed.returncode == 0, pushed.stderr
    assert "pushed 5 example jobs" in pushed.stdout
    jobs = db["workers.jobs"]
    assert jobs.count_documents({"status": {"$in": ["ready", "scheduled"]}}) == 5
    with HeadlessNode(path, ROOT, *command, "--headless", env=env, log_dir=tmp_path) as node:
        wait_for(
            lambda: jobs.count_documents({"status": {"$in": ["completed", "failed"]}}) == 5,
            timeout=60,
            what="the five example jobs to finish",
        )
        assert node.stop() == 0
        output = node.output()
    by_type = {(d["type"], d["params"].get("project_id")): d for d in jobs.find()}
    assert by_type[("FlakyJob", None)]["status"] == "completed"
    assert by_type[("FlakyJob", None)]["attempts"] == 3
    assert by_type[("AlwaysFailsJob", None)]["status"] == "failed"
    assert by_type[("AlwaysFailsJob", None)]["attempts"] == 3
    assert by_type[("LoadRetentionJob", "missing")]["error"]["message"].startswith(
        "Project not found"
    )
    assert "AlwaysFailsJob: after_job saw RuntimeError" in output


def test_the_supervisord_config_follows_the_settings(tmp_path: Path) -> None:
    settings = validate(
        {"cluster": {"count": 3}, "workers": {"shutdown": {"grace": 12.5}}},
        source=str(tmp_path / "100%" / "settings.json"),
    )
    config = render_config(settings, tmp_path / "run", python="/opt/py 3/bin/python")
    assert "numprocs=3" in config
    assert "stopsignal=TERM" in config and "stopwaitsecs=28" in config  # 12.5 + 10 + 5
    assert "autorestart=unexpected" in config and "exitcodes=78" in config
    assert "command='/opt/py 3/bin/python' -m workers worker" in config
    assert "100%%" in config  # supervisor expands %(...)s: a literal % must be doubled
    assert "MONGO_URL" not in config  # secrets stay in the environment


@pytest.mark.slow
@pytest.mark.processes
def test_a_second_term_to_the_headless_process_makes_the_shutdown_hard(
    settings_file: Callable[..., Path], tmp_path: Path, db: Any
) -> None:
    path = settings_file(workers__count=1, workers__shutdown={"level": "normal", "grace": 120})
    with HeadlessNode(path, tmp_path) as node:
        boot(str(path))
        try:
            job_id = Job.push(SleepJob(name="long", seconds=60))
        finally:
            shutdown()
        wait_for(lambda: db.executions.find_one({"phase": "start"}), timeout=60, what="a start")
        assert node.process is not None
        node.process.send_signal(signal.SIGTERM)  # normal: would wait for the 60 s job
        wait_for(lambda: "stopping" in node.output() or "waiting for" in node.output(),
                 timeout=20, what="supervisord to start stopping")  # fmt: skip
        assert node.stop(signal.SIGTERM, timeout=60) == 0  # the second one: hard
    doc = db["workers.jobs"].find_one({"_id": job_id})
    assert doc["status"] == "ready", "the running job should have been handed back"
    assert doc["log"][-1]["message"].startswith("handed back by")
    assert "shutdown (hard)" in doc["log"][-1]["message"]


@pytest.mark.slow
@pytest.mark.processes
def test_a_worker_that_cannot_boot_makes_headless_exit_non_zero_with_the_reason(
    settings_file: Callable[..., Path], tmp_path: Path, db: Any
) -> None:
    # an index of ours with other keys: ensure_indexes fails in every worker, every time
    db["workers.jobs"].create_index([("status", -1)], name="claim_queue")
    path = settings_file(cluster__count=2)
    with HeadlessNode(path, tmp_path) as node:
        assert node.process is not None
        code = node.process.wait(timeout=90)
        output = node.output()
    assert code == 1, output[-2000:]
    assert "workers: error: a worker process could not boot:" in output
    assert "claim_queue" in output


@pytest.mark.slow
@pytest.mark.processes
@pytest.mark.parametrize("killed", ["supervisord", "workers --headless"])
def test_a_node_whose_supervising_process_is_killed_leaves_no_orphans(
    settings_file: Callable[..., Path], tmp_path: Path, db: Any, killed: str
) -> None:
    path = settings_file(cluster__count=2, workers__count=1)
    with HeadlessNode(path, tmp_path) as node:
        assert node.process is not None
        wait_for(lambda: db["workers.nodes"].count_documents({}) == 2, timeout=60, what="2 nodes")
        supervisord = supervisord_of(node.process.pid)
        tree = descendants(node.process.pid)
        assert len(tree) >= 3  # supervisord and two workers
        os.kill(supervisord if killed == "supervisord" else node.process.pid, signal.SIGKILL)
        wait_for(lambda: not any(alive(p) for p in tree), timeout=30, what="the tree to exit")
        node.process.wait(timeout=30)


HELLO_JOBS = """
from workers import Job


class HelloJob(Job):
    @classmethod
    def setup_cron(cls):
        return "0 3 * * *"

    def handle_job(self):
        return "hello from " + __name__
"""


@pytest.mark.processes
@pytest.mark.slow
def test_the_installed_script_imports_the_jobs_package_beside_the_settings(
    tmp_path: Path, mongo_url: str, db_name: str, db: Any, make_settings: Callable[..., Any]
) -> None:
    # Given a project folder of a user's own: a jobs package and settings.json naming it
    project = tmp_path / "project"
    (project / "myjobs").mkdir(parents=True)
    (project / "myjobs" / "__init__.py").write_text(HELLO_JOBS)
    settings = {"mongo": {"url": mongo_url, "database": db_name}, "jobs": ["myjobs"],
                "cluster": {"count": 1}, "workers": {"count": 1}}  # fmt: skip
    (project / "settings.json").write_text(json.dumps(settings))
    # When the installed `workers` script runs there, or elsewhere naming that settings file
    here = run_workers("cron", cwd=project)
    elsewhere = run_workers("cron", "--settings", str(project / "settings.json"), cwd=tmp_path)
    # Then the package is found both ways
    for done in (here, elsewhere):
        assert done.returncode == 0, done.stderr
        assert "HelloJob  '0 3 * * *'" in done.stdout
    with HeadlessNode(project / "settings.json", project, *workers_command("--headless")):
        app = boot(settings=make_settings())  # this test's own app pushes the user's job type
        try:
            job_id, _ = app.store.push_job(app.job_document(new_id(), "HelloJob", {}))
        finally:
            shutdown()
        done_doc = wait_for(
            lambda: db["workers.jobs"].find_one({"_id": job_id, "status": "completed"}),
            timeout=60,
            what="HelloJob to run in the user's project",
        )
    assert done_doc["result"] == "hello from myjobs"


@pytest.mark.processes
@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (
            {"jobs": ["tests.badjobs.no_job_classes"]},
            "the jobs package tests.badjobs.no_job_classes defines no class whose name ends "
            "in Job; found Helper, ReportTask (a workers.Job: rename it ReportJob)",
        ),
        (
            {"workers__types__include": ["RecordJob"], "workers__types__exclude": ["RecordJob"]},
            "workers.types leaves this node no job type to run",
        ),
    ],
    ids=["no *Job class", "every type excluded"],
)
def test_a_node_with_no_type_to_run_exits_1_naming_why_without_restarting(
    settings_file: Callable[..., Path],
    tmp_path: Path,
    db: Any,
    overrides: dict[str, Any],
    expected: str,
) -> None:
    path = settings_file(**overrides)
    with HeadlessNode(path, tmp_path) as node:
        assert node.process is not None
        code = node.process.wait(timeout=60)
        output = node.output()
    assert code == 1, output[-2000:]
    assert output.count(expected) == 1, output[-2000:]
    assert "Traceback" not in output
