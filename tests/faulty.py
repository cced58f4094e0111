"""Network faults at the driver boundary: the real collection, except for chosen calls.

The server is real; only the reply of one call is lost (or the call is refused
before it is sent), as a dropped connection or a stepping-down primary would do.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

# What to do with a call: None (pass it), "before" (raise without sending it), or
# "after" (send it, let the server apply it, then raise as if the reply was lost).
Verdict = Callable[[str, tuple[Any, ...], dict[str, Any]], str | None]


class FaultyCollection:
    def __init__(
        self, real: Any, verdict: Verdict, error: Callable[[], BaseException], thread: str = ""
    ) -> None:
        self._real = real
        self._verdict = verdict
        self._error = error
        self._thread = thread  # only calls from this thread are judged ("" = any)
        self.calls: list[str] = []

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._real, name)
        if not callable(attribute):
            return attribute

        def call(*args: Any, **kwargs: Any) -> Any:
            if self._thread and threading.current_thread().name != self._thread:
                return attribute(*args, **kwargs)
            self.calls.append(name)
            verdict = self._verdict(name, args, kwargs)
            if verdict == "before":
                raise self._error()
            result = attribute(*args, **kwargs)
            if verdict == "after":
                raise self._error()
            return result

        return call


def count_candidate_scans(store: Any) -> dict[str, int]:
    """Wrap `store.jobs` so that every candidate scan of the claim index is counted in
    the returned `{"n": ...}`: the finds in queue order (hinted or not, by the server's
    profile); the next-due read and the stage's are not."""
    from workers.store.claims import CLAIM_SORT

    scans = {"n": 0}

    def count(name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        scans["n"] += name == "find" and kwargs.get("sort") == CLAIM_SORT and "limit" in kwargs
        return None

    store.jobs = FaultyCollection(store.jobs, count, AssertionError)
    return scans


def count_claim_picks(store: Any) -> dict[str, int]:
    """Wrap `store.jobs` so that every claim write is counted in the returned `{"asked": ids
    it named, "got": jobs it took}`: a pick that found jobs already taken shows as less."""
    picks = {"asked": 0, "got": 0}
    real = store.jobs

    class Counted:
        def __getattr__(self, name: str) -> Any:
            return getattr(real, name)

        def update_many(self, query: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
            result = real.update_many(query, *args, **kwargs)
            if query.get("status") == "ready" and "$in" in query.get("_id", {}):
                picks["asked"] += len(query["_id"]["$in"])
                picks["got"] += result.matched_count
            return result

    store.jobs = Counted()
    return picks
