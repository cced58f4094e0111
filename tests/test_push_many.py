"""push_many: one bulk insert, all or nothing; and push at the server's speed: one command."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from pymongo import monitoring

from tests.commands import StartedListener
from tests.jobs import RecordJob
from workers import Job, PushError
from workers.app import App


class CommandLog(StartedListener):
    """The commands this thread sends while `recording` (other threads are ignored)."""

    def __init__(self) -> None:
        self.commands: list[str] = []
        self.thread: int | None = None

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        if threading.get_ident() == self.thread:
            self.commands.append(event.command_name)


COMMANDS = CommandLog()
monitoring.register(COMMANDS)  # clients created from here on report to it


def sent_while(action: Any) -> list[str]:
    COMMANDS.commands, COMMANDS.thread = [], threading.get_ident()
    try:
        action()
    finally:
        COMMANDS.thread = None
    return COMMANDS.commands


def test_push_many_inserts_every_job_and_returns_the_ids_in_order(app: App) -> None:
    jobs = [RecordJob(n=n) for n in range(25)]
    ids = Job.push_many(jobs, priority="high", retry={"retries": 2}, delay=60)
    assert len(ids) == len(set(ids)) == 25
    for n, job_id in enumerate(ids):
        doc = app.store.get_job(job_id)
        assert doc is not None and doc["params"] == {"n": n}
        assert (doc["status"], doc["priority"], doc["retries"]) == ("ready", -10, 2)
        assert (doc["run_at"] - doc["created"]).total_seconds() == 60


def test_push_many_refuses_the_whole_batch_naming_every_bad_job_by_position(app: App) -> None:
    class NotInTheJobsPackagesJob(Job):
        pass

    jobs = [
        RecordJob(n=0),
        RecordJob(tags={"a", "b"}),  # a set is not BSON
        RecordJob(n=2),
        NotInTheJobsPackagesJob(),
        RecordJob(n=4),
    ]
    with pytest.raises(PushError) as refused:
        Job.push_many(jobs)
    assert [position for position, _ in refused.value.refused] == [1, 3]
    message = str(refused.value)
    assert "2 of 5 jobs" in message and "none was written" in message
    assert "#1: RecordJob params are not BSON-encodable: tags" in message
    assert "#3: " in message and "NotInTheJobsPackagesJob" in message
    assert app.store.count_by_status() == {}


def test_push_many_refuses_bad_options_before_writing(app: App) -> None:
    with pytest.raises(PushError, match="priority"):
        Job.push_many([RecordJob(), RecordJob()], priority="urgent")
    assert app.store.count_by_status() == {}


def test_a_push_costs_one_insert_and_nothing_else(app: App) -> None:
    Job.push(RecordJob())  # the first push boots and measures the clock
    sent = sent_while(lambda: [Job.push(RecordJob(n=n)) for n in range(20)])
    assert sent == ["insert"] * 20


def test_push_many_costs_one_insert(app: App) -> None:
    Job.push(RecordJob())
    sent = sent_while(lambda: Job.push_many([RecordJob(n=n) for n in range(50)]))
    assert sent == ["insert"]


def test_push_many_of_nothing_writes_nothing(app: App) -> None:
    assert sent_while(lambda: Job.push_many([])) == []
