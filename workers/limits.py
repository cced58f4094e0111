"""Flow control per job type: how many may run at once, and how many may start per window.

Three limits, each a class attribute of the job class or a key of `workers.limits` in
the settings (which wins, key by key):
- `concurrency = N`: at most N jobs of the type running in one worker process (counted
  in memory by the claimer, no database cost);
- `global_concurrency = N`: at most N running across every process and node;
- `rate_limit = "100/m"` (`/s`, `/m`, `/h`, or `"5/10s"`): at most 100 starts in any
  window of that length, across the cluster.

The two cluster-wide limits are enforced inside the claim (store/limits.py says how);
this module only reads and checks them, so a bad one stops boot with its place named.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from workers.errors import DiscoveryError, SettingsError

RATE_MAX = 10_000  # starts kept per window: the window's log lives in one document
_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0}
_RATE = re.compile(r"^\s*(\d+)\s*/\s*(\d*)\s*([smh])\s*$")
FIELDS = ("concurrency", "global_concurrency", "rate_limit")


@dataclass(frozen=True)
class Rate:
    """`count` starts in any window of `seconds`."""

    count: int
    seconds: float
    text: str


@dataclass(frozen=True)
class Limit:
    """The limits of one job type; None: that limit is off."""

    concurrency: int | None = None
    global_concurrency: int | None = None
    rate: Rate | None = None

    @property
    def cluster_wide(self) -> bool:
        """Enforced in the database (a claim in a transaction), not only in this process."""
        return self.global_concurrency is not None or self.rate is not None

    def describe(self) -> dict[str, Any]:
        """The limits as settings keys, for the dashboard and the API."""
        return {
            "concurrency": self.concurrency,
            "global_concurrency": self.global_concurrency,
            "rate_limit": self.rate.text if self.rate else None,
        }


def parse_rate(text: Any, where: str) -> Rate:
    """Read "100/m" as 100 starts per 60 s; `where` names the attribute or key in an error."""
    match = _RATE.match(text) if isinstance(text, str) else None
    if match is None:
        raise ValueError(
            f"{where} must be a string like '100/m' (starts per window: /s, /m, /h, or /10s), "
            f"got {text!r}"
        )
    count, multiple, unit = int(match[1]), int(match[2] or 1), match[3]
    if not 1 <= count <= RATE_MAX or multiple < 1:
        raise ValueError(
            f"{where}: {text!r} must allow 1 to {RATE_MAX:,} starts per window of at least one "
            f"unit (use a shorter window for more)"
        )
    return Rate(count, multiple * _UNITS[unit], text.strip())


def _count(value: Any, where: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{where} must be a whole number of at least 1, got {value!r}")
    return value


def limit_of(values: Mapping[str, Any], where: str) -> Limit | None:
    """The Limit of `values` (concurrency, global_concurrency, rate_limit), or None when all
    three are off; ValueError names `where`.field of a bad one."""
    concurrency = _count(values.get("concurrency"), f"{where}.concurrency")
    global_cap = _count(values.get("global_concurrency"), f"{where}.global_concurrency")
    text = values.get("rate_limit")
    rate = None if text is None else parse_rate(text, f"{where}.rate_limit")
    if concurrency is None and global_cap is None and rate is None:
        return None
    return Limit(concurrency, global_cap, rate)


def limits_for(
    classes: Mapping[str, type], overrides: Mapping[str, Mapping[str, Any]]
) -> dict[str, Limit]:
    """Every limited type's Limit: the class attributes, with `workers.limits` on top.

    A bad attribute is a DiscoveryError naming the class; a bad or unknown settings key a
    SettingsError naming `workers.limits.<Type>`."""
    unknown = sorted(set(overrides) - set(classes))
    if unknown:
        raise SettingsError(
            f"workers.limits names {', '.join(unknown)}, which no job class is called; "
            f"the job types are {', '.join(sorted(classes)) or 'none'}"
        )
    limits: dict[str, Limit] = {}
    for name, cls in classes.items():
        own = {field: getattr(cls, field, None) for field in FIELDS}
        try:
            limit_of(own, f"{cls.__module__}.{name}")
        except ValueError as exc:
            raise DiscoveryError(str(exc)) from exc
        given = {k: v for k, v in (overrides.get(name) or {}).items() if v is not None}
        try:
            limit = limit_of({**own, **given}, f"workers.limits.{name}")
        except ValueError as exc:
            raise SettingsError(str(exc)) from exc
        if limit is not None:
            limits[name] = limit
    return limits
