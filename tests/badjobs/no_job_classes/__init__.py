"""A jobs package whose classes are not named like jobs: nothing to register."""

from workers import Job


class ReportTask(Job):
    """A job in all but its name, which does not end in Job."""

    def handle_job(self) -> None:
        pass


class Helper:
    pass
