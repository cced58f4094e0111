"""The job document: an immutable record, its statuses, and push options.

Behaviour lives on the Job class the user subclasses; state lives in the
store; this module is the schema between the two.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from workers.errors import PushError

WAITING, PAUSED, READY, RUNNING = "waiting", "paused", "ready", "running"
FAILED, CANCELLED, COMPLETED = "failed", "cancelled", "completed"
STATUSES = (WAITING, PAUSED, READY, RUNNING, FAILED, CANCELLED, COMPLETED)

# jobCollection's names; lower runs first.
PRIORITIES = {"low": 10, "normal": 0, "medium": -5, "high": -10, "critical": -15}

# Bounds that keep a job document far from MongoDB's 16 MB limit, however a job logs or
# fails: the log keeps its newest entries, stored texts are clipped.
LOG_LIMIT = 200
TEXT_LIMIT = 8_000  # characters of a stored message
TRACEBACK_LIMIT = 32_000  # characters of a stored traceback (its end: where it was raised)
DATA_LIMIT = 16_000  # bytes of BSON of a log entry's data

Backoff = Literal["exponential", "fixed"]
_BACKOFFS = ("exponential", "fixed")


def clipped(text: str, limit: int, *, keep_end: bool = False) -> str:
    """`text` cut to `limit` characters, saying how much was cut."""
    if len(text) <= limit:
        return text
    cut = f"[{len(text) - limit} characters cut]"
    return f"{cut} ...{text[-limit:]}" if keep_end else f"{text[:limit]}... {cut}"


def error_document(
    message: str, kind: str, *, attempt: Any, node: Any, traceback: str | None = None
) -> dict[str, Any]:
    """The one shape of a stored error. `attempt` and `node` may be pipeline field paths."""
    return {
        "message": clipped(message, TEXT_LIMIT),
        "type": kind,
        "traceback": clipped(traceback, TRACEBACK_LIMIT, keep_end=True) if traceback else None,
        "attempt": attempt,
        "node": node,
    }


@dataclass(frozen=True)
class RetryPolicy:
    retries: int
    wait: float
    backoff: Backoff = "exponential"

    def delay_after(self, attempt: int) -> float:
        """Seconds to wait before the attempt after `attempt` (1-based), as monq did."""
        if self.backoff == "fixed":
            return self.wait
        return float(self.wait * 2 ** min(attempt - 1, 30))


@dataclass(frozen=True)
class PushOptions:
    """Validated options of one push; `run_at` is None for 'as soon as possible'."""

    priority: int = 0
    delay: float = 0.0
    run_at: datetime | None = None
    retry: RetryPolicy = field(default_factory=lambda: RetryPolicy(9, 1.0))
    timeout: float | None = None
    unique_key: str | None = None


@dataclass(frozen=True)
class JobRecord:
    """A job document as read from the store."""

    id: str
    type: str
    params: dict[str, Any]
    status: str
    priority: int
    attempts: int
    retry: RetryPolicy
    timeout: float | None = None
    lease_owner: str | None = None
    run_at: datetime | None = None

    @classmethod
    def from_document(cls, doc: Mapping[str, Any]) -> JobRecord:
        """Read a stored document; ValueError names the first field that is wrong."""
        return cls(
            id=_field(doc, "_id", str),
            type=_field(doc, "type", str),
            params=_field(doc, "params", dict),
            status=_field(doc, "status", str),
            priority=_field(doc, "priority", int),
            attempts=_field(doc, "attempts", int),
            retry=RetryPolicy(
                retries=_field(doc, "retries", int),
                wait=float(_field(doc, "retry_wait", (int, float))),
                backoff=_backoff(doc.get("backoff", "exponential")),
            ),
            timeout=_optional_number(doc, "timeout"),
            lease_owner=doc.get("lease_owner"),
            run_at=doc.get("run_at"),
        )

    @property
    def retries_left(self) -> bool:
        return self.attempts <= self.retry.retries

    def retry_in(self) -> float | None:
        """Seconds until the failed attempt is tried again; None: it failed for good. (The
        rescue decides the same in its pipeline: attempts <= retries.)"""
        return self.retry.delay_after(self.attempts) if self.retries_left else None


def new_document(
    job_id: str, job_type: str, params: dict[str, Any], options: PushOptions, now: datetime
) -> dict[str, Any]:
    """The document that `push` inserts; `now` is the database clock."""
    run_at = options.run_at or now + timedelta(seconds=options.delay)
    doc: dict[str, Any] = {
        "_id": job_id,
        "type": job_type,
        "params": params,
        "status": READY,
        "priority": options.priority,
        "run_at": run_at,
        "attempts": 0,
        "retries": options.retry.retries,
        "retry_wait": options.retry.wait,
        "backoff": options.retry.backoff,
        "timeout": options.timeout,
        "lease_owner": None,
        "lease_expires": None,
        "progress": None,
        "log": [],
        "result": None,
        "error": None,
        "created": now,
        "updated": now,
        "started": None,
        "finished": None,
    }
    if options.unique_key is not None:
        doc["unique_key"] = options.unique_key
    return doc


def parse_options(
    defaults: RetryPolicy,
    *,
    delay: float | None = None,
    after: datetime | None = None,
    priority: int | str | None = None,
    retry: int | Mapping[str, Any] | None = None,
    timeout: float | None = None,
    unique_key: str | None = None,
) -> PushOptions:
    """Validate push options; PushError names the option that is wrong."""
    if delay is not None and after is not None:
        raise PushError("push: give either delay or after, not both")
    if delay is not None and not _is_number(delay, minimum=0):
        raise PushError(f"push: delay must be a number of seconds >= 0, got {delay!r}")
    if after is not None and not isinstance(after, datetime):
        raise PushError(f"push: after must be a datetime, got {after!r}")
    if timeout is not None and not _is_number(timeout, minimum=0, strict=True):
        raise PushError(f"push: timeout must be a number of seconds > 0, got {timeout!r}")
    if unique_key is not None and not isinstance(unique_key, str):
        raise PushError(f"push: unique_key must be a string, got {unique_key!r}")
    return PushOptions(
        priority=parse_priority(priority),
        delay=float(delay or 0),
        run_at=_as_utc(after) if after is not None else None,
        retry=parse_retry(retry, defaults),
        timeout=float(timeout) if timeout is not None else None,
        unique_key=unique_key,
    )


def parse_priority(priority: int | str | None) -> int:
    if priority is None:
        return PRIORITIES["normal"]
    if isinstance(priority, str) and priority in PRIORITIES:
        return PRIORITIES[priority]
    if isinstance(priority, int) and not isinstance(priority, bool):
        return priority
    names = ", ".join(PRIORITIES)
    raise PushError(f"push: priority must be an int or one of {names}; got {priority!r}")


def parse_retry(retry: int | Mapping[str, Any] | None, defaults: RetryPolicy) -> RetryPolicy:
    """`retry` is a count or {"retries", "wait", "backoff"}; missing keys keep the defaults."""
    if retry is None:
        return defaults
    if isinstance(retry, int) and not isinstance(retry, bool):
        retry = {"retries": retry}
    if not isinstance(retry, Mapping):
        raise PushError(f"push: retry must be an int or a dict, got {retry!r}")
    unknown = set(retry) - {"retries", "wait", "backoff"}
    if unknown:
        raise PushError(f"push: unknown retry option(s) {sorted(unknown)}")
    retries = retry.get("retries", defaults.retries)
    wait = retry.get("wait", defaults.wait)
    backoff = retry.get("backoff", defaults.backoff)
    if not (isinstance(retries, int) and not isinstance(retries, bool) and retries >= 0):
        raise PushError(f"push: retry.retries must be an int >= 0, got {retries!r}")
    if not _is_number(wait, minimum=0):
        raise PushError(f"push: retry.wait must be a number of seconds >= 0, got {wait!r}")
    if backoff not in _BACKOFFS:
        raise PushError(f"push: retry.backoff must be one of {_BACKOFFS}, got {backoff!r}")
    return RetryPolicy(retries=retries, wait=float(wait), backoff=backoff)


def _is_number(value: object, *, minimum: float, strict: bool = False) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    if not math.isfinite(value):
        return False
    return value > minimum if strict else value >= minimum


def _as_utc(moment: datetime) -> datetime:
    """Naive datetimes are taken as UTC, as pymongo stores them."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _field(doc: Mapping[str, Any], name: str, kind: type | tuple[type, ...]) -> Any:
    value = doc.get(name)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise ValueError(f"job document field {name!r} is missing or invalid: {value!r}")
    return value


def _optional_number(doc: Mapping[str, Any], name: str) -> float | None:
    value = doc.get(name)
    if value is None:
        return None
    if not _is_number(value, minimum=0, strict=True):
        raise ValueError(f"job document field {name!r} is invalid: {value!r}")
    return float(value)


def _backoff(value: Any) -> Backoff:
    if value not in _BACKOFFS:
        raise ValueError(f"job document field 'backoff' is invalid: {value!r}")
    return value  # type: ignore[no-any-return]
