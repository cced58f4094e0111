"""Schemathesis against the API's own OpenAPI document: cases generated from the schema,
schema-valid (positive) and schema-invalid (negative), with numbers at their extremes,
sent with an admin token; no response is a 5xx, and every response matches the schema
documented for its status."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode

import workers
from tests.web_support import bearer, token_settings
from workers.app import App
from workers.settings import Settings
from workers.web.server import create_app

pytestmark = pytest.mark.tooling

# Per operation. The suite's run is derandomized, so CI sees the same cases every time;
# HYPOTHESIS_PROFILE=fuzz explores at random, with more of them.
FUZZ = os.environ.get("HYPOTHESIS_PROFILE") == "fuzz"
EXAMPLES = 200 if FUZZ else 15


@pytest.fixture
def web_app(make_settings: Callable[..., Settings]) -> Iterator[App]:
    booted = workers.boot(settings=make_settings(web__tokens=token_settings(), web__cache=0))
    booted.push_named("RecordJob", {"n": 1}, owner="admin")
    yield booted
    workers.shutdown()


# schemathesis's negative cases draw from the global `random` while generating (its code,
# not ours): Hypothesis warns about it, and with warnings as errors, at random
@pytest.mark.filterwarnings(
    "ignore:Do not use the `random` module inside strategies"
    ":hypothesis.errors.HypothesisDeprecationWarning"
)
def test_every_operation_answers_as_its_schema_says(
    web_app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a request for work waits up to its `wait` (30 s at most) for a job of its types: here
    # at most 50 ms, or the cases that ask for types with no job would take minutes
    monkeypatch.setattr("workers.dispatch.MAX_WAIT", 0.05)
    web = create_app(booted_app=web_app)
    loaded = schemathesis.openapi.from_asgi("/openapi.json", web, headers=bearer("viewer"))
    # GET /api/events is an endless stream (server-sent events): its own tests follow it
    schema = loaded.exclude(path="/api/events")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 8
    seen: set[str] = set()
    # each operation on its own, its positive and negative cases together: one draw over all
    # of them left some out when the schema changed (a derandomized run is still a draw)
    for operation in operations:
        strategy = st.one_of([operation.as_strategy(mode) for mode in GenerationMode])
        _check_cases(strategy, seen)
    assert len(seen) == len(operations), f"not every operation was exercised: {sorted(seen)}"


def _check_cases(strategy: st.SearchStrategy[schemathesis.Case], seen: set[str]) -> None:
    @given(case=strategy)
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        database=None,
        derandomize=not FUZZ,
    )
    def check(case: schemathesis.Case) -> None:
        seen.add(f"{case.method} {case.path}")
        # A request the schema allows may still be refused with a 422 for what no schema
        # says (an unparseable `after` phrase, antecedents that do not exist): the check
        # that every schema-valid request succeeds is left out; every other one runs.
        case.call_and_validate(
            headers=bearer("admin"), excluded_checks=[schemathesis.checks.positive_data_acceptance]
        )

    check()
