"""The worker verbs of the HTTP API, for workers on other machines (roles `worker` and
`admin`): take jobs (`POST /api/work`, a long poll), then report on each attempt by
its token: progress, log, beat, done, fail. Any language with an HTTP client can work
jobs this way; `workers.remote` is the Python one. The rules live in dispatch.py."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Path, Request
from pydantic import BaseModel, ConfigDict, Field

from workers.dispatch import MAX_WAIT, Dispatcher, Refused
from workers.web.access import authorize, worker
from workers.web.api import StrictBody
from workers.web.auth import Principal
from workers.web.problems import Problem, responses

MAX_JOBS = 100
_REPORT = responses(401, 403, 409, 422, 429, 503)

router = APIRouter(prefix="/api/work", tags=["work"])


class WorkRequest(StrictBody):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"types": ["EmailJob"], "max": 4, "wait": 20, "worker": "gpu-1"}]
        }
    )

    types: list[Annotated[str, Field(min_length=1, max_length=200)]] = Field(
        min_length=1, max_length=100, description="the job types this worker runs"
    )
    max: int = Field(1, ge=1, le=MAX_JOBS, description="at most this many jobs (its idle threads)")
    wait: float = Field(
        0.0, ge=0, le=MAX_WAIT, allow_inf_nan=False, description="seconds to wait for a job"
    )
    worker: str = Field(
        min_length=1, max_length=100, pattern=r"^[\w.@:-]+$", description="this worker's name"
    )


class WorkJob(BaseModel):
    id: str
    type: str
    params: dict[str, Any]
    attempt: int = Field(description="this attempt's number, from 1")
    token: str = Field(description="name it in every report on this attempt")
    lease: float = Field(description="seconds the lease lasts: beat within them")
    lease_expires: str | None
    timeout: float | None = Field(description="seconds the attempt may run (None: no limit)")
    priority: int
    created: str | None


class Work(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "jobs": [
                        {
                            "id": "6b16b79df59465c1914904f5",
                            "type": "EmailJob",
                            "params": {"to": "ada@example.com"},
                            "attempt": 1,
                            "token": "remote:3Jd9xv0kQpXc4LrA#1",
                            "lease": 30.0,
                            "lease_expires": "2026-12-07T12:00:30+00:00",
                            "timeout": None,
                            "priority": 0,
                            "created": "2026-12-07T11:59:58+00:00",
                        }
                    ]
                }
            ]
        }
    )

    jobs: list[WorkJob]


class Report(StrictBody):
    token: str = Field(min_length=1, max_length=200, description="the attempt's token")


class ProgressReport(Report):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"token": "remote:…#1", "completed": 3, "total": 10}]}
    )
    completed: float = Field(ge=0, allow_inf_nan=False)
    total: float = Field(gt=0, allow_inf_nan=False)


class LogReport(Report):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"token": "remote:…#1", "message": "sent", "level": "info"}]
        }
    )
    message: str = Field(max_length=10_000)
    level: Literal["debug", "info", "success", "warning", "danger", "error", "critical"] = "info"


class DoneReport(Report):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"token": "remote:…#1", "result": {"sent": True}}]}
    )
    result: Any = Field(None, description="any JSON value, stored as the job's result")


class ErrorDetail(StrictBody):
    message: str = Field(max_length=100_000)
    type: str = Field("RemoteError", max_length=200, description="the error's class name")
    traceback: str | None = Field(None, max_length=100_000)


class FailReport(Report):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"token": "remote:…#1", "error": {"message": "SMTP refused", "type": "IOError"}}
            ]
        }
    )
    error: ErrorDetail
    fatal: bool = Field(False, description="fail for good, skipping the retries left")


class Beat(BaseModel):
    cancelled: bool = Field(description="a manager cancelled the job: stop working on it")
    lease_expires: str | None


class Outcome(BaseModel):
    status: Literal["completed", "failed", "will retry"]


class Noted(BaseModel):
    ok: bool = True


def dispatcher(request: Request) -> Dispatcher:
    made: Dispatcher = request.app.state.dispatcher()
    return made


Worker = Annotated[Principal, Depends(worker)]
Dispatch = Annotated[Dispatcher, Depends(dispatcher)]
JobId = Annotated[str, Path(min_length=1, max_length=200)]


@router.post(
    "",
    response_model=Work,
    responses=responses(401, 403, 422, 429, 503),
    summary="Take up to `max` jobs of `types`, waiting up to `wait` seconds for one.",
)
async def take_work(body: WorkRequest, request: Request, who: Worker, dispatch: Dispatch) -> Work:
    """Claims as a local worker does (priorities, delays, limits); each job comes with the
    token its reports must name, and a lease to keep by beating. A token limited to some
    types may only ask for those (403 naming the rule)."""
    for job_type in body.types:
        authorize(request, who, "work", job_type)
    host = request.client.host if request.client else ""
    jobs = await dispatch.work(body.worker, body.types, body.max, body.wait, host)
    return Work(jobs=[WorkJob(**job) for job in jobs])


@router.post(
    "/{job_id}/progress",
    response_model=Noted,
    responses=_REPORT,
    summary="Record how far the attempt is.",
)
def report_progress(job_id: JobId, body: ProgressReport, _: Worker, dispatch: Dispatch) -> Noted:
    if body.completed > body.total:
        raise Problem(422, "Invalid request", "progress needs completed <= total")
    _fenced(lambda: dispatch.progress(job_id, body.token, body.completed, body.total))
    return Noted()


@router.post(
    "/{job_id}/log",
    response_model=Noted,
    responses=_REPORT,
    summary="Append to the job's log.",
)
def report_log(job_id: JobId, body: LogReport, _: Worker, dispatch: Dispatch) -> Noted:
    _fenced(lambda: dispatch.log(job_id, body.token, body.message, body.level))
    return Noted()


@router.post(
    "/{job_id}/beat",
    response_model=Beat,
    responses=_REPORT,
    summary="Renew the attempt's lease; says whether the job was cancelled.",
)
def report_beat(job_id: JobId, body: Report, _: Worker, dispatch: Dispatch) -> Beat:
    return Beat(**_fenced(lambda: dispatch.beat(job_id, body.token)))


@router.post(
    "/{job_id}/release",
    response_model=Noted,
    responses=_REPORT,
    summary="Hand back a job taken and not started: ready again, the attempt not counted.",
)
def report_release(job_id: JobId, body: Report, _: Worker, dispatch: Dispatch) -> Noted:
    _fenced(lambda: dispatch.release(job_id, body.token))
    return Noted()


@router.post(
    "/{job_id}/done",
    response_model=Outcome,
    responses=_REPORT,
    summary="Complete the attempt with its result (again: the same answer).",
)
def report_done(job_id: JobId, body: DoneReport, _: Worker, dispatch: Dispatch) -> Outcome:
    return Outcome(**_fenced(lambda: dispatch.done(job_id, body.token, body.result)))


@router.post(
    "/{job_id}/fail",
    response_model=Outcome,
    responses=_REPORT,
    summary="Fail the attempt: retried by the job's policy, or failed for good.",
)
def report_fail(job_id: JobId, body: FailReport, _: Worker, dispatch: Dispatch) -> Outcome:
    error = body.error.model_dump()
    return Outcome(**_fenced(lambda: dispatch.fail(job_id, body.token, error, body.fatal)))


def _fenced(report: Any) -> Any:
    """The report's answer; 409 when the attempt no longer holds the job."""
    try:
        return report()
    except Refused as refused:
        raise Problem(409, "Attempt lost", str(refused), job_status=refused.status) from None
