from workers import Job


class NightlyJob(Job):
    @classmethod
    def setup_cron(cls) -> str:
        return "0 0 31 2 *"  # valid syntax, but February has no 31st
