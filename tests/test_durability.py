"""Acknowledged means durable: a push that returned an id, and an outcome that was
recorded, survive a kill -9 of the database process (journaled write concern)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pymongo
import pytest

import workers
from tests.conftest import free_port, needs_own_server, settings_dict, start_server, stop_server
from tests.jobs import RecordJob
from workers import Job
from workers.settings import validate
from workers.store.base import auto_write_concern


@pytest.fixture
def killable_server(tmp_path: Path) -> Iterator[dict[str, Any]]:
    """A server on disk that the test kills with SIGKILL and starts again on the same folder."""
    needs_own_server()
    port, storage = free_port(), str(tmp_path / "db")
    state: dict[str, Any] = {
        "url": f"mongodb://127.0.0.1:{port}/?directConnection=true",
        "process": start_server(port, storage),
    }

    def crash_and_restart() -> None:
        state["process"].kill()
        state["process"].wait()
        state["process"] = start_server(port, storage)

    state["crash_and_restart"] = crash_and_restart
    yield state
    stop_server(state["process"])


def stored(url: str, database: str) -> dict[str, str]:
    with pymongo.MongoClient(url, serverSelectionTimeoutMS=10_000) as client:
        jobs = client[database]["workers.jobs"]
        return {doc["_id"]: doc["status"] for doc in jobs.find({}, {"status": 1})}


@pytest.mark.slow
def test_every_acknowledged_push_and_outcome_survives_a_kill_9_of_the_database(
    killable_server: dict[str, Any],
) -> None:
    url = killable_server["url"]
    app = workers.boot(settings=validate(settings_dict(url, "durable")))
    try:
        completed = [Job.push(RecordJob(n=n)) for n in range(40)]
        claimed = app.store.claim("node#1", app.registry.types, 30, len(completed))
        assert [doc["_id"] for doc in claimed] == completed
        for job_id in completed:  # outcomes recorded, then straight into more pushes
            assert app.store.complete(job_id, "node#1", None)
        pushed = [Job.push(RecordJob(n=n)) for n in range(200)]
        # When the database process dies right after the last acknowledgement
        killable_server["crash_and_restart"]()
    finally:
        workers.shutdown()
    # Then every acknowledged write is there after the restart
    after = stored(url, "durable")
    missing = [job_id for job_id in pushed if job_id not in after]
    assert not missing, f"{len(missing)} of 200 acknowledged pushes were lost in the crash"
    assert [after.get(job_id) for job_id in completed] == ["completed"] * len(completed)
    assert [after[job_id] for job_id in pushed] == ["ready"] * len(pushed)


def test_the_write_concern_setting_reaches_every_write(make_settings: Any) -> None:
    """ "auto" is majority here: the test server reports itself as a replica set."""
    cases = {"auto": ("majority", True), "majority": ("majority", True),
             "journaled": (1, True), "acknowledged": (1, False)}  # fmt: skip
    for name, expected in cases.items():
        app = workers.boot(settings=make_settings(mongo__write_concern=name))
        try:
            for collection in (app.store.jobs, app.store.nodes, app.store.cron):
                concern = collection.write_concern.document
                assert (concern.get("w"), concern.get("j", False)) == expected, name
            beat = app.store.for_heartbeat(lease=5)
            try:
                assert beat.jobs.write_concern == app.store.jobs.write_concern, name
            finally:
                beat.close()
            assert app.store.write_concern == ("majority" if name == "auto" else name)
        finally:
            workers.shutdown()


@pytest.mark.parametrize(
    ("hello", "expected"),
    [
        ({"isWritablePrimary": True, "setName": "rs0"}, "majority"),  # a replica set member
        ({"isWritablePrimary": True, "msg": "isdbgrid"}, "majority"),  # mongos
        ({"isWritablePrimary": True}, "journaled"),  # a standalone: no majority to wait for
    ],
)
def test_auto_is_majority_wherever_a_failover_could_roll_a_write_back(
    hello: dict[str, Any], expected: str
) -> None:
    assert auto_write_concern(hello) == expected


def test_the_default_write_concern_is_auto() -> None:
    assert validate({}).mongo.write_concern == "auto"
