from workers import Job


class NightlyJob(Job):
    timezone = "Mars/Olympus_Mons"

    @classmethod
    def setup_cron(cls) -> str:
        return "0 3 * * *"
