"""Job events in any process: `workers.on(kind, callback)`, `workers.events()` and
`workers jobs watch`.

One listener thread per store follows one change stream of every job's state and makes
each change an event by comparing the job with how it last saw it: a change that moves
nothing an event reports (a lease renewal, a log line) is no event. Callbacks run on one
dispatcher thread, never on the stream's: a raising one is logged, a slow one (over a
second) is logged too, and neither stops the others. Iterators get their own queues.

Delivery: every completion, failure and cancellation at least once. The stream resumes
from its token after a lost connection; where the server no longer has the token (its
oplog moved on), the listener reads the jobs that finished since its last event, less a
margin, and sends those it had not sent. Where the server has no change streams at all,
it reads those every two seconds, so only the three finishing kinds are sent. Duplicates
are rare: a finished job is sent again only when the listener has forgotten it (it keeps
the last 20,000 jobs it saw) and then meets it again in a catch-up or a resumed stream.
The stream carries only the changes that can make an event (of status, attempts,
progress, result, error or finished: not a lease renewal, not a log line), and an
update's own fields are laid over the document MongoDB looks up when it sends the
event, so each event is the change's state even where the job changed again since.
`started`, `progress` and `retried` are still best effort: a listener that is away
and catches up sends only the finishing kinds.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import queue
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from workers.errors import StreamUnavailable, WorkersError
from workers.per_store import PerStore
from workers.record import FINISHED, READY, RUNNING, SCHEDULED
from workers.store import JobState, StateStream, Store

log = logging.getLogger(__name__)

KINDS = ("started", "progress", "retried", "completed", "failed", "cancelled")
STREAM_WAIT = 1.0  # seconds a read of the stream waits for a change
RETRY_AFTER = 1.0  # seconds before the stream is opened again after an error
POLL = 2.0  # seconds between catch-ups where the server has no change streams
CATCH_UP_MARGIN = timedelta(seconds=5)  # the clocks of the writers may differ this much
REMEMBERED = 20_000  # jobs whose last state the listener keeps
CATCH_UP_PAGE = 1_000  # finished jobs read at a time when catching up
SLOW_CALLBACK = 1.0  # seconds after which a callback is logged as slow
READY_WITHIN = 10.0  # seconds a new subscription waits for the stream to open, at most


@dataclass(frozen=True)
class JobEvent:
    """Something that happened to a job: `at` is the database's clock at that write."""

    kind: str
    job_id: str
    type: str
    at: datetime | None
    result: Any = None
    error: dict[str, Any] | None = None
    progress: dict[str, Any] | None = None

    def line(self) -> str:
        """One line for `workers jobs watch`."""
        at = self.at.isoformat(timespec="milliseconds") if self.at else "-"
        detail = {"result": self.result, "error": self.error, "progress": self.progress}
        extra = " ".join(
            f"{key}={json.dumps(value, default=str)}" for key, value in detail.items() if value
        )
        return f"{at} {self.kind:<9} {self.type} {self.job_id}{' ' + extra if extra else ''}"

    def as_json(self) -> str:
        """The event as one line of JSON (`workers jobs watch --json`)."""
        return json.dumps({**self.__dict__, "at": self.at.isoformat() if self.at else None},
                          default=str)  # fmt: skip


@dataclass(frozen=True)
class _Seen:
    status: Any
    attempts: Any
    progress: str


def _seen(document: dict[str, Any]) -> _Seen:
    progress = json.dumps(document.get("progress"), sort_keys=True, default=str)
    return _Seen(document.get("status"), document.get("attempts"), progress)


def kind_of(document: dict[str, Any], before: _Seen | None) -> str | None:
    """The event one change to a job makes, given how the job was last seen (None: never)."""
    now = _seen(document)
    if before == now:
        return None
    status = now.status
    if status in FINISHED:
        return str(status) if before is None or before.status != status else None
    if status == RUNNING:
        if before is None or before.status != RUNNING or before.attempts != now.attempts:
            return "started"
        return "progress"
    failed = _failed_attempt(document)
    if status in (READY, SCHEDULED) and failed:
        ran = before is None or (before.status == RUNNING and before.attempts == now.attempts)
        return "retried" if ran else None
    return None


def _failed_attempt(document: dict[str, Any]) -> bool:
    """The job's error is its latest attempt's: it failed and will run again."""
    error = document.get("error")
    return isinstance(error, dict) and error.get("attempt") == document.get("attempts")


@dataclass(eq=False)
class Subscription:
    """One callback or iterator: `close()` stops its events."""

    kinds: frozenset[str]
    types: frozenset[str] | None
    deliver: Callable[[JobEvent], None]
    on_thread: bool  # True: a callback, run on the dispatcher thread
    _listeners: Listeners | None = field(default=None, repr=False)

    def wants(self, event: JobEvent) -> bool:
        """Whether the event is of this subscription's kinds and types."""
        return event.kind in self.kinds and (self.types is None or event.type in self.types)

    def close(self) -> None:
        """Stop the callbacks; events already queued are dropped."""
        if self._listeners is not None:
            self._listeners.unsubscribe(self)
            self._listeners = None


class EventStream:
    """`workers.events()`: iterate (or `async for`) over the events; `close()` when done
    (leaving a `for` or `async for` loop closes it)."""

    def __init__(self, listeners: Listeners, kinds: frozenset[str], types: frozenset[str] | None):
        self._listeners = listeners
        self._kinds, self._types = kinds, types
        self._queue: queue.Queue[JobEvent] = queue.Queue()
        self._subscription = listeners.subscribe(
            Subscription(kinds, types, self._queue.put, on_thread=False)
        )

    def __iter__(self) -> Iterator[JobEvent]:
        try:
            while True:
                yield self._queue.get()
        finally:
            self.close()

    def get(self, timeout: float | None = None) -> JobEvent | None:
        """The next event, or None after `timeout` seconds without one."""
        try:
            return self._queue.get(timeout=timeout)
        except queue.Empty:
            return None

    async def _aiter(self) -> AsyncIterator[JobEvent]:
        loop = asyncio.get_running_loop()
        ready: asyncio.Queue[JobEvent] = asyncio.Queue()

        def deliver(event: JobEvent) -> None:
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(ready.put_nowait, event)

        self._subscription.close()  # from now on to the loop, not to the blocking queue
        self._subscription = self._listeners.subscribe(
            Subscription(self._kinds, self._types, deliver, on_thread=False)
        )
        while not self._queue.empty():  # what came before the switch, in order
            ready.put_nowait(self._queue.get_nowait())
        try:
            while True:
                yield await ready.get()
        finally:
            self.close()

    def __aiter__(self) -> AsyncIterator[JobEvent]:
        return self._aiter()

    def close(self) -> None:
        """Stop the iteration: a loop over it ends."""
        self._subscription.close()


class Listeners:
    """The subscriptions of one store, the listener thread that makes their events and the
    dispatcher thread that runs their callbacks."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._cond = threading.Condition()
        self._subscriptions: list[Subscription] = []
        self._seen: collections.OrderedDict[str, _Seen] = collections.OrderedDict()
        self._calls: queue.Queue[tuple[Subscription, JobEvent] | None] = queue.Queue()
        self._threads: dict[str, threading.Thread] = {}
        self._stream: StateStream | None = None
        self._token: dict[str, Any] | None = None
        self._last_at: datetime | None = None
        self._started_at: datetime | None = None
        self._closed = False
        self.following = threading.Event()  # set while changes are followed
        self.streams_opened = 0  # for the tests
        self.caught_up = 0
        self.polling = False

    def subscribe(self, subscription: Subscription) -> Subscription:
        """Deliver the stream's events to `subscription` from now on; raises WorkersError
        once the app is closed."""
        with self._cond:
            if self._closed:
                raise WorkersError("events: the app is closed")
            subscription._listeners = self
            self._subscriptions.append(subscription)
            if self._started_at is None:
                self._started_at = self._store.now()
            self._start("workers-events", self._listen)
            self._start("workers-callbacks", self._dispatch)
            self._cond.notify_all()
        # from the return on, every change is sent: wait for the stream (not for ever: a
        # database that is down is followed once it is back)
        self.following.wait(READY_WITHIN)
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        """Deliver nothing more to `subscription`."""
        with self._cond:
            self._subscriptions = [s for s in self._subscriptions if s is not subscription]

    def close(self) -> None:
        """Stop: the listener closes its stream within one read (STREAM_WAIT)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._calls.put(None)

    def _start(self, name: str, target: Callable[[], None]) -> None:
        thread = self._threads.get(name)
        if thread is None or not thread.is_alive():
            self._threads[name] = threading.Thread(target=target, name=name, daemon=True)
            self._threads[name].start()

    # -- the listener thread -------------------------------------------------------

    def _listen(self) -> None:
        while self._wait_for_subscribers():
            if self.polling:
                self.following.set()
                self._catch_up()
                with self._cond:
                    self._cond.wait(POLL)
                continue
            try:
                state = self._next_state()
            except StreamUnavailable:
                log.warning("events: the server has no change streams; only finished jobs, "
                            "read every %.0f s, are sent", POLL)  # fmt: skip
                self.polling = True
                self.following.set()  # the catch-ups follow, from the first subscription
                continue
            except WorkersError as exc:  # a lost connection: resume from the token soon
                log.info("events: the stream was interrupted (%s); resuming", exc)
                self._drop_stream()
                with self._cond:
                    self._cond.wait(RETRY_AFTER)
                continue
            if state is not None:
                self._publish(state)
        self._drop_stream()

    def _wait_for_subscribers(self) -> bool:
        """False once closed; while nobody listens, the stream is closed (its token kept)."""
        with self._cond:
            while not self._closed and not self._subscriptions:
                self._drop_stream()
                self._cond.wait()
            return not self._closed

    def _next_state(self) -> JobState | None:
        if self._stream is None:
            stream = self._store.state_changes()
            stream.resume_token = self._token
            resumed = stream.open(STREAM_WAIT)
            self._stream = stream
            self.streams_opened += 1
            self.following.set()
            if self._token is not None and not resumed:
                self._catch_up()  # the token was lost: what finished meanwhile
        stream = self._stream
        try:
            state = stream.next_state()
        except StreamUnavailable as exc:  # closed under us (interrupt): resume, not poll
            raise WorkersError(f"the stream was closed: {exc}") from exc
        self._token = stream.resume_token
        return state

    def _drop_stream(self) -> None:
        if not self.polling:
            self.following.clear()
        stream, self._stream = self._stream, None
        if stream is not None:
            stream.close()

    def _catch_up(self) -> None:
        """Every job that finished since the last event (less the clocks' margin), page by
        page: an outage of any length loses no completion (at least once)."""
        since = (self._last_at or self._started_at or self._store.now()) - CATCH_UP_MARGIN
        after: tuple[datetime, Any] | None = None
        while True:
            try:
                documents = self._store.finished_since(since, after, CATCH_UP_PAGE)
            except WorkersError as exc:
                log.info("events: catching up failed (%s); trying again", exc)
                return
            for document in documents:
                self._publish(JobState(document["_id"], document))
            if len(documents) < CATCH_UP_PAGE:
                break
            after = (documents[-1]["finished"], documents[-1]["_id"])
        self.caught_up += 1

    def _publish(self, state: JobState) -> None:
        job_id, document = str(state.job_id), state.document
        before = self._seen.pop(job_id, None)
        self._seen[job_id] = _seen(document)
        if len(self._seen) > REMEMBERED:
            self._seen.popitem(last=False)
        kind = kind_of(document, before)
        if kind is None:
            return
        event = _event(kind, job_id, document)
        if event.at is not None and (self._last_at is None or event.at > self._last_at):
            self._last_at = event.at
        with self._cond:
            subscriptions = [s for s in self._subscriptions if s.wants(event)]
        for subscription in subscriptions:
            if subscription.on_thread:
                self._calls.put((subscription, event))
            else:
                subscription.deliver(event)

    # -- the dispatcher thread -------------------------------------------------------

    def _dispatch(self) -> None:
        while (call := self._calls.get()) is not None:
            subscription, event = call
            started = time.monotonic()
            try:
                subscription.deliver(event)
            except Exception:
                log.exception("events: a %s callback raised (the others go on)", event.kind)
            took = time.monotonic() - started
            if took > SLOW_CALLBACK:
                log.warning("events: a %s callback took %.1f s; the others waited", event.kind,
                            took)  # fmt: skip


def _event(kind: str, job_id: str, document: dict[str, Any]) -> JobEvent:
    at = document.get("finished") if kind in FINISHED else document.get("updated")
    error = document.get("error") if kind in ("failed", "retried") else None
    progress = document.get("progress") if kind == "progress" else None
    return JobEvent(
        kind,
        job_id,
        str(document.get("type")),
        at if isinstance(at, datetime) else None,
        result=document.get("result") if kind == "completed" else None,
        error=error if isinstance(error, dict) else None,
        progress=progress if isinstance(progress, dict) else None,
    )


def choose(
    kinds: str | Iterable[str] | None, types: str | Iterable[str] | None
) -> tuple[frozenset[str], frozenset[str] | None]:
    """The kinds and types asked for, checked: an unknown kind is an error naming it."""
    chosen = frozenset(KINDS if kinds is None else [kinds] if isinstance(kinds, str) else kinds)
    unknown = sorted(chosen - set(KINDS))
    if unknown or not chosen:
        raise WorkersError(
            f"events: {', '.join(unknown) or 'no kind'} is not an event kind; "
            f"the kinds are {', '.join(KINDS)}"
        )
    named = None if types is None else frozenset([types] if isinstance(types, str) else types)
    return chosen, named


_registry: PerStore[Listeners] = PerStore(Listeners)


def listeners_of(store: Store) -> Listeners:
    """The one Listeners of a store (made on first use)."""
    return _registry.of(store)


def on(
    store: Store, kind: str | Iterable[str], callback: Callable[[JobEvent], Any],
    job_types: str | Iterable[str] | None = None,
) -> Subscription:  # fmt: skip
    """Call `callback(event)` for each event of `kind` (of `job_types`, if given)."""
    kinds, types = choose(kind, job_types)
    return listeners_of(store).subscribe(Subscription(kinds, types, callback, on_thread=True))


def events(
    store: Store, kinds: str | Iterable[str] | None = None, types: str | Iterable[str] | None = None
) -> EventStream:
    """An iterator (and async iterator) of the events of `kinds` and `types` (None: all)."""
    chosen, named = choose(kinds, types)
    return EventStream(listeners_of(store), chosen, named)


def close(store: Store) -> None:
    """Stop the listeners of a store (its app closes)."""
    _registry.close(store)
