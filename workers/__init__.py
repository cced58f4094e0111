"""workers: a headless companion worker service for Python apps, backed by MongoDB.

The public surface: `Job` to subclass and push, `boot()` for an app's startup,
`database()` for the app's own collections, `main()` for an app's own
`python -m myapp [--headless]` entry point, `wait()` for pushed jobs' outcomes, and
the exception types.
"""

from __future__ import annotations

from workers import jobs as jobs  # workers.jobs.get(...) after `import workers`
from workers.app import (
    boot,
    database,
    events,
    on,
    push,
    push_many,
    push_named,
    shutdown,
    wait,
    wait_async,
)
from workers.cli import main
from workers.errors import (
    DatabaseUnavailable,
    DiscoveryError,
    JobCancelled,
    JobFailed,
    JobNotFound,
    JobTimeout,
    LeaseLost,
    PushError,
    SettingsError,
    TransitionRefused,
    WorkersError,
)
from workers.inline import run_inline as _run_inline  # binds inline mode  # noqa: F401
from workers.job import Job
from workers.lifecycle import Pushed, StoredJob
from workers.listening import JobEvent
from workers.processing import JobProcessor, process_jobs
from workers.record import ActionResult, Repeat, RetryPolicy
from workers.version import __version__ as __version__

__all__ = [
    "ActionResult",
    "DatabaseUnavailable",
    "DiscoveryError",
    "Job",
    "JobCancelled",
    "JobEvent",
    "JobFailed",
    "JobNotFound",
    "JobProcessor",
    "JobTimeout",
    "LeaseLost",
    "PushError",
    "Pushed",
    "Repeat",
    "RetryPolicy",
    "SettingsError",
    "StoredJob",
    "TransitionRefused",
    "WorkersError",
    "boot",
    "database",
    "events",
    "main",
    "on",
    "process_jobs",
    "push",
    "push_many",
    "push_named",
    "shutdown",
    "wait",
    "wait_async",
]
