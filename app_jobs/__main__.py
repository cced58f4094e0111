"""The example app's entry point.

python -m app_jobs              web mode: boot, push a few example jobs, run none
python -m app_jobs --headless   headless: run the jobs (the same code, booted as workers)
"""

from __future__ import annotations

import os
import sys

from app_jobs.examples import AlwaysFailsJob, FlakyJob
from app_jobs.retention import LoadRetentionJob
from workers import Job, database
from workers.app import App
from workers.cli import main


def push_examples(app: App) -> int:
    """The example's web mode: push a few jobs to watch run."""
    database().projects.update_one(
        {"_id": "demo"},
        {"$set": {"name": "Demo project", "cohorts": ["2026-09", "2026-10", "2026-11"]}},
        upsert=True,
    )
    ids = [
        Job.push(LoadRetentionJob(project_id="demo")),
        Job.push(LoadRetentionJob(project_id="missing"), retry=0),
        Job.push(FlakyJob(failures=2), priority="high"),
        Job.push(AlwaysFailsJob(item="order-42"), retry={"retries": 2, "wait": 1}),
        Job.push(LoadRetentionJob(project_id="demo"), delay=5),
    ]
    print(f"pushed {len(ids)} example jobs: {', '.join(ids)}")
    print("run them with: python -m app_jobs --headless, and watch them on the dashboard,")
    print("python -m app_jobs web (make run does both: open http://127.0.0.1:8181/); or in a")
    print("terminal: .venv/bin/workers status, .venv/bin/workers cron; Ctrl-C stops them")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("WORKERS_JOBS", "app_jobs")  # this app's jobs, unless told otherwise
    sys.exit(main(prog="python -m app_jobs", web=push_examples))
