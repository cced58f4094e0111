"""Jobs for workers on other machines, handed out by the web process (web/work.py routes).

A remote worker needs no database credentials: it asks `workers web` for work with
a token. Each remote worker (by its name) claims through a `Claimer` of its own,
so priorities, `run_at` and the flow-control limits hold across local and remote
workers together (`concurrency` counts what that remote worker holds, as it counts
what a local process holds). Every job handed out carries its claim token, and
every report for it (progress, log, beat, done, fail) is a write conditional on
that token: a report from an attempt whose lease moved on changes nothing (409).
The tokens of remote claims start with `remote:` and carry 96 random bits, so a
remote worker can neither guess another attempt's token nor report for a local one.

While remote workers are about, this process does what a local node's heartbeat
does for the cluster: it rescues lapsed leases (a remote worker that died), settles
follow-ups and adds the outcomes to the metrics; and it records each remote worker
in `nodes` (`remote:<name>`), beaten by that worker's requests.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import threading
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from workers.app import App
from workers.claimer import Claimer
from workers.errors import WorkersError
from workers.execution import exception_error
from workers.heartbeat import Heartbeat
from workers.record import JobRecord, error_document
from workers.store import Document
from workers.version import __version__
from workers.wakeup import Wakeup

log = logging.getLogger(__name__)

REMOTE = "remote:"  # the prefix of every remote claim's token and node id
MAX_WAIT = 30.0  # seconds a request for work may wait for one


class Refused(Exception):
    """A report the job's state refuses: the attempt no longer holds it (HTTP 409)."""

    def __init__(self, job_id: str, status: str | None) -> None:
        where = "no such job" if status is None else f"the job is {status}"
        super().__init__(
            f"this attempt no longer holds job {job_id} ({where}): its lease moved on, so "
            "the report changes nothing"
        )
        self.status = status


@dataclass
class _Held:
    token: str
    type: str
    until: float  # monotonic: the lease, as last renewed through this process


@dataclass
class _Remote:
    """A remote worker as this process knows it: its claimer (one claim at a time, as a
    local process's one claimer thread) and what it holds."""

    name: str
    types: tuple[str, ...]
    held: dict[str, _Held]
    claimer: Claimer
    host: str = ""
    threads: int = 1
    beaten: float = 0.0  # monotonic: its node record was last written then
    claiming: threading.Lock = field(default_factory=threading.Lock)


def _by_type(held: dict[str, _Held]) -> dict[str, int]:
    """What `concurrency` counts: the jobs a remote worker holds, by type."""
    return dict(Counter(one.type for one in list(held.values())))


class Bell:
    """Wakes the requests waiting for work (on the server's event loop) from the wake-up
    thread: `rung` counts the rings, so a ring between a waiter's claim and its wait is
    not missed. A ring may carry the ids of the jobs the stream reported ready: a waiter
    woken by that ring alone claims them by `_id`, without a scan (the local claimer's
    way; a scan costs the embedded server as many reads as there are ready jobs)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.rung = 0
        self._woken: list[Any] | None = None  # the last ring's ids (None: look by a scan)
        self._waiting: set[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = set()

    @property
    def waiting(self) -> int:
        """How many requests wait for a ring now."""
        with self._lock:
            return len(self._waiting)

    def ring(self, woken: list[Any] | None = None) -> None:
        with self._lock:
            self.rung += 1
            self._woken = woken
            for loop, event in self._waiting:
                loop.call_soon_threadsafe(event.set)

    async def wait(self, seen: int, seconds: float) -> list[Any] | None:
        """Until a ring after `seen`, or `seconds`; the ids the ring carried when it is the
        only one since `seen` (else None: the waiter looks by a scan)."""
        entry = (asyncio.get_running_loop(), asyncio.Event())
        with self._lock:
            quiet = self.rung == seen  # no ring since `seen`: wait for one
            if quiet:
                self._waiting.add(entry)
        if quiet:
            try:
                await asyncio.wait_for(entry[1].wait(), seconds)
            except TimeoutError:
                pass
            finally:
                with self._lock:
                    self._waiting.discard(entry)
        with self._lock:
            return self._woken if self.rung == seen + 1 else None


class Dispatcher:
    """The remote workers one web process serves; started by the first request for work."""

    def __init__(self, app: App) -> None:
        self.app = app
        self.store = app.store
        self.lease = app.settings.workers.queue.lease
        self.bell = Bell()
        self._remotes: dict[str, _Remote] = {}
        self._lock = threading.Lock()
        self._started = False
        self._stop = threading.Event()
        queue = app.settings.workers.queue
        self._wakeup = Wakeup(self.store, queue.poll_interval, stream=queue.change_streams)
        owner = f"dispatch:{secrets.token_hex(6)}"
        # a node's heartbeat without a node: rescues, settles follow-ups, adds the metrics
        self._sweep = Heartbeat(
            self.store, owner, self.lease, dict, lambda _: None, lambda: None, app.tally,
            alive=self._alive,
        )  # fmt: skip
        self._thread = threading.Thread(target=self._watch, name="dispatch", daemon=True)

    # -- claims -------------------------------------------------------------------------

    def claim(
        self, name: str, types: list[str], count: int, host: str, woken: list[Any] | None = None
    ) -> list[dict[str, Any]]:
        """Up to `count` jobs of `types` for the remote worker `name`, each with its token:
        of `woken` (ids the stream reported ready) when given, else by a scan; by a scan
        too for the rest when others took some of those ids, or they were not all ours."""
        self._start()
        remote = self._remote(name, types, host, count)
        with remote.claiming:
            with self._lock:
                _expire(remote)
            docs = remote.claimer.claim(count, woken, after_wait=True)
            if woken is not None and len(docs) < min(count, len(woken)):
                # a scan for the rest that keeps no spare: the other waiters that lost the
                # same ids scan now too, and would leave out what a spare of ours held
                docs += remote.claimer.claim(count - len(docs), after_wait=True, spare=False)
            jobs = [job for doc in docs if (job := self._handed(remote, doc)) is not None]
        self._beat_node(remote)
        return jobs

    async def work(
        self, name: str, types: list[str], count: int, wait: float, host: str
    ) -> list[dict[str, Any]]:
        """`claim`, waiting up to `wait` seconds for a job when none can be claimed now:
        woken by the change stream (one stream for every waiting request), not a poll."""
        deadline = time.monotonic() + min(wait, MAX_WAIT)
        loop = asyncio.get_running_loop()
        woken: list[Any] | None = None
        while True:
            seen = self.bell.rung
            jobs = await loop.run_in_executor(None, self.claim, name, types, count, host, woken)
            left = deadline - time.monotonic()
            if jobs or left <= 0:
                return jobs
            woken = await self.bell.wait(seen, left)

    def _remote(self, name: str, types: list[str], host: str, threads: int) -> _Remote:
        with self._lock:
            remote = self._remotes.get(name)
            if remote is None or remote.types != tuple(types):
                held: dict[str, _Held] = remote.held if remote else {}
                claimer = self._claimer(types, held)
                remote = self._remotes[name] = _Remote(name, tuple(types), held, claimer)
            remote.host, remote.threads = host, max(remote.threads, threads)
            return remote

    def _claimer(self, types: list[str], held: dict[str, _Held]) -> Claimer:
        owner = f"{REMOTE}{secrets.token_urlsafe(12)}"
        return Claimer(self.store, owner, list(types), self.lease, self._stop.wait,
                       limits=self.app.limits, held=lambda: _by_type(held))  # fmt: skip

    def _handed(self, remote: _Remote, doc: Document) -> dict[str, Any] | None:
        """The job as the remote worker gets it; a document we cannot read is failed."""
        token = str(doc.get("lease_owner"))
        try:
            record = JobRecord.from_document(doc)
        except ValueError as exc:
            error = exception_error(exc, int(doc.get("attempts") or 0), token)
            self.store.fail(doc["_id"], token, error, None)
            log.error("malformed job document %r: %s", doc.get("_id"), exc)
            return None
        with self._lock:
            remote.held[record.id] = _Held(token, record.type, time.monotonic() + self.lease)
        expires = doc.get("lease_expires")
        return {
            "id": record.id,
            "type": record.type,
            "params": record.params,
            "attempt": record.attempts,
            "token": token,
            "lease": self.lease,
            "lease_expires": expires.isoformat() if isinstance(expires, datetime) else None,
            "timeout": record.timeout,
            "priority": doc.get("priority", 0),
            "created": _iso(doc.get("created")),
        }

    # -- reports ------------------------------------------------------------------------

    def progress(self, job_id: str, token: str, completed: float, total: float) -> None:
        _check(job_id, token)
        percent = round(100.0 * completed / total, 2)
        document = {"completed": completed, "total": total, "percent": percent}
        self._owned(job_id, token, self.store.set_progress(job_id, token, document))

    def log(self, job_id: str, token: str, message: str, level: str) -> None:
        _check(job_id, token)
        entry = {"level": level, "message": message, "data": {}}
        self._owned(job_id, token, self.store.add_log(job_id, token, entry))

    def beat(self, job_id: str, token: str) -> dict[str, Any]:
        """Renew the attempt's lease; a job cancelled meanwhile says so (the worker stops)."""
        _check(job_id, token)
        lost = self.store.renew_leases({job_id: token}, self.lease)
        if lost:
            doc = self.store.get_job(job_id)
            if doc is not None and doc.get("status") == "cancelled":
                self._forget(job_id)
                return {"cancelled": True, "lease_expires": None}
            self._forget(job_id)
            raise Refused(job_id, doc.get("status") if doc else None)
        self._renewed(job_id)
        expires = self.store.now() + timedelta(seconds=self.lease)
        return {"cancelled": False, "lease_expires": expires.isoformat()}

    def release(self, job_id: str, token: str) -> None:
        """Hand a job back that the worker took and did not start (at its shutdown): ready
        again at once, the attempt not counted."""
        _check(job_id, token)
        released = self.store.release({job_id: token}, "handed back by its remote worker")
        self._forget(job_id)
        if not released:
            doc = self.store.get_job(job_id)
            raise Refused(job_id, doc.get("status") if doc else None)

    def done(self, job_id: str, token: str, result: Any) -> dict[str, Any]:
        """Complete the attempt; the same report again (a retry after a lost answer) gets
        the same answer."""
        _check(job_id, token)
        if not self.store.complete(job_id, token, result):
            return self._again(job_id, token, "completed")
        self._ended(job_id, "completed")
        return {"status": "completed"}

    def fail(self, job_id: str, token: str, error: dict[str, Any], fatal: bool) -> dict[str, Any]:
        """Fail the attempt: retried after the job's wait while it has retries (and the
        failure is not `fatal`), else failed for good."""
        _check(job_id, token)
        doc = self.store.get_job(job_id)
        if doc is None or doc.get("lease_owner") != token or doc.get("status") != "running":
            return self._again(job_id, token, None, doc)
        record = JobRecord.from_document(doc)
        retry_in = None if fatal else record.retry_in()
        document = error_document(
            str(error.get("message") or "failed"),
            str(error.get("type") or "RemoteError"),
            attempt=record.attempts,
            node=token,
            traceback=error.get("traceback"),
        )
        if not self.store.fail(job_id, token, document, retry_in):
            return self._again(job_id, token, None)
        status = "failed" if retry_in is None else "will retry"
        self._ended(job_id, "failed" if retry_in is None else "retried")
        return {"status": status}

    def _again(
        self, job_id: str, token: str, status: str | None, doc: Document | None = None
    ) -> dict[str, Any]:
        """A report the store refused: the same report's answer when this attempt already
        made it (done or fail repeated), else Refused."""
        doc = doc if doc is not None else self.store.get_job(job_id)
        self._forget(job_id)
        if doc is None:
            raise Refused(job_id, None)
        if doc.get("finished_by") == token and (status is None or doc.get("status") == status):
            return {"status": doc["status"]}
        error = doc.get("error")
        if status is None and isinstance(error, dict) and error.get("node") == token:
            return {"status": "failed" if doc.get("status") == "failed" else "will retry"}
        raise Refused(job_id, doc.get("status"))

    def _owned(self, job_id: str, token: str, written: bool) -> None:
        if not written:
            doc = self.store.get_job(job_id)
            raise Refused(job_id, doc.get("status") if doc else None)

    def _ended(self, job_id: str, outcome: str) -> None:
        held = self._forget(job_id)
        if held is not None:
            self.app.tally.outcome(held.type, outcome, None)

    def _forget(self, job_id: str) -> _Held | None:
        with self._lock:
            for remote in self._remotes.values():
                held = remote.held.pop(job_id, None)
                if held is not None:
                    remote.claimer.ended(held.type)
                    return held
        return None

    def _renewed(self, job_id: str) -> None:
        """A beat renewed the job's lease: it is held for another lease, and its remote
        worker's node record is as fresh as that beat."""
        with self._lock:
            owner = next((r for r in self._remotes.values() if job_id in r.held), None)
            if owner is not None:
                owner.held[job_id].until = time.monotonic() + self.lease
        if owner is not None:
            self._beat_node(owner)

    # -- the remote workers' node records, the sweep and the wake-ups -------------------

    def _beat_node(self, remote: _Remote) -> None:
        """`nodes` keeps the remote worker's record, at most every lease/3 seconds."""
        now = time.monotonic()
        if now - remote.beaten < self.lease / 3:
            return
        remote.beaten = now
        info = {
            "host": remote.host,
            "pid": None,
            "threads": remote.threads,
            "types": list(remote.types),
            "pool": True,
            "running": list(remote.held),
            "version": __version__,
            "state": "running",
            "remote": True,
        }
        try:
            self.store.beat(f"{REMOTE}{remote.name}", info)
        except WorkersError as exc:
            remote.beaten = 0.0
            log.warning("could not record the remote worker %s: %s", remote.name, exc)

    def _start(self) -> None:
        with self._lock:
            if self._started:
                return
            self._started = True
        self._sweep.start()
        self._wakeup.start()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if not self._started:
            return
        self._wakeup.stop()
        self._thread.join(timeout=self.store.timeout + 1)
        self._sweep.stop()

    def _alive(self) -> bool:
        """False once the app closed under a dashboard that was never stopped (a host app's
        tests): the sweep ends, and the wake-up stream with it."""
        if self.app.closed and not self._stop.is_set():
            self._stop.set()
            self._wakeup.stop()
        return not self.app.closed and not self._stop.is_set()

    def _watch(self) -> None:
        """Ring the bell when a job may have become ready: the stream's events, a delayed
        job's due time (staged first), or the poll when there is no stream."""
        woken: list[Any] | None = None
        while not self._stop.is_set() and not self.app.closed:
            self._wakeup.clear()
            rang = self.store.now_or_none()
            self.bell.ring(woken)
            woken = self._wakeup.wait(self._next_due(rang))
            if self._wakeup.due_reached:
                _quietly(self.store.stage_due)

    def _next_due(self, rang: datetime | None) -> datetime | None:
        """When the next delayed job is due, counted from when the bell rang: the claims it
        woke looked after that, so a job that came due since is looked for at once."""
        types = sorted({t for remote in self._types() for t in remote})
        if not types:
            return None
        try:
            return self.store.next_due(types, rang)
        except WorkersError:
            return None

    def _types(self) -> Iterable[tuple[str, ...]]:
        with self._lock:
            return [remote.types for remote in self._remotes.values()]


def _check(job_id: str, token: str) -> None:
    """Only the tokens of remote claims may be reported on over HTTP: a local attempt's
    token (its process's name and a count) could be guessed."""
    if not token.startswith(REMOTE):
        raise Refused(job_id, "not held by a remote claim")


def _expire(remote: _Remote) -> None:
    """Jobs whose lease was not renewed through this process no longer count as held."""
    now = time.monotonic()
    for job_id in [i for i, held in remote.held.items() if held.until < now]:
        remote.held.pop(job_id)


def _quietly(action: Any) -> None:
    try:
        action()
    except WorkersError as exc:
        log.debug("dispatch: %s", exc)


def _iso(value: Any) -> str | None:
    return value.isoformat() if isinstance(value, datetime) else None
