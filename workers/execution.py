"""One attempt of one job: hooks, outcome, and the conditional write of that outcome."""

from __future__ import annotations

import logging
import traceback
from typing import Any

from workers.app import App
from workers.errors import ShutdownRequested, WorkersError
from workers.job import Attempt, Job
from workers.record import JobRecord
from workers.store import bson_problem

log = logging.getLogger(__name__)


def error_document(exc: BaseException, attempt: int, owner: str) -> dict[str, Any]:
    kind = type(exc)
    return {
        "message": str(exc) or kind.__name__,
        "type": f"{kind.__module__}.{kind.__qualname__}",
        "traceback": "".join(traceback.format_exception(exc)),
        "attempt": attempt,
        "node": owner,
    }


def run_attempt(app: App, owner: str, doc: dict[str, Any]) -> None:
    """Run a claimed job once and record the outcome; never raises for the job's own errors."""
    try:
        record = JobRecord.from_document(doc)
    except ValueError as exc:
        _fail_malformed(app, owner, doc, exc)
        return
    job_class = app.registry.get(record.type)
    if job_class is None:  # the claim filters on registered types; kept as a guard
        app.store.release([record.id], owner)
        return
    extra = {"job_id": record.id, "type": record.type, "attempt": record.attempts}
    log.info("job started", extra={"action": "job_started", **extra})
    job, result, error = _call_handler(app, owner, job_class, record)
    _record_outcome(app, owner, record, result, error)
    _call_after_job(job, error, extra)


def _call_handler(
    app: App, owner: str, job_class: type[Job], record: JobRecord
) -> tuple[Job, Any, BaseException | None]:
    job = _instantiate(job_class, record.params)
    try:
        job.__init__(**record.params)  # type: ignore[misc]  # the subclass's own __init__, if any
        job.attempt = Attempt(app.store, record.id, owner, record.attempts)
        job.before_job()
        result = job.handle_job()
        problem = bson_problem({"result": result})
        if problem:
            raise TypeError(f"handle_job returned a value that is not BSON-encodable: {problem}")
        return job, result, None
    except ShutdownRequested:
        raise
    except BaseException as exc:  # a job's SystemExit must not end the worker thread either
        return job, None, exc


def _instantiate(job_class: type[Job], params: dict[str, Any]) -> Job:
    """A bare instance with params set, so after_job runs even if the subclass's __init__ fails."""
    job = job_class.__new__(job_class)
    Job.__init__(job, params)
    return job


def _record_outcome(
    app: App, owner: str, record: JobRecord, result: Any, error: BaseException | None
) -> None:
    extra = {"job_id": record.id, "type": record.type, "attempt": record.attempts}
    try:
        if error is None:
            written = app.store.complete(record.id, owner, result)
            outcome = "completed"
        else:
            retry_in = record.retry.delay_after(record.attempts) if record.retries_left else None
            document = error_document(error, record.attempts, owner)
            written = app.store.fail(record.id, owner, document, retry_in)
            outcome = "failed" if retry_in is None else "will retry"
    except WorkersError as exc:
        log.error(
            "could not record the job's outcome: %s", exc, extra={"action": "outcome_lost", **extra}
        )
        return
    if not written:
        log.warning(
            "job outcome refused: this process no longer holds the job",
            extra={"action": "lease_lost", **extra},
        )
    elif error is None:
        log.info("job completed", extra={"action": "job_completed", **extra})
    else:
        log.warning(
            "job %s: %s: %s",
            outcome,
            type(error).__name__,
            error,
            extra={"action": "job_failed", "outcome": outcome, **extra},
        )


def _call_after_job(job: Job, error: BaseException | None, extra: dict[str, Any]) -> None:
    try:
        job.after_job(error)
    except Exception:
        log.exception("after_job raised; ignored", extra={"action": "after_job_error", **extra})


def _fail_malformed(app: App, owner: str, doc: dict[str, Any], exc: ValueError) -> None:
    """A document we cannot read is failed for good: retrying cannot make it readable."""
    job_id = doc.get("_id")
    log.error("malformed job document %r: %s", job_id, exc, extra={"action": "job_malformed"})
    attempts = doc.get("attempts") if isinstance(doc.get("attempts"), int) else 0
    app.store.fail(job_id, owner, error_document(exc, attempts, owner), None)  # type: ignore[arg-type]
