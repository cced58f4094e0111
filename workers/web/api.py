"""The HTTP API under /api: push, get, find, the lifecycle actions one job or many at a
time, stats, nodes and cron. JSON in and out; errors are problem details (problems.py);
the OpenAPI document is at /openapi.json."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from enum import Enum
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.responses import StreamingResponse
from pydantic import AfterValidator, BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

import workers.web.views as views
from workers import lifecycle, listening
from workers.app import App
from workers.dispatch import MAX_WAIT
from workers.errors import WorkersError
from workers.listening import choose
from workers.options import MAX_DELAY
from workers.record import ALLOWED, STATUSES
from workers.waiting import waiters_of
from workers.web.access import (
    actor,
    authorize,
    booted,
    cached_counts,
    check_ownership,
    pusher,
    reader,
    scope_of,
)
from workers.web.auth import Principal
from workers.web.problems import Problem, not_found, responses

Status = Enum("Status", {status: status for status in STATUSES}, type=str)  # type: ignore[misc]
Action = Enum("Action", {action: action for action in ALLOWED}, type=str)  # type: ignore[misc]
MAX_IDS = 1000
_READ = responses(401, 403, 422, 429, 503)
_WRITE = responses(401, 403, 404, 409, 422, 429, 503)

router = APIRouter(prefix="/api", tags=["jobs"])


class StrictBody(BaseModel):
    # strict: true is not a number (JSON has booleans), "5" is not a count
    model_config = ConfigDict(extra="forbid", strict=True)


def _utf8(text: str) -> str:
    """JSON may carry a lone surrogate ("\\ud800"), which no database can store."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("must be UTF-8 text (a lone surrogate is not)") from None
    return text


# a string the database can store: the field is named in the 422, not a 500 from BSON
Text = Annotated[str, AfterValidator(_utf8)]


class PushRequest(StrictBody):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "type": "LoadRetentionJob",
                    "params": {"project_id": "p1"},
                    "priority": "high",
                    "delay": 60,
                    "unique": "retention:p1",
                }
            ]
        }
    )

    type: Text = Field(min_length=1, description="a registered job class name")
    params: dict[str, Any] = Field(
        default_factory=dict, description="the job's params, a JSON object stored as BSON"
    )
    delay: float | None = Field(
        None, ge=0, le=MAX_DELAY, allow_inf_nan=False, description="seconds from now"
    )
    after: str | None = Field(None, description='ISO-8601 time or "in 5 minutes"')
    priority: int | str | None = Field(
        None, description="an int or low/normal/medium/high/critical"
    )
    retries: int | None = Field(None, ge=0, description="retries after a failed attempt")
    timeout: float | None = Field(None, gt=0, description="seconds an attempt may run")
    depends: list[Text] | None = Field(
        None, description="ids of jobs to wait for (a creator's own jobs only)"
    )
    unique: Text | None = Field(
        None, min_length=1, description="a key: a push with a key already held returns that job"
    )


class Pushed(BaseModel):
    """The pushed job's id; `existing`: its unique key was held, and this is that job."""

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"id": "6b16b79df59465c1914904f5", "existing": False}]}
    )

    id: str
    existing: bool


class JobSummary(BaseModel):
    id: str
    type: Any
    status: Any
    progress: float | None
    attempts: int
    owner: Any
    created: Any
    finished: Any


class JobDetail(JobSummary):
    model_config = ConfigDict(extra="allow")

    params: Any
    log: list[Any]
    error: Any
    result: Any
    timeline: list[dict[str, str]]


class JobPage(BaseModel):
    jobs: list[JobSummary]
    next: str | None = Field(description="pass as `before` for the next page")
    searched: int | None = Field(description="jobs a text search examined")


class ActionOptions(StrictBody):
    dependents: bool | None = Field(None, description="cancel, restart")
    antecedents: bool | None = Field(None, description="cancel, restart")
    retries: int | None = Field(None, ge=0, le=1000, description="restart")
    delay: float | None = Field(
        None, ge=0, le=MAX_DELAY, allow_inf_nan=False, description="rerun: seconds from now"
    )


class BulkRequest(ActionOptions):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"ids": ["6b16b79df59465c1914904f5", "6b16b79df59465c1914904f6"], "retries": 3}
            ]
        }
    )

    ids: list[Text] = Field(min_length=1, max_length=MAX_IDS, description="the jobs to act on")


class ActionDone(BaseModel):
    action: str
    id: str
    status: str | None = Field(description="the job's status after the action (None: removed)")
    created: str | None = Field(description="rerun: the new job's id")
    spared: list[str] = Field(
        description="jobs of other owners that a creator's cascade left as they were"
    )


class BulkDone(BaseModel):
    action: str
    changed: list[str]
    refused: dict[str, str | None] = Field(description="id -> its status (None: no such job)")
    errors: dict[str, str]
    created: dict[str, str]
    spared: list[str] = Field(
        description="jobs of other owners that a creator's cascade left as they were"
    )


_OPTIONS = {
    "cancel": {"dependents", "antecedents"},
    "restart": {"antecedents", "dependents", "retries"},
    "rerun": {"delay"},
}

App_ = Annotated[App, Depends(booted)]


@router.post(
    "/jobs",
    status_code=201,
    response_model=Pushed,
    responses=_WRITE,
    summary="Push a job of a registered type.",
)
def push_job(
    body: PushRequest,
    request: Request,
    app: App_,
    who: Annotated[Principal, Depends(pusher)],
) -> Pushed:
    """Push a job of a registered type; the caller is recorded as its owner."""
    authorize(request, who, "push", body.type, body.params)
    if body.type not in app.registry:
        known = ", ".join(app.registry.types) or "none"
        raise Problem(
            422, "Invalid job", f"no job class is registered as {body.type!r} (known: {known})"
        )
    if body.depends:
        check_ownership(request, app, who, body.depends, doing="depend on")
    options = body.model_dump(exclude={"type", "params", "retries"}, exclude_none=True)
    if body.retries is not None:
        options["retry"] = body.retries
    pushed = app.push_named(body.type, body.params, owner=who.name, **options)
    return Pushed(id=str(pushed), existing=pushed.existing)


@router.get("/jobs", response_model=JobPage, responses=_READ, summary="List jobs, newest first.")
def find_jobs(
    app: App_,
    _: Annotated[Principal, Depends(reader)],
    type: Annotated[str | None, Query(min_length=1)] = None,
    status: Status | None = None,
    q: Annotated[
        str | None,
        Query(max_length=200, description="text in id, type, params (up to 16 kB), error, log"),
    ] = None,
    before: Annotated[
        str | None, Query(min_length=1, description="the `next` of the last page")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> JobPage:
    """Newest first, one page at a time, on an index."""
    page = views.find_page(
        app, type=type, status=status.value if status else None, q=q, before=before, limit=limit
    )
    return JobPage(
        jobs=[JobSummary(**job) for job in page.jobs], next=page.next, searched=page.searched
    )


JobId = Annotated[str, Path(min_length=1, max_length=200)]


@router.get(
    "/jobs/{job_id}",
    response_model=JobDetail,
    responses=responses(401, 403, 404, 422, 429, 503),
    summary="Read one job: its params, log, result, error and timeline.",
)
def get_job(job_id: JobId, app: App_, _: Annotated[Principal, Depends(reader)]) -> JobDetail:
    """The whole job, with the jobs it depends on and the jobs waiting for it."""
    doc = app.store.get_job(job_id)
    if doc is None:
        raise not_found(f"no job has the id {job_id}")
    return JobDetail(**views.job_detail(doc), **views.related(app, doc))


class Waited(BaseModel):
    finished: bool = Field(description="false: `timeout` ran out first (`job` as it is now)")
    job: JobDetail


@router.get(
    "/jobs/{job_id}/wait",
    response_model=Waited,
    responses=responses(401, 403, 404, 422, 429, 503),
    summary="Wait up to `timeout` seconds for a job to finish, then read it.",
)
async def wait_for_job(
    job_id: JobId,
    app: App_,
    _: Annotated[Principal, Depends(reader)],
    timeout: Annotated[float, Query(ge=0, le=MAX_WAIT, allow_inf_nan=False)] = 30.0,
) -> Waited:
    """A long poll on the stream every waiter of this process shares (waiting.py): the
    answer comes when the job completes, fails, is cancelled or removed."""
    finished = True
    try:
        await waiters_of(app.store).wait_async([job_id], timeout)
    except TimeoutError:
        finished = False
    doc = await run_in_threadpool(app.store.get_job, job_id)
    if doc is None:
        raise not_found(f"no job has the id {job_id}")
    return Waited(
        finished=finished, job=JobDetail(**views.job_detail(doc), **views.related(app, doc))
    )


@router.post(
    "/jobs/{job_id}/{action}",
    response_model=ActionDone,
    responses=_WRITE,
    summary="Act on one job: cancel, pause, resume, restart, rerun, remove and more.",
)
def act_on_job(
    job_id: JobId,
    action: Action,
    request: Request,
    app: App_,
    who: Annotated[Principal, Depends(actor)],
    body: ActionOptions | None = None,
) -> ActionDone:
    """One job; 409 with the job's status and the allowed ones when its status refuses."""
    name = action.value
    options = _options(name, body)
    check_ownership(request, app, who, [job_id], action=name)
    result = lifecycle.act_on_one(app.store, name, job_id, owner=scope_of(who), **options)
    doc = app.store.get_job(job_id)
    return ActionDone(
        action=name,
        id=job_id,
        status=doc["status"] if doc else None,
        created=str(result.created[job_id]) if job_id in result.created else None,
        spared=[str(i) for i in result.spared],
    )


@router.post(
    "/actions/{action}",
    response_model=BulkDone,
    responses=_WRITE,
    summary="Act on many jobs at once, by their ids.",
)
def act_on_jobs(
    action: Action,
    body: BulkRequest,
    request: Request,
    app: App_,
    who: Annotated[Principal, Depends(actor)],
) -> BulkDone:
    """Many jobs: each changed or refused (with its status); a creator's request naming a job
    it did not push is refused whole (403)."""
    name = action.value
    options = _options(name, ActionOptions(**body.model_dump(exclude={"ids"})))
    check_ownership(request, app, who, body.ids, action=name)
    result = lifecycle.act(app.store, name, body.ids, owner=scope_of(who), **options)
    return BulkDone(
        action=name,
        changed=[str(i) for i in result.changed],
        refused={str(k): v for k, v in result.refused.items()},
        errors={str(k): str(v) for k, v in result.errors.items()},
        created={str(k): str(v) for k, v in result.created.items()},
        spared=[str(i) for i in result.spared],
    )


def _options(action: str, body: ActionOptions | None) -> dict[str, Any]:
    given = body.model_dump(exclude_none=True) if body else {}
    wrong = sorted(set(given) - _OPTIONS.get(action, set()))
    if wrong:
        allowed = ", ".join(sorted(_OPTIONS.get(action, set()))) or "none"
        raise Problem(
            422, "Invalid request", f"{action} takes no {', '.join(wrong)} (it takes: {allowed})"
        )
    return given


class Stats(BaseModel):
    at: str
    by_status: dict[str, int]
    by_type: dict[str, dict[str, int]]
    oldest_ready_seconds: float | None
    oldest_ready_type: Any
    counted_seconds_ago: float = Field(
        0.0, description="how long ago the counts were taken (a snapshot every process shares)"
    )
    unrun: dict[str, int] = Field(
        default_factory=dict,
        description="the types with jobs still to run that no live worker process runs, "
        "and how many such jobs each has",
    )
    throughput: list[dict[str, Any]] = Field(
        description="attempts completed and failed per minute, last hour (an attempt that "
        "will retry counts as failed)"
    )
    limits: list[dict[str, Any]] = Field(
        default_factory=list,
        description="each limited type's caps, their use now, and its jobs waiting for them",
    )


@router.get(
    "/stats",
    response_model=Stats,
    responses=_READ,
    tags=["queue"],
    summary="Count the jobs by status and type, with the last hour's attempts.",
)
def stats(
    app: App_,
    _: Annotated[Principal, Depends(reader)],
    counts: Annotated[dict[str, Any], Depends(cached_counts)],
) -> Stats:
    """The counts are a snapshot every web process shares (`counted_seconds_ago`)."""
    return Stats(**counts, throughput=views.throughput(app), limits=views.limits(app))


@router.get(
    "/nodes",
    response_model=list[dict[str, Any]],
    responses=_READ,
    tags=["queue"],
    summary="List the worker processes, with what each runs and when it last beat.",
)
def nodes(app: App_, _: Annotated[Principal, Depends(reader)]) -> list[dict[str, Any]]:
    """A process silent for longer than a lease is marked `silent`."""
    return views.nodes(app)


@router.get(
    "/events",
    responses={
        200: {"content": {"text/event-stream": {}}, "description": "one event per job event"},
        **responses(401, 403, 422, 429, 503),
    },
    tags=["queue"],
    summary="Follow the job events live: server-sent events, one per event of `kinds`.",
)
async def follow_events(
    request: Request,
    app: App_,
    who: Annotated[Principal, Depends(reader)],
    kinds: Annotated[str | None, Query(description="comma-separated event kinds")] = None,
    types: Annotated[str | None, Query(description="comma-separated job types")] = None,
) -> StreamingResponse:
    """Each event is `event: <kind>` with the event as JSON in `data` (`workers.events()`'s
    fields); a comment every 15 s keeps the connection open. A token limited to some types
    sees only those."""
    try:
        kind_set, type_set = choose(_listed(kinds), _listed(types))
    except WorkersError as exc:
        raise Problem(422, "Invalid request", str(exc)) from None
    if who.types is not None:
        type_set = (type_set or who.types) & who.types
    stream = listening.events(app.store, kind_set, type_set)
    return StreamingResponse(
        _server_sent(stream, request),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


def _listed(text: str | None) -> list[str] | None:
    return None if text is None else [part.strip() for part in text.split(",") if part.strip()]


_KEEPALIVE = 15.0


async def _server_sent(stream: listening.EventStream, request: Request) -> AsyncIterator[str]:
    events = stream.__aiter__()
    try:
        yield "retry: 2000\n\n"
        while not await request.is_disconnected():
            try:
                event = await asyncio.wait_for(anext(events), _KEEPALIVE)
            except TimeoutError:
                yield ": keepalive\n\n"
                continue
            yield f"event: {event.kind}\ndata: {event.as_json()}\n\n"
    finally:
        stream.close()


@router.get(
    "/cron",
    response_model=dict[str, Any],
    responses=_READ,
    tags=["queue"],
    summary="List the cron schedules, their next and last ticks, and the leader.",
)
def cron(app: App_, _: Annotated[Principal, Depends(reader)]) -> dict[str, Any]:
    """A schedule's lag is how long its oldest tick not fired yet has been due."""
    return views.cron(app)
