"""A rolling deploy: version-1 nodes run; jobs of a type only version 2 has are pushed and
wait; a version-2 node starts and the version-1 nodes get TERM one by one. Nothing is lost
or run twice, the new type runs only on version 2, no cron tick fires twice, and the
changed schedule takes effect once version 2 leads."""

from __future__ import annotations

import collections
import json
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

import workers
from tests.conftest import settings_dict, wait_for, workers_env
from tests.headless_node import HeadlessNode
from tests.netjobs import OUT_ENV, notes
from workers.app import App
from workers.settings import validate

WORK, NEW = 40, 10


def node_folder(tmp_path: Path, name: str, raw: dict[str, Any]) -> Path:
    folder = tmp_path / name
    folder.mkdir()
    path = folder / "settings.json"
    path.write_text(json.dumps(raw))
    return path


def ticks(app: App) -> list[datetime]:
    return sorted(
        datetime.fromisoformat(doc["params"]["tick"].replace("Z", "+00:00"))
        for doc in app.store.jobs.find({"type": "TickJob"})
    )


def done(app: App, job_type: str) -> int:
    return int(app.store.jobs.count_documents({"type": job_type, "status": "completed"}))


@pytest.mark.processes
@pytest.mark.slow
def test_a_rolling_deploy_loses_nothing_and_hands_cron_to_the_new_version(
    mongo_url: str, db_name: str, db: Any, tmp_path: Path
) -> None:
    out = tmp_path / "notes"
    out.mkdir()
    env = workers_env(**{OUT_ENV: str(out)})
    queue = {"lease": 4, "poll_interval": 0.05}
    settings: Callable[[str], dict[str, Any]] = lambda package: settings_dict(  # noqa: E731
        mongo_url, db_name, jobs=[package], workers__count=2, workers__queue=queue
    )
    old_a = HeadlessNode(node_folder(tmp_path, "v1-a", settings("tests.rolling_v1")), tmp_path,
                         env=env)  # fmt: skip
    old_b = HeadlessNode(node_folder(tmp_path, "v1-b", settings("tests.rolling_v1")), tmp_path,
                         env=env)  # fmt: skip
    new = HeadlessNode(node_folder(tmp_path, "v2", settings("tests.rolling_v2")), tmp_path,
                       env=env)  # fmt: skip
    app = workers.boot(settings=validate(settings("tests.rolling_v2")))  # the app: version 2
    try:
        with old_a, old_b:
            work = [app.push_named("WorkJob", {"seconds": 0.2}) for _ in range(WORK)]
            waiting = [app.push_named("NewJob", {"seconds": 0.2}) for _ in range(NEW)]
            wait_for(lambda: done(app, "WorkJob") >= 10, timeout=60, what="version 1 at work")
            wait_for(lambda: len(ticks(app)) >= 3, timeout=60, what="version 1's cron")
            statuses = {doc["status"] for doc in app.store.jobs.find({"type": "NewJob"})}
            assert statuses == {"ready"}  # waiting for a node that has NewJob
            new_started = app.store.now()
            with new:
                wait_for(lambda: _beating(app, "NewJob"), timeout=60, what="version 2's worker")
                assert old_a.stop() == 0  # TERM, one by one, as a rollout does
                assert old_b.stop() == 0
                wait_for(lambda: done(app, "WorkJob") == WORK and done(app, "NewJob") == NEW,
                         timeout=90, what="every job")  # fmt: skip
                leader = wait_for(lambda: _led_by_new(app), timeout=60, what="version 2 to lead")
                since = leader["since"]
                wait_for(lambda: sum(t > since for t in ticks(app)) >= 4, timeout=60,
                         what="version 2's ticks")  # fmt: skip
                assert new.stop() == 0
        fired = ticks(app)
    finally:
        workers.shutdown()

    runs = collections.defaultdict(list)
    outcomes = collections.Counter()
    for line in notes(out):
        if line["event"] == "start":
            runs[line["job"]].append(line["version"])
        elif line["error"] is None:
            outcomes[line["job"]] += 1
    # nothing lost, nothing run twice, across the changeover
    assert sorted(runs) == sorted(map(str, work + waiting))
    assert all(len(versions) == 1 for versions in runs.values())
    assert set(outcomes.values()) == {1} and len(outcomes) == WORK + NEW
    # the new type ran on version 2 only; the old nodes ran work before they stopped
    assert {runs[str(job)][0] for job in waiting} == {2}
    assert 1 in {runs[str(job)][0] for job in work}
    # no tick twice; before version 2 ran, every other second; once it led, every second
    assert len(fired) == len(set(fired))
    before = [t for t in fired if t < new_started]
    assert before and all(t.second % 2 == 0 for t in before)
    after = [t for t in fired if t > since]
    assert after[-1] - after[0] == timedelta(seconds=len(after) - 1)
    assert any(t.second % 2 for t in after)
    del db


def _beating(app: App, job_type: str) -> bool:
    now = app.store.now()
    return any(
        job_type in node.get("types", []) and (now - node["last_beat"]).total_seconds() < 4
        for node in app.store.list_nodes()
    )


def _led_by_new(app: App) -> dict[str, Any] | None:
    """The cron lease, once a process running version 2 (it has NewJob) holds it."""
    leader = app.store.leader()
    if not leader or leader["expires"] <= app.store.now():
        return None
    owner = {node["_id"]: node for node in app.store.list_nodes()}.get(leader["owner"])
    return leader if owner and "NewJob" in owner.get("types", []) else None
