"""Job documents stay far from MongoDB's 16 MB limit: the log keeps its newest entries,
stored messages and tracebacks are clipped, and one document at the limit cannot stop
the rescue of the others."""

from __future__ import annotations

import datetime as dt
from typing import Any

import bson
import pytest

from tests.conftest import wait_for
from tests.jobs import LogManyJob, RaiseHugeJob, RecordJob
from tests.test_worker import finished, running
from workers import Job
from workers.app import App
from workers.record import LOG_KEPT, LOG_LIMIT, TEXT_LIMIT, TRACEBACK_LIMIT

MAX_BSON = 16 * 1024 * 1024


@pytest.mark.slow
def test_the_log_keeps_its_newest_entries_and_clips_long_messages(app: App) -> None:
    job_id = Job.push(LogManyJob(count=LOG_LIMIT + 40, size=20_000))
    with running(app):
        doc = wait_for(lambda: finished(app, job_id), timeout=60, what="the job to finish")
    assert doc["status"] == "completed"
    assert LOG_KEPT <= len(doc["log"]) <= LOG_LIMIT
    assert doc["log"][-1]["message"].startswith("attempt 1 completed by")
    numbered = [entry["message"].split(":")[0] for entry in doc["log"][:-1]]
    newest = range(LOG_LIMIT + 40 - len(numbered), LOG_LIMIT + 40)
    assert numbered == [str(n) for n in newest]  # the newest, in order
    assert all(len(entry["message"]) < TEXT_LIMIT + 50 for entry in doc["log"])
    assert doc["log"][0]["message"].endswith("characters cut]")


@pytest.mark.slow
def test_a_log_write_past_the_limit_is_one_small_oplog_entry_and_change_event(
    app: App, client: Any, db: Any
) -> None:
    """A log that slid by one entry per write rewrote all of its entries in the oplog and
    in every change event (each ~100 KB here); it is trimmed in steps, so all but one
    write in LOG_LIMIT - LOG_KEPT carries its own entry alone."""
    count, size = LOG_LIMIT + 100, 500
    jobs = db[app.store.jobs.name]
    since = client.local["oplog.rs"].find_one({}, sort=[("$natural", -1)])["ts"]
    with jobs.watch([{"$match": {"operationType": "update"}}]) as stream:
        job_id = Job.push(LogManyJob(count=count, size=size))
        with running(app):
            wait_for(lambda: finished(app, job_id), timeout=60, what="the job to finish")
        events: list[int] = []

        def drained() -> bool:
            while (event := stream.try_next()) is not None:
                if event["documentKey"]["_id"] == job_id:
                    events.append(len(bson.encode(event)))
            return len(events) >= count

        wait_for(drained, timeout=30, what="the log's change events")
    written = [
        len(bson.encode(entry))
        for entry in client.local["oplog.rs"].find({"ts": {"$gt": since}, "op": "u"})
        if entry.get("o2", {}).get("_id") == job_id
    ]
    print(
        f"\nlog writes: oplog entries {sorted(written)[len(written) // 2]} B (median), "
        f"{max(written)} B (max); change events {sorted(events)[len(events) // 2]} B"
    )
    for sizes in (written, events):
        assert len(sizes) >= count
        large = [n for n in sizes if n > 4 * size]
        assert len(large) <= count // 25, len(large)  # the trims (3 here), the claim, the end


def test_a_huge_error_is_stored_clipped_and_the_job_still_fails(app: App) -> None:
    job_id = Job.push(RaiseHugeJob(size=300_000), retry=0)
    with running(app):
        doc = wait_for(lambda: finished(app, job_id), timeout=30, what="the job to fail")
    assert doc["status"] == "failed"
    error = doc["error"]
    assert error["type"] == "builtins.ValueError"
    message, trace = error["message"], error["traceback"]
    clipped_message = len(message) < TEXT_LIMIT + 50 and message.startswith("yyy")
    assert clipped_message, f"message of {len(message)} characters: {message[:60]}..."
    assert len(trace) < TRACEBACK_LIMIT + 50, f"traceback of {len(trace)} characters"
    assert "characters cut] ..." in trace[:40], trace[:60]  # its end (the error) is kept
    assert trace.rstrip().endswith("yyy"), trace[-60:]


def test_one_document_at_the_size_limit_does_not_stop_the_rescue_of_the_others(
    app: App, db: Any
) -> None:
    # Given two running jobs whose leases lapsed, one of them a document at the size limit
    ids = [Job.push(RecordJob(n=n)) for n in range(3)]
    claimed = app.store.claim("dead-node#1", app.registry.types, 3, 3)
    assert [doc["_id"] for doc in claimed] == ids
    jobs = db[app.store.jobs.name]
    size = len(bson.encode(jobs.find_one({"_id": ids[1]})))
    padding = "p" * (MAX_BSON - size - 64)
    jobs.update_one({"_id": ids[1]}, {"$set": {"padding": padding}})
    past = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)
    jobs.update_many({"_id": {"$in": ids}}, {"$set": {"lease_expires": past}})
    # When a node rescues them
    try:
        app.store.rescue_expired()
    except Exception as exc:  # the giant's own error may surface, after the others
        print(f"rescue reported: {exc}")
    # Then every one of them is ready again, the giant too (without a new log entry)
    stored = {doc["_id"]: doc for doc in jobs.find({}, {"status": 1, "lease_owner": 1})}
    assert [stored[i]["status"] for i in ids] == ["ready"] * 3
    assert [stored[i]["lease_owner"] for i in ids] == [None] * 3
