"""Errors as RFC 9457 problem details (`application/problem+json`) for the API, and as a
page for people. Every refusal the web layer makes is a `Problem`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict
from starlette.exceptions import HTTPException as StarletteHTTPException

from workers.errors import (
    Busy,
    DatabaseUnavailable,
    JobNotFound,
    PushError,
    TransitionRefused,
    WorkersError,
)

PROBLEM_TYPE = "application/problem+json"
# Problem types are identifiers, not addresses (RFC 9457 allows a URI that is not
# fetched): a URN under the distribution's name, and each is listed with its meaning on
# the HTTP API page of the docs (tests/test_docs.py keeps the two in step).
_BASE = "urn:mongo-workers:problem:"
TYPES = {
    "unauthorized": "no valid credentials: send an API token (Bearer) or log in",
    "forbidden": "the credentials do not allow this action on these jobs",
    "csrf-check-failed": "a form or script changed state without its page's CSRF token",
    "not-found": "no job (or route) has that id",
    "method-not-allowed": "the route does not take that HTTP method",
    "transition-refused": "the job is not in a status the action takes (`allowed` says which)",
    "attempt-lost": "a worker's report names an attempt that no longer holds the job (its "
    "lease moved on: rescued, handed back, cancelled or finished); nothing changed",
    "invalid-job": "the job cannot be pushed as given (an unknown type, bad params or options)",
    "invalid-request": "the body or the query does not fit the route (`errors` names the field)",
    "content-too-large": "the request body is over web.max_body bytes",
    "database-unavailable": "MongoDB did not answer in time: try again",
    "busy": "the web process runs as many text searches as it may: try again (Retry-After)",
    "too-many-requests": "too many failed credentials from this client of late: wait for "
    "Retry-After",
    "internal-error": "the server failed: its log says why",
    "request-failed": "the queue refused the request (the detail says why)",
    "error": "any other HTTP error",
}


class ProblemModel(BaseModel):
    """RFC 9457 problem details; a refused transition adds `job`, `job_status` (None: no such
    job) and `allowed` (the statuses the action needs)."""

    model_config = ConfigDict(extra="allow")

    type: str
    title: str
    status: int
    detail: str


class Problem(Exception):
    def __init__(self, status: int, title: str, detail: str, **extra: Any) -> None:
        super().__init__(detail)
        self.status, self.title, self.detail, self.extra = status, title, detail, extra

    def body(self) -> dict[str, Any]:
        slug = self.title.lower().replace(" ", "-")
        slug = slug if slug in TYPES else "error"
        return {
            "type": _BASE + slug,
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
            **self.extra,
        }


def unauthorized(
    detail: str = "no valid credentials: send an API token (Bearer) or log in",
) -> Problem:
    return Problem(401, "Unauthorized", detail)


def too_many(detail: str, retry_after: int) -> Problem:
    return Problem(429, "Too many requests", detail, retry_after=retry_after)


def forbidden(detail: str, **extra: Any) -> Problem:
    return Problem(403, "Forbidden", detail, **extra)


def not_found(detail: str) -> Problem:
    return Problem(404, "Not found", detail)


def from_workers_error(exc: WorkersError) -> Problem:
    """The lifecycle's errors, as the API reports them."""
    if isinstance(exc, TransitionRefused):
        return Problem(
            409,
            "Transition refused",
            str(exc),
            job=str(exc.job_id),
            job_status=exc.status,
            allowed=list(exc.allowed),
        )
    if isinstance(exc, JobNotFound):
        return not_found(str(exc))
    if isinstance(exc, PushError):
        return Problem(422, "Invalid job", str(exc))
    if isinstance(exc, DatabaseUnavailable):
        return Problem(503, "Database unavailable", str(exc))
    if isinstance(exc, Busy):
        return Problem(503, "Busy", str(exc))
    return Problem(400, "Request failed", str(exc))


#: the documented error responses of every API operation
def responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    return {
        status: {
            "model": ProblemModel,
            "content": {PROBLEM_TYPE: {"schema": {"$ref": "#/components/schemas/ProblemModel"}}},
            "description": _DESCRIPTIONS[status],
        }
        for status in statuses
    }


_DESCRIPTIONS = {
    400: "The request cannot be done",
    401: "No valid credentials",
    403: "The role does not allow it, or a CSRF token is missing",
    404: "No job has that id",
    409: "The job's status does not allow the action",
    422: "The request or the job is invalid",
    429: "Too many failed credentials from this client of late (see Retry-After)",
    503: "The database is unavailable, or the web process is busy (see Retry-After)",
}


ErrorPage = Callable[[Request, "Problem"], Response]
_UNPARSED = "There was an error parsing the body"  # FastAPI's, for a body it cannot decode
_NOT_TEXT = "body: the request body cannot be read as JSON or a form (is it UTF-8?)"


def problem_response(request: Request, problem: Problem) -> Response:
    """JSON for the API and machines; a page for a browser asking for HTML (the pages
    module's, which `install` was given: the pages depend on this module, not back)."""
    wants_html = "text/html" in request.headers.get("accept", "")
    page: ErrorPage | None = getattr(request.app.state, "error_page", None)
    if page and wants_html and not request.url.path.startswith(_api_prefix(request)):
        return page(request, problem)
    headers = {
        401: {"WWW-Authenticate": "Bearer"},
        429: {"Retry-After": str(problem.extra.get("retry_after", 60))},
        503: {"Retry-After": "2"},
    }.get(problem.status)
    return JSONResponse(problem.body(), problem.status, headers=headers, media_type=PROBLEM_TYPE)


def _api_prefix(request: Request) -> str:
    return str(request.scope.get("root_path", "")).rstrip("/") + "/api"


def install(app: FastAPI, error_page: ErrorPage) -> None:
    app.state.error_page = error_page
    app.add_exception_handler(Problem, _on_problem)
    app.add_exception_handler(WorkersError, _on_workers_error)
    app.add_exception_handler(RequestValidationError, _on_invalid)
    app.add_exception_handler(StarletteHTTPException, _on_http)


# Each handler is registered for its own type; anything else is raised again.


async def _on_problem(request: Request, exc: Exception) -> Response:
    if not isinstance(exc, Problem):
        raise exc
    return problem_response(request, exc)


async def _on_workers_error(request: Request, exc: Exception) -> Response:
    if not isinstance(exc, WorkersError):
        raise exc
    return problem_response(request, from_workers_error(exc))


async def _on_invalid(request: Request, exc: Exception) -> Response:
    if not isinstance(exc, RequestValidationError):
        raise exc
    errors = [
        {"where": ".".join(str(part) for part in error["loc"]), "message": error["msg"]}
        for error in exc.errors()
    ]
    detail = "; ".join(f"{e['where']}: {e['message']}" for e in errors)
    return problem_response(request, Problem(422, "Invalid request", detail, errors=errors))


async def _on_http(request: Request, exc: Exception) -> Response:
    if not isinstance(exc, StarletteHTTPException):
        raise exc
    status, detail = exc.status_code, str(exc.detail)
    title = {404: "Not found", 405: "Method not allowed"}.get(status, "Error")
    if status == 400 and detail == _UNPARSED:  # bytes that are not text: as bad JSON is
        status, title, detail = 422, "Invalid request", _NOT_TEXT
    if status == 413:  # guard.BodyLimit, as the body was read
        limit = getattr(request.app.state, "max_body", "the limit of")
        title, detail = "Content too large", f"the request body is over {limit} bytes"
    return problem_response(request, Problem(status, title, detail))
