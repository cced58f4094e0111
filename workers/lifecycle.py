"""A stored job as the app sees it (`Job.get`, `Job.find`), and the actions on it.

A `StoredJob` is a snapshot of the document (`refresh()` reads it again); its
actions are the store's conditional updates, so an action the job's status does
not allow raises TransitionRefused, naming the job, its status and the statuses
the action needs, and changes nothing.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from workers.errors import JobNotFound, TransitionRefused, WorkersError
from workers.record import ALLOWED, FOLLOWUPS, STATUSES, ActionResult
from workers.store import Store


class Pushed(str):
    """The id `Job.push` returns. `existing` is True when the push inserted nothing because
    an unfinished job holds its `unique` key: the id is that job's."""

    existing: bool

    def __new__(cls, job_id: str, existing: bool = False) -> Pushed:
        pushed = super().__new__(cls, job_id)
        pushed.existing = existing
        return pushed


class StoredJob:
    """A job document, read from the store, with the lifecycle actions."""

    def __init__(self, store: Store, doc: Mapping[str, Any]) -> None:
        self._store = store
        self._doc = dict(doc)

    def __repr__(self) -> str:
        return f"<StoredJob {self.id} {self.type} {self.status}>"

    def _get(self, name: str, default: Any = None) -> Any:
        return self._doc.get(name, default)

    id = property(lambda self: str(self._doc["_id"]))
    type = property(lambda self: self._get("type"))
    status = property(lambda self: self._get("status"))
    params = property(lambda self: self._get("params", {}))
    priority = property(lambda self: self._get("priority"))
    attempts = property(lambda self: self._get("attempts", 0))
    retries = property(lambda self: self._get("retries"))
    progress = property(lambda self: self._get("progress"))
    log = property(lambda self: list(self._get("log") or []))
    result = property(lambda self: self._get("result"))
    error = property(lambda self: self._get("error"))
    depends = property(lambda self: list(self._get("depends") or []))
    pending = property(lambda self: [a for a in self._get("links") or [] if a != FOLLOWUPS])
    repeats_left = property(lambda self: self._get("repeats_left"))
    unique = property(lambda self: self._get("unique"))

    created = property(lambda self: self._time("created"))
    started = property(lambda self: self._time("started"))
    finished = property(lambda self: self._time("finished"))
    run_at = property(lambda self: self._time("run_at"))

    def _time(self, name: str) -> datetime | None:
        value = self._get(name)
        return value if isinstance(value, datetime) else None

    @property
    def document(self) -> dict[str, Any]:
        """The whole stored document (a copy)."""
        return dict(self._doc)

    def refresh(self) -> StoredJob:
        """Read the job again; JobNotFound if it was removed."""
        doc = self._store.get_job(self.id)
        if doc is None:
            raise JobNotFound(f"job {self.id} no longer exists")
        self._doc = doc
        return self

    # -- actions ---------------------------------------------------------------------

    def pause(self) -> StoredJob:
        return self._act("pause")

    def resume(self) -> StoredJob:
        return self._act("resume")

    def cancel(self, *, dependents: bool = True, antecedents: bool = False) -> StoredJob:
        """Cancel the job and (by default) every job that depends on it; a running job sees
        it at its next progress/log call, and its outcome is refused."""
        return self._act("cancel", dependents=dependents, antecedents=antecedents)

    def restart(
        self, *, antecedents: bool = True, dependents: bool = False, retries: int = 0
    ) -> StoredJob:
        """A failed or cancelled job runs again: one more attempt plus `retries` retries;
        by default its failed or cancelled antecedents are restarted first."""
        return self._act("restart", antecedents=antecedents, dependents=dependents, retries=retries)

    def rerun(self, *, delay: float = 0) -> StoredJob:
        """A completed job runs again as a new job; returns the new one."""
        result = self._act_on_store("rerun", delay=delay)
        return get(self._store, result.created[self._doc["_id"]]) or self

    def remove(self) -> None:
        """Delete a finished job (and cancel any job still waiting on it)."""
        self._act_on_store("remove")

    def _act(self, action: str, **options: Any) -> StoredJob:
        self._act_on_store(action, **options)
        return self.refresh()

    def _act_on_store(self, action: str, **options: Any) -> ActionResult:
        return act_on_one(self._store, action, str(self._doc["_id"]), **options)


def get(store: Store, job_id: str) -> StoredJob | None:
    doc = store.get_job(job_id)
    return StoredJob(store, doc) if doc is not None else None


def find(
    store: Store,
    *,
    type: str | None = None,
    status: str | None = None,
    limit: int = 50,
    before: str | None = None,
) -> list[StoredJob]:
    if status is not None and status not in STATUSES:
        choices = ", ".join(STATUSES)
        raise WorkersError(f"Job.find: status must be one of {choices}; got {status!r}")
    if not (isinstance(limit, int) and limit > 0):
        raise WorkersError(f"Job.find: limit must be an int > 0, got {limit!r}")
    docs = store.find_jobs(type=type, status=status, limit=limit, before=before)
    return [StoredJob(store, doc) for doc in docs]


def act_on_one(store: Store, action: str, job_id: str, **options: Any) -> ActionResult:
    """`action` on one job; a refusal raises TransitionRefused (or JobNotFound)."""
    result = act(store, action, [job_id], **options)
    if job_id in result.errors:
        raise WorkersError(f"cannot {action} job {job_id}: {result.errors[job_id]}")
    if job_id in result.refused:
        status = result.refused[job_id]
        if status is None:
            raise JobNotFound(f"cannot {action} job {job_id}: no job has that id")
        raise TransitionRefused(job_id, action, status, ALLOWED[action])
    return result


def act(store: Store, action: str, ids: Iterable[Any], **options: Any) -> ActionResult:
    """`action` on many jobs: each one changed or refused; nothing raised for a refusal.
    `owner=` keeps the action and its cascades to that owner's jobs (the others are
    `spared`): what a creator's request through the web may change."""
    if action not in ALLOWED:
        raise WorkersError(f"unknown action {action!r}; use one of {', '.join(ALLOWED)}")
    ids = [str(job_id) for job_id in ids]
    return store.act(action, ids, **options)
