"""The heartbeat of a worker process, every lease/3 seconds, independent of the job threads.

Each beat renews the leases of every job the process holds (one update),
records the process in the `nodes` collection and reads the live peers (peers.py).
Beside it, on a thread of its own, the sweep rescues jobs whose lease expired
anywhere in the cluster (their process died) and settles the follow-ups a crash cut
short (a cascade may be thousands of dependents), in the cluster's turn (one process
per interval), and adds this process's metrics: however long a sweep takes, it never delays a
renewal past the lease. A long CPU-bound job keeps its lease because the beat runs
on its own thread.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from workers.errors import WorkersError
from workers.metrics import Tally
from workers.store import Store

log = logging.getLogger(__name__)

_RETRY = 0.5  # seconds before another try after a failed beat


class Heartbeat:
    def __init__(
        self,
        store: Store,  # the runtime's; the heartbeat beats on a connection of its own
        owner: str,
        lease: float,
        held: Callable[[], dict[Any, str]],
        on_lost: Callable[[list[Any]], None],
        node_info: Callable[[], dict[str, Any] | None],
        tally: Tally,
        alive: Callable[[], bool] = lambda: True,
        on_peers: Callable[[list[tuple[str, list[str]]]], None] | None = None,
    ) -> None:
        self.store = store
        # the sweep's: the runtime's pool, with no per-operation bound (a cascade of
        # thousands of dependents is many writes), and never the beat's one connection
        self._runtime = store
        self.tally = tally
        self.owner = owner
        self.lease = lease
        self.interval = lease / 3
        self._held = held
        self._on_lost = on_lost
        self._node_info = node_info
        self._alive = alive  # False: what it beats for is gone, and the thread ends
        self._on_peers = on_peers  # the live worker processes, read on each beat
        self._own_store = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="heartbeat", daemon=True)
        self._sweeper = threading.Thread(target=self._sweeping, name="sweep", daemon=True)

    def start(self) -> None:
        """Beat from now on, on a store of its own (Store.for_heartbeat), made here so a
        heartbeat that never starts holds no connection."""
        self.store = self.store.for_heartbeat(self.lease)
        self._own_store = True
        self._thread.start()
        self._sweeper.start()

    def stop(self) -> None:
        """Stop beating and remove this process from `nodes` (best effort)."""
        self._stop.set()
        for thread in (self._thread, self._sweeper):
            if thread.ident is not None:
                thread.join(timeout=self.store.timeout + 1)
        try:
            self.store.forget_node(self.owner)
        except WorkersError as exc:
            log.warning("could not remove the node record: %s", exc)
        if self._own_store:
            self.store.close()

    def _run(self) -> None:
        self._every(self.beat)

    def _sweeping(self) -> None:
        self._every(self.sweep)

    def _every(self, step: Callable[[], bool]) -> None:
        while self._alive():
            done = step()
            # a failed step is tried again soon: the leases are still ours for a while
            if self._stop.wait(self.interval if done else min(self.interval, _RETRY)):
                return

    def beat(self) -> bool:
        """Renew the leases and the node record; False if it failed (logged; tried again
        soon)."""
        try:
            self._renew()
            info = self._node_info()
            if info is not None:  # None: a sweep with no node of its own (dispatch.py)
                self.store.beat(self.owner, info)
            if self._on_peers is not None:
                self._on_peers(self.store.live_peers(self.lease))
        except WorkersError as exc:
            log.warning("heartbeat failed: %s", exc, extra={"action": "heartbeat_failed"})
            return False
        return True

    def sweep(self) -> bool:
        """Rescue lapsed leases and settle what a crash cut short, when this process has
        the cluster's turn (one sweeps per interval, not every process at once); add this
        process's metrics. False if it failed (logged; tried again soon)."""
        try:
            if self._runtime.take_turn("sweep", self.interval):
                self._rescue()
                self._runtime.settle_finished()  # follow-ups a crash cut short
            self._flush_metrics()
        except WorkersError as exc:
            log.warning("sweep failed: %s", exc, extra={"action": "sweep_failed"})
            return False
        return True

    def _renew(self) -> None:
        lost = self.store.renew_leases(self._held(), self.lease)
        if lost:
            log.warning(
                "lost the lease of %d job(s): another process took them over",
                len(lost),
                extra={"action": "lease_lost", "job_ids": lost},
            )
            self._on_lost(lost)

    def _flush_metrics(self) -> None:
        """Add this process's counts since the last beat to the cluster's totals; a failed
        write puts them back for the next beat."""
        by_type, minute = self.tally.drain()
        if not (by_type or minute):
            return
        try:
            self._runtime.add_metrics(by_type, minute, self._runtime.now())
        except WorkersError:
            self.tally.restore(by_type, minute)
            raise

    def _rescue(self) -> None:
        for doc in self._runtime.rescue_expired():
            self.tally.rescued(str(doc.get("type")))
            log.warning(
                "rescued a job whose worker stopped renewing its lease",
                extra={
                    "action": "job_rescued",
                    "job_id": doc["_id"],
                    "type": doc.get("type"),
                    "lost_by": doc.get("lease_owner"),
                    "attempt": doc.get("attempts"),
                },
            )
