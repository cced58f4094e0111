"""The index entries each transition of a job writes, for every index on the jobs
collection (issue 38): per document, a server's cost is its index maintenance, so an
index added later, or a field a transition starts to change, has to update this table.

The transitions run through the store's own writes on the server; the entries are then
counted from the documents before and after each, by the rules every B-tree index keeps:
an index whose key is unchanged is not touched, a changed key is one entry removed and
one added, a document entering or leaving a partial index adds or removes its keys, and
an array field has one key per element (`links`)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from tests.jobs import RecordJob
from workers import Job
from workers.app import App
from workers.record import error_document

# entries written per transition, by index (the indexes a transition does not touch: 0;
# `schedule`, `unique_key` and `links_status` hold delayed, unique and linked jobs only)
EXPECTED = {
    "push": {"_id_": 1, "claim_queue": 1, "listing": 1, "ready_times": 1},
    "claim": {"claim_queue": 2, "listing": 2, "ready_times": 1, "running_leases": 1},
    "complete": {"claim_queue": 2, "listing": 2, "running_leases": 1, "expire_at": 1,
                 "finished_at": 1},
    "settle": {},  # no follow-ups: its marker was never set
    "retry": {"claim_queue": 2, "listing": 2, "ready_times": 1, "running_leases": 1},
    "fail": {"claim_queue": 2, "listing": 2, "running_leases": 1, "expire_at": 1,
             "finished_at": 1},
    "push a dependent": {"_id_": 1, "claim_queue": 1, "listing": 1, "links_status": 1},
    "release it": {"claim_queue": 2, "listing": 2, "ready_times": 1, "links_status": 2},
}  # fmt: skip


Step = tuple[str, dict[str, Any] | None, dict[str, Any] | None]


def test_each_transition_writes_the_index_entries_of_the_table(app: App) -> None:
    indexes = [dict(index) for index in app.store.jobs.list_indexes()]
    counted = {name: _entries(indexes, before, after) for name, before, after in _lives(app)}
    assert counted == EXPECTED, _table(counted)
    print("\n" + _table(counted))


def _lives(app: App) -> list[tuple[str, dict[str, Any] | None, dict[str, Any]]]:
    """(transition, document before, document after) through two jobs' lives: one pushed,
    claimed, completed and settled; one failed once with a retry, then for good."""
    store = app.store
    steps: list[Step] = []
    done = Job.push(RecordJob(n=1))
    steps.append(("push", None, store.get_job(done)))
    token = _claim(app, done)
    steps.append(("claim", steps[-1][2], store.get_job(done)))
    assert store.complete(done, token, {"ok": True})
    steps.append(("complete", steps[-1][2], store.get_job(done)))
    store.settle(done)
    steps.append(("settle", steps[-1][2], store.get_job(done)))
    failing = Job.push(RecordJob(n=2))
    before = store.get_job(failing)
    token = _claim(app, failing)
    claimed = store.get_job(failing)
    assert store.fail(failing, token, _error(1), retry_in=0)
    steps.append(("retry", claimed, store.get_job(failing)))
    token = _claim(app, failing)
    claimed = store.get_job(failing)
    assert store.fail(failing, token, _error(2), retry_in=None)
    steps.append(("fail", claimed, store.get_job(failing)))
    assert before is not None
    steps += _dependent_life(app)
    return [(name, b, a) for name, b, a in steps if a is not None]


def _dependent_life(app: App) -> list[Step]:
    """A job waiting on another, pushed, then released when the other completes."""
    store = app.store
    first = Job.push(RecordJob(n=3))
    waiting = Job.push(RecordJob(n=4), depends=[first])
    pushed = store.get_job(waiting)
    assert store.complete(first, _claim(app, first), None)
    store.settle(first)
    return [("push a dependent", None, pushed), ("release it", pushed, store.get_job(waiting))]


def _claim(app: App, job_id: str) -> str:
    (doc,) = app.store.claim_ids(f"entries#{job_id}", ["RecordJob"], 30, [job_id])
    return str(doc["lease_owner"])


def _error(attempt: int) -> dict[str, Any]:
    return error_document("boom", "RuntimeError", attempt=attempt, node="entries")


def _entries(
    indexes: list[dict[str, Any]], before: dict[str, Any] | None, after: dict[str, Any]
) -> dict[str, int]:
    written = {}
    for index in indexes:
        old, new = _keys(index, before), _keys(index, after)
        if changed := len(old ^ new):
            written[str(index["name"])] = changed
    return written


def _keys(index: dict[str, Any], doc: dict[str, Any] | None) -> set[tuple[Any, ...]]:
    """The keys `doc` has in `index`: none outside its partial filter, one per element of
    an array field (the only arrays our indexes hold are `links`)."""
    if doc is None or not _matches(doc, index.get("partialFilterExpression") or {}):
        return set()
    keys: list[tuple[Any, ...]] = [()]
    for field in index["key"]:
        value = doc.get(field)
        values = value if isinstance(value, list) and value else [_hashable(value)]
        keys = [(*key, _hashable(v)) for key in keys for v in values]
    return set(keys)


def _hashable(value: Any) -> Any:
    return repr(value) if isinstance(value, dict | list) else value


def _matches(doc: dict[str, Any], partial: dict[str, Any]) -> bool:
    """The partial filters our indexes use: a value, `$exists`, `$type` date or string."""
    return all(_holds(doc, field, wanted) for field, wanted in partial.items())


def _holds(doc: dict[str, Any], field: str, wanted: Any) -> bool:
    value = doc.get(field)
    if not isinstance(wanted, dict):
        return bool(value == wanted)
    if "$exists" in wanted and (field in doc) != bool(wanted["$exists"]):
        return False
    return "$type" not in wanted or _of_type(value, wanted["$type"])


def _of_type(value: Any, name: str) -> bool:
    return {"date": isinstance(value, datetime), "string": isinstance(value, str)}[name]


def _table(counted: dict[str, dict[str, int]]) -> str:
    names = sorted({name for row in counted.values() for name in row})
    lines = ["| transition | " + " | ".join(names) + " | total |"]
    for step, row in counted.items():
        cells = [str(row.get(name, 0)) for name in names]
        lines.append(f"| {step} | " + " | ".join(cells) + f" | {sum(row.values())} |")
    return "\n".join(lines)
