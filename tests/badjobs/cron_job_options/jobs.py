from workers import Job


class NightlyJob(Job):
    timeout = "soon"  # not a number of seconds

    @classmethod
    def setup_cron(cls) -> str:
        return "0 3 * * *"
