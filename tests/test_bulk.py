"""Actions on many jobs take a bounded number of round trips (batches), counted with
pymongo's command monitoring."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator

import pytest
from pymongo import monitoring

import workers.jobs
from tests.commands import StartedListener, registered
from tests.jobs import RecordJob
from workers import Job
from workers.app import App
from workers.store.dependencies import BATCH

COUNT = 1_000


class Commands(StartedListener):
    """Counts the commands this thread sends to the jobs collection."""

    def __init__(self) -> None:
        self.names: list[str] = []
        self.thread = threading.get_ident()

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        if threading.get_ident() == self.thread and event.command_name not in ("hello", "ismaster"):
            self.names.append(event.command_name)


@pytest.fixture(scope="module")
def listener() -> Commands:
    return registered(Commands())


@pytest.fixture
def many(listener: Commands, app: App) -> Iterator[tuple[list[str], Callable[[], list[str]]]]:
    ids = Job.push_many([RecordJob(n=n) for n in range(COUNT)], delay=3600)

    def sent() -> list[str]:
        names, listener.names = listener.names, []
        return names

    listener.thread = threading.get_ident()
    sent()
    yield ids, sent


BATCHES = -(-COUNT // BATCH)


@pytest.mark.slow
@pytest.mark.parametrize("action", ["pause", "cancel", "remove", "restart"])
def test_an_action_on_a_thousand_ids_takes_a_few_round_trips(
    app: App, many: tuple[list[str], Callable[[], list[str]]], action: str
) -> None:
    ids, sent = many
    if action in ("remove", "restart"):
        workers.jobs.cancel(ids, dependents=False)
        sent()
    result = getattr(workers.jobs, action)(ids)
    names = sent()
    assert sorted(result.changed) == sorted(ids)
    print(f"{action} of {COUNT}: {len(names)} commands: {names}")
    # per batch: the conditional write and its read-back (remove: a read before and after),
    # plus the cascade's reads; a read of BATCH ids may come in two replies (SecantusDB
    # answers at most 101 documents first, whatever the batch size)
    assert len(names) <= 8 * BATCHES, names


@pytest.mark.slow
def test_rerun_of_a_thousand_takes_a_read_and_an_insert_per_batch(
    app: App, many: tuple[list[str], Callable[[], list[str]]]
) -> None:
    ids, sent = many
    app.store.jobs.update_many({}, {"$set": {"status": "completed"}})
    sent()
    result = workers.jobs.rerun(ids)
    assert len(result.created) == COUNT
    assert [name for name in sent() if name != "getMore"] == ["find", "insert"] * BATCHES
    assert app.store.jobs.count_documents({"status": "ready"}) == COUNT
