"""FastAPI: push a job from a route, read its outcome, and mount the dashboard.

Run it from this folder: `uvicorn app:app` (web mode) and `workers --headless`.
"""

from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from reports import ReportJob

import workers
import workers.web
from workers import Job

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
    job = Job.get(job_id)
    return {"status": job.status, "result": job.result} if job else {"status": "unknown"}


@app.get("/reports/{job_id}/wait")
async def wait_for_report(job_id: str) -> dict[str, Any]:
    """Waits without a thread: one change stream per process wakes every waiter."""
    return {"result": await workers.Pushed(job_id).result_async(timeout=30)}


def demo_login(request: Request) -> tuple[str, str] | None:
    """Your app's own login goes here; in this demo a client on this machine is admin."""
    client = request.client
    return ("local", "admin") if client and client.host == "127.0.0.1" else None


app.mount("/workers", workers.web.app(auth=demo_login))
