from tests.goodjobs import TopLevelJob  # imported, not defined here: registered once
from workers import Job


class DeepJob(Job):
    pass


Alias = TopLevelJob
