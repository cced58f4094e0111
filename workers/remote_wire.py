"""What the sync client (remote.py) and the asyncio one (remote_async.py) share: the
retries, the long-poll wait, the answers and the request bodies. Each client is then only
its transport."""

from __future__ import annotations

import random
import time
from collections.abc import Iterable, Mapping
from typing import Any

import httpx

from workers.errors import JobCancelled, JobFailed, JobNotFound, RemoteError, Unreachable

TRANSIENT = frozenset({502, 503, 504})
_BACKOFF_FIRST, _BACKOFF_MAX = 0.25, 10.0
LONG_POLL = 30.0  # seconds one wait request may last (the service's cap)


def http_options(url: str, token: str | None, timeout: float, transport: Any) -> dict[str, Any]:
    """What an httpx client (sync or async) of the service is made with."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return {"base_url": url, "headers": headers, "timeout": timeout, "transport": transport}


class PushedId(str):
    """A pushed job's id, bound to the client (sync or async) that pushed it; `existing`:
    a unique push found the job already there."""

    client: Any
    existing: bool

    def __new__(cls, job_id: str, client: Any, *, existing: bool = False) -> PushedId:
        pushed = super().__new__(cls, job_id)
        pushed.client, pushed.existing = client, existing
        return pushed


class Retrying:
    """Backoff with jitter through transient failures, for `seconds` (0: no retry)."""

    def __init__(self, what: str, seconds: float) -> None:
        self.what = what
        self.deadline = time.monotonic() + seconds
        self.wait = _BACKOFF_FIRST

    def after(
        self, error: Exception | None, response: httpx.Response | None, closed: bool
    ) -> float:
        """Seconds to pause before the next try; Unreachable when there is none."""
        failure = (
            f"{type(error).__name__}: {error}"
            if error
            else f"HTTP {response and response.status_code}"
        )
        if time.monotonic() + self.wait > self.deadline or closed:
            raise Unreachable(f"{self.what} failed: {failure}")
        pause = self.wait * random.uniform(0.5, 1.5)  # noqa: S311 (jitter, not a secret)
        self.wait = min(self.wait * 2, _BACKOFF_MAX)
        return pause


class Waiting:
    """The long polls of `GET /api/jobs/{id}/wait` until the job finished or `timeout`."""

    def __init__(self, job_id: str, timeout: float | None) -> None:
        self.job_id, self.timeout = job_id, timeout
        self.deadline = None if timeout is None else time.monotonic() + timeout

    def request(self) -> dict[str, Any]:
        """The next poll's query and timeout: each at most 30 s."""
        left = LONG_POLL if self.deadline is None else max(0.0, self.deadline - time.monotonic())
        poll = min(left, LONG_POLL)
        return {"params": {"timeout": poll}, "timeout": poll + 30}

    def finished(self, answer: Mapping[str, Any]) -> dict[str, Any] | None:
        """The job if it finished; None to poll again; TimeoutError past the deadline."""
        if answer["finished"]:
            job: dict[str, Any] = answer["job"]
            return job
        if self.deadline is not None and time.monotonic() >= self.deadline:
            raise TimeoutError(f"wait: job {self.job_id} did not finish within {self.timeout:g} s")
        return None

    def refused(self, exc: RemoteError) -> Exception:
        if exc.status == 404:
            return JobNotFound(f"wait: no job has the id {self.job_id}")
        return exc


def outcome_of(job: Mapping[str, Any]) -> Any:
    """A finished job's result, or the error that says why there is none."""
    if job["status"] == "completed":
        return job.get("result")
    if job["status"] == "cancelled":
        raise JobCancelled(f"job {job['id']} was cancelled")
    error = job.get("error") or {}
    raise JobFailed(f"job {job['id']} failed: {error.get('type')}: {error.get('message')}")


def push_body(
    job_type: str, params: Mapping[str, Any] | None, options: dict[str, Any]
) -> dict[str, Any]:
    return {"type": job_type, "params": dict(params or {}), **_push_options(options)}


def find_query(job_type: str | None, status: str | None, limit: int) -> dict[str, Any]:
    query = {"type": job_type, "status": status, "limit": limit}
    return {k: v for k, v in query.items() if v is not None}


def events_request(
    kinds: str | Iterable[str] | None, types: str | Iterable[str] | None
) -> dict[str, Any]:
    query = {k: _joined(v) for k, v in (("kinds", kinds), ("types", types)) if v is not None}
    return {"params": query, "timeout": httpx.Timeout(10, read=None)}


def none_if_missing(exc: RemoteError) -> None:
    """A 404 means no such job (the caller answers None); any other refusal is raised."""
    if exc.status != 404:
        raise exc


def answer_of(response: httpx.Response) -> Any:
    try:
        body = response.json()
    except ValueError:
        body = None
    if response.is_success:
        return body
    detail = body.get("detail") if isinstance(body, dict) else None
    raise RemoteError(response.status_code, str(detail or response.reason_phrase), body)


def _joined(value: str | Iterable[str]) -> str:
    return value if isinstance(value, str) else ",".join(value)


def _push_options(options: dict[str, Any]) -> dict[str, Any]:
    """The local push's options as the HTTP push takes them (`retry` by count)."""
    options = dict(options)
    retry = options.pop("retry", None)
    if isinstance(retry, Mapping):
        retry = retry.get("retries")
    if retry is not None:
        options["retries"] = retry
    return {k: v for k, v in options.items() if v is not None}
