"""The example's jobs (settings.json: "jobs": ["reports"]). A worker process imports this
package first: it sets Django up, so a job may use the ORM and django.conf.settings."""

import os

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "site_config.settings")
django.setup()

from workers import Job  # noqa: E402


class ReportJob(Job):
    def handle_job(self) -> dict[str, object]:
        from django.conf import settings

        project = self.params["project"]
        return {"project": project, "rows": len(project) * 10, "debug": settings.DEBUG}
