"""The end of one worker process: its held jobs finished or handed back, by level.

soft: finish running and claimed jobs; normal: finish running ones and hand back the
claimed rest; hard: hand back everything now. Past the grace period, hard. A job handed
back is ready again at once for another process (store.release), with the reason in its
log; one that cannot be handed back (the database is down) is rescued when its lease ends.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from workers.errors import WorkersError
from workers.pool import Pool
from workers.store import Store

log = logging.getLogger(__name__)


def shut_down(
    pool: Pool, store: Store, owner: str, level: Callable[[], str], grace_ends: float
) -> None:
    """`level()` is read again while waiting: a second stop request makes it hard."""
    grace_left = max(0.0, grace_ends - time.monotonic())
    log.info(
        "shutting down",
        extra={"action": "shutdown", "level": level(), "grace_left": round(grace_left, 1)},
    )
    if level() != "soft":
        hand_back(pool, store, owner, pool.take_unstarted(), "not started before shutdown")
    pool.wait_empty(max(0.0, grace_ends - time.monotonic()), lambda: level() == "hard")
    reason = "shutdown (hard)" if level() == "hard" else "grace period over at shutdown"
    hand_back(pool, store, owner, pool.held_tokens(), reason)
    pool.end()


def hand_back(pool: Pool, store: Store, owner: str, held: dict[Any, str], reason: str) -> None:
    if not held:
        return
    pool.lose(list(held))  # our threads must not write for them any more
    try:
        count = store.release(held, f"handed back by {owner}: {reason}")
    except WorkersError as exc:
        log.error(
            "could not hand jobs back; their leases will expire: %s",
            exc,
            extra={"action": "release_failed", "job_ids": list(held)},
        )
        return
    log.info(
        "handed jobs back", extra={"action": "jobs_released", "count": count, "reason": reason}
    )
