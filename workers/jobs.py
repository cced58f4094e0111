"""Reading and managing stored jobs, in one module: `workers.jobs.get(id)`,
`workers.jobs.find(type=..., status=...)`, and the lifecycle actions on many jobs by id.

    import workers.jobs

    failed = workers.jobs.find(type="EmailJob", status="failed")
    workers.jobs.restart([job.id for job in failed], retries=2)

Each action changes what its status allows and reports the rest in its `ActionResult`
(nothing raised for a refusal); one job's actions are on `StoredJob` too
(`workers.jobs.get(id).cancel()`), raising `TransitionRefused` there.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from workers import lifecycle
from workers.lifecycle import Status, StoredJob
from workers.record import ActionResult

__all__ = ["cancel", "find", "get", "pause", "remove", "rerun", "restart", "resume"]


def get(job_id: str) -> StoredJob | None:
    """The stored job (a snapshot with the lifecycle actions); None for an unknown id."""
    return lifecycle.get(lifecycle.current_store(), str(job_id))


def find(
    *, type: str | None = None, status: Status | None = None, limit: int = 50
) -> list[StoredJob]:
    """Jobs of a type and/or status, newest first, on an index."""
    return lifecycle.find(lifecycle.current_store(), type=type, status=status, limit=limit)


def pause(ids: Iterable[str]) -> ActionResult:
    """Pause these jobs (waiting, ready or scheduled)."""
    return _act("pause", ids)


def resume(ids: Iterable[str]) -> ActionResult:
    """Resume these paused jobs."""
    return _act("resume", ids)


def cancel(
    ids: Iterable[str], *, dependents: bool = True, antecedents: bool = False
) -> ActionResult:
    """Cancel these jobs (and, by default, the jobs that depend on them)."""
    return _act("cancel", ids, dependents=dependents, antecedents=antecedents)


def restart(
    ids: Iterable[str], *, antecedents: bool = True, dependents: bool = False, retries: int = 0
) -> ActionResult:
    """Run these failed or cancelled jobs again (and their failed antecedents), with
    `retries` more attempts."""
    return _act("restart", ids, antecedents=antecedents, dependents=dependents, retries=retries)


def rerun(ids: Iterable[str], *, delay: float = 0) -> ActionResult:
    """Push a copy of each of these finished jobs, due after `delay` seconds."""
    return _act("rerun", ids, delay=delay)


def remove(ids: Iterable[str]) -> ActionResult:
    """Delete these finished, cancelled or paused jobs for good."""
    return _act("remove", ids)


def _act(action: str, ids: Iterable[str], **options: Any) -> ActionResult:
    if isinstance(ids, str):  # one id, not its characters
        ids = [ids]
    return lifecycle.act(lifecycle.current_store(), action, ids, **options)
