"""Version 2 of the same app's jobs: it brings NewJob, and its cron fires every second."""

from __future__ import annotations

from tests.netjobs import Noted
from workers import Job


class WorkJob(Noted):
    version = 2


class NewJob(Noted):
    """Only version 2 knows it: its jobs wait until a version-2 node claims them."""

    version = 2


class TickJob(Job):
    @classmethod
    def setup_cron(cls) -> str:
        return "* * * * * *"

    def handle_job(self) -> str:
        return str(self.params["tick"])
