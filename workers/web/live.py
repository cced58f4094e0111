"""Live updates: server-sent events at /events, driven by a change stream on the jobs.

One feed per web app: a thread follows a change stream of every job change
(where the server has change streams; else it reports a change every few
seconds) and counts changes. Each /events connection sends a `change` event
when the count moved, at most twice a second, and a `tick` every few seconds
so heartbeat ages and waits move on the page too.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator, Callable

from workers.app import App
from workers.errors import StreamUnavailable, WorkersError
from workers.store import AnyChange

log = logging.getLogger(__name__)

_FALLBACK_POLL = 3.0  # seconds between "changes" without change streams
_MIN_GAP = 0.5  # seconds between two events on one connection
_TICK = 5.0  # seconds between ticks on a quiet connection


class Feed:
    """Follows the jobs of the app `get_app()` returns when the first page listens, until
    `stop()` (the web app's shutdown) or until that app is closed: never beyond it."""

    def __init__(self, get_app: Callable[[], App]) -> None:
        self._get_app = get_app
        self.version = 0
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.following = threading.Event()  # set while a change stream is open
        self.polling = False  # the server has no change streams
        self.resumed = 0  # times the stream was resumed after a failure

    def start(self) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="workers-web-feed", daemon=True
                )
                self._thread.start()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        app, stream = self._get_app(), None
        try:
            while not self._stop.is_set() and not app.closed:
                try:
                    stream = stream or (None if self.polling else self._opened(app))
                    if stream is None:
                        self._stop.wait(_FALLBACK_POLL)
                        self.version += 1
                        continue
                    if not self.following.is_set():
                        self._resume(stream)
                    if stream.next_change() is not None:
                        self.version += 1
                except WorkersError as exc:  # a lost connection: resume from the token soon
                    log.debug("live feed interrupted: %s", exc)
                    self.following.clear()
                    self._stop.wait(1.0)
        finally:
            self.following.clear()
            if stream is not None:
                stream.close()

    def _resume(self, stream: AnyChange) -> None:
        """Reopen the failed stream after the last change it reported (its cursor is closed
        by the failure, its client kept); a token the server lost means changes may have
        been missed, so the pages are told to look again."""
        if not stream.open(max_wait=1.0):
            self.version += 1
        self.resumed += 1
        self.following.set()

    def _opened(self, app: App) -> AnyChange | None:
        stream = app.store.job_changes()
        try:
            stream.open(max_wait=1.0)
        except StreamUnavailable:
            stream.close()
            self.polling = True
            log.info("no change streams on this server: the dashboard refreshes every few s")
            return None
        self.following.set()
        return stream


async def events(feed: Feed, disconnected: Callable[[], object]) -> AsyncIterator[str]:
    feed.start()
    seen, quiet = feed.version, 0.0
    yield "retry: 2000\n\n"
    while True:
        await asyncio.sleep(_MIN_GAP)
        if await disconnected():  # type: ignore[misc]
            return
        quiet += _MIN_GAP
        if feed.version != seen:
            seen, quiet = feed.version, 0.0
            yield f"event: change\ndata: {seen}\n\n"
        elif quiet >= _TICK:
            quiet = 0.0
            yield "event: tick\ndata: {}\n\n"
