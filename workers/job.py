"""The Job base class that app code subclasses, and `Job.push`."""

from __future__ import annotations

import functools
import logging
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, ClassVar, Protocol, TypedDict, Unpack, overload

from workers.errors import JobCancelled, JobFailed, WorkersError
from workers.lifecycle import Pushed, Status, StoredJob
from workers.params import Params, check, params_model
from workers.record import ActionResult, Repeat, RetryPolicy
from workers.store import Store


class ManyOptions(TypedDict, total=False):
    """The options of a push of many jobs at once (`Job.push_many`)."""

    delay: float | timedelta | None
    after: datetime | str | None
    priority: int | str | None
    retry: RetryPolicy | int | Mapping[str, Any] | None
    timeout: float | None


class PushOptions(ManyOptions, total=False):
    """The options of one push (`Job.push`, `job.push`, `workers.push_named`)."""

    depends: Sequence[str] | None
    repeat: Repeat | Mapping[str, Any] | None
    unique: str | None


class Pusher(Protocol):
    """The booted app, as Job.push sees it (the app module binds it: see `bind_app`)."""

    store: Store

    def push(self, job: Job, **options: Any) -> Pushed:
        """Validate and insert one job; raises PushError."""
        ...

    def push_many(self, jobs: Sequence[Job], **options: Any) -> list[Pushed]:
        """Validate every job, then insert them all; raises PushError naming each refused."""
        ...


def push_job(job: Job, /, **options: Unpack[PushOptions]) -> Pushed:
    """Queue `job`; returns its id (a str: `.existing` says a unique push found one, and
    `.wait()` and `.result()` wait for its outcome).

    Options: `delay` seconds or a timedelta, or `after` a datetime, an ISO-8601 string or
    "in 5 minutes"; `priority` an int (lower runs first) or low/normal/medium/high/
    critical; `retry` a `RetryPolicy`, a retry count or a dict of its fields; `timeout`
    seconds per attempt; `depends` ids that must complete first; `repeat` a `Repeat` (or
    {"repeats": n|"forever", "wait": seconds}); `unique` a key: while an unfinished job
    holds it, the push returns that job's id. Unset options come from settings
    `workers.queue`."""
    return _current_app().push(job, **options)


class _PushAJob(Protocol):
    def __call__(self, job: Job, /, **options: Unpack[PushOptions]) -> Pushed: ...


class _PushThisJob(Protocol):
    def __call__(self, **options: Unpack[PushOptions]) -> Pushed: ...


class PushVerb:
    """`Job.push(job, **options)` on a class and `job.push(**options)` on a job: one push
    (`push_job`), spelled either way."""

    __doc__ = push_job.__doc__

    @overload
    def __get__(self, instance: None, owner: type[Job]) -> _PushAJob: ...

    @overload
    def __get__(self, instance: Job, owner: type[Job]) -> _PushThisJob: ...

    def __get__(self, instance: Job | None, owner: type[Job]) -> _PushAJob | _PushThisJob:
        if instance is None:
            return push_job
        return functools.partial(push_job, instance)


_app_getter: Callable[[], Pusher] | None = None


def bind_app(getter: Callable[[], Pusher]) -> None:
    """Called once by workers.app: how Job.push finds (or boots) the app, so that this module,
    which the app imports, never imports the app back."""
    global _app_getter
    _app_getter = getter


def _current_app() -> Pusher:
    if _app_getter is None:  # `import workers` loads workers.app, which binds itself
        raise WorkersError("workers.app is not loaded: import workers before pushing")
    return _app_getter()


log = logging.getLogger("workers.job")

# jobCollection's levels (info, success, warning, danger) and Python's
LOG_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "success": logging.INFO,
    "warning": logging.WARNING,
    "danger": logging.ERROR,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
}


class Reports(Protocol):
    """Where a running attempt's progress and log go: the store, or, on a remote worker,
    the service over HTTP (remote_worker.py). Each write is refused (False) unless the
    attempt (`owner`, its claim token) still holds the job."""

    def set_progress(self, job_id: str, owner: str, progress: dict[str, Any]) -> bool:
        """Record the attempt's progress document."""
        ...

    def add_log(self, job_id: str, owner: str, entry: dict[str, Any]) -> bool:
        """Append an entry to the job's log."""
        ...

    def get_job(self, job_id: str) -> dict[str, Any] | None:
        """The job as stored (at least its `status`), or None."""
        ...


@dataclass
class Attempt:
    """What a running job needs to report back: where to (the store), its id and its lease
    owner, and whether the job failed itself (`Job.fail`)."""

    store: Reports
    job_id: str
    owner: str
    number: int
    failure: JobFailed | None = field(default=None)


class Job:
    """Subclass it, name the subclass `...Job`, implement `handle_job`.

    Params are the subclass's annotated fields (`project_id: str`, `days: int = 30`),
    checked where the job is made and typed on `self` (params.py); a class without any
    takes free-form params. `self.params` is the plain dict that is stored;
    `handle_job`'s return value is stored as the job's result.
    """

    #: Seconds an attempt may run before it is failed with a JobTimeout (None: no limit).
    timeout: ClassVar[float | None] = None
    #: IANA time zone in which `setup_cron` expressions are read.
    timezone: ClassVar[str] = "UTC"
    #: Ticks missed by more than the misfire grace: "latest" (fire the newest once), "all", "none".
    cron_missed: ClassVar[str] = "latest"
    #: At most this many of this type running in one worker process (None: no cap).
    concurrency: ClassVar[int | None] = None
    #: At most this many running across every process and node, enforced in the claim.
    global_concurrency: ClassVar[int | None] = None
    #: At most this many starts across the cluster in any window: "100/m" (/s, /h, /10s).
    rate_limit: ClassVar[str | None] = None
    #: The params model made from the annotated fields (None: free-form params).
    params_model: ClassVar[type[Params] | None] = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.params_model = params_model(cls, _RESERVED)  # the function of params.py

    def __init__(self, params: Mapping[str, Any] | None = None, /, **kwargs: Any) -> None:
        merged = dict(params or {})
        merged.update(kwargs)
        self.params: dict[str, Any] = self._checked(merged, strict=True)
        self.attempt: Attempt | None = None

    def _checked(self, given: dict[str, Any], *, strict: bool) -> dict[str, Any]:
        """`given`, checked against the params model when the class has one, its values set
        as attributes (typed); the stored form. ParamsError names the class and field."""
        model = type(self).params_model
        if model is None:
            return given
        values, stored = check(type(self).__name__, model, given, strict=strict)
        for name in type(values).model_fields:
            setattr(self, name, getattr(values, name))
        return stored

    def load_stored(self, params: dict[str, Any]) -> None:
        """Make this bare instance the job stored with `params` (a worker's read): its own
        `__init__` if the class has one, else the params model read leniently (a date
        stored as text is a date again). ParamsError when they no longer fit the class."""
        if type(self).__init__ is not Job.__init__:
            self.__init__(**params)  # type: ignore[misc]
        else:
            self.params = self._checked(dict(params), strict=False)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.params!r})"

    @property
    def id(self) -> str | None:
        """The job's id while an attempt runs (None outside one)."""
        return self.attempt.job_id if self.attempt else None

    # -- the hooks a subclass implements -----------------------------------------

    def before_job(self) -> Any:
        """Runs before handle_job; raising here fails the attempt. May be `async def`."""

    def handle_job(self) -> Any:
        """The job's work: its return value is stored as the result, an exception fails the
        attempt (retried while retries remain). May be `async def`. Subclasses implement it."""
        raise NotImplementedError(f"{type(self).__name__} does not implement handle_job()")

    def after_job(self, error: BaseException | None) -> Any:
        """Runs after every attempt with None or the exception; its own errors are only logged.
        May be `async def`."""

    @classmethod
    def setup_cron(cls) -> Any:
        """Return a cron expression, a list of them, or (expression, params) pairs, to have
        the job pushed on a schedule, once per tick across the cluster (croniter syntax,
        seconds as an optional sixth field); `self.params["tick"]` is the tick, ISO-8601 UTC."""
        return None

    # -- what a running job can call ------------------------------------------

    def progress(self, completed: float, total: float) -> None:
        """Record how far the job is; visible on the job document as `progress`."""
        numbers = all(
            isinstance(n, (int, float)) and not isinstance(n, bool) for n in (completed, total)
        )
        if not numbers or total <= 0 or not 0 <= completed <= total:
            raise ValueError(
                f"progress needs 0 <= completed <= total and total > 0, got {completed!r}/{total!r}"
            )
        percent = round(100.0 * completed / total, 2)
        document = {"completed": completed, "total": total, "percent": percent}
        self._report("progress", lambda a: a.store.set_progress(a.job_id, a.owner, document))

    def log(self, message: str, level: str = "info", **data: Any) -> None:
        """Append to the job's log in the database and to the process log."""
        if level not in LOG_LEVELS:
            raise ValueError(f"log level must be one of {sorted(LOG_LEVELS)}, got {level!r}")
        log.log(
            LOG_LEVELS[level],
            message,
            extra={"action": "job_log", "job_id": self.id, "type": type(self).__name__},
        )
        entry = {"level": level, "message": str(message), "data": data}
        self._report("log", lambda a: a.store.add_log(a.job_id, a.owner, entry))

    def fail(self, message: str, *, fatal: bool = False) -> None:
        """Fail this attempt once handle_job returns (its return value is then ignored),
        without raising through the job's code; `fatal` skips the remaining retries."""
        if self.attempt is not None:
            self.attempt.failure = JobFailed(str(message), fatal=fatal)

    def _report(self, what: str, write: Callable[[Attempt], bool]) -> None:
        """Best effort: progress and log must not fail a job because the database is away;
        but a job that was cancelled meanwhile raises JobCancelled here."""
        if self.attempt is None:
            return
        try:
            written = write(self.attempt)
        except WorkersError as exc:
            log.warning("job %s not recorded: %s", what, exc, extra={"job_id": self.id})
            return
        if not written and was_cancelled(self.attempt):
            raise JobCancelled(f"{type(self).__name__} {self.id} was cancelled while it ran")
        if not written:
            log.warning(
                "job write refused: this process no longer holds the job",
                extra={"action": "lease_lost", "job_id": self.id, "write": what},
            )

    # -- pushing ---------------------------------------------------------------

    def unique_key(self) -> str | None:
        """Override to make pushes of this class unique by a key (see `push(unique=)`)."""
        return None

    push = PushVerb()
    """Queue a job: `Job.push(job, **options)`, or `job.push(**options)` on the job itself.
    Returns its id, a `Pushed` (`.existing`, `.wait()`, `.result()`). The options are
    `push_job`'s: `delay`/`after`, `priority`, `retry` (a `RetryPolicy`, a count or a
    dict), `timeout`, `depends`, `repeat` (a `Repeat` or a dict) and `unique`."""

    @staticmethod
    def push_many(jobs: Sequence[Job], /, **options: Unpack[ManyOptions]) -> list[Pushed]:
        """Queue `jobs` in one bulk insert with the options of `Job.push` (but `depends`,
        `repeat` and `unique`); returns them pushed, in order. If any job is refused,
        PushError names each by position (`.refused`) and nothing is written."""
        return _current_app().push_many(jobs, **options)

    # -- managing stored jobs: deprecated here, in workers.jobs now -------------------------

    @staticmethod
    def get(job_id: str) -> StoredJob | None:
        """Deprecated: `workers.jobs.get`."""
        return _moved("get", "get")(job_id)  # type: ignore[no-any-return]

    @staticmethod
    def find(
        *, type: str | None = None, status: Status | None = None, limit: int = 50
    ) -> list[StoredJob]:
        """Deprecated: `workers.jobs.find`."""
        return _moved("find", "find")(type=type, status=status, limit=limit)  # type: ignore[no-any-return]

    @staticmethod
    def pause_many(ids: Iterable[str]) -> ActionResult:
        """Deprecated: `workers.jobs.pause`."""
        return _moved("pause_many", "pause")(ids)  # type: ignore[no-any-return]

    @staticmethod
    def resume_many(ids: Iterable[str]) -> ActionResult:
        """Deprecated: `workers.jobs.resume`."""
        return _moved("resume_many", "resume")(ids)  # type: ignore[no-any-return]

    @staticmethod
    def cancel_many(ids: Iterable[str], **options: Any) -> ActionResult:
        """Deprecated: `workers.jobs.cancel`."""
        return _moved("cancel_many", "cancel")(ids, **options)  # type: ignore[no-any-return]

    @staticmethod
    def restart_many(ids: Iterable[str], **options: Any) -> ActionResult:
        """Deprecated: `workers.jobs.restart`."""
        return _moved("restart_many", "restart")(ids, **options)  # type: ignore[no-any-return]

    @staticmethod
    def rerun_many(ids: Iterable[str], **options: Any) -> ActionResult:
        """Deprecated: `workers.jobs.rerun`."""
        return _moved("rerun_many", "rerun")(ids, **options)  # type: ignore[no-any-return]

    @staticmethod
    def remove_many(ids: Iterable[str]) -> ActionResult:
        """Deprecated: `workers.jobs.remove`."""
        return _moved("remove_many", "remove")(ids)  # type: ignore[no-any-return]


def _moved(old: str, new: str) -> Callable[..., Any]:
    """The `workers.jobs` function that replaced `Job.<old>`, after a DeprecationWarning
    naming it (where the caller called)."""
    from workers import jobs  # the module imports lifecycle, as this one does: no cycle

    warnings.warn(
        f"Job.{old}() is deprecated: use workers.jobs.{new}()", DeprecationWarning, stacklevel=3
    )
    function: Callable[..., Any] = getattr(jobs, new)
    return function


# names a params field may not take: what Job itself defines
_RESERVED = frozenset(vars(Job)) | {"params", "attempt", "id", "type"}


def was_cancelled(attempt: Attempt) -> bool:
    """Was the job this attempt runs cancelled? (Why a write for it was refused.)"""
    try:
        doc = attempt.store.get_job(attempt.job_id)
    except WorkersError:
        return False
    return bool(doc and doc.get("status") == "cancelled")


class JobHandle(Job):
    """What a `process_jobs` handler gets: the job's id, type and params, and what a running
    job can call (`progress`, `log`, `fail`)."""

    def __init__(self, job_type: str, params: Mapping[str, Any] | None = None) -> None:
        super().__init__(params)
        self.type = job_type

    def __repr__(self) -> str:
        return f"JobHandle({self.type} {self.id}, {self.params!r})"
