"""Version 1 of an app's jobs, for the rolling deploy test: no NewJob yet, and its cron
fires every other second."""

from __future__ import annotations

from tests.netjobs import Noted
from workers import Job


class WorkJob(Noted):
    version = 1


class TickJob(Job):
    @classmethod
    def setup_cron(cls) -> str:
        return "* * * * * */2"  # croniter: seconds are the sixth field

    def handle_job(self) -> str:
        return str(self.params["tick"])
