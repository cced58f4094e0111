"""A stored job as the app sees it (`workers.jobs.get`, `workers.jobs.find`), and the actions on it.

A `StoredJob` is a snapshot of the document (`refresh()` reads it again); its
actions are the store's conditional updates, so an action the job's status does
not allow raises TransitionRefused, naming the job, its status and the statuses
the action needs, and changes nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from typing import Any, Generic, Literal, TypeVar, overload

from workers import waiting
from workers.errors import JobCancelled, JobFailed, JobNotFound, TransitionRefused, WorkersError
from workers.record import ALLOWED, CANCELLED, COMPLETED, FOLLOWUPS, STATUSES, ActionResult
from workers.store import Store

ReturnWhen = Literal["all", "first"]
Status = Literal[
    "waiting", "scheduled", "paused", "ready", "running", "failed", "cancelled", "completed"
]
_current_store: Callable[[], Store] | None = None


def bind_store(getter: Callable[[], Store]) -> None:
    """Called once by the app module: where a Pushed made without a store waits."""
    global _current_store
    _current_store = getter


def current_store() -> Store:
    """The booted app's store (booting it from the default settings on first use)."""
    if _current_store is None:
        raise WorkersError("no app is booted (workers.boot())")
    return _current_store()


class Pushed(str):
    """The id `Job.push` returns. `existing` is True when the push inserted nothing because
    an unfinished job holds its `unique` key: the id is that job's."""

    existing: bool
    _store: Store | None

    def __new__(cls, job_id: str, existing: bool = False, store: Store | None = None) -> Pushed:
        """A pushed job's id (`existing`: a unique push found the job already there), bound
        to the store it waits on."""
        pushed = super().__new__(cls, job_id)
        pushed.existing = existing
        pushed._store = store
        return pushed

    def wait(self, timeout: float | None = None) -> StoredJob:
        """The job once it finished (completed, failed or cancelled). TimeoutError past
        `timeout` seconds; JobNotFound if no job has this id (or it was removed). For a
        repeating job, this run: the next run is another job."""
        (job,) = wait_jobs(self._waits_on(), [str(self)], timeout)
        return job

    def result(self, timeout: float | None = None) -> Any:
        """The job's result once it completed; JobFailed (with the stored error) if it
        failed, JobCancelled if it was cancelled; TimeoutError and JobNotFound as `wait`."""
        return outcome(self.wait(timeout))

    async def wait_async(self, timeout: float | None = None) -> StoredJob:
        """`wait` for asyncio: no thread per waiter. Raises TimeoutError, JobNotFound."""
        (job,) = await wait_jobs_async(self._waits_on(), [str(self)], timeout)
        return job

    async def result_async(self, timeout: float | None = None) -> Any:
        """`result` for asyncio. Raises JobFailed, JobCancelled, TimeoutError, JobNotFound."""
        return outcome(await self.wait_async(timeout))

    def _waits_on(self) -> Store:
        return self._store if self._store is not None else current_store()


T = TypeVar("T")


class Field(Generic[T]):
    """A typed, read-only view of one field of a stored job's document."""

    def __init__(self, read: Callable[[dict[str, Any]], T]) -> None:
        self._read = read

    @overload
    def __get__(self, job: None, owner: type) -> Field[T]: ...

    @overload
    def __get__(self, job: StoredJob, owner: type) -> T: ...

    def __get__(self, job: StoredJob | None, owner: type) -> Field[T] | T:
        return self if job is None else self._read(job._doc)


def _time(doc: dict[str, Any], name: str) -> datetime | None:
    value = doc.get(name)
    return value if isinstance(value, datetime) else None


def _int_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


class StoredJob:
    """A job document, read from the store, with the lifecycle actions."""

    def __init__(self, store: Store, doc: Mapping[str, Any]) -> None:
        self._store = store
        self._doc = dict(doc)

    def __repr__(self) -> str:
        return f"<StoredJob {self.id} {self.type} {self.status}>"

    id = Field[str](lambda doc: str(doc["_id"]))
    type = Field[str](lambda doc: str(doc.get("type")))
    status = Field[Status](lambda doc: doc["status"])
    params = Field[dict[str, Any]](lambda doc: dict(doc.get("params") or {}))
    priority = Field[int](lambda doc: int(doc.get("priority") or 0))
    attempts = Field[int](lambda doc: int(doc.get("attempts") or 0))
    retries = Field[int | None](lambda doc: _int_or_none(doc.get("retries")))
    #: `completed`, `total` and `percent`, once the job reported any
    progress = Field[dict[str, float] | None](lambda doc: doc.get("progress"))
    #: the log entries (`time`, `level`, `message`, `data`), oldest first
    log = Field[list[dict[str, Any]]](lambda doc: list(doc.get("log") or []))
    result = Field[Any](lambda doc: doc.get("result"))
    #: the last failure: `message`, `type`, `traceback`, `attempt`
    error = Field[dict[str, Any] | None](lambda doc: doc.get("error"))
    depends = Field[list[str]](lambda doc: list(doc.get("depends") or []))
    #: the antecedents this job still waits for
    pending = Field[list[str]](lambda doc: [a for a in doc.get("links") or [] if a != FOLLOWUPS])
    repeats_left = Field[int | str | None](lambda doc: doc.get("repeats_left"))
    unique = Field[str | None](lambda doc: doc.get("unique"))
    #: the token name that pushed it through the web API (None: the app's own code)
    owner = Field[str | None](lambda doc: doc.get("owner"))
    created = Field[datetime | None](lambda doc: _time(doc, "created"))
    started = Field[datetime | None](lambda doc: _time(doc, "started"))
    finished = Field[datetime | None](lambda doc: _time(doc, "finished"))
    run_at = Field[datetime | None](lambda doc: _time(doc, "run_at"))

    @property
    def document(self) -> dict[str, Any]:
        """The whole stored document (a copy)."""
        return dict(self._doc)

    def wait(self, timeout: float | None = None) -> StoredJob:
        """This job once it finished, read again (as `Pushed.wait`)."""
        (job,) = wait_jobs(self._store, [self.id], timeout)
        self._doc = job._doc
        return self

    def refresh(self) -> StoredJob:
        """Read the job again; JobNotFound if it was removed."""
        doc = self._store.get_job(self.id)
        if doc is None:
            raise JobNotFound(f"job {self.id} no longer exists")
        self._doc = doc
        return self

    # -- actions ---------------------------------------------------------------------

    def pause(self) -> StoredJob:
        """Pause the job (waiting, ready or scheduled); returns it as it is now. Raises
        TransitionRefused when its status does not allow it, JobNotFound when it is gone."""
        return self._act("pause")

    def resume(self) -> StoredJob:
        """Resume the paused job; returns it as it is now. Raises TransitionRefused otherwise."""
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


def wait_jobs(
    store: Store,
    ids: Iterable[str],
    timeout: float | None = None,
    return_when: ReturnWhen = "all",
) -> list[StoredJob]:
    """The finished jobs of `ids`, in their order: all of them, or (`first`) those finished
    when the first did. TimeoutError past `timeout`; JobNotFound names ids no job has."""
    wanted = _ids(ids, return_when)
    waiter = waiting.waiters_of(store).wait(wanted, timeout, first=return_when == "first")
    return _finished(store, wanted, waiter)


async def wait_jobs_async(
    store: Store,
    ids: Iterable[str],
    timeout: float | None = None,
    return_when: ReturnWhen = "all",
) -> list[StoredJob]:
    """`wait_jobs` for asyncio."""
    wanted = _ids(ids, return_when)
    waiters = waiting.waiters_of(store)
    waiter = await waiters.wait_async(wanted, timeout, first=return_when == "first")
    return _finished(store, wanted, waiter)


def _ids(ids: Iterable[str], return_when: str) -> list[str]:
    if return_when not in ("all", "first"):
        raise WorkersError(f"wait: return_when must be 'all' or 'first', got {return_when!r}")
    if isinstance(ids, str):  # one id, not its characters
        return [ids]
    return list(dict.fromkeys(str(job_id) for job_id in ids))


def _finished(store: Store, ids: list[str], waiter: waiting.Waiter) -> list[StoredJob]:
    if waiter.missing:
        raise JobNotFound(f"wait: no job has the id {', '.join(sorted(waiter.missing))}")
    return [StoredJob(store, waiter.found[job_id]) for job_id in ids if job_id in waiter.found]


def outcome(job: StoredJob) -> Any:
    """A finished job's result, or the exception that says why it has none."""
    if job.status == COMPLETED:
        return job.result
    if job.status == CANCELLED:
        raise JobCancelled(f"{job.type} {job.id} was cancelled", job_id=job.id)
    error = job.error if isinstance(job.error, dict) else {}
    message = error.get("message", "no error recorded")
    raise JobFailed(f"{job.type} {job.id} failed: {message}", job_id=job.id, error=error)


def get(store: Store, job_id: str) -> StoredJob | None:
    """The stored job of `job_id`, or None."""
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
    """Jobs of a type and/or status, newest first (at most `limit`), on an index."""
    if status is not None and status not in STATUSES:
        choices = ", ".join(STATUSES)
        raise WorkersError(f"find: status must be one of {choices}; got {status!r}")
    if not (isinstance(limit, int) and limit > 0):
        raise WorkersError(f"find: limit must be an int > 0, got {limit!r}")
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
