"""`process_jobs`: a function-style worker inside any process (a script, a notebook, another
service), as meteor-job's `processJobs` is.

It is the headless worker with another profile (worker.Profile): the same
claimer, leases, heartbeat, wake-up stream, timeouts and shutdown levels, run
on background threads of this process, with the jobs handed to `handler`
instead of to their classes. It fires no cron schedules.
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Sequence

from workers import app as app_module
from workers.errors import WorkersError
from workers.execution import Handler, Held, run_handler
from workers.worker import Profile, Worker

_LEVELS = ("soft", "normal", "hard")


class JobProcessor:
    """A running `process_jobs` worker; see `process_jobs`."""

    def __init__(self, worker: Worker) -> None:
        self._worker = worker
        self._thread = threading.Thread(target=worker.run, name="process-jobs", daemon=True)
        self._thread.start()

    def pause(self) -> None:
        """Claim no more jobs; the ones held run on."""
        self._worker.pause(True)

    def resume(self) -> None:
        """Go on claiming after `pause`."""
        self._worker.pause(False)

    def shutdown(self, level: str = "normal", timeout: float | None = None) -> None:
        """Stop as a headless worker stops on TERM at `level` (soft: finish every held job;
        normal: finish running ones, hand back the rest; hard: hand back all now), and
        wait for it (at most `timeout` s)."""
        if level not in _LEVELS:
            raise WorkersError(f"shutdown level must be one of {', '.join(_LEVELS)}, got {level!r}")
        self._worker.stop(level)
        self._thread.join(timeout)

    def length(self) -> int:
        """Jobs claimed here and not started yet."""
        return self._worker.counts()[0]

    def running(self) -> int:
        """Jobs running here now."""
        return self._worker.counts()[1]

    def idle(self) -> bool:
        """Nothing claimed and nothing running here."""
        return self._worker.counts() == (0, 0)

    @property
    def stopped(self) -> bool:
        """Whether the worker has ended (after `shutdown`, or a crash of its thread)."""
        return not self._thread.is_alive()


def process_jobs(
    types: str | Sequence[str],
    handler: Handler,
    *,
    threads: int = 1,
    cargo: int = 1,
    prefetch: int = 0,
    poll_interval: float | None = None,
    concurrency: int | None = None,
) -> JobProcessor:
    """Run `handler` on jobs of `types` pushed to this queue: `handler(job)` with cargo 1,
    `handler(jobs)` (up to `cargo` at once) otherwise, on `threads` threads, holding
    at most `prefetch` jobs beyond what the threads can start. Its return value is the
    job's result (with cargo, a list as long as the jobs gives each its own); raising
    fails the attempt, retried as any job; `job.fail()`, `job.progress()` and
    `job.log()` work as in `handle_job`. An `async def` handler runs on an event loop.
    (`concurrency=` is the deprecated name of `threads=`: `Job.concurrency` is a cap.)"""
    if concurrency is not None:
        warnings.warn(
            "process_jobs(concurrency=) is deprecated: use threads= (Job.concurrency is a "
            "per-process cap, not a thread count)",
            DeprecationWarning,
            stacklevel=2,
        )
        threads = concurrency
    names = [types] if isinstance(types, str) else list(types)
    if not names or not all(isinstance(name, str) and name for name in names):
        raise WorkersError(f"process_jobs: types must be job type names, got {types!r}")
    if not callable(handler):
        raise WorkersError(f"process_jobs: handler must be callable, got {handler!r}")
    for name, value, least in (
        ("threads", threads, 1),
        ("cargo", cargo, 1),
        ("prefetch", prefetch, 0),
    ):
        if not isinstance(value, int) or isinstance(value, bool) or value < least:
            raise WorkersError(f"process_jobs: {name} must be an int >= {least}, got {value!r}")
    if poll_interval is not None and not (
        isinstance(poll_interval, (int, float)) and poll_interval > 0
    ):
        raise WorkersError(
            f"process_jobs: poll_interval must be seconds > 0, got {poll_interval!r}"
        )

    def run(app: app_module.App, held: list[Held]) -> None:
        run_handler(app, held, handler, cargo)

    profile = Profile(
        types=names,
        threads=threads,
        run=run,
        cargo=cargo,
        prefetch=prefetch,
        poll_interval=float(poll_interval) if poll_interval else None,
        cron=False,
    )
    return JobProcessor(Worker(app_module.current(), profile=profile))
