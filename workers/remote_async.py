"""The asyncio client of a workers service: the creator's and manager's verbs of
`workers.remote.Client`, awaitable, for async apps (FastAPI, aiohttp, an asyncio script).

    async with workers.remote.connect_async("https://jobs.example.com", token="...") as c:
        pushed = await c.push(EmailJob(to="ada@example.com"))
        print(await pushed.result(timeout=60))

It speaks through `httpx.AsyncClient` with the same retries (transient failures with
backoff and jitter, never a 4xx), the same long-poll wait and the same errors as the sync
client. Working jobs stays with the sync `process_jobs` and `workers remote`: a job's
`handle_job` is sync code, and async ones run there too.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncGenerator, Iterable, Mapping
from typing import TYPE_CHECKING, Any

import httpx
import httpx_sse

from workers.errors import RemoteError
from workers.remote_wire import (
    TRANSIENT,
    PushedId,
    Retrying,
    Waiting,
    answer_of,
    events_request,
    find_query,
    http_options,
    none_if_missing,
    outcome_of,
    push_body,
)

if TYPE_CHECKING:
    from workers.job import Job

__all__ = ["AsyncClient", "AsyncPushed"]


class AsyncClient:
    """One service, one token, one connection pool; safe to share between tasks."""

    def __init__(
        self,
        url: str,
        token: str | None,
        *,
        timeout: float = 30.0,
        retry_for: float = 60.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self.retry_for = retry_for
        self._http = httpx.AsyncClient(**http_options(self.url, token, timeout, transport))
        self._closed = False

    async def aclose(self) -> None:
        self._closed = True
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def push(self, job: Job, **options: Any) -> AsyncPushed:
        """Push a job object (its class name is its type); returns its id."""
        return await self.push_named(type(job).__name__, dict(job.params), **options)

    async def push_named(
        self, job_type: str, params: Mapping[str, Any] | None = None, **options: Any
    ) -> AsyncPushed:
        pushed = await self.request("POST", "/api/jobs", json=push_body(job_type, params, options))
        return AsyncPushed(str(pushed["id"]), self, existing=bool(pushed.get("existing")))

    async def push_many(self, jobs: Iterable[Job], **options: Any) -> list[AsyncPushed]:
        return [await self.push(job, **options) for job in jobs]

    async def wait(self, job_id: str, timeout: float | None = None) -> dict[str, Any]:
        """As `Client.wait`: the finished job; TimeoutError past `timeout`, JobNotFound."""
        waiting = Waiting(job_id, timeout)
        while True:
            try:
                answer = await self.request("GET", f"/api/jobs/{job_id}/wait", **waiting.request())
            except RemoteError as exc:
                raise waiting.refused(exc) from None
            if (job := waiting.finished(answer)) is not None:
                return job

    async def get(self, job_id: str) -> dict[str, Any] | None:
        try:
            found: dict[str, Any] = await self.request("GET", f"/api/jobs/{job_id}")
        except RemoteError as exc:
            none_if_missing(exc)
            return None
        return found

    async def find(
        self, *, type: str | None = None, status: str | None = None, limit: int = 50
    ) -> list[dict[str, Any]]:
        answer = await self.request("GET", "/api/jobs", params=find_query(type, status, limit))
        jobs: list[dict[str, Any]] = answer["jobs"]
        return jobs

    async def act(self, action: str, job_id: str, **options: Any) -> dict[str, Any]:
        """A lifecycle action on one job: cancel, pause, resume, restart, rerun, remove..."""
        path = f"/api/jobs/{job_id}/{action}"
        done: dict[str, Any] = await self.request("POST", path, json=options or None)
        return done

    async def act_many(self, action: str, ids: list[str], **options: Any) -> dict[str, Any]:
        body = {"ids": ids, **options}
        done: dict[str, Any] = await self.request("POST", f"/api/actions/{action}", json=body)
        return done

    async def cancel(self, job_id: str, **options: Any) -> dict[str, Any]:
        return await self.act("cancel", job_id, **options)

    async def events(
        self, kinds: str | Iterable[str] | None = None, types: str | Iterable[str] | None = None
    ) -> AsyncGenerator[dict[str, Any], None]:
        """As `Client.events`: the job events as they happen, until the connection ends."""
        async with httpx_sse.aconnect_sse(
            self._http, "GET", "/api/events", **events_request(kinds, types)
        ) as source:
            if not source.response.is_success:
                await source.response.aread()
                answer_of(source.response)
            async for message in source.aiter_sse():
                if message.data:
                    yield json.loads(message.data)

    async def request(self, method: str, path: str, *, retry: bool = True, **kwargs: Any) -> Any:
        """The JSON answer; transient failures retried for `retry_for` seconds."""
        retrying = Retrying(f"{method} {self.url}{path}", self.retry_for if retry else 0.0)
        while True:
            try:
                response = await self._http.request(method, path, **kwargs)
            except httpx.TransportError as exc:
                pause = retrying.after(exc, None, self._closed)
            else:
                if response.status_code not in TRANSIENT:
                    return answer_of(response)
                pause = retrying.after(None, response, self._closed)
            await asyncio.sleep(pause)


class AsyncPushed(PushedId):
    """A pushed job's id, with awaitable `wait` and `result`."""

    client: AsyncClient

    async def wait(self, timeout: float | None = None) -> dict[str, Any]:
        return await self.client.wait(str(self), timeout)

    async def result(self, timeout: float | None = None) -> Any:
        """As `RemotePushed.result`: the result, or JobFailed, JobCancelled, TimeoutError."""
        return outcome_of(await self.wait(timeout))
