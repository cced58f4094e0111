"""Flask: push a job from a view, and read its outcome.

Run it from this folder: `flask --app app run` (web mode) and `workers --headless`. The
dashboard is `workers web --root-path /workers`, behind the same reverse proxy as this
app (nginx.conf): one site, one login at the proxy.
"""

from typing import Any

from flask import Flask
from reports import ReportJob

import workers
import workers.jobs
from workers import Job

app = Flask(__name__)
workers.boot()  # settings.json from here: connect, check the indexes, find the jobs


@app.post("/reports/<project>")
def start_report(project: str) -> dict[str, str]:
    return {"id": Job.push(ReportJob(project=project))}


@app.get("/reports/<job_id>")
def report(job_id: str) -> dict[str, Any]:
    job = workers.jobs.get(job_id)
    return {"status": job.status, "result": job.result} if job else {"status": "unknown"}
