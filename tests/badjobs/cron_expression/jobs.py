from workers import Job


class NightlyJob(Job):
    @classmethod
    def setup_cron(cls) -> str:
        return "61 * * * *"
