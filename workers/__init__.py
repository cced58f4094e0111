"""workers: a headless companion worker service for Python apps, backed by MongoDB.

The public surface: `Job` to subclass and push, `boot()` for an app's startup,
`database()` for the app's own collections, `main()` for an app's own
`python -m myapp [--headless]` entry point, and the exception types.
"""

from __future__ import annotations

from workers.app import boot, database, shutdown
from workers.cli import main
from workers.errors import (
    DatabaseUnavailable,
    DiscoveryError,
    JobTimeout,
    LeaseLost,
    PushError,
    SettingsError,
    WorkersError,
)
from workers.inline import run_inline as _run_inline  # binds inline mode  # noqa: F401
from workers.job import Job

__version__ = "0.1.0"


__all__ = [
    "DatabaseUnavailable",
    "DiscoveryError",
    "Job",
    "JobTimeout",
    "LeaseLost",
    "PushError",
    "SettingsError",
    "WorkersError",
    "boot",
    "database",
    "main",
    "shutdown",
]
