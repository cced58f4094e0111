"""Reading query plans: the tests that keep every hot-path query on an index."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

Explain = Callable[[dict[str, Any]], tuple[dict[str, Any], dict[str, Any]]]


def plan_stages(plan: dict[str, Any]) -> list[dict[str, Any]]:
    stages = []
    stack = [plan]
    while stack:
        stage = stack.pop()
        stages.append(stage)
        stack.extend(stage.get("inputStages", []))
        if "inputStage" in stage:
            stack.append(stage["inputStage"])
    return stages


def winning_plan(explained: dict[str, Any]) -> dict[str, Any]:
    """The winning plan, in either shape MongoDB explains it: classic, or slot-based (6.0+
    runs eligible finds on SBE, and puts the plan under `queryPlan` beside `slotBasedPlan`);
    an aggregate's under its `$cursor` stage, or at the top where SBE ran it whole."""
    planner = explained.get("queryPlanner")
    if planner is None:
        planner = explained["stages"][0]["$cursor"]["queryPlanner"]
    plan: dict[str, Any] = planner["winningPlan"]
    return plan.get("queryPlan", plan)


def index_scans(explained: dict[str, Any]) -> tuple[list[str], list[str]]:
    """(names of the indexes scanned, names of every stage) of the winning plan."""
    stages = plan_stages(winning_plan(explained))
    return [s["indexName"] for s in stages if s["stage"] == "IXSCAN"], [s["stage"] for s in stages]


def is_secantus(explained: dict[str, Any]) -> bool:
    return "secantus" in json.dumps(explained.get("serverInfo", {})).lower()


def assert_on_index(
    name: str, command: dict[str, Any], explained: dict[str, Any], index: str, explain: Explain
) -> None:
    """The query `name` runs as an IXSCAN on `index`, never a COLLSCAN.

    SecantusDB's explain reports a filter on `_id` plus other fields as a COLLSCAN
    although its executor looks the ids up (0.7 ms at 5,000 documents, where a scan
    costs 90 ms), and hinting `_id_` makes it really scan the index. There, and only
    there, the `_id` clause is explained alone: the rest of the filter is applied to
    the documents it fetched. MongoDB always plans an `_id` equality or `$in` on `_id_`.
    """
    scanned, stages = index_scans(explained)
    if index == "_id_" and "COLLSCAN" in stages and is_secantus(explained):
        assert "_id" in command["filter"], f"{name}: not a lookup by _id: {command['filter']}"
        _, explained = explain({"filter": {"_id": command["filter"]["_id"]}})
        scanned, stages = index_scans(explained)
    assert "COLLSCAN" not in stages, f"{name}: collection scan for {command}"
    assert scanned and scanned[0] == index, f"{name}: expected an IXSCAN on {index}, got {stages}"


# MongoDB's internalQueryMaxScansToExplode: the ranges a sorted scan may merge in order
MAX_EXPLODED = 200


def sort_follows_equalities(
    filter_: dict[str, Any], sort: dict[str, int], keys: dict[str, int]
) -> bool:
    """MongoDB's rule for a sort without a SORT stage: past the index keys the filter holds
    equal (a value, or an `$in`: one range each, merged in order, at most MAX_EXPLODED
    ranges in all), the next keys are the sort's, all in the index's direction or all
    against it."""
    ranges = 1
    for clause in filter_.values():
        if isinstance(clause, dict) and isinstance(clause.get("$in"), list):
            ranges *= max(1, len(clause["$in"]))
    if ranges > MAX_EXPLODED:
        return False
    rest = list(keys.items())
    while rest and is_equality(filter_.get(rest[0][0])) and rest[0][0] not in sort:
        rest.pop(0)
    wanted = list(sort.items())
    if [name for name, _ in rest[: len(wanted)]] != [name for name, _ in wanted]:
        return False
    signs = {keys[name] * direction for name, direction in wanted}
    return len(signs) == 1


def is_equality(clause: Any) -> bool:
    """A value, or `$eq`/`$in` (beside the `$exists`/`$type` a partial index needs)."""
    if isinstance(clause, dict):
        matched = set(clause) - {"$exists", "$type"}
        return matched <= {"$eq", "$in"} and bool(matched)
    return clause is not None


def unbounded_fields(
    filter_: dict[str, Any], keys: dict[str, int], partial: dict[str, Any] | None
) -> list[str]:
    """The fields of `filter_` the index cannot bound, each a document fetched only to be
    thrown away: neither a key of the index nor a clause of its partial filter. A lookup by
    `_id` (a value or an `$in`) on `_id_` is bounded by the ids asked, whatever else it says."""
    if "_id" in keys and len(keys) == 1 and is_equality(filter_.get("_id")):
        return []
    partial = partial or {}
    found: list[str] = []
    for field, clause in filter_.items():
        if field in ("$and", "$or"):  # each branch bounded as a filter of its own
            found += [f for branch in clause for f in unbounded_fields(branch, keys, partial)]
        elif (
            field not in keys
            and partial.get(field) != clause
            and not (field == "$expr" and _referenced(clause) <= set(keys))
        ):
            found.append(field)
    return found


def _referenced(expression: Any) -> set[str]:
    """The fields an `$expr` reads: one that reads only index keys refines an index range
    (the rescue's clock check on `lease_expires`) and fetches nothing the range did not."""
    if isinstance(expression, str):
        return {expression[1:]} if expression.startswith("$") and expression[1:2] != "$" else set()
    if isinstance(expression, dict):
        return set().union(*(_referenced(v) for v in expression.values()))
    if isinstance(expression, list):
        return set().union(*(_referenced(v) for v in expression))
    return set()


def keys_bounded(stats: dict[str, Any], *, ranges: int = 10) -> bool:
    """Where the server's executionStats are real (MongoDB's), the keys one query examined
    are at most `ranges` per document returned: one per returned key and per range the
    plan merges (an `$in` of statuses is one range each), never the whole index."""
    return int(stats["totalKeysExamined"]) <= ranges * max(int(stats["nReturned"]), 1)
