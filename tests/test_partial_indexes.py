"""A query hinted to a partial index must carry the index's filter in its own: MongoDB uses a
partial index only for a query whose predicate implies the partialFilterExpression, and it
does not take an equality as implying `$type` (MongoDB manual, "Partial Indexes: Query
Coverage"; with a hint, an ineligible partial index is an error or is read whole). The
embedded server is more lenient, so the rule is checked on the commands themselves."""

from __future__ import annotations

from typing import Any

from tests.plans import sort_follows_equalities, unbounded_fields
from workers.app import App


def _implied(filter_: dict[str, Any], partial: dict[str, Any]) -> bool:
    """Whether `filter_` repeats every clause of `partial`, as an equal value or, for an
    operator clause, the same operators with the same values beside its own (at the top or
    in one branch of an `$and`, whose branches all hold)."""
    if any(_implied(branch, partial) for branch in filter_.get("$and", [])):
        return True
    for field, wanted in partial.items():
        got = filter_.get(field)
        if isinstance(wanted, dict):
            if not isinstance(got, dict) or any(got.get(op) != v for op, v in wanted.items()):
                return False
        elif got != wanted:
            return False
    return True


def test_every_query_hinted_to_a_partial_index_repeats_its_filter(app: App) -> None:
    partial = {
        ix["name"]: dict(ix["partialFilterExpression"])
        for ix in app.store.jobs.list_indexes()
        if "partialFilterExpression" in ix
    }
    commands = {
        **app.store.hot_path_queries(app.registry.types),
        **app.store.lifecycle_queries(),
        **app.store.overview_queries(),
        **app.store.catch_up_queries(),
    }
    hinted = {
        name: command for name, (command, _) in commands.items() if command.get("hint") in partial
    }

    assert {"stage due", "next due", "unique holder", "finished since"} <= set(hinted), sorted(
        hinted
    )
    for name, command in hinted.items():
        filter_ = command["filter"]
        assert _implied(filter_, partial[command["hint"]]), (name, filter_)


def test_every_sorted_query_of_the_claim_path_is_in_index_order(app: App) -> None:
    """Checked on the commands, as the embedded server's explain says nothing of sorts."""
    keys = {ix["name"]: dict(ix["key"]) for ix in app.store.jobs.list_indexes()}
    commands = app.store.hot_path_queries(app.registry.types)
    sorted_ = {name: command for name, (command, _) in commands.items() if command.get("sort")}

    assert {"claim candidates", "next ready", "next due"} <= set(sorted_), sorted(sorted_)
    for name, command in sorted_.items():
        index = keys[command["hint"]]
        assert sort_follows_equalities(command["filter"], command["sort"], index), (name, index)


def test_the_order_rule_itself() -> None:
    claim = {"status": 1, "type": 1, "priority": 1, "run_at": 1}
    ready = {"status": "ready", "type": {"$in": ["A", "B"]}, "run_at": {"$gt": 0}}
    assert sort_follows_equalities(ready, {"priority": 1, "run_at": 1}, claim)
    assert not sort_follows_equalities(ready, {"run_at": 1}, claim)  # priority in between
    assert not sort_follows_equalities(ready, {"priority": 1, "run_at": -1}, claim)
    assert sort_follows_equalities(ready, {"run_at": 1}, {"type": 1, "run_at": 1})


def test_the_bounded_rule_reads_every_branch() -> None:
    keys, partial = {"finished": 1, "_id": 1}, {"finished": {"$type": "date"}}
    page = [{"finished": {"$gt": 1}}, {"finished": 1, "_id": {"$gt": "a"}}]
    assert (
        unbounded_fields({"$and": [{"finished": {"$gte": 0}}, {"$or": page}]}, keys, partial) == []
    )
    off_index = {"$and": [{"finished": {"$gte": 0}}, {"$or": [*page, {"status": "ready"}]}]}
    assert unbounded_fields(off_index, keys, partial) == ["status"]
    assert not _implied({"$and": [{"finished": {"$gte": 0}}]}, partial)
    assert _implied({"$and": [{"finished": {"$type": "date", "$gte": 0}}, {"_id": 1}]}, partial)
