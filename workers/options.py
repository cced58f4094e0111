"""Push options as people write them, validated: PushError names the option and quotes it.

`delay` is seconds or a timedelta; `after` a datetime, an ISO-8601 time
("2026-12-01T09:00:00Z") or a phrase "in 5 minutes" (as Agenda and Qworker
accept). Relative phrases become a delay, so they are counted on the
database clock like every other delay.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from workers.errors import PushError
from workers.record import (
    BACKOFFS,
    FOREVER,
    PRIORITIES,
    PushOptions,
    Repeat,
    RetryPolicy,
    is_number,
)

_UNITS = {
    "second": 1, "sec": 1, "s": 1,
    "minute": 60, "min": 60, "m": 60,
    "hour": 3600, "h": 3600,
    "day": 86400, "d": 86400,
    "week": 604800, "w": 604800,
}  # fmt: skip
_PHRASE = re.compile(r"^\s*in\s+(\d+(?:\.\d+)?)\s*([a-z]+?)s?\s*$", re.IGNORECASE)
_RETRY_KEYS = {"retries", "wait", "backoff", "jitter"}


def parse_options(
    defaults: RetryPolicy,
    *,
    delay: float | timedelta | None = None,
    after: datetime | str | None = None,
    priority: int | str | None = None,
    retry: int | Mapping[str, Any] | None = None,
    timeout: float | None = None,
    unique_key: str | None = None,
    unique: str | None = None,
    depends: Sequence[str] | None = None,
    repeat: Mapping[str, Any] | None = None,
) -> PushOptions:
    """Validate push options; PushError names the option that is wrong."""
    if delay is not None and after is not None:
        raise PushError("push: give either delay or after, not both")
    seconds, run_at = parse_when(delay, after)
    if timeout is not None and not is_number(timeout, minimum=0, strict=True):
        raise PushError(f"push: timeout must be a number of seconds > 0, got {timeout!r}")
    if unique_key is not None and not isinstance(unique_key, str):
        raise PushError(f"push: unique_key must be a string, got {unique_key!r}")
    if unique is not None and not (isinstance(unique, str) and unique):
        raise PushError(f"push: unique must be a non-empty string, got {unique!r}")
    return PushOptions(
        priority=parse_priority(priority),
        delay=seconds,
        run_at=run_at,
        retry=parse_retry(retry, defaults),
        timeout=float(timeout) if timeout is not None else None,
        unique_key=unique_key,
        unique=unique,
        depends=parse_depends(depends),
        repeat=parse_repeat(repeat),
    )


def parse_when(
    delay: float | timedelta | None, after: datetime | str | None
) -> tuple[float, datetime | None]:
    """(delay seconds, absolute run_at or None) from `delay` or `after`."""
    if isinstance(delay, timedelta):
        delay = delay.total_seconds()
    if delay is not None and not is_number(delay, minimum=0):
        raise PushError(
            f"push: delay must be a number of seconds >= 0 or a timedelta, got {delay!r}"
        )
    if after is None:
        return _bounded(float(delay or 0), f"delay={delay!r}"), None
    if isinstance(after, datetime):
        return 0.0, as_utc(after)
    if isinstance(after, str):
        seconds, moment = _parse_after_text(after)
        return _bounded(seconds, f"after={after!r}"), moment
    raise PushError(f"push: after must be a datetime or a string, got {after!r}")


_INT64 = 2**63 - 1  # what BSON stores as an integer
MAX_DELAY = 100 * 365.25 * 86400  # a century: later than that is a mistake, and overflows dates


def _bounded(seconds: float, given: str) -> float:
    if seconds > MAX_DELAY:
        raise PushError(
            f"push: {given} is more than a century from now (at most {MAX_DELAY:.0f} s)"
        )
    return seconds


def _parse_after_text(text: str) -> tuple[float, datetime | None]:
    phrase = _PHRASE.match(text)
    if phrase:
        unit = phrase.group(2).lower()
        if unit not in _UNITS:
            raise PushError(
                f"push: after={text!r}: unknown unit {unit!r}; "
                "use seconds, minutes, hours, days or weeks"
            )
        return float(phrase.group(1)) * _UNITS[unit], None
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise PushError(
            f"push: after={text!r} is neither an ISO-8601 time "
            '("2026-12-01T09:00:00Z") nor a phrase like "in 5 minutes"'
        ) from None
    return 0.0, as_utc(moment)


def parse_priority(priority: int | str | None) -> int:
    if priority is None:
        return PRIORITIES["normal"]
    if isinstance(priority, str) and priority in PRIORITIES:
        return PRIORITIES[priority]
    if isinstance(priority, int) and not isinstance(priority, bool) and abs(priority) <= _INT64:
        return priority
    names = ", ".join(PRIORITIES)
    raise PushError(f"push: priority must be an int or one of {names}; got {priority!r}")


def parse_retry(
    retry: RetryPolicy | int | Mapping[str, Any] | None, defaults: RetryPolicy
) -> RetryPolicy:
    """`retry` is a RetryPolicy, a count or {"retries", "wait", "backoff", "jitter"}; missing
    keys keep the defaults."""
    if retry is None:
        return defaults
    retry = _retry_mapping(retry)
    unknown = set(retry) - _RETRY_KEYS
    if unknown:
        raise PushError(f"push: unknown retry option(s) {sorted(unknown)}")
    retries = retry.get("retries", defaults.retries)
    wait = retry.get("wait", defaults.wait)
    if isinstance(wait, timedelta):
        wait = wait.total_seconds()
    backoff = retry.get("backoff", defaults.backoff)
    jitter = retry.get("jitter", defaults.jitter)
    if not (isinstance(retries, int) and not isinstance(retries, bool) and 0 <= retries <= _INT64):
        raise PushError(f"push: retry.retries must be an int >= 0, got {retries!r}")
    if not (is_number(wait, minimum=0) and wait <= MAX_DELAY):
        raise PushError(
            f"push: retry.wait must be a number of seconds from 0 to a century, got {wait!r}"
        )
    if backoff not in BACKOFFS:
        raise PushError(f"push: retry.backoff must be one of {BACKOFFS}, got {backoff!r}")
    if not (is_number(jitter, minimum=0) and jitter <= 1):
        raise PushError(f"push: retry.jitter must be a fraction from 0.0 to 1.0, got {jitter!r}")
    return RetryPolicy(retries=retries, wait=float(wait), backoff=backoff, jitter=float(jitter))


def _retry_mapping(retry: object) -> Mapping[str, Any]:
    if isinstance(retry, RetryPolicy):
        return dataclasses.asdict(retry)
    if isinstance(retry, int) and not isinstance(retry, bool):
        return {"retries": retry}
    if not isinstance(retry, Mapping):
        raise PushError(f"push: retry must be a RetryPolicy, an int or a dict, got {retry!r}")
    return retry


def parse_depends(depends: Sequence[str] | None) -> tuple[str, ...]:
    if depends is None:
        return ()
    if isinstance(depends, str) or not isinstance(depends, Sequence):
        raise PushError(f"push: depends must be a list of job ids, got {depends!r}")
    bad = [item for item in depends if not (isinstance(item, str) and item and _text(item))]
    if bad:
        raise PushError(f"push: depends must hold job ids (UTF-8 strings), got {bad[0]!r}")
    return tuple(dict.fromkeys(depends))


def _text(value: str) -> bool:
    """True when `value` can be stored (a lone surrogate such as "\\ud800" cannot)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def parse_repeat(repeat: Repeat | Mapping[str, Any] | None) -> Repeat | None:
    """A Repeat or {"repeats": n or "forever", "wait": seconds}: n more runs after the first."""
    if repeat is None:
        return None
    if isinstance(repeat, Repeat):
        repeat = dataclasses.asdict(repeat)
    if not isinstance(repeat, Mapping):
        raise PushError(
            f"push: repeat must be a dict like {{'repeats': 3, 'wait': 60}}, got {repeat!r}"
        )
    unknown = set(repeat) - {"repeats", "wait"}
    if unknown:
        raise PushError(f"push: unknown repeat option(s) {sorted(unknown)}")
    repeats = repeat.get("repeats", FOREVER)
    wait = repeat.get("wait", 0)
    if isinstance(wait, timedelta):
        wait = wait.total_seconds()
    forever = repeats == FOREVER
    if not forever and not (isinstance(repeats, int) and not isinstance(repeats, bool)):
        raise PushError(f"push: repeat.repeats must be an int >= 0 or 'forever', got {repeats!r}")
    if not forever and not 0 <= repeats <= _INT64:
        raise PushError(f"push: repeat.repeats must be an int >= 0 or 'forever', got {repeats!r}")
    if not (is_number(wait, minimum=0) and wait <= MAX_DELAY):
        raise PushError(f"push: repeat.wait must be seconds from 0 to a century, got {wait!r}")
    return Repeat(repeats="forever" if forever else int(repeats), wait=float(wait))


def as_utc(moment: datetime) -> datetime:
    """Naive datetimes are taken as UTC, as pymongo stores them; PushError for a time whose
    UTC falls outside the years 1 to 9999 (0001-01-01T00:00+14:00)."""
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    try:
        return moment.astimezone(UTC)
    except OverflowError:
        raise PushError(
            f"push: after={moment.isoformat()} is out of range: in UTC it falls outside the "
            "years 1 to 9999"
        ) from None
