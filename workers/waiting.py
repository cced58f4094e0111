"""Waiting for jobs to finish: `Pushed.wait`, `StoredJob.wait`, `workers.wait`, and their
async forms.

One thread per store serves every waiter of the process. It follows one change stream of
the jobs that finish or are removed (where the server has none, it polls with backoff,
from 50 ms to 2 s) and reads the jobs those events name with one query by `_id` for all
the waiters that want them. A thousand waiters cost one stream and one query per wake,
not a thousand. After the stream opens or resumes, it reads every awaited job once, so a
job that finished in a gap is not missed. With no waiter left, the stream closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from workers.errors import StreamUnavailable, WorkersError
from workers.per_store import PerStore
from workers.record import FINISHED
from workers.store import Document, FinishedStream, Store

log = logging.getLogger(__name__)

POLL_FIRST, POLL_MAX = 0.05, 2.0  # seconds between reads without change streams
STREAM_WAIT = 0.25  # seconds a read of the stream waits for an event (a new waiter's latency)
RETRY_AFTER = 1.0  # seconds before the stream is opened again after an error


@dataclass(eq=False)
class Waiter:
    """Some jobs awaited together: done when all of them (or, `first`, any) finished, or
    as soon as one turns out not to exist (an error to report, not a job to wait for)."""

    ids: frozenset[str]
    first: bool
    wake: Callable[[], None]
    found: dict[str, Document] = field(default_factory=dict)
    missing: set[str] = field(default_factory=set)

    @property
    def done(self) -> bool:
        if self.missing:
            return True
        return bool(self.found) if self.first else len(self.found) == len(self.ids)


class Waiters:
    """The waiters of one store and the thread that serves them."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._cond = threading.Condition()
        self._by_id: dict[str, list[Waiter]] = {}
        self._check: set[str] = set()  # ids to read on the next wake
        self._thread: threading.Thread | None = None
        self._closed = False
        self.streams_opened = 0  # what the tests count: one stream for many waiters
        self.reads = 0
        self.polling = False  # the server has no change streams

    # -- the waiters' side ----------------------------------------------------------

    def wait(self, ids: Iterable[str], timeout: float | None, *, first: bool = False) -> Waiter:
        """Block until the jobs finished; TimeoutError past `timeout` seconds (None: never)."""
        event = threading.Event()
        waiter = self._add(ids, first, event.set)
        try:
            if not event.wait(timeout):
                raise _timed_out(waiter, timeout)
        finally:
            self._remove(waiter)
        return waiter

    async def wait_async(
        self, ids: Iterable[str], timeout: float | None, *, first: bool = False
    ) -> Waiter:
        """`wait` for asyncio: the event loop is woken by the serving thread, no thread per
        waiter."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()

        def settle() -> None:
            if not future.done():
                future.set_result(None)

        def wake() -> None:
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(settle)

        waiter = self._add(ids, first, wake)
        try:
            await asyncio.wait_for(future, timeout)
        except TimeoutError:
            raise _timed_out(waiter, timeout) from None
        finally:
            self._remove(waiter)
        return waiter

    def _add(self, ids: Iterable[str], first: bool, wake: Callable[[], None]) -> Waiter:
        waiter = Waiter(frozenset(str(job_id) for job_id in ids), first, wake)
        if not waiter.ids:
            raise WorkersError("wait: no job ids given")
        with self._cond:
            if self._closed:
                raise WorkersError("wait: the app is closed")
            for job_id in waiter.ids:
                self._by_id.setdefault(job_id, []).append(waiter)
            self._check |= waiter.ids
            self._start()
            self._cond.notify_all()
        return waiter

    def _remove(self, waiter: Waiter) -> None:
        with self._cond:
            for job_id in waiter.ids:
                others = [w for w in self._by_id.get(job_id, []) if w is not waiter]
                if others:
                    self._by_id[job_id] = others
                else:
                    self._by_id.pop(job_id, None)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    # -- the serving thread -----------------------------------------------------------

    def _start(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._serve, name="workers-wait", daemon=True)
            self._thread.start()

    def _serve(self) -> None:
        stream: FinishedStream | None = None
        pause = POLL_FIRST
        try:
            while True:
                with self._cond:
                    while not self._closed and not self._by_id:
                        if stream is not None:
                            stream.close()  # no waiter: nothing to follow
                            stream = None
                        self._cond.wait()
                    if self._closed:
                        return
                    check, self._check = self._check & self._by_id.keys(), set()
                if check:
                    self._read(check)
                    pause = POLL_FIRST
                if self.polling:
                    pause = self._poll(pause)
                else:
                    stream = self._follow(stream)
        except Exception:  # a bug must not leave waiters hanging without a word
            log.exception("the waiting thread stopped")
            raise
        finally:
            if stream is not None:
                stream.close()

    def _follow(self, stream: FinishedStream | None) -> FinishedStream | None:
        """Read one event (waiting at most STREAM_WAIT); the stream, or None to reopen."""
        try:
            if stream is None:
                stream = self._store.finished_changes()
                stream.open(STREAM_WAIT)
                self.streams_opened += 1
                self._check_all()  # what finished before the stream (re)opened
            change = stream.next_change()
        except StreamUnavailable:
            self.polling = True
            return None
        except WorkersError as exc:  # a lost connection: resume from the token soon
            log.debug("the waiting stream was interrupted: %s", exc)
            if stream is not None:
                stream.close()
            with self._cond:
                self._cond.wait(RETRY_AFTER)
            return None
        if change is not None and change.job_id is not None:
            with self._cond:
                if str(change.job_id) in self._by_id:
                    self._check.add(str(change.job_id))
        return stream

    def _poll(self, pause: float) -> float:
        """Wait `pause` (or until a new waiter comes), then read every awaited job."""
        with self._cond:
            self._cond.wait(pause)
            self._check |= self._by_id.keys()
        return min(pause * 2, POLL_MAX)

    def _check_all(self) -> None:
        with self._cond:
            self._check |= self._by_id.keys()

    def _read(self, ids: set[str]) -> None:
        try:
            docs = self._store.jobs_by_ids(sorted(ids))
        except WorkersError as exc:  # read them again on the next wake
            log.debug("reading awaited jobs failed: %s", exc)
            with self._cond:
                self._check |= ids
                self._cond.wait(RETRY_AFTER)
            return
        self.reads += 1
        present = {str(doc["_id"]): doc for doc in docs}
        with self._cond:
            for job_id in ids:
                doc = present.get(job_id)
                if doc is not None and doc.get("status") not in FINISHED:
                    continue
                for waiter in self._by_id.get(job_id, []):
                    if doc is None:
                        waiter.missing.add(job_id)
                    else:
                        waiter.found[job_id] = doc
                    if waiter.done:
                        waiter.wake()


def _timed_out(waiter: Waiter, timeout: float | None) -> TimeoutError:
    left = sorted(waiter.ids - waiter.found.keys() - waiter.missing)
    shown = ", ".join(left[:5]) + (f" and {len(left) - 5} more" if len(left) > 5 else "")
    return TimeoutError(f"wait: job {shown} did not finish within {timeout:g} s")


_registry: PerStore[Waiters] = PerStore(Waiters)


def waiters_of(store: Store) -> Waiters:
    """The one Waiters of a store (made on first use)."""
    return _registry.of(store)


def close(store: Store) -> None:
    """Stop the waiters of a store (its app closes)."""
    _registry.close(store)
