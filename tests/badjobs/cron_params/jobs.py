from typing import Any

from workers import Job


class NightlyJob(Job):
    @classmethod
    def setup_cron(cls) -> Any:
        return ("0 3 * * *", {"regions": {"eu", "us"}})  # a set is not BSON
