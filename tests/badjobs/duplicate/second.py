from workers import Job


class ReportJob(Job):
    pass
