"""What the pages and the API show, as plain JSON-ready values: jobs, the overview, nodes,
cron. Both the HTML and the JSON are rendered from these, so they cannot disagree."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from workers.app import App
from workers.errors import Busy, WorkersError
from workers.health import TO_RUN, without_node
from workers.record import FOLLOWUPS, READY, STATUSES
from workers.store.overview import snapshot_pairs

log = logging.getLogger(__name__)

SEARCH_WINDOW = 2000  # documents a text search examines per page, newest first
_SEARCH_CHUNK = 200
# What a text search reads of each job: the summary, params while they are small, the
# error's message and type, the start of the newest log messages (store.search_chunk).
# Six searches over jobs with 900 kB params, read whole, took the web process from 67 MB
# to 1.3 GB; this way a chunk of 200 jobs is a few MB, whatever the jobs hold.
SEARCH_BYTES = 32_000_000  # of text matched per request: a search stops there, as at its window
SEARCHES_AT_ONCE = 2  # per web process; the next waits up to SEARCH_QUEUE_WAIT s, then 503
SEARCH_QUEUE_WAIT = 10.0
_searches = threading.BoundedSemaphore(SEARCHES_AT_ONCE)


def iso(moment: datetime) -> str:
    """ISO-8601 in UTC with a Z, to the millisecond: what MongoDB stores (cron's ticks keep
    their own form, `cron.iso`, which their unique keys are made of)."""
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def plain(value: Any) -> Any:
    """A stored value as JSON: times as ISO-8601, other BSON types (ObjectId, bytes,
    Decimal128) as their text."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, datetime):
        return iso(value)
    if isinstance(value, dict):
        return {str(key): plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [plain(item) for item in value]
    return str(value)


def job_summary(doc: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": str(doc["_id"]),
        "type": plain(doc.get("type")),
        "status": plain(doc.get("status")),
        "progress": _percent(doc.get("progress")),
        "attempts": doc.get("attempts") if isinstance(doc.get("attempts"), int) else 0,
        "owner": plain(doc.get("owner")),
        "created": plain(doc.get("created")),
        "finished": plain(doc.get("finished")),
    }


def job_detail(doc: dict[str, Any]) -> dict[str, Any]:
    links = _list(doc.get("links"))
    return {
        **job_summary(doc),
        "params": plain(doc.get("params") or {}),
        "priority": plain(doc.get("priority")),
        "retries": plain(doc.get("retries")),
        "run_at": plain(doc.get("run_at")),
        "started": plain(doc.get("started")),
        "updated": plain(doc.get("updated")),
        "log": plain(_list(doc.get("log"))),
        "result": plain(doc.get("result")),
        "error": plain(doc.get("error")),
        "depends": plain(doc.get("depends") or []),
        "pending": [plain(link) for link in links if link != FOLLOWUPS],
        "unique": plain(doc.get("unique")),
        "repeats_left": plain(doc.get("repeats_left")),
        "last_action": plain(doc.get("last_action")),
        "timeline": timeline(doc),
    }


def _percent(progress: Any) -> float | None:
    if isinstance(progress, dict) and isinstance(progress.get("percent"), int | float):
        return float(progress["percent"])
    return None


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def timeline(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """The job's moments, oldest first: pushed, due, started, log entries, finished."""
    moments = [
        ("pushed", doc.get("created")),
        ("due", doc.get("run_at")),
        ("started", doc.get("started")),
        (doc.get("status"), doc.get("finished")),
    ]
    events = [(at, str(name)) for name, at in moments if isinstance(at, datetime)]
    for entry in _list(doc.get("log")):
        if isinstance(entry, dict) and isinstance(entry.get("time"), datetime):
            events.append((entry["time"], f"log: {entry.get('message', '')}"))
    events.sort(key=lambda event: event[0])
    return [{"event": name, "at": iso(at)} for at, name in events]


@dataclass
class Page:
    jobs: list[dict[str, Any]]
    next: str | None  # the `before` of the next page
    searched: int | None = None  # documents a text search examined


def find_page(
    app: App,
    *,
    type: str | None,
    status: str | None,
    q: str | None,
    before: str | None,
    limit: int,
) -> Page:
    """Newest first, by index (see store/lifecycle.find_jobs). A text filter (`q`: part of
    the id, type, params, error or log) examines at most SEARCH_WINDOW jobs per page."""
    if not q:
        docs = app.store.job_summaries(type=type, status=status, limit=limit + 1, before=before)
        more = len(docs) > limit
        return Page(
            [job_summary(d) for d in docs[:limit]], str(docs[limit - 1]["_id"]) if more else None
        )
    if not _searches.acquire(timeout=SEARCH_QUEUE_WAIT):
        raise Busy(
            f"{SEARCHES_AT_ONCE} text searches are running in this web process: "
            "ask again in a moment, or filter by type and status instead"
        )
    try:
        return _search(app, type, status, q.lower(), before, limit)
    finally:
        _searches.release()


def _search(
    app: App, type: str | None, status: str | None, needle: str, before: str | None, limit: int
) -> Page:
    """Chunk by chunk, newest first, until a page is found or the window or the byte
    budget is spent: `searched` says how many jobs that was, `next` where to go on."""
    found: list[dict[str, Any]] = []
    examined, read, cursor = 0, 0, before
    while examined < SEARCH_WINDOW and read < SEARCH_BYTES and len(found) <= limit:
        docs = app.store.search_chunk(type=type, status=status, limit=_SEARCH_CHUNK, before=cursor)
        for doc in docs:
            examined += 1
            cursor = str(doc["_id"])
            text = _searched_text(doc)
            read += len(text)
            if needle in text:
                found.append(doc)
                if len(found) > limit:
                    break
        if len(docs) < _SEARCH_CHUNK:
            cursor = None if len(found) <= limit else cursor
            break
    more = len(found) > limit
    next_before = str(found[limit - 1]["_id"]) if more else cursor
    return Page([job_summary(d) for d in found[:limit]], next_before, examined)


def _searched_text(doc: dict[str, Any]) -> str:
    fields = (doc.get("_id"), doc.get("type"), doc.get("params"), doc.get("error"), doc.get("log"))
    return "\n".join(json.dumps(plain(value), default=str) for value in fields).lower()


def related(app: App, doc: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """The jobs this one depends on, and the jobs still waiting for it."""
    depends = doc.get("depends") if isinstance(doc.get("depends"), list) else []
    antecedents = app.store.jobs_by_id(list(depends)) if depends else []
    return {
        "antecedents": [job_summary(d) for d in antecedents],
        "waiting": [job_summary(d) for d in app.store.waiting_on(doc["_id"])],
    }


class Cached:
    """A value recomputed at most every `seconds` (the counts behind the overview and
    /metrics: one aggregation per period however many people and scrapers look)."""

    def __init__(self, compute: Callable[[], Any], seconds: float) -> None:
        self._compute, self._seconds = compute, seconds
        self._lock = threading.Lock()
        self._value: Any = None
        self._at = -float("inf")

    def get(self) -> Any:
        with self._lock:
            if time.monotonic() - self._at >= self._seconds:
                self._value, self._at = self._compute(), time.monotonic()
            return self._value


# A recount runs at most this often per its own duration: slow counts (the embedded
# server reads every document: 5 s at 200,000 jobs) must not keep the server busy.
RECOUNT_APART = 10


class Counts:
    """The counts behind the overview and /metrics, reused for `cache` seconds.

    The jobs by (status, type) are one aggregation over every job (its index key on
    MongoDB, its document on the embedded server), so they are shared by every process
    as one snapshot in the metrics collection: a page or a scrape, from a web process
    just started or not, reads one document. A snapshot older than `cache` seconds (and
    than RECOUNT_APART times its own duration) is served while one process, holding the
    turn, counts again in the background. Only a database that never had one counts
    inline. The oldest ready job's wait is read fresh each time (the first key of each
    ready type). With `cache` 0, every call counts."""

    def __init__(self, get_app: Callable[[], App], cache: float) -> None:
        self._get_app, self._cache = get_app, cache
        self._local = Cached(self._compute, cache)
        self._recount: threading.Thread | None = None

    def get(self) -> dict[str, Any]:
        value: dict[str, Any] = self._local.get()
        return value

    def _compute(self) -> dict[str, Any]:
        app = self._get_app()
        by_pair, age = self._pairs(app)
        return counts(app, by_pair, age)

    def _pairs(self, app: App) -> tuple[dict[tuple[str, str], int], float]:
        snapshot = None if self._cache == 0 else app.store.counts_snapshot()
        if snapshot is None:
            return count_now(app), 0.0
        age = float(snapshot["age"])
        if age >= max(self._cache, RECOUNT_APART * float(snapshot.get("took") or 0)):
            self._recount_in_background(app, float(snapshot.get("took") or 0))
        return snapshot_pairs(snapshot), age

    def _recount_in_background(self, app: App, took: float) -> None:
        if self._recount is not None and self._recount.is_alive():
            return
        try:
            if not app.store.take_recount(max(60.0, 3 * took)):
                return  # another process counts
        except WorkersError as exc:
            log.debug("no turn to recount: %s", exc)
            return
        self._recount = threading.Thread(
            target=_recount_quietly, args=(app,), name="workers-recount", daemon=True
        )
        self._recount.start()


def count_now(app: App) -> dict[tuple[str, str], int]:
    """Count, and share the counts as the snapshot."""
    began = time.monotonic()
    by_pair = app.store.count_by_status_and_type()
    app.store.save_counts(by_pair, time.monotonic() - began)
    return by_pair


def _recount_quietly(app: App) -> None:
    try:
        count_now(app)
    except WorkersError as exc:  # the next stale read tries again, once the turn is over
        log.warning("could not recount the jobs: %s", exc)


def counts(app: App, by_pair: dict[tuple[str, str], int], age: float = 0.0) -> dict[str, Any]:
    """Jobs by (status, type) as counted `age` seconds ago, totals by status, and the
    oldest ready job's wait (now)."""
    now = app.store.now()
    ready_types = sorted({job_type for status, job_type in by_pair if status == READY})
    oldest = app.store.oldest_ready(now, ready_types)
    totals = dict.fromkeys(STATUSES, 0)
    by_type: dict[str, dict[str, int]] = {}
    for (status, job_type), n in sorted(by_pair.items()):
        totals[status] = totals.get(status, 0) + n
        by_type.setdefault(job_type, dict.fromkeys(STATUSES, 0))[status] = n
    wait = (now - oldest["run_at"]).total_seconds() if oldest else None
    return {
        "at": iso(now),
        "by_status": totals,
        "by_type": by_type,
        "oldest_ready_seconds": wait,
        "oldest_ready_type": oldest and oldest.get("type"),
        "counted_seconds_ago": round(age, 1),
        "unrun": unrun(app, by_type),
    }


def unrun(app: App, by_type: dict[str, dict[str, int]]) -> dict[str, int]:
    """The types with jobs still to run that no live worker process runs (health.py)."""
    if not any(row.get(s) for row in by_type.values() for s in TO_RUN):
        return {}
    return without_node(by_type, app.store.live_types(app.settings.workers.queue.lease))


def runs_type(app: App, job: dict[str, Any]) -> bool:
    """Whether a live worker process runs this job's type (True for a finished job)."""
    if job.get("status") not in TO_RUN:
        return True
    return str(job.get("type")) in app.store.live_types(app.settings.workers.queue.lease)


def limits(app: App) -> list[dict[str, Any]]:
    """Each limited type's caps, their use now, and its due jobs held back by them: those
    ready while a cluster-wide cap is full (a per-process cap is not judged here)."""
    shown = []
    for job_type, limit in sorted(app.limits.items()):
        window = limit.rate.seconds if limit.rate else None
        use = app.store.limit_use(job_type, window)
        full = limit.global_concurrency is not None and use["running"] >= limit.global_concurrency
        full = full or (limit.rate is not None and use["starts"] >= limit.rate.count)
        shown.append(
            {
                "type": job_type,
                **limit.describe(),
                "rate_count": limit.rate.count if limit.rate else None,
                "rate_seconds": window,
                "running": use["running"],
                "starts_in_window": use["starts"],
                "at_cap": full,
                "waiting": use["ready"] if full else 0,
            }
        )
    return shown


def throughput(app: App, minutes: int = 60) -> list[dict[str, Any]]:
    """Jobs completed and failed per minute over the last `minutes` (metrics collection)."""
    now = app.store.now().replace(second=0, microsecond=0)
    since = now - timedelta(minutes=minutes - 1)
    found = {doc["at"].replace(tzinfo=now.tzinfo): doc for doc in app.store.minutes_since(since)}
    series = []
    for step in range(minutes):
        minute = since + timedelta(minutes=step)
        doc = found.get(minute, {})
        series.append(
            {
                "minute": iso(minute),
                "completed": int(doc.get("completed", 0)),
                "failed": int(doc.get("failed", 0)),
            }
        )
    return series


def nodes(app: App) -> list[dict[str, Any]]:
    """The worker processes; one silent longer than a lease is marked so."""
    now, lease = app.store.now(), app.settings.workers.queue.lease
    shown = []
    for node in app.store.list_nodes():
        last = node.get("last_beat")
        age = (now - last).total_seconds() if isinstance(last, datetime) else None
        running = _list(node.get("running"))
        shown.append(
            {
                "id": str(node["_id"]),
                "host": plain(node.get("host")),
                "pid": plain(node.get("pid")),
                "threads": plain(node.get("threads")),
                "types": [plain(t) for t in _list(node.get("types"))],
                "pool": bool(node.get("pool")),
                "running": [plain(r) for r in running],
                "version": plain(node.get("version")),
                "state": plain(node.get("state")),
                "started": plain(node.get("started")),
                "last_beat": plain(last),
                "heartbeat_age": age,
                "silent": age is None or age > lease,
            }
        )
    return shown


def cron(app: App) -> dict[str, Any]:
    """The schedules (next tick, last tick handled, lag) and the leader."""
    now = app.store.now()
    leader = app.store.leader()
    handled = app.store.schedule_states()
    schedules = []
    for schedule in app.registry.schedules:
        last = handled.get(schedule.id)
        # how long the oldest tick not yet fired has been due; a schedule no leader has
        # handled yet has no lag to speak of
        lag = None if last is None else max((now - schedule.next_after(last)).total_seconds(), 0.0)
        schedules.append(
            {
                "id": schedule.id,
                "type": schedule.job_type,
                "expression": schedule.expression,
                "params": plain(schedule.params),
                "timezone": schedule.timezone,
                "missed": schedule.missed,
                "next": iso(schedule.next_after(now)),
                "last": iso(last) if last else None,
                "lag_seconds": lag,
            }
        )
    live = (
        leader is not None
        and isinstance(leader.get("expires"), datetime)
        and leader["expires"] > now
    )
    return {
        "leader": {
            "owner": leader["owner"],
            "since": plain(leader.get("since")),
            "expires": plain(leader.get("expires")),
        }
        if live and leader
        else None,
        "disabled": app.settings.workers.cron.disable,
        "schedules": schedules,
    }
