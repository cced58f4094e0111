"""Jobs with schedules; kept apart from tests.jobs so other tests run no cron."""

from __future__ import annotations

import os

from workers import Job, database


class EverySecondJob(Job):
    @classmethod
    def setup_cron(cls) -> str:
        return "* * * * * *"  # croniter: seconds are the optional sixth field

    def handle_job(self) -> str:
        db = database()
        server_time = db.client.admin.command("hello")["localTime"]
        tick = {"job_id": self.id, "tick": self.params["tick"], "server_time": server_time}
        db.ticks.insert_one({**tick, "pid": os.getpid()})
        return str(self.params["tick"])


class ReportJob(Job):
    timezone = "Europe/Paris"
    cron_missed = "all"

    @classmethod
    def setup_cron(cls) -> list[tuple[str, dict[str, str]]]:
        return [("0 9 * * *", {"region": "eu"}), ("0 9 * * *", {"region": "us"})]

    def handle_job(self) -> None:
        pass
