"""`workers push` and `workers jobs ...`, run as a user runs them (the installed script)."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import run_workers, workers_command, workers_env


def cli(settings: Path, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    if stdin is None:
        return run_workers(*args, "--settings", str(settings), cwd=settings.parent)
    return subprocess.run(
        workers_command(*args, "--settings", str(settings)),
        cwd=settings.parent,
        env=workers_env(),
        input=stdin,
        capture_output=True,
        text=True,
        timeout=90,
    )


def pushed(settings: Path, *args: str) -> str:
    done = cli(settings, "push", *args)
    assert done.returncode == 0, done.stderr
    return str(json.loads(done.stdout)["id"])


@pytest.mark.slow
@pytest.mark.processes
def test_push_then_list_and_show_the_job(settings_file: Callable[..., Path], db: Any) -> None:
    settings = settings_file()
    job_id = pushed(
        settings,
        "RecordJob",
        "--params",
        '{"echo": "cli"}',
        "--priority",
        "high",
        "--after",
        "in 1 hour",
    )
    doc = db["workers.jobs"].find_one({"_id": job_id})
    assert (doc["params"], doc["priority"], doc["status"]) == ({"echo": "cli"}, -10, "scheduled")
    listed = cli(settings, "jobs", "ls", "--type", "RecordJob", "--json")
    assert [json.loads(line)["_id"] for line in listed.stdout.splitlines()] == [job_id]
    table = cli(settings, "jobs", "ls")
    assert job_id in table.stdout and "RecordJob" in table.stdout
    shown = cli(settings, "jobs", "show", job_id)
    assert shown.returncode == 0 and "RecordJob" in shown.stdout and '"echo": "cli"' in shown.stdout


@pytest.mark.slow
@pytest.mark.processes
def test_an_action_by_id_and_a_refusal_with_its_reason(
    settings_file: Callable[..., Path], db: Any
) -> None:
    settings = settings_file()
    job_id = pushed(settings, "RecordJob", "--delay", "3600")
    done = cli(settings, "jobs", "cancel", job_id)
    assert done.returncode == 0 and "1 changed" in done.stdout
    again = cli(settings, "jobs", "pause", job_id)
    assert again.returncode == 1
    assert (
        f"refused {job_id}: it is cancelled; pause needs ready or scheduled or waiting"
        in again.stderr
    )
    assert db["workers.jobs"].find_one({"_id": job_id})["status"] == "cancelled"


@pytest.mark.processes
@pytest.mark.slow
def test_a_bulk_action_by_filter_asks_first_unless_yes(
    settings_file: Callable[..., Path], db: Any
) -> None:
    settings = settings_file()
    for n in range(3):
        pushed(settings, "RecordJob", "--params", json.dumps({"n": n}), "--delay", "3600")
    declined = cli(settings, "jobs", "pause", "--status", "scheduled", stdin="n\n")
    assert declined.returncode == 1 and "pause 3 jobs? [y/N]" in declined.stdout
    assert db["workers.jobs"].count_documents({"status": "paused"}) == 0
    accepted = cli(settings, "jobs", "pause", "--status", "scheduled", stdin="y\n")
    assert accepted.returncode == 0 and "3 changed" in accepted.stdout
    done = cli(settings, "jobs", "cancel", "--type", "RecordJob", "--yes", "--json")
    assert len(json.loads(done.stdout)["changed"]) == 3


@pytest.mark.processes
@pytest.mark.slow
def test_bad_input_is_refused_with_the_reason(settings_file: Callable[..., Path], db: Any) -> None:
    settings = settings_file()
    for args, said in (
        (("push", "NoSuchJob"), "no registered job class 'NoSuchJob'"),
        (("push", "RecordJob", "--params", "{nope"), "--params is not JSON"),
        (("push", "RecordJob", "--after", "someday"), "after='someday' is neither"),
        (("jobs", "cancel"), "give the ids of the jobs, or --type/--status"),
        (("jobs", "show", "0123456789abcdef01234567"), "no job 0123456789abcdef01234567"),
    ):
        done = cli(settings, *args)
        assert done.returncode != 0 and said in done.stderr, (args, done.stderr)
    assert db["workers.jobs"].count_documents({}) == 0


@pytest.mark.slow
@pytest.mark.processes
def test_workers_status_reads_the_shared_counts_while_they_are_recent(
    settings_file: Callable[..., Path], app: Any, db: Any
) -> None:
    """One document read, not every job counted: the snapshot the dashboard and /metrics
    share, while younger than a minute; an older one is counted again, and shared."""
    app.store.save_counts({("ready", "RecordJob"): 42}, took=0.5)  # no such jobs: a marker
    settings = settings_file()

    recent = json.loads(cli(settings, "status", "--json").stdout)
    db["workers.metrics"].update_one(
        {"_id": "counts"}, {"$set": {"at": datetime.now(UTC) - timedelta(hours=1)}}
    )
    counted = json.loads(cli(settings, "status", "--json").stdout)

    assert recent["jobs"] == {"ready": 42} and recent["counted_seconds_ago"] < 60
    assert counted["jobs"] == {} and counted["counted_seconds_ago"] == 0
    assert app.store.recent_counts(60) == ({}, pytest.approx(0, abs=5))
