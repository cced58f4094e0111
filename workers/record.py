"""The job document: an immutable record, its statuses, and push options.

Behaviour lives on the Job class the user subclasses; state lives in the
store; this module is the schema between the two.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal

WAITING, PAUSED, READY, RUNNING = "waiting", "paused", "ready", "running"
# due later than HORIZON from now (a delay, an `after`, a long retry wait): kept out of the
# ready set, so that what the claimers scan is what runs now or soon, however many jobs
# wait for tomorrow; staged to ready HORIZON before its run_at (Oban's stager, ahead of
# time: a burst due at one instant is staged before it, not written at it)
SCHEDULED = "scheduled"
HORIZON = timedelta(seconds=60)
FAILED, CANCELLED, COMPLETED = "failed", "cancelled", "completed"
STATUSES = (WAITING, SCHEDULED, PAUSED, READY, RUNNING, FAILED, CANCELLED, COMPLETED)
FINISHED = (COMPLETED, FAILED, CANCELLED)

# The statuses each action allows (jobCollection's); any other status refuses it.
ALLOWED = {
    "pause": (READY, SCHEDULED, WAITING),
    "resume": (PAUSED,),
    "cancel": (RUNNING, READY, SCHEDULED, WAITING, PAUSED),
    "restart": (FAILED, CANCELLED),
    "rerun": (COMPLETED,),
    "remove": FINISHED,
}

# jobCollection's names; lower runs first.
PRIORITIES = {"low": 10, "normal": 0, "medium": -5, "high": -10, "critical": -15}

# Bounds that keep a job document far from MongoDB's 16 MB limit, however a job logs or
# fails: the log keeps its newest entries, stored texts are clipped.
LOG_LIMIT = 200
# A full log drops its oldest entries down to LOG_KEPT in one write, not one per entry: an
# append is then one new array element in the oplog and in the change event, where a log
# sliding by one rewrote every entry (MongoDB's update diffs have no "remove first").
LOG_KEPT = 150
TEXT_LIMIT = 8_000  # characters of a stored message
TRACEBACK_LIMIT = 32_000  # characters of a stored traceback (its end: where it was raised)
DATA_LIMIT = 16_000  # bytes of BSON of a log entry's data

Backoff = Literal["exponential", "fixed"]
BACKOFFS = ("exponential", "fixed")
FOREVER = "forever"
# In `links`: something must happen after this job finishes (dependents, a repeat).
FOLLOWUPS = "+followups"
# An app's unique key, in the `unique_key` index beside cron's tick keys ("cron:...").
UNIQUE_PREFIX = "unique:"


def unique_key_of(job_type: str, owner: str | None, key: str) -> str:
    """The indexed form of a unique key: scoped by type and by who pushed (the app: no
    owner), so that a creator cannot squat a key another owner (or the app) will push,
    and a key's existence does not leak across owners. Type and owner go length-prefixed,
    so no type, owner or key can pass for another's (`store.lifecycle` builds the same
    form in a pipeline when a restart takes the key back)."""
    who = owner or ""
    return f"{UNIQUE_PREFIX}{len(job_type)}:{job_type}{len(who)}:{who}:{key}"


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
    """`retries` more attempts after a failure, `wait` (seconds or a timedelta) before the
    first, doubled each time (`backoff="exponential"`) or not ("fixed"), each wait moved by
    up to `jitter` of itself either way. Pass it as `push(retry=...)`."""

    retries: int
    wait: float | timedelta = 1.0
    backoff: Backoff = "exponential"
    jitter: float = 0.0

    @property
    def wait_seconds(self) -> float:
        return seconds_of(self.wait)

    def delay_after(self, attempt: int, draw: Callable[[], float] = random.random) -> float:
        """Seconds to wait before the attempt after `attempt` (1-based), as monq did, moved
        by the jitter: `draw()` in [0, 1) picks where in [wait*(1-j), wait*(1+j)]."""
        first = self.wait_seconds
        wait = first if self.backoff == "fixed" else first * 2 ** min(attempt - 1, 30)
        if self.jitter:
            wait *= 1 + self.jitter * (2 * draw() - 1)
        return float(wait)


@dataclass(frozen=True)
class Repeat:
    """Run again `wait` (seconds or a timedelta) after each completion, `repeats` more times
    (or "forever"). Pass it as `push(repeat=...)`."""

    repeats: int | Literal["forever"] = "forever"
    wait: float | timedelta = 0.0


def seconds_of(value: float | timedelta) -> float:
    return value.total_seconds() if isinstance(value, timedelta) else float(value)


@dataclass(frozen=True)
class PushOptions:
    """Validated options of one push; `run_at` is None for 'as soon as possible'."""

    priority: int = 0
    delay: float = 0.0
    run_at: datetime | None = None
    retry: RetryPolicy = field(default_factory=lambda: RetryPolicy(9, 1.0))
    timeout: float | None = None
    unique_key: str | None = None  # cron's tick key: one job per key, ever
    unique: str | None = None  # the app's key: one unfinished job per key
    depends: tuple[str, ...] = ()
    repeat: Repeat | None = None


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
                jitter=_jitter(doc.get("retry_jitter", 0.0)),
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


def due_status(run_at: datetime, now: datetime) -> str:
    """Ready when due within HORIZON of `now` (the database clock), else scheduled."""
    return SCHEDULED if run_at - now > HORIZON else READY


def new_document(
    job_id: str,
    job_type: str,
    params: dict[str, Any],
    options: PushOptions,
    now: datetime,
    owner: str | None = None,
) -> dict[str, Any]:
    """The document that `push` inserts; `now` is the database clock, `owner` who pushed
    it through the web API (None: the app's own code)."""
    run_at = options.run_at or now + timedelta(seconds=options.delay)
    status = WAITING if options.depends else due_status(run_at, now)
    doc: dict[str, Any] = {
        "_id": job_id,
        "type": job_type,
        "params": params,
        "status": status,
        "priority": options.priority,
        "run_at": run_at,
        "attempts": 0,
        "retries": options.retry.retries,
        "retry_wait": options.retry.wait_seconds,
        "backoff": options.retry.backoff,
        "retry_jitter": options.retry.jitter,
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
    if options.unique is not None:
        doc.update(unique=options.unique, unique_key=unique_key_of(job_type, owner, options.unique))
    if owner:
        doc["owner"] = owner
    links = list(options.depends)
    if options.depends:
        doc["depends"] = list(options.depends)
    if options.repeat is not None:
        doc.update(
            repeat={"repeats": options.repeat.repeats, "wait": seconds_of(options.repeat.wait)},
            repeats_left=options.repeat.repeats,
        )
        links.append(FOLLOWUPS)
    if links:
        doc["links"] = links
    return doc


def is_number(value: object, *, minimum: float, strict: bool = False) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    if not math.isfinite(value):
        return False
    return value > minimum if strict else value >= minimum


def _field(doc: Mapping[str, Any], name: str, kind: type | tuple[type, ...]) -> Any:
    value = doc.get(name)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise ValueError(f"job document field {name!r} is missing or invalid: {value!r}")
    return value


def _optional_number(doc: Mapping[str, Any], name: str) -> float | None:
    value = doc.get(name)
    if value is None:
        return None
    if not is_number(value, minimum=0, strict=True):
        raise ValueError(f"job document field {name!r} is invalid: {value!r}")
    return float(value)


def _jitter(value: Any) -> float:
    if not is_number(value, minimum=0) or value > 1:
        raise ValueError(f"job document field 'retry_jitter' is invalid: {value!r}")
    return float(value)


def _backoff(value: Any) -> Backoff:
    if value not in BACKOFFS:
        raise ValueError(f"job document field 'backoff' is invalid: {value!r}")
    return value  # type: ignore[no-any-return]


@dataclass
class ActionResult:
    """What an action on many jobs did: the ids it changed, those it refused with the status
    that refused it (None: no such job), and any other reason a job was refused."""

    action: str
    changed: list[Any] = field(default_factory=list)
    refused: dict[Any, str | None] = field(default_factory=dict)
    errors: dict[Any, str] = field(default_factory=dict)
    created: dict[Any, str] = field(default_factory=dict)  # rerun: original id -> the clone's
    # a cascade run for one owner stops at the jobs of others: those it left as they were
    spared: list[Any] = field(default_factory=list)

    def add(self, other: ActionResult) -> None:
        self.changed += other.changed
        self.refused.update(other.refused)
        self.errors.update(other.errors)
        self.created.update(other.created)
        self.spared += [job_id for job_id in other.spared if job_id not in self.spared]


# What a clone (a repeat, a rerun) takes from the job it copies; the rest starts afresh.
_CLONED = ("type", "params", "priority", "retries", "retry_wait", "backoff", "retry_jitter",
           "timeout", "unique", "repeat", "repeats_left", "owner")  # fmt: skip


def clone_document(
    doc: Mapping[str, Any], job_id: str, now: datetime, delay: float = 0.0
) -> dict[str, Any]:
    """A new ready job with `doc`'s type, params and options, due `delay` s from `now`."""
    clone = new_document(job_id, str(doc.get("type")), dict(doc.get("params") or {}),
                         PushOptions(delay=delay), now)  # fmt: skip
    clone.update({name: doc[name] for name in _CLONED if name in doc})
    if clone.get("unique"):
        owner = clone.get("owner") if isinstance(clone.get("owner"), str) else None
        clone["unique_key"] = unique_key_of(str(clone["type"]), owner, clone["unique"])
    if "repeat" in doc:
        clone["links"] = [FOLLOWUPS]
    return clone
