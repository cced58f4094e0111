"""Job classes with typed params (annotated fields), for tests/test_typed_params.py."""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any, ClassVar

from workers import Job


class Level(enum.Enum):
    LOW = "low"
    HIGH = "high"


class LoadRetentionJob(Job):
    """The README's example: typed params, returned as the worker saw them."""

    project_id: str
    days: int = 30
    since: datetime | None = None
    level: Level = Level.LOW
    timeout = 60  # a Job setting, not a param
    batch: ClassVar[int] = 500  # a class constant, not a param

    def handle_job(self) -> dict[str, Any]:
        return {
            "project_id": self.project_id,
            "days": self.days,
            "since": type(self.since).__name__,
            "level": self.level.name,
            "params": self.params,
        }


class FreeJob(Job):
    """No annotated fields: free-form params, as before."""

    def handle_job(self) -> dict[str, Any]:
        return dict(self.params)
