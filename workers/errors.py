"""One exception tree. Each class's docstring is its default message."""

from __future__ import annotations

from typing import Any


class WorkersError(Exception):
    """workers failed."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or "").strip())


class SettingsError(WorkersError):
    """The settings are invalid."""


class DiscoveryError(WorkersError):
    """The job classes could not be discovered."""


class CronError(WorkersError):
    """A cron schedule is invalid."""


class PushError(WorkersError):
    """The job could not be pushed."""

    def __init__(self, message: str | None = None, *, refused: list[tuple[int, str]] | None = None):
        super().__init__(message)
        #: push_many: (position, reason) of every job refused
        self.refused = refused or []


class DatabaseUnavailable(WorkersError):
    """The MongoDB server could not be reached."""


class ServerTooOld(WorkersError):
    """The MongoDB server is older than the queries of this version need."""


class ServerUnsupported(WorkersError):
    """The server is not MongoDB but an emulation of its API (Amazon DocumentDB, Azure
    Cosmos DB)."""


class StoreError(WorkersError):
    """MongoDB refused an operation."""


class IndexConflict(StoreError):
    """An index under one of our names has other keys or options than the service needs."""


class IndexesMissing(StoreError):
    """Indexes the service needs are missing, and mongo.create_indexes is false."""


class IndexBuildTimeout(StoreError):
    """An index build outlasted mongo.index_build_timeout."""


class Busy(WorkersError):
    """A bounded resource of the web process (its text searches) is all in use: ask again."""


class ClaimIncomplete(WorkersError):
    """A claim was interrupted after its write was sent: some jobs may be held under its token."""

    def __init__(self, token: str, ids: list[Any], cause: BaseException) -> None:
        super().__init__(f"claim {token} was interrupted: {cause}")
        self.token = token
        self.ids = ids


class StreamEnded(WorkersError):
    """A change stream's cursor closed on the server's side (an invalidate): reopen it."""


class StreamUnavailable(WorkersError):
    """The server offers no change streams (a standalone mongod): wake-ups fall back to polling."""


class EmbeddedServerError(WorkersError):
    """The embedded MongoDB-compatible server could not be started."""


class JobTimeout(WorkersError, TimeoutError):
    """The job ran past its timeout."""


class LeaseLost(WorkersError):
    """This process no longer held the job when its outcome was written (handed back, rescued
    after its lease lapsed, or taken over): the outcome was refused and the job runs again."""


class JobNotFound(WorkersError):
    """No job has that id."""


class TransitionRefused(WorkersError):
    """The job's status does not allow that action; nothing was changed."""

    def __init__(self, job_id: Any, action: str, status: str | None, allowed: tuple[str, ...]):
        super().__init__(
            f"cannot {action} job {job_id}: it is {status or 'gone'}, and {action} needs "
            f"{' or '.join(allowed)}"
        )
        self.job_id, self.action, self.status, self.allowed = job_id, action, status, allowed


class JobCancelled(WorkersError):
    """The job was cancelled (while it ran: its outcome is not recorded; or, raised by
    `Pushed.result`, before it completed)."""

    def __init__(self, message: str, *, job_id: str | None = None) -> None:
        super().__init__(message)
        self.job_id = job_id


class JobFailed(WorkersError):
    """The job failed itself (`self.fail(message)`), or, raised by `Pushed.result`, it
    failed for good: `error` is the stored error (message, type, traceback)."""

    def __init__(
        self,
        message: str,
        *,
        fatal: bool = False,
        job_id: str | None = None,
        error: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        #: no retries left to try: the job fails for good
        self.fatal = fatal
        self.job_id = job_id
        self.error = error or {}


class RemoteError(WorkersError):
    """The service (workers web) refused a request of workers.remote: a 4xx, or a 5xx that
    is not transient."""

    def __init__(self, status: int, detail: str, body: Any = None) -> None:
        super().__init__(f"the service answered {status}: {detail}")
        self.status, self.detail, self.body = status, detail, body


class Unreachable(WorkersError):
    """The service did not answer within the retries given (no connection, or 502-504)."""
