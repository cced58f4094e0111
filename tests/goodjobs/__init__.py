from workers import Job


class TopLevelJob(Job):
    pass


class NotAJobHelper:
    pass


def make_job_class() -> type[Job]:
    class NestedJob(Job):  # not module level: not registered
        pass

    return NestedJob
