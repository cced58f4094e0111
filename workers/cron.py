"""Cron: schedules from `setup_cron`, one leader per cluster, every tick fired once.

The leader holds a lease document in Mongo (the server's clock decides when it
lapses) and pushes each due tick as an ordinary job whose unique key is
(class, tick time[, params]): a unique index refuses a second job for a tick,
so two overlapping leaders, a restarted one or a slow one cannot fire a tick
twice. Ticks are computed with croniter from the database clock.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Protocol
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import CroniterError, croniter

from workers.errors import CronError, DatabaseUnavailable, PushError, WorkersError
from workers.job import Job
from workers.params import ParamsError, check
from workers.retrying import Backoff
from workers.store import UNIQUE_INDEX, bson_problem, new_id

if TYPE_CHECKING:
    from workers.settings import Settings
    from workers.store import Store


class CronHost(Protocol):
    """What the scheduler needs of the app (the app module is above this one: cron never
    imports it)."""

    store: Store
    settings: Settings

    def job_document(
        self, job_id: str, job_type: str, params: dict[str, Any], **options: Any
    ) -> dict[str, Any]: ...


log = logging.getLogger(__name__)

MISSED_POLICIES = ("latest", "all", "none")
MAX_CATCH_UP = 10_000  # ticks fired at most per schedule after an outage, policy "all"


@dataclass(frozen=True)
class Schedule:
    """One cron expression of one job class, with the params its jobs get."""

    job_type: str
    expression: str
    params: dict[str, Any] = field(default_factory=dict)
    timezone: str = "UTC"
    missed: str = "latest"
    ticked: bool = True  # the jobs get `tick` in their params (a typed class: if it has one)

    @property
    def id(self) -> str:
        """Stable across deploys: the class and its params (not the expression, so editing
        the expression during a rolling deploy cannot fire one tick twice)."""
        return f"{self.job_type}:{_params_hash(self.params)}" if self.params else self.job_type

    def unique_key(self, tick: datetime) -> str:
        return f"cron:{self.id}@{iso(tick)}"

    def next_after(self, moment: datetime) -> datetime:
        return next(self._series(moment, forward=True))

    def ticks(self, after: datetime, until: datetime) -> Iterator[datetime]:
        """The ticks t with after < t <= until, oldest first."""
        for tick in self._series(after, forward=True):
            if tick > until:
                return
            yield tick

    def recent_ticks(self, after: datetime, until: datetime, limit: int) -> list[datetime]:
        """Up to `limit` of the most recent ticks t with after < t <= until, oldest first."""
        found: list[datetime] = []
        for tick in self._series(until + timedelta(seconds=1), forward=False):
            if tick <= after or len(found) >= limit:
                break
            if tick <= until:
                found.append(tick)
        return found[::-1]

    def _series(self, start: datetime, *, forward: bool) -> Iterator[datetime]:
        """Ticks from `start` (exclusive), in UTC, as cron fires them across DST changes:
        a fixed local time fires once on the autumn day (its repeat is skipped); a
        schedule on every hour (`*` hours) fires in both copies of the repeated hour; a
        local time that does not exist on the spring day fires when the clock jumps."""
        series = croniter(self.expression, start.astimezone(ZoneInfo(self.timezone)))
        every_hour = croniter(self.expression).expanded[1] == ["*"]
        while True:
            tick = series.get_next(datetime) if forward else series.get_prev(datetime)
            if every_hour or not _repeated_wall_time(tick):
                yield tick.astimezone(UTC)


def _repeated_wall_time(local: datetime) -> bool:
    """Is `local` the second occurrence of its wall-clock time (the autumn DST change)?"""
    return local.fold == 1 and local.replace(fold=0).utcoffset() != local.utcoffset()


def iso(moment: datetime) -> str:
    """ISO-8601 in UTC with a Z, as `params["tick"]` carries it."""
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _params_hash(params: dict[str, Any]) -> str:
    text = json.dumps(params, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


# -- reading setup_cron --------------------------------------------------------------


def schedules_of(cls: type[Job]) -> list[Schedule]:
    """Parse a class's `setup_cron`; CronError names the class and its module."""
    where = f"{cls.__module__}.{cls.__name__}"
    try:
        spec = cls.setup_cron()
    except Exception as exc:
        raise CronError(f"{where}.setup_cron() raised {type(exc).__name__}: {exc}") from exc
    if spec is None:
        return []
    timezone = _timezone(cls, where)
    missed = getattr(cls, "cron_missed", "latest")
    if missed not in MISSED_POLICIES:
        raise CronError(f"{where}.cron_missed must be one of {MISSED_POLICIES}, got {missed!r}")
    entries = spec if isinstance(spec, list) else [spec]
    schedules = [_schedule(cls.__name__, entry, timezone, missed, where) for entry in entries]
    return [_typed(cls, schedule, where) for schedule in schedules]


def _typed(cls: type[Job], schedule: Schedule, where: str) -> Schedule:
    """A typed class's schedule: its params checked against the class's fields (with the
    tick only when the class declares a `tick` field), so no tick pushes a job that fails."""
    model = cls.params_model
    if model is None:
        return schedule
    ticked = "tick" in model.model_fields
    sample = {**schedule.params, "tick": iso(datetime.now(UTC))} if ticked else schedule.params
    try:
        check(cls.__name__, model, sample, strict=False)
    except ParamsError as exc:
        raise CronError(f"{where}.setup_cron(): {schedule.expression!r}: {exc}") from None
    return dataclasses.replace(schedule, ticked=ticked)


def _timezone(cls: type[Job], where: str) -> str:
    name = getattr(cls, "timezone", "UTC")
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, TypeError):
        raise CronError(f"{where}.timezone {name!r} is not an IANA time zone name") from None
    return str(name)


def _schedule(job_type: str, entry: Any, timezone: str, missed: str, where: str) -> Schedule:
    expression, params = entry if isinstance(entry, tuple) and len(entry) == 2 else (entry, {})
    if not isinstance(expression, str):
        raise CronError(
            f"{where}.setup_cron() must return an expression, a list of them, or "
            f"(expression, params) pairs; got {entry!r}"
        )
    if not isinstance(params, dict):
        raise CronError(f"{where}.setup_cron(): params for {expression!r} must be a dict")
    if not croniter.is_valid(expression):
        raise CronError(f"{where}.setup_cron(): {expression!r} is not a valid cron expression")
    problem = bson_problem({"params": params})
    if problem:
        raise CronError(f"{where}.setup_cron(): params of {expression!r} are not BSON: {problem}")
    schedule = Schedule(job_type, expression, dict(params), timezone, missed)
    try:
        schedule.next_after(datetime.now(UTC))
    except CroniterError as exc:
        raise CronError(f"{where}.setup_cron(): {expression!r} never fires ({exc})") from None
    return schedule


def schedules_for(classes: Sequence[type[Job]]) -> list[Schedule]:
    return [schedule for cls in classes for schedule in schedules_of(cls)]


# -- which ticks to fire ---------------------------------------------------------------


def misfire_grace(lease: float) -> timedelta:
    """Ticks later than this are missed (policy applies); sooner ones always fire, late.
    Twice the leader lease covers a failover after a leader dies."""
    return timedelta(seconds=max(10.0, 2 * lease))


def due_ticks(
    schedule: Schedule, last: datetime, now: datetime, grace: timedelta
) -> tuple[list[datetime], int]:
    """The ticks to fire now, and how many the missed-tick policy skips."""
    cutoff = now - grace
    on_time = list(schedule.ticks(max(last, cutoff), now))
    if last >= cutoff:
        return on_time, 0
    missed = schedule.recent_ticks(last, cutoff, MAX_CATCH_UP)
    if schedule.missed == "all":
        return missed + on_time, 0
    if schedule.missed == "none" or on_time or not missed:  # on-time ticks make up for a gap
        return on_time, len(missed)
    return missed[-1:], len(missed) - 1


# -- the leader ------------------------------------------------------------------------------


class Scheduler:
    """Competes for the leader lease; while leading, fires the due ticks of every schedule."""

    def __init__(self, app: CronHost, owner: str, schedules: list[Schedule]) -> None:
        self.app = app
        self.store = app.store
        self.owner = owner
        self.schedules = schedules
        self.lease = app.settings.workers.queue.lease
        self.log_firings = app.settings.workers.cron.log
        self.grace = misfire_grace(self.lease)
        self._leading_until = 0.0  # monotonic; while before it, we hold the lease
        self._renew_at = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cron", daemon=True)
        for schedule in schedules:
            self._check(schedule)

    def _check(self, schedule: Schedule) -> None:
        """At startup: the job document of the next tick builds (the class's options are
        valid), so a schedule that could only fail at its first tick stops the start."""
        tick = schedule.next_after(datetime.now(UTC))
        try:
            self._document(schedule, tick)
        except PushError as exc:
            raise CronError(
                f"cron schedule {schedule.expression!r} of {schedule.job_type} cannot fire: {exc}"
            ) from None

    @property
    def leading(self) -> bool:
        return time.monotonic() < self._leading_until

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop, and resign so another node takes over at once instead of after the lease."""
        self._stop.set()
        if self._thread.ident is not None:
            self._thread.join(timeout=self.store.timeout + 1)
        if self.leading:
            try:
                self.store.resign(self.owner)
            except WorkersError as exc:
                log.warning("could not resign cron leadership: %s", exc)

    def _run(self) -> None:
        backoff = Backoff(1.0, 10.0)
        while not self._stop.is_set():
            try:
                self.step()
            except WorkersError as exc:
                backoff.wait_after(exc, "cron step", "cron_failed", self._stop)
                continue
            backoff.reset()
            self._stop.wait(self._sleep())

    def step(self, now: datetime | None = None) -> list[str]:
        """Take or keep the lease; if leading, fire what is due. Returns the jobs pushed."""
        self._keep_lease()
        if not self.leading:
            return []
        now = now or self.store.now()
        states = self.store.schedule_states()
        pushed: list[str] = []
        for schedule in self.schedules:
            try:
                pushed += self._step_one(schedule, states.get(schedule.id), now)
            except DatabaseUnavailable:
                raise  # every schedule would fail: the step backs off as a whole
            except Exception as exc:  # one schedule's failure must not stop the others
                log.error(
                    "cron schedule failed; the others keep firing: %s: %s",
                    type(exc).__name__,
                    exc,
                    extra={"action": "cron_schedule_failed", "schedule": schedule.id,
                           "expression": schedule.expression},
                )  # fmt: skip
        return pushed

    def _step_one(self, schedule: Schedule, last: datetime | None, now: datetime) -> list[str]:
        if last is None:  # first sight: start from now, fire nothing from the past
            self.store.mark_fired(schedule.id, now)
            return []
        return self._fire(schedule, last, now)

    def _keep_lease(self) -> None:
        started = time.monotonic()
        if started < self._renew_at:
            return
        if not self.leading and not self.store.leadership_free(self.owner):
            return
        if not self.leading and not self.store.has_unique_index():
            log.error(
                "not taking the cron lead: the unique index %r on the jobs collection is missing, "
                "and without it a tick could fire twice; restart a worker to create it",
                UNIQUE_INDEX,
                extra={"action": "cron_refused"},
            )
            self._renew_at = started + self.lease / 3  # say it again in a while, not every step
            return
        if self.store.take_leadership(self.owner, self.lease):
            if not self.leading:
                log.info("cron leader now", extra={"action": "cron_leader", "node": self.owner})
            self._leading_until = started + self.lease * 0.8  # margin for clock rate and latency
            self._renew_at = started + self.lease / 3
        else:
            self._leading_until = 0.0

    def _fire(self, schedule: Schedule, last: datetime, now: datetime) -> list[str]:
        ticks, skipped = due_ticks(schedule, last, now, self.grace)
        if skipped:
            log.warning(
                "skipped missed cron ticks",
                extra={
                    "action": "cron_skipped",
                    "type": schedule.job_type,
                    "count": skipped,
                    "policy": schedule.missed,
                },
            )
        pushed = []
        for tick in ticks:
            job_id = self.store.insert_unless_duplicate(self._document(schedule, tick))
            if job_id is None:
                continue  # another leader fired this tick already: the unique index said so
            pushed.append(job_id)
            if self.log_firings:
                log.info(
                    "cron fired",
                    extra={
                        "action": "cron_fired",
                        "type": schedule.job_type,
                        "tick": iso(tick),
                        "job_id": job_id,
                        "node": self.owner,
                    },
                )
        if ticks or skipped:  # every tick in (last, now] is handled; nothing to write otherwise
            self.store.mark_fired(schedule.id, now)
        return pushed

    def _document(self, schedule: Schedule, tick: datetime) -> dict[str, Any]:
        params = {**schedule.params, "tick": iso(tick)} if schedule.ticked else schedule.params
        unique_key = schedule.unique_key(tick)
        return self.app.job_document(new_id(), schedule.job_type, params, unique_key=unique_key)

    def _sleep(self) -> float:
        """Until the next tick of any schedule (at most 1 s, at least 0.05 s)."""
        try:
            now = self.store.now()
        except WorkersError:
            return 1.0
        soonest = now + timedelta(seconds=1)
        for schedule in self.schedules:
            with contextlib.suppress(CroniterError):  # logged by the step that fires it
                soonest = min(soonest, schedule.next_after(now))
        return min(1.0, max(0.05, (soonest - now).total_seconds() + 0.01))
