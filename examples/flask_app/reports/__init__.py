"""The example's jobs: named in settings.json ("jobs": ["reports"])."""

from workers import Job


class ReportJob(Job):
    def handle_job(self) -> dict[str, object]:
        project = self.params["project"]
        self.progress(1, 1)
        return {"project": project, "rows": len(project) * 10}
