"""One attempt of one job: hooks, outcome, and the conditional write of that outcome.

The outcome write is retried through a database outage for as long as the
job is still ours, so an outage cannot leave a finished job `running`; if the
job stops being ours meanwhile (handed back, rescued, timed out), the write
is dropped and the job's new state stands.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from workers import tracing
from workers.app import App
from workers.errors import (
    DatabaseUnavailable,
    JobCancelled,
    JobFailed,
    JobTimeout,
    LeaseLost,
    WorkersError,
)
from workers.job import Attempt, Job, JobHandle, was_cancelled
from workers.metrics import Tally
from workers.params import ParamsError
from workers.record import TEXT_LIMIT, JobRecord, clipped, error_document
from workers.retrying import Backoff
from workers.store import bson_problem

log = logging.getLogger(__name__)

_WRITE_BACKOFF_MAX = 10.0


@dataclass(eq=False)
class Held:
    """A job this process holds the lease of, from claim to outcome."""

    doc: dict[str, Any]
    token: str  # the claim token: every write for this attempt is conditional on it
    started: float | None = None  # monotonic; set once a thread starts it
    deadline: float | None = None  # monotonic; from the job's timeout
    timeout: float | None = None
    timed_out: bool = False
    returned_at: float | None = None  # monotonic; when the handler returned
    released: threading.Event = field(default_factory=threading.Event)
    done: threading.Event = field(default_factory=threading.Event)
    # Decides between the watchdog and the returning handler: exactly one of them
    # records the attempt's outcome.
    _decided: threading.Lock = field(default_factory=threading.Lock)

    @property
    def job_id(self) -> Any:
        return self.doc.get("_id")

    @property
    def abandoned(self) -> bool:
        """No longer ours: handed back, taken over, or failed by the watchdog."""
        return self.released.is_set()

    def abandon(self, *, timed_out: bool = False) -> None:
        self.timed_out = self.timed_out or timed_out
        self.released.set()

    def time_out(self, now: float) -> bool:
        """The watchdog's claim on the outcome: True (and the attempt abandoned) if it is past
        its deadline and the handler has not returned; a returned job keeps its outcome,
        however long the write of that outcome takes."""
        with self._decided:
            if self.deadline is None or now <= self.deadline or self.abandoned:
                return False
            if self.returned_at is not None:
                return False
            self.abandon(timed_out=True)
            return True

    def handler_returned(self, now: float) -> bool:
        """The handler's claim on the outcome: True if it returned by its deadline and the
        watchdog had not timed it out first."""
        with self._decided:
            if self.timed_out:
                return False
            self.returned_at = now
            return self.deadline is None or now <= self.deadline

    def stuck(self, now: float) -> bool:
        """Timed out and still not returned after a further min(timeout, 5 s), at least 1 s."""
        if not self.timed_out or self.deadline is None or self.done.is_set():
            return False
        return now > self.deadline + max(1.0, min(self.timeout or 0.0, 5.0))


def exception_error(exc: BaseException, attempt: int, owner: str) -> dict[str, Any]:
    kind = type(exc)
    return error_document(
        str(exc) or kind.__name__,
        f"{kind.__module__}.{kind.__qualname__}",
        attempt=attempt,
        node=owner,
        traceback="".join(traceback.format_exception(exc)),
    )


def run_attempt(app: App, held: Held) -> None:
    """Run a claimed, started job once and record the outcome; a job's errors never escape."""
    owner = held.token
    record = _readable(app, held)
    if record is None:
        return
    job_class = app.registry.get(record.type)
    if job_class is None:  # the claim filters on registered types; kept as a guard
        app.store.release({record.id: owner}, f"type {record.type} is not registered here")
        return
    _set_deadline(held, record)
    extra = {"job_id": record.id, "type": record.type, "attempt": record.attempts}
    log.info("job started", extra={"action": "job_started", **extra})
    trace = held.doc.get("trace")
    with (
        EventLoop() as loop,
        tracing.attempt(record.type, record.id, record.attempts, trace) as span,
    ):
        span.end(_run_and_record(app, owner, held, job_class, record, loop))


def _run_and_record(
    app: App,
    owner: str,
    held: Held,
    job_class: type[Job],
    record: JobRecord,
    loop: EventLoop,
) -> BaseException | None:
    """Run the attempt, record its outcome and call after_job; the attempt's error."""
    extra = {"job_id": record.id, "type": record.type, "attempt": record.attempts}
    job, result, error = _call_handler(app, owner, job_class, record, held, loop)
    if not held.handler_returned(time.monotonic()):
        result, error = (
            None,
            JobTimeout(f"{record.type} ran past its timeout of {record.timeout:g} s"),
        )
    if not held.timed_out:  # else the watchdog recorded the timeout
        error = _record_outcome(app, owner, held, record, result, error)
    _call_after_job(job, error, extra, loop)
    return error


Handler = Callable[[Any], Any]


def run_handler(app: App, held: list[Held], handler: Handler, cargo: int) -> None:
    """Run claimed, started jobs through a `process_jobs` handler, `handler(job)` (cargo 1)
    or `handler(jobs)`, and record each job's outcome as `run_attempt` does: its result
    (a list as long as the jobs gives each its own), the handler's error, or its own
    `fail()`; a timeout or a cancel is each job's own."""
    runs = [(one, record) for one in held if (record := _readable(app, one)) is not None]
    if not runs:
        return
    jobs = []
    for one, record in runs:
        _set_deadline(one, record)
        job = JobHandle(record.type, record.params)
        job.attempt = Attempt(app.store, record.id, one.token, record.attempts)
        jobs.append(job)
    deadlines = [one.deadline for one, _ in runs if one.deadline is not None]
    with EventLoop() as loop:
        try:
            value = awaited(
                handler(jobs[0] if cargo == 1 else jobs), loop, min(deadlines, default=None)
            )
            error: BaseException | None = None
        except BaseException as exc:  # as run_attempt: nothing a handler raises ends the thread
            value, error = None, exc
    results = (
        value
        if isinstance(value, list) and len(value) == len(jobs) and cargo > 1
        else [value] * len(jobs)
    )
    for (one, record), job, result in zip(runs, jobs, results, strict=True):
        _record_handled(app, one, record, job, result, error)


def _record_handled(
    app: App, held: Held, record: JobRecord, job: Job, result: Any, error: BaseException | None
) -> None:
    if error is None and job.attempt is not None and job.attempt.failure is not None:
        result, error = None, job.attempt.failure
    if error is None and (problem := bson_problem({"result": result})):
        error = TypeError(f"the handler returned a value that is not BSON-encodable: {problem}")
    if not held.handler_returned(time.monotonic()):
        result, error = (
            None,
            JobTimeout(f"{record.type} ran past its timeout of {record.timeout:g} s"),
        )
    if not held.timed_out:
        _record_outcome(app, held.token, held, record, result, error)


def _readable(app: App, held: Held) -> JobRecord | None:
    """The job's record; a document we cannot read is failed for good instead (None)."""
    try:
        return JobRecord.from_document(held.doc)
    except ValueError as exc:
        _fail_malformed(app, held.token, held, exc)
        return None


def _set_deadline(held: Held, record: JobRecord) -> None:
    if record.timeout is not None and held.started is not None:
        held.timeout = record.timeout
        held.deadline = held.started + record.timeout


def record_timeout(app: App, held: Held) -> None:
    """The watchdog's write: fail (or retry) the attempt with a JobTimeout, retried through
    an outage until the server answers (the attempt is already abandoned, so this write is
    the only one left for it)."""
    owner = held.token
    try:
        record = JobRecord.from_document(held.doc)
    except ValueError as exc:
        log.error("could not record a timeout; the lease will expire: %s", exc)
        return
    message = f"{record.type} ran past its timeout of {held.timeout:g} s"
    error = exception_error(JobTimeout(message), record.attempts, owner)
    retry_in = record.retry_in()
    written = _persist(held, lambda: app.store.fail(record.id, owner, error, retry_in), after=True)
    extra = {"job_id": record.id, "type": record.type}
    if isinstance(written, WorkersError):
        return  # _persist logged the refusal; the lease will lapse and rescue the job
    if not written:  # the job was handed back or rescued meanwhile
        log.warning(
            "job timed out; the timeout was not recorded: this process no longer holds the job",
            extra={"action": "lease_lost", **extra},
        )
        return
    outcome = "failed" if retry_in is None else "will retry"
    _count(app.tally, held, record, outcome)
    log.warning("job timed out", extra={"action": "job_timeout", "outcome": outcome, **extra})


def _call_handler(
    app: App, owner: str, job_class: type[Job], record: JobRecord, held: Held, loop: EventLoop
) -> tuple[Job, Any, BaseException | None]:
    job = instantiate(job_class, record.params)
    try:
        try:
            job.load_stored(record.params)
        except ParamsError as exc:  # an old job after a deploy: no attempt would fit either
            raise JobFailed(str(exc), fatal=True) from None
        job.attempt = Attempt(app.store, record.id, owner, record.attempts)
        awaited(job.before_job(), loop, held.deadline)
        result = awaited(job.handle_job(), loop, held.deadline)
        if job.attempt.failure is not None:  # the job called self.fail()
            return job, None, job.attempt.failure
        problem = bson_problem({"result": result})
        if problem:
            raise TypeError(f"handle_job returned a value that is not BSON-encodable: {problem}")
        return job, result, None
    except BaseException as exc:  # a job's SystemExit must not end the worker thread either
        return job, None, exc


class EventLoop:
    """The event loop of one attempt's async hooks, made on first use: a job without any
    (the common case, on the hot path) never pays for a loop."""

    def __init__(self) -> None:
        self._runner: asyncio.Runner | None = None

    def __enter__(self) -> EventLoop:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._runner is not None:
            self._runner.close()

    def run(self, awaitable: Any) -> Any:
        if self._runner is None:
            self._runner = asyncio.Runner()
        return self._runner.run(awaitable)


def awaited(value: Any, loop: EventLoop, deadline: float | None = None) -> Any:
    """`value`, or, for a coroutine (an `async def` hook), its result, run on the attempt's
    event loop (one per attempt, on the job's thread, shared by its hooks); past the
    job's deadline the task is cancelled (a TimeoutError)."""
    if not inspect.isawaitable(value):
        return value
    left = None if deadline is None else max(0.0, deadline - time.monotonic())
    return loop.run(asyncio.wait_for(value, left))


def instantiate(job_class: type[Job], params: dict[str, Any]) -> Job:
    """A bare instance with params set (unchecked), so after_job runs even if the params or
    the subclass's __init__ fail."""
    job = job_class.__new__(job_class)
    job.params, job.attempt = dict(params), None
    return job


def _record_outcome(
    app: App, owner: str, held: Held, record: JobRecord, result: Any, error: BaseException | None
) -> BaseException | None:
    """Write the attempt's outcome; returns the error `after_job` gets: the job's own, or
    LeaseLost when the outcome was refused because the job is no longer ours."""
    extra = {"job_id": record.id, "type": record.type, "attempt": record.attempts}
    outcome = "completed"
    written: bool | WorkersError = False
    if error is None:
        written = _persist(held, lambda: app.completions.complete(record.id, owner, result))
        if isinstance(written, WorkersError):  # the result itself cannot be stored (too large)
            error = written
    if error is not None:
        app.completions.settle(owner, record.id)  # no completion will come from this one
        fatal = isinstance(error, JobFailed) and error.fatal
        retry_in = None if fatal else record.retry_in()
        outcome = "failed" if retry_in is None else "will retry"
        written = _persist_failure(app, owner, held, record, error, retry_in)
    if not written and was_cancelled(Attempt(app.store, record.id, owner, record.attempts)):
        log.info("job cancelled while it ran", extra={"action": "job_cancelled", **extra})
        cancelled = JobCancelled(f"{record.type} {record.id} was cancelled while it ran")
        cancelled.__cause__ = error
        return cancelled
    if not written or isinstance(written, WorkersError):
        log.warning(
            "job outcome not written: this process no longer holds the job",
            extra={"action": "lease_lost", **extra},
        )
        lost = LeaseLost(
            f"the {outcome} outcome of {record.type} {record.id} (attempt {record.attempts}) "
            "was refused: this process no longer holds the job (handed back, or rescued after "
            "its lease lapsed), so this attempt does not count as its outcome"
        )
        lost.__cause__ = error
        return lost
    _count(app.tally, held, record, outcome)
    if error is None:
        log.info("job completed", extra={"action": "job_completed", **extra})
    else:
        log.warning(
            "job %s: %s: %s",
            outcome,
            type(error).__name__,
            clipped(str(error), TEXT_LIMIT),
            extra={"action": "job_failed", "outcome": outcome, **extra},
        )
    return error


def _count(tally: Tally, held: Held, record: JobRecord, outcome: str) -> None:
    """Add the recorded attempt to the app's tally (metrics.py): memory only."""
    started = held.started
    duration = None if started is None else time.monotonic() - started
    tally.outcome(record.type, "retried" if outcome == "will retry" else outcome, duration)
    tally.picked_up(record.type, held.doc.get("run_at"), held.doc.get("started"))


def _persist_failure(
    app: App,
    owner: str,
    held: Held,
    record: JobRecord,
    error: BaseException,
    retry_in: float | None,
) -> bool | WorkersError:
    document = exception_error(error, record.attempts, owner)
    written = _persist(held, lambda: app.store.fail(record.id, owner, document, retry_in))
    if isinstance(written, WorkersError):  # e.g. a gigantic message: record a short one instead
        document = {**document, "message": str(error)[:2000], "traceback": None}
        written = _persist(held, lambda: app.store.fail(record.id, owner, document, retry_in))
    return written


def _persist(held: Held, write: Callable[[], bool], *, after: bool = False) -> bool | WorkersError:
    """Run a conditional write, retrying through outages while the job is ours (or, `after`
    the attempt was abandoned, until the server answers: the write's filter decides).

    Returns the write's answer (False as well once the job is no longer ours),
    or the error with which the database refused the write itself.
    """
    backoff = Backoff(0.5, _WRITE_BACKOFF_MAX)
    while after or not held.abandoned:
        try:
            return write()
        except DatabaseUnavailable as exc:
            delay = backoff.next()
            log.warning(
                "database unavailable; retrying the job's outcome in %.1f s: %s",
                delay,
                exc,
                extra={"action": "outcome_retry", "job_id": held.job_id},
            )
        except WorkersError as exc:
            log.error(
                "the database refused the job's outcome: %s",
                exc,
                extra={"action": "outcome_refused", "job_id": held.job_id},
            )
            return exc
        if after:
            time.sleep(delay)
        else:
            held.released.wait(delay)
    return False


def _call_after_job(
    job: Job, error: BaseException | None, extra: dict[str, Any], loop: EventLoop
) -> None:
    try:
        awaited(job.after_job(error), loop)
    except Exception:
        log.exception("after_job raised; ignored", extra={"action": "after_job_error", **extra})


def _fail_malformed(app: App, owner: str, held: Held, exc: ValueError) -> None:
    """A document we cannot read is failed for good: retrying cannot make it readable."""
    attempts = held.doc.get("attempts")
    error = exception_error(exc, attempts if isinstance(attempts, int) else 0, owner)
    log.error("malformed job document %r: %s", held.job_id, exc, extra={"action": "job_malformed"})
    _persist(held, lambda: app.store.fail(held.job_id, owner, error, None))
