"""`workers health`: is this host's worker service well? For a container's HEALTHCHECK, a
Kubernetes liveness probe, or a load balancer's check of a VM.

Well means two things, checked in order, and the first that fails is the one line said:
the database answers within the probe's deadline, and every worker process running on
this host beat within a lease (a process that stopped beating holds its jobs until the
lease lapses, so that is when it stops being well). It reads, never writes, and never
starts the embedded server.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from workers import embedded, processes
from workers.errors import DatabaseUnavailable, WorkersError
from workers.record import READY, SCHEDULED, WAITING
from workers.settings import Settings
from workers.store import Store

# the statuses of a job that still needs a worker process of its type
TO_RUN = (READY, SCHEDULED, WAITING)


def without_node(by_type: dict[str, dict[str, int]], live: set[str]) -> dict[str, int]:
    """The types with jobs still to run (`by_type`: status -> count per type) that no live
    worker process runs (`live`: `Store.live_types`), and how many such jobs each has."""
    pending = {t: sum(row.get(s, 0) for s in TO_RUN) for t, row in sorted(by_type.items())}
    return {t: n for t, n in pending.items() if n and t not in live}


@dataclass(frozen=True)
class Health:
    well: bool
    line: str


def check(settings: Settings, seconds: float) -> Health:
    """The health of this host's worker processes, within about `seconds` per round trip."""
    url = settings.mongo_url() or _embedded_url(settings)
    if url is None:
        return Health(False, f"the database: the embedded server of "
                      f"{settings.embedded_dir()} is not running")  # fmt: skip
    mongo = settings.mongo
    store = Store(url, mongo.database, prefix=mongo.prefix, timeout=seconds, pool_size=1,
                  app_name="workers-health")  # fmt: skip
    try:
        store.ping(seconds)
        return _beats(store, settings.workers.queue.lease)
    except DatabaseUnavailable as exc:
        return Health(False, f"the database does not answer within {seconds:g} s: {exc}")
    except WorkersError as exc:
        return Health(False, f"the database: {exc}")
    finally:
        store.close()


def _embedded_url(settings: Settings) -> str | None:
    state = embedded.status(settings.embedded_dir())
    return embedded.url_of(state["port"]) if state else None


def _beats(store: Store, lease: float) -> Health:
    host = socket.gethostname()
    running = [node for node in store.nodes_on_host(host) if _is_running_worker(node.get("pid"))]
    if not running:
        return Health(False, f"the workers: no worker process is running on {host}")
    now = store.now()
    ages = {str(node["_id"]): _age(now, node.get("last_beat")) for node in running}
    stale = {name: age for name, age in ages.items() if age > lease}
    if stale:
        name, age = max(stale.items(), key=lambda item: item[1])
        return Health(
            False,
            f"the workers: {name} last beat {age:.0f} s ago, more than the lease "
            f"({lease:g} s){f' (and {len(stale) - 1} more)' if len(stale) > 1 else ''}",
        )
    return Health(
        True,
        f"healthy: the database answers; {len(running)} worker process(es) on {host}, "
        f"the oldest beat {max(ages.values()):.1f} s ago",
    )


def _age(now: datetime, beat: Any) -> float:
    return (now - beat).total_seconds() if isinstance(beat, datetime) else float("inf")


def _is_running_worker(pid: Any) -> bool:
    """Whether `pid` is a live process of ours here: the record of a crashed one stays,
    and its pid may since belong to another program (checked by its command line)."""
    if not isinstance(pid, int) or pid <= 0 or not processes.alive(pid):
        return False
    argv = processes.command_line(pid)
    return argv is None or any(b"workers" in arg for arg in argv)
