"""FastAPI: push a job from a route, read its outcome, and mount the dashboard.

Run it from this folder: `uvicorn app:app` (web mode) and `workers --headless`.
"""

import hmac
import os
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.security import HTTPBasic
from reports import ReportJob

import workers
import workers.jobs
import workers.web
from workers import Job, JobNotFound

workers.boot()  # settings.json from here: connect, check the indexes, find the jobs


@asynccontextmanager
async def lifespan(_: FastAPI) -> Any:
    yield
    workers.shutdown()  # closes the connections (and releases an embedded server)


app = FastAPI(lifespan=lifespan)


@app.post("/reports/{project}")
def start_report(project: str) -> dict[str, str]:
    return {"id": Job.push(ReportJob(project=project))}


@app.get("/reports/{job_id}")
def report(job_id: str) -> dict[str, Any]:
    job = workers.jobs.get(job_id)
    if job is None:
        raise HTTPException(404, f"no report has the id {job_id}")
    return {"status": job.status, "result": job.result}


@app.get("/reports/{job_id}/wait")
async def wait_for_report(job_id: str) -> dict[str, Any]:
    """Waits without a thread: one change stream per process wakes every waiter."""
    try:
        return {"result": await workers.Pushed(job_id).result_async(timeout=30)}
    except JobNotFound:
        raise HTTPException(404, f"no report has the id {job_id}") from None


_basic = HTTPBasic(auto_error=False)


async def dashboard_login(request: Request) -> tuple[str, str] | None:
    """Your app's own login goes here. This one asks for HTTP Basic credentials: the user
    `admin` and the password in DASHBOARD_PASSWORD (no password set: nobody gets in)."""
    password = os.environ.get("DASHBOARD_PASSWORD", "")
    given = await _basic(request)
    if not password or given is None or given.username != "admin":
        return None
    if not hmac.compare_digest(given.password.encode(), password.encode()):
        return None
    return ("admin", "admin")


app.mount("/workers", workers.web.app(auth=dashboard_login))
