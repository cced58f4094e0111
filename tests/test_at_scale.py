"""What a million jobs cost on MongoDB, from what the code creates, not from guesses: jobs pushed,
claimed and completed by a real worker, the indexes as created, the documents as stored, and the
oplog the server wrote for them. `pytest -s tests/test_at_scale.py` prints the table the
docs/performance.md quotes; the asserts hold the figures a change would move.

This module has a server of its own, so its oplog holds nothing but these jobs' writes."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import Any

import bson
import pytest

from tests.conftest import own_server, wait_for
from tests.jobs import SleepJob
from tests.shapes import oplog_updated_fields
from tests.test_worker import running
from workers import Job
from workers.app import App
from workers.store.profile import MONGODB

JOBS = 200
BACKLOG = 300
MILLION = 1_000_000


@pytest.fixture(scope="module")
def mongo_url() -> Iterator[str]:
    with own_server() as url:
        yield url


def _oplog(client: Any, db_name: str, since: Any) -> list[dict[str, Any]]:
    """The entries written to the queue's collections (`<db>.workers.*`) after `since`."""
    prefix = f"{db_name}.workers."
    entries = client.local["oplog.rs"].find({"ts": {"$gt": since}})
    return [e for e in entries if str(e.get("ns", "")).startswith(prefix)]


def _keys_per_scan(app: App) -> dict[str, Any]:
    """The claim's candidate scan as MongoDB runs it (hinted, MongoDB's candidate count),
    explained with executionStats beside a ready backlog. This server reads every ready job
    whatever the limit; MongoDB's index scan stops at the limit (its IXSCAN under a LIMIT
    in index order, which the explain tests check: no SORT stage)."""
    Job.push_many([SleepJob(seconds=0) for _ in range(BACKLOG)], delay=30)
    app.store.jobs.update_many({"status": "ready"}, {"$set": {"run_at": app.store.now()}})
    limit = MONGODB.scan_size(app.settings.workers.count)
    execution = app.store.claim_scan_stats(app.registry.types, limit)
    return {
        "limit": limit,
        "keys examined": execution["totalKeysExamined"],
        "docs examined": execution["totalDocsExamined"],
        "returned": execution["nReturned"],
    }


def _kind(entry: dict[str, Any]) -> str:
    """What an oplog entry on the jobs collection did (updates are logged as `$v: 2` diffs)."""
    if entry["op"] != "u":
        return {"i": "push", "d": "delete"}.get(entry["op"], entry["op"])
    fields = oplog_updated_fields(entry)
    if set(fields) == {"lease_expires"}:
        return "renewal"
    return {"running": "claim", "completed": "completion"}.get(str(fields.get("status")), "other")


def _last_ts(client: Any) -> Any:
    last = client.local["oplog.rs"].find_one({}, sort=[("$natural", -1)])
    return last["ts"] if last else bson.Timestamp(0, 0)


@pytest.mark.slow
def test_what_a_million_jobs_cost(app: App, client: Any, db: Any, db_name: str) -> None:
    jobs = db[app.store.jobs.name]
    since = _last_ts(client)
    ids = [Job.push(SleepJob(seconds=0)) for _ in range(JOBS)]
    with running(app):
        wait_for(
            lambda: jobs.count_documents({"status": "completed"}) == JOBS,
            timeout=60,
            what="the jobs done",
        )
    entries = _oplog(client, db_name, since)

    job_writes = Counter(_kind(e) for e in entries if e["ns"] == f"{db_name}.{jobs.name}")
    other = Counter(e["ns"].removeprefix(f"{db_name}.") for e in entries)
    del other[jobs.name]
    oplog_bytes = sum(len(bson.encode(e)) for e in entries)
    docs = list(jobs.find({"_id": {"$in": ids}}))
    doc_bytes = sum(len(bson.encode(d)) for d in docs) / len(docs)
    stats = db.command("collStats", jobs.name)
    indexes = {ix["name"]: ix for ix in jobs.list_indexes()}

    lines = [
        f"per completed job ({JOBS} run by a worker), and x {MILLION:,}:",
        f"  document, completed: {doc_bytes:.0f} B  -> {doc_bytes * MILLION / 1e6:,.0f} MB",
    ]
    for name, spec in indexes.items():
        size = stats["indexSizes"].get(name, 0) / JOBS
        options = {k: v for k, v in spec.items() if k not in ("v", "key", "name")}
        lines.append(
            f"  index {name:14} {dict(spec['key'])} {options or ''}: {size:.0f} B of keys "
            f"-> {size * MILLION / 1e6:,.0f} MB"
        )
    lines.append(f"  writes to the job's document: {dict(job_writes)} (per job: "
                 f"{sum(job_writes.values()) / JOBS:.2f})")  # fmt: skip
    lines.append(f"  other writes: {dict(other)} (per job: {sum(other.values()) / JOBS:.2f})")
    per_job = oplog_bytes / JOBS
    lines.append(f"  oplog: {per_job:.0f} B per job -> {per_job * MILLION / 1e9:.2f} GB")
    by_kind = Counter()
    for e in entries:
        if e["ns"] == f"{db_name}.{jobs.name}":
            by_kind[_kind(e)] += len(bson.encode(e))
    lines.append("  oplog per write: " + ", ".join(
        f"{kind} {size / job_writes[kind]:.0f} B" for kind, size in by_kind.items()))  # fmt: skip
    keys = _keys_per_scan(app)
    lines.append(f"  one claim scan beside {JOBS} finished and {BACKLOG} ready jobs: {keys}")
    print("\n" + "\n".join(lines))
    # A push is one insert; a claim and a completion one update each: three writes a job,
    # and a lease renewal for a job that was running when its process beat.
    assert {k: job_writes[k] for k in ("push", "claim", "completion")} == dict.fromkeys(
        ("push", "claim", "completion"), JOBS
    )
    assert set(job_writes) <= {"push", "claim", "completion", "renewal"}, job_writes
    # A finished job is in no partial index of the live queue (ready times, schedule, unique,
    # links)...
    # (by its partial filter, not its size: WiredTiger reports ~4 kB for an empty index)
    finished = {"status": {"$in": ["completed", "failed", "cancelled"]}}
    for name in ("ready_times", "schedule", "unique_key", "links"):
        if name in indexes:
            only = indexes[name].get("partialFilterExpression")
            assert only is not None, f"{name} is not partial"
            held = jobs.count_documents({"$and": [only, finished]})
            assert held == 0, f"{name} holds {held} finished jobs"
    # ...and the other writes (per-minute metrics, the shared candidate list, heartbeats)
    # are fewer than one per job.
    assert sum(other.values()) < JOBS, other
    # The claim scan reads ready jobs only, never the finished ones beside them.
    assert keys["keys examined"] <= BACKLOG, keys


def test_the_oplog_update_shapes_of_both_servers_read_alike() -> None:
    """MongoDB's `$v: 2` diff (as 6.0-8.0 log a claim) and SecantusDB's, and `$set`."""
    mongodb = {
        "op": "u",
        "o": {"$v": 2, "diff": {"u": {"status": "running"}, "i": {"lease_owner": "n#1"}}},
    }
    secantus = {"op": "u", "o": {"diff": {"updatedFields": {"status": "running"}}}}
    old = {"op": "u", "o": {"$v": 1, "$set": {"status": "completed"}}}
    renewal = {"op": "u", "o": {"$v": 2, "diff": {"u": {"lease_expires": 1}}}}
    assert [_kind(e) for e in (mongodb, secantus, old, renewal)] == [
        "claim",
        "claim",
        "completion",
        "renewal",
    ]
