"""The job from the design brief: load a project's retention cohorts."""

from __future__ import annotations

from typing import Any

from workers import Job, database


class LoadRetentionJob(Job):
    project_id: str  # a typed param: checked where the job is made, typed here

    def handle_job(self) -> dict[str, Any]:
        project = database().projects.find_one({"_id": self.project_id})
        if project is None:
            raise LookupError("Project not found, could not load retention!")
        cohorts = project.get("cohorts", [])
        self.progress(1, 2)
        self.log(f"loaded {len(cohorts)} cohorts", level="info")
        self.progress(2, 2)
        return {"project": project["name"], "cohorts": len(cohorts)}

    def after_job(self, error: BaseException | None) -> None:
        outcome = "ok" if error is None else f"failed: {error}"
        print(f"LoadRetentionJob {self.params.get('project_id')}: {outcome}", flush=True)
