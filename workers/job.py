"""The Job base class that app code subclasses, and `Job.push`."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from workers.errors import WorkersError

if TYPE_CHECKING:
    from workers.store import Store


class Pusher(Protocol):
    """The booted app, as Job.push sees it (the app module binds it: see `bind_app`)."""

    def push(self, job: Job, **options: Any) -> str: ...

    def push_many(self, jobs: Sequence[Job], **options: Any) -> list[str]: ...


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

LOG_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
}


@dataclass(frozen=True)
class Attempt:
    """What a running job needs to report back: its store, its id and its lease owner."""

    store: Store
    job_id: str
    owner: str
    number: int


class Job:
    """Subclass it, name the subclass `...Job`, implement `handle_job`.

    `self.params` is the dict given at construction; `handle_job`'s return
    value is stored as the job's result.
    """

    #: Seconds an attempt may run before it is failed with a JobTimeout (None: no limit).
    timeout: ClassVar[float | None] = None
    #: IANA time zone in which `setup_cron` expressions are read.
    timezone: ClassVar[str] = "UTC"
    #: Ticks missed by more than the misfire grace: "latest" (fire the newest once), "all", "none".
    cron_missed: ClassVar[str] = "latest"

    def __init__(self, params: Mapping[str, Any] | None = None, /, **kwargs: Any) -> None:
        merged = dict(params or {})
        merged.update(kwargs)
        self.params: dict[str, Any] = merged
        self.attempt: Attempt | None = None

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.params!r})"

    @property
    def id(self) -> str | None:
        return self.attempt.job_id if self.attempt else None

    # -- the hooks a subclass implements -----------------------------------------

    def before_job(self) -> None:
        """Runs before handle_job; raising here fails the attempt."""

    def handle_job(self) -> Any:
        raise NotImplementedError(f"{type(self).__name__} does not implement handle_job()")

    def after_job(self, error: BaseException | None) -> None:
        """Runs after every attempt with None or the exception; its own errors are only logged."""

    @classmethod
    def setup_cron(cls) -> Any:
        """Return a cron expression, a list of them, or (expression, params) pairs, to have
        the job pushed on a schedule, once per tick across the cluster (croniter syntax,
        seconds as an optional sixth field); `self.params["tick"]` is the tick, ISO-8601 UTC."""
        return None

    # -- what a running job can call ------------------------------------------

    def progress(self, completed: float, total: float) -> None:
        """Record how far the job is; visible on the job document as `progress`."""
        if total <= 0 or completed < 0:
            raise ValueError(
                f"progress needs 0 <= completed and total > 0, got {completed}/{total}"
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

    def _report(self, what: str, write: Callable[[Attempt], bool]) -> None:
        """Best effort: progress and log must not fail a job because the database is away."""
        if self.attempt is None:
            return
        try:
            written = write(self.attempt)
        except WorkersError as exc:
            log.warning("job %s not recorded: %s", what, exc, extra={"job_id": self.id})
            return
        if not written:
            log.warning(
                "job write refused: this process no longer holds the job",
                extra={"action": "lease_lost", "job_id": self.id, "write": what},
            )

    # -- pushing ---------------------------------------------------------------

    @staticmethod
    def push(
        job: Job,
        *,
        delay: float | None = None,
        after: datetime | None = None,
        priority: int | str | None = None,
        retry: int | Mapping[str, Any] | None = None,
        timeout: float | None = None,
    ) -> str:
        """Queue `job` and return its id.

        Options: `delay` seconds or `after` a datetime; `priority` an int (lower
        runs first) or low/normal/medium/high/critical; `retry` a retry count or
        {"retries": n, "wait": seconds, "backoff": "exponential"|"fixed"};
        `timeout` seconds per attempt. Unset options come from
        settings `workers.queue`.
        """
        return _current_app().push(
            job, delay=delay, after=after, priority=priority, retry=retry, timeout=timeout
        )

    @staticmethod
    def push_many(
        jobs: Sequence[Job],
        *,
        delay: float | None = None,
        after: datetime | None = None,
        priority: int | str | None = None,
        retry: int | Mapping[str, Any] | None = None,
        timeout: float | None = None,
    ) -> list[str]:
        """Queue `jobs` in one bulk insert with the options of `Job.push`; returns their ids
        in order. If any job is refused, PushError names each by position (`.refused`) and
        nothing is written."""
        return _current_app().push_many(
            jobs, delay=delay, after=after, priority=priority, retry=retry, timeout=timeout
        )
