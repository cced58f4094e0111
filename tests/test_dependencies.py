"""`depends`: a dependent runs after its antecedents complete, is cancelled when one cannot,
and cancel / restart cascade through chains and diamonds."""

from __future__ import annotations

import itertools
import json
import sys
from pathlib import Path
from typing import Any

import pytest

import workers.jobs
from tests.conftest import ROOT, run_command, settings_dict, wait_for
from tests.faulty import FaultyCollection
from tests.jobs import FailJob, RecordJob
from tests.plans import is_secantus, unbounded_fields
from tests.test_worker import running
from workers import Job, PushError
from workers.app import App
from workers.record import FOLLOWUPS


def status(job_id: str) -> str | None:
    job = workers.jobs.get(job_id)
    return job.status if job else None


def statuses(*ids: str) -> list[str | None]:
    return [status(job_id) for job_id in ids]


def all_in(ids: list[str], wanted: str) -> bool:
    return all(status(job_id) == wanted for job_id in ids)


def diamond(**top: Any) -> tuple[str, str, str, str]:
    """a; b and c depend on a; d depends on b and c."""
    a = Job.push(RecordJob(name="a"), **top)
    b = Job.push(RecordJob(name="b"), depends=[a])
    c = Job.push(RecordJob(name="c"), depends=[a])
    d = Job.push(RecordJob(name="d"), depends=[b, c])
    return a, b, c, d


def test_a_chain_runs_in_order_after_a_delayed_antecedent(app: App, db: Any) -> None:
    a = Job.push(RecordJob(name="a"), delay=0.5)
    b = Job.push(RecordJob(name="b"), depends=[a])
    c = Job.push(RecordJob(name="c"), depends=[b])
    assert statuses(a, b, c) == ["ready", "waiting", "waiting"]
    with running(app):
        wait_for(lambda: all_in([a, b, c], "completed"), timeout=30, what="the chain to complete")
    docs = [app.store.get_job(job_id) for job_id in (a, b, c)]
    assert all(doc is not None for doc in docs)
    for before, after in itertools.pairwise(docs):
        assert before is not None and after is not None
        assert before["finished"] <= after["started"], (
            "a dependent started before its antecedent finished"
        )
    assert workers.jobs.get(c).pending == []  # type: ignore[union-attr]


def test_a_diamond_runs_its_bottom_last(app: App) -> None:
    a, b, c, d = diamond()
    with running(app):
        wait_for(lambda: all_in([a, b, c, d], "completed"), timeout=30, what="the diamond")
    finished = {job_id: app.store.get_job(job_id)["finished"] for job_id in (b, c)}  # type: ignore[index]
    started_d = app.store.get_job(d)["started"]  # type: ignore[index]
    assert max(finished.values()) <= started_d


def test_cancel_cascades_down_a_chain_and_a_diamond(app: App) -> None:
    a, b, c, d = diamond(delay=3600)
    x = Job.push(RecordJob(name="x"), delay=3600)
    y = Job.push(RecordJob(name="y"), depends=[x])
    z = Job.push(RecordJob(name="z"), depends=[y])
    workers.jobs.get(a).cancel()  # type: ignore[union-attr]
    assert statuses(a, b, c, d) == ["cancelled"] * 4
    workers.jobs.get(x).cancel(dependents=False)  # type: ignore[union-attr]
    assert statuses(x, y, z) == ["cancelled", "waiting", "waiting"]


def test_cancel_can_go_up_to_the_antecedents(app: App) -> None:
    a, b, _c, _d = diamond(delay=3600)
    workers.jobs.get(b).cancel(antecedents=True, dependents=False)  # type: ignore[union-attr]
    assert statuses(a, b) == ["cancelled", "cancelled"]


def test_restart_brings_back_the_cancelled_antecedents_and_then_it_all_runs(app: App) -> None:
    a, b, c, d = diamond(delay=0.2)
    workers.jobs.cancel([a])
    assert statuses(a, b, c, d) == ["cancelled"] * 4
    workers.jobs.get(d).restart()  # type: ignore[union-attr]
    assert statuses(a, b, c, d) == ["ready", "waiting", "waiting", "waiting"]
    with running(app):
        wait_for(
            lambda: all_in([a, b, c, d], "completed"), timeout=30, what="the restarted diamond"
        )


def test_restart_with_dependents_restarts_the_chain_below(app: App) -> None:
    a = Job.push(RecordJob(name="a"), delay=3600)
    b = Job.push(RecordJob(name="b"), depends=[a])
    c = Job.push(RecordJob(name="c"), depends=[b])
    workers.jobs.get(a).cancel()  # type: ignore[union-attr]
    workers.jobs.get(a).restart(dependents=True)  # type: ignore[union-attr]
    assert statuses(a, b, c) == ["ready", "waiting", "waiting"]
    assert workers.jobs.get(c).pending == [b]  # type: ignore[union-attr]


def test_an_antecedent_that_fails_for_good_cancels_its_dependents(app: App) -> None:
    a = Job.push(FailJob(), retry=0)
    b = Job.push(RecordJob(name="b"), depends=[a])
    c = Job.push(RecordJob(name="c"), depends=[b])
    with running(app):
        wait_for(
            lambda: all_in([b, c], "cancelled"), timeout=30, what="the dependents to be cancelled"
        )
    assert status(a) == "failed"


def test_depends_on_a_failed_missing_or_cancelled_job_is_refused_and_writes_nothing(
    app: App,
) -> None:
    cancelled = Job.push(RecordJob(), delay=3600)
    workers.jobs.cancel([cancelled])
    for bad, said in ((cancelled, "cancelled"), ("0123456789abcdef01234567", "no job has that id")):
        with pytest.raises(PushError, match=said):
            Job.push(RecordJob(name="orphan"), depends=[bad])
    assert app.store.jobs.count_documents({"params.name": "orphan"}) == 0


def test_depends_on_completed_jobs_is_ready_at_once(app: App) -> None:
    a = Job.push(RecordJob(name="a"))
    app.store.jobs.update_one({"_id": a}, {"$set": {"status": "completed"}})
    b = Job.push(RecordJob(name="b"), depends=[a])
    assert status(b) == "ready"


def test_the_sweep_settles_what_a_crash_between_finish_and_settle_left(app: App) -> None:
    a = Job.push(RecordJob(name="a"))
    b = Job.push(RecordJob(name="b"), depends=[a])
    # the worker wrote the completion and died before settling the dependents
    app.store.jobs.update_one({"_id": a}, {"$set": {"status": "completed"}})
    assert status(b) == "waiting"
    assert app.store.settle_finished() == 1
    assert status(b) == "ready"
    assert app.store.settle_finished() == 0, "a settled job leaves the sweep"


def test_removing_an_antecedent_cancels_the_jobs_waiting_on_it(app: App) -> None:
    a = Job.push(RecordJob(name="a"), delay=3600)
    b = Job.push(RecordJob(name="b"), depends=[a])
    workers.jobs.get(a).cancel(dependents=False)  # type: ignore[union-attr]
    workers.jobs.get(a).remove()  # type: ignore[union-attr]
    assert status(b) == "cancelled"


def test_a_restart_between_a_cancel_and_its_unmark_keeps_the_follow_ups_marker(
    app: App,
) -> None:
    """The cancel drops the marker once its cascade is done, but only while the job is still
    cancelled: a restart that landed meanwhile needs it for its own dependents later."""
    a = Job.push(RecordJob(name="a"), delay=3600)
    b = Job.push(RecordJob(name="b"), depends=[a])
    real = app.store.jobs

    def restart_before_the_unmark(name: str, args: tuple[Any, ...], _: Any) -> str | None:
        if name == "update_many" and args[1] == {"$pull": {"links": FOLLOWUPS}}:
            real.update_one({"_id": a}, {"$set": {"status": "ready"}})  # the restart's write
        return None

    app.store.jobs = FaultyCollection(real, restart_before_the_unmark, RuntimeError)  # type: ignore[assignment]
    app.store.act("cancel", [a])
    app.store.jobs = real

    assert statuses(a, b) == ["ready", "cancelled"]
    assert FOLLOWUPS in (app.store.get_job(a) or {}).get("links", [])


# the cancel of `a`, run in a process that dies (os._exit: no cleanup, as a kill) when the
# cascade asks for the dependents of its second level, after cancelling the first
_CRASHING_CANCEL = """
import json, os, sys
import workers
from workers.settings import validate
from workers.store.lifecycle import LifecycleQueries

workers.boot(settings=validate(json.loads(sys.argv[1])))
real, calls = LifecycleQueries._dependents_of, []

def dies_at_the_second_level(self, *args, **kwargs):
    calls.append(1)
    if len(calls) == 2:
        os._exit(9)
    return real(self, *args, **kwargs)

LifecycleQueries._dependents_of = dies_at_the_second_level
workers.jobs.get(sys.argv[2]).cancel()
"""


@pytest.mark.processes
def test_a_cancel_cascade_cut_short_between_levels_is_finished_by_the_sweep(
    app: App, mongo_url: str, db_name: str, tmp_path: Path
) -> None:
    a = Job.push(RecordJob(name="a"), delay=3600)
    b = Job.push(RecordJob(name="b"), depends=[a])
    c = Job.push(RecordJob(name="c"), depends=[b])
    d = Job.push(RecordJob(name="d"), depends=[c])
    settings = json.dumps(settings_dict(mongo_url, db_name))
    script = tmp_path / "crashing_cancel.py"
    script.write_text(_CRASHING_CANCEL)
    died = run_command([sys.executable, str(script), settings, a], cwd=ROOT)
    assert died.returncode == 9, died.stderr
    assert statuses(a, b, c, d) == ["cancelled", "cancelled", "waiting", "waiting"]

    while app.store.settle_finished():
        pass
    assert statuses(a, b, c, d) == ["cancelled"] * 4
    assert not any(FOLLOWUPS in (app.store.get_job(j) or {}).get("links", []) for j in (a, b, c))


def test_the_sweep_reads_the_finished_jobs_with_the_marker_not_the_live_ones(app: App) -> None:
    """Every heartbeat of every process sweeps: with `status` in the index after `links`,
    its keys are the finished jobs with the marker, however many live ones carry it."""
    for n in range(150):  # antecedents still to run: live, with the marker
        Job.push(RecordJob(name=f"b{n}"), depends=[Job.push(RecordJob(name=f"a{n}"), delay=3600)])
    cut_short = [Job.push(RecordJob(name=f"x{n}"), delay=3600) for n in range(3)]
    for n, antecedent in enumerate(cut_short):
        Job.push(RecordJob(name=f"y{n}"), depends=[antecedent])
    # their workers wrote the completion and died before settling
    app.store.jobs.update_many({"_id": {"$in": cut_short}}, {"$set": {"status": "completed"}})

    command, _ = app.store.lifecycle_queries()["followups sweep"]
    index = next(ix for ix in app.store.jobs.list_indexes() if ix["name"] == command["hint"])
    partial = index.get("partialFilterExpression")
    assert not unbounded_fields(command["filter"], dict(index["key"]), partial), index
    _, explained = app.store.explain_find(command, "executionStats")
    stats = explained["executionStats"]
    assert stats["nReturned"] == 3
    if not is_secantus(explained):  # its keys examined are the documents it returned
        assert stats["totalKeysExamined"] <= 2 * 3 + 1, stats  # 153 on `links` alone
    assert app.store.settle_finished() == 3
