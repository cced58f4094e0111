"""The indexes beside a DBA: an equivalent index under another name serves ours, a real
conflict stops the boot in one line, a changed TTL of ours is updated, a user without the
createIndex privilege boots on indexes made out of band, and builds have a time limit."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
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
from workers.store.lifecycle import LISTING_INDEX
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
    db["workers.jobs"].insert_many([{"status": "completed", "n": n} for n in range(4_000)])
    with pytest.raises(IndexBuildTimeout) as refused:
        boot(make_settings, mongo__index_build_timeout=0.001)
    message = str(refused.value)
    assert "were not built within 0.001 s (mongo.index_build_timeout)" in message
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
    timeout (mongo.timeout x 3, 0.3 s here): a large collection's build outlasts that (the
    jobs' indexes over 4,000 documents, in one command: 1.7 s on an idle machine)."""
    db["workers.jobs"].insert_many([{"status": "completed", "n": n} for n in range(4_000)])
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


def test_a_collections_missing_indexes_are_built_in_one_command_by_a_majority(
    mongo_url: str, db_name: str, db: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One createIndexes per collection (one scan of it for all its indexes), committed by
    a majority of the voting members on a replica set (the test server is one)."""
    store = Store(mongo_url, db_name)
    sent: list[dict[str, Any]] = []
    command = store.db.command

    def recorded(name: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(name, dict) and "createIndexes" in name:
            sent.append(name)
        return command(name, *args, **kwargs)

    monkeypatch.setattr(store.db, "command", recorded)
    try:
        store.check_server()
        store.ensure_indexes()
    finally:
        store.close()
    collections = [one["createIndexes"] for one in sent]
    assert sorted(collections) == sorted({getattr(store, s.collection).name for s in INDEXES})
    jobs = next(one for one in sent if one["createIndexes"] == "workers.jobs")
    assert len(jobs["indexes"]) == sum(spec.collection == "jobs" for spec in INDEXES)
    assert {one.get("commitQuorum") for one in sent} == {"majority"}


def test_a_retired_index_stays_while_a_node_of_another_version_beats(
    make_settings: Callable[..., Settings], db: Any
) -> None:
    """An older node still running hints its indexes: a boot drops them only once no node
    of another version has beaten for RETIRE_AFTER."""
    db["workers.jobs"].create_index("links", name="links", sparse=True)  # as 0.x made it
    beat = {"_id": "old#1", "version": "0.0.9", "host": "old", "pid": 1}
    db["workers.nodes"].insert_one({**beat, "last_beat": datetime.now(UTC)})
    boot(make_settings)
    workers.shutdown()
    kept = "links" in names(db["workers.jobs"])
    db["workers.nodes"].update_one(
        {"_id": "old#1"}, {"$set": {"last_beat": datetime.now(UTC) - timedelta(hours=1)}}
    )
    boot(make_settings)
    workers.shutdown()
    assert kept and "links" not in names(db["workers.jobs"])


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


def test_a_query_whose_hinted_index_is_gone_runs_unhinted_and_warns(
    app: App, caplog: pytest.LogCaptureFixture
) -> None:
    """Dropped under the running service (by a DBA, or with its collection): the queries
    that hint it run again without the hint, and a boot builds it again."""
    first = workers.push_named("RecordJob", {}, delay=3600)
    second = workers.push_named("RecordJob", {}, depends=[first])
    app.store.jobs.drop_index(LINKS_INDEX)
    app.store.jobs.drop_index(LISTING_INDEX)

    with caplog.at_level(logging.WARNING, logger="workers.store"):
        waiting = app.store.waiting_on(first)
        listed = workers.jobs.find(status="waiting")

    assert [doc["_id"] for doc in waiting] == [second]
    assert [job.id for job in listed] == [second]
    gone = [r.getMessage() for r in caplog.records if "is gone" in r.getMessage()]
    assert len(gone) == 1 and "links_status" in gone[0] and "listing" in gone[0], gone
    assert app.store.hint(LINKS_INDEX) is None
    app.store.ensure_indexes()
    assert app.store.hint(LINKS_INDEX) == LINKS_INDEX and not app.store.unhinted
