from workers import Job


class NightlyJob(Job):
    @classmethod
    def setup_cron(cls) -> str:
        raise KeyError("CRON_SETTING")
