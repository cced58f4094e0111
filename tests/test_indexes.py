"""The indexes beside a DBA: an equivalent index under another name serves ours, a real
conflict stops the boot in one line, a changed TTL of ours is updated, a user without the
createIndex privilege boots on indexes made out of band, and builds have a time limit."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import workers
from tests.conftest import run_workers
from tests.jobs import RecordJob
from workers.app import App
from workers.errors import IndexBuildTimeout, IndexConflict, IndexesMissing
from workers.settings import Settings
from workers.store import INDEXES, Store
from workers.store.claims import CLAIM_INDEX
from workers.store.dependencies import LINKS_INDEX
from workers.store.indexes import IndexSpec, state_of
from workers.store.nodes import NODE_TTL

CLAIM = next(spec for spec in INDEXES if spec.name == CLAIM_INDEX)


def names(collection: Any) -> set[str]:
    return {ix["name"] for ix in collection.list_indexes()}


def boot(make_settings: Callable[..., Settings], **overrides: Any) -> App:
    return workers.boot(settings=make_settings(**overrides))


@pytest.mark.processes
def test_a_fresh_database_gets_every_index_and_the_command_says_each_is_present(
    make_settings: Callable[..., Settings], settings_file: Callable[..., Path], tmp_path: Path
) -> None:
    app = boot(make_settings)
    try:
        for spec in INDEXES:
            assert spec.name in names(getattr(app.store, spec.collection)), spec.name
    finally:
        workers.shutdown()
    done = run_workers("db", "indexes", "--settings", str(settings_file()), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == len(INDEXES)
    assert all(line.endswith(" - present") for line in lines), lines


def test_an_equivalent_index_under_another_name_serves_ours_and_the_hints_follow_it(
    make_settings: Callable[..., Settings], db: Any
) -> None:
    # as a DBA (or Atlas's Performance Advisor) would have made it, before the first boot
    db["workers.jobs"].create_index(list(CLAIM.keys), name="status_1_type_1_priority_1_run_at_1")
    app = boot(make_settings)
    try:
        assert CLAIM_INDEX not in names(app.store.jobs)  # MongoDB would answer code 85 to it
        assert app.store.index(CLAIM_INDEX) == "status_1_type_1_priority_1_run_at_1"
        heartbeat = app.store.for_heartbeat(5)
        assert heartbeat.index(CLAIM_INDEX) == app.store.index(CLAIM_INDEX)
        heartbeat.close()
        pushed = workers.Job.push(RecordJob(echo="x"))
        # hinted by name: with the name of ours the server would refuse the find
        found = app.store.find_jobs(status="ready", type="RecordJob")
        assert [doc["_id"] for doc in found] == [pushed]
    finally:
        workers.shutdown()


def test_a_conflicting_index_under_our_name_stops_the_boot_with_one_line(
    make_settings: Callable[..., Settings], db: Any
) -> None:
    db["workers.jobs"].create_index([("status", -1)], name=CLAIM_INDEX)
    with pytest.raises(IndexConflict) as refused:
        boot(make_settings)
    message = str(refused.value)
    assert "\n" not in message
    assert f'index "{CLAIM_INDEX}" on ' in message
    assert '{"key": {"status": -1}' in message  # what is there
    assert '"priority": 1, "run_at": 1' in message  # what is needed
    assert f'dropIndex("{CLAIM_INDEX}")' in message  # the fix


def test_a_changed_ttl_of_ours_is_updated_in_place(
    make_settings: Callable[..., Settings], db: Any
) -> None:
    boot(make_settings)
    workers.shutdown()
    # as an earlier version would have left it
    db.command("collMod", "workers.nodes", index={"name": "node_ttl", "expireAfterSeconds": 60})
    boot(make_settings, mongo__create_indexes=False)  # only checks: left as it is
    workers.shutdown()
    assert _ttl(db["workers.nodes"], "node_ttl") == 60
    boot(make_settings)
    workers.shutdown()
    assert _ttl(db["workers.nodes"], "node_ttl") == NODE_TTL


def _ttl(collection: Any, name: str) -> int:
    return int(
        next(ix for ix in collection.list_indexes() if ix["name"] == name)["expireAfterSeconds"]
    )


@pytest.mark.slow
@pytest.mark.processes
def test_without_create_indexes_boot_names_the_missing_ones_until_they_are_made_out_of_band(
    make_settings: Callable[..., Settings],
    settings_file: Callable[..., Path],
    tmp_path: Path,
    db: Any,
) -> None:
    with pytest.raises(IndexesMissing) as refused:
        boot(make_settings, mongo__create_indexes=False)
    message = str(refused.value)
    assert f"{len(INDEXES)} index(es) missing" in message
    assert all(f'"name": "{spec.name}"' in message for spec in INDEXES), message
    assert "workers db indexes --create" in message
    assert names(db["workers.jobs"]) <= {"_id_"}  # nothing was created

    path = str(settings_file(mongo__create_indexes=False))
    listed = run_workers("db", "indexes", "--settings", path, cwd=tmp_path)
    assert listed.returncode == 1
    assert listed.stdout.count(" - missing") == len(INDEXES), listed.stdout
    made = run_workers("db", "indexes", "--create", "--settings", path, cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    assert made.stdout.count(" - present") == len(INDEXES), made.stdout

    boot(make_settings, mongo__create_indexes=False)
    workers.shutdown()


@pytest.mark.slow
def test_an_index_build_past_its_time_limit_stops_the_boot_naming_the_index(
    make_settings: Callable[..., Settings], db: Any
) -> None:
    db["workers.jobs"].insert_many([{"status": "completed", "n": n} for n in range(20_000)])
    with pytest.raises(IndexBuildTimeout) as refused:
        boot(make_settings, mongo__index_build_timeout=0.001)
    message = str(refused.value)
    assert "was not built within 0.001 s (mongo.index_build_timeout)" in message
    assert "a member that is down or lagging holds the build" in message


# serial: a 0.1 s connect and selection timeout holds only on a machine nothing else loads
# (under load the driver's monitor timed out and cancelled the build's connection)
@pytest.mark.slow
@pytest.mark.serial
@pytest.mark.parametrize("time_limit", [60.0, None])
def test_an_index_build_longer_than_the_socket_timeout_is_waited_for(
    mongo_url: str, db_name: str, db: Any, time_limit: float | None
) -> None:
    """The build has its own time limit (mongo.index_build_timeout), not the client's socket
    timeout (mongo.timeout x 3, 0.3 s here): a large collection's build outlasts that."""
    db["workers.jobs"].insert_many([{"status": "completed", "n": n} for n in range(20_000)])
    store = Store(mongo_url, db_name, timeout=0.1, pool_size=1)
    try:
        began = time.monotonic()
        store.ensure_indexes(time_limit=time_limit)
        took = time.monotonic() - began
    finally:
        store.close()
    assert took > 0.3, f"the builds took {took:.2f} s: too quick to outlast the socket timeout"
    assert LINKS_INDEX in names(db["workers.jobs"])


def test_the_retired_links_index_makes_way_for_the_one_the_sweep_needs(
    make_settings: Callable[..., Settings], db: Any
) -> None:
    db["workers.jobs"].create_index("links", name="links", sparse=True)  # as 0.x made it
    boot(make_settings)
    workers.shutdown()
    assert "links" not in names(db["workers.jobs"])
    assert LINKS_INDEX in names(db["workers.jobs"])


def test_how_an_existing_index_compares() -> None:
    spec = IndexSpec("jobs", "x", (("a", 1), ("b", 1)), partial={"a": {"$type": "string"}})
    same = {
        "name": "y",
        "key": {"a": 1, "b": 1},
        "partialFilterExpression": {"a": {"$type": "string"}},
    }
    assert state_of(spec, [same]).state == "equivalent"
    assert state_of(spec, [{**same, "name": "x"}]).state == "present"
    assert state_of(spec, [{**same, "collation": {"locale": "fr"}}]).state == "missing"
    assert state_of(spec, [{**same, "hidden": True}]).state == "missing"
    assert state_of(spec, [{**same, "key": {"b": 1, "a": 1}}]).state == "missing"
    assert state_of(spec, [{**same, "name": "x", "unique": True}]).state == "conflict"
    ttl = IndexSpec("nodes", "t", (("a", 1),), ttl=10)
    assert state_of(ttl, [{"name": "t", "key": {"a": 1}, "expireAfterSeconds": 5}]).state == "ttl"
    assert (
        state_of(ttl, [{"name": "u", "key": {"a": 1}, "expireAfterSeconds": 5}]).state == "missing"
    )


def test_the_store_declares_each_index_once() -> None:
    assert len({spec.name for spec in INDEXES}) == len(INDEXES)
    assert Store.required_indexes(None) == INDEXES  # type: ignore[arg-type]
