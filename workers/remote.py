"""A client of a workers service over its HTTP API, with a token instead of the database's
credentials: push and manage jobs, and work them from another machine.

    client = workers.remote.connect("https://jobs.example.com", token="...")
    client.push(EmailJob(to="ada@example.com"), delay=60)
    queue = client.process_jobs(["EmailJob"], send_email, concurrency=4)

`url` and `token` default to `WORKERS_REMOTE__URL` and `WORKERS_REMOTE__TOKEN` (or
`WORKERS_REMOTE__TOKEN_FILE`, a file holding it). Transient failures (no connection,
a timeout, 502, 503, 504) are retried with backoff and jitter; a 4xx is not: it raises
`RemoteError` naming the status and the service's reason. The worker side (`JobQueue`)
is in remote_worker.py; `run` here is `workers remote`.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

import httpx
import httpx_sse

from workers import registry
from workers.errors import (
    DiscoveryError,
    RemoteError,
    SettingsError,
    Unreachable,
)
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
from workers.remote_worker import Handler, JobQueue, class_handler

if TYPE_CHECKING:
    from workers.job import Job
    from workers.remote_async import AsyncClient

__all__ = [
    "Client",
    "JobQueue",
    "RemoteError",
    "RemotePushed",
    "Unreachable",
    "connect",
    "connect_async",
]

URL_ENV, TOKEN_ENV, TOKEN_FILE_ENV = (
    "WORKERS_REMOTE__URL",
    "WORKERS_REMOTE__TOKEN",
    "WORKERS_REMOTE__TOKEN_FILE",
)


def connect(url: str | None = None, token: str | None = None, *, timeout: float = 30.0) -> Client:
    """A client of the service at `url` (default: WORKERS_REMOTE__URL)."""
    url, token = _where("connect", url, token)
    return Client(url, token, timeout=timeout)


def connect_async(
    url: str | None = None, token: str | None = None, *, timeout: float = 30.0
) -> AsyncClient:
    """The asyncio client (remote_async.py) of the service at `url`; use `async with`."""
    from workers.remote_async import AsyncClient

    url, token = _where("connect_async", url, token)
    return AsyncClient(url, token, timeout=timeout)


def _where(verb: str, url: str | None, token: str | None) -> tuple[str, str | None]:
    """The URL and token given, else the environment's; SettingsError naming what is off."""
    url = url or os.environ.get(URL_ENV)
    if not url:
        raise SettingsError(f"workers.remote.{verb}: no url given and {URL_ENV} is not set")
    if not url.startswith(("http://", "https://")):
        raise SettingsError(f"workers.remote.{verb}: {url!r} is not an http(s) URL")
    return url, token if token is not None else token_from_environment()


def token_from_environment() -> str | None:
    """WORKERS_REMOTE__TOKEN, else the first line of the file WORKERS_REMOTE__TOKEN_FILE names."""
    token = os.environ.get(TOKEN_ENV)
    if token:
        return token
    path = os.environ.get(TOKEN_FILE_ENV)
    return read_token_file(path, TOKEN_FILE_ENV) if path else None


def read_token_file(path: str, where: str) -> str:
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as exc:
        raise SettingsError(f"{where}: cannot read the token file {path}: {exc}") from None
    token = lines[0].strip() if lines else ""
    if not token:
        raise SettingsError(f"{where}: the token file {path} is empty")
    return token


class Client:
    """One service, one token; safe to share between threads (httpx's pool)."""

    def __init__(
        self,
        url: str,
        token: str | None,
        *,
        timeout: float = 30.0,
        retry_for: float = 60.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self.retry_for = retry_for  # seconds a request is retried through transient failures
        self._http = httpx.Client(**http_options(self.url, token, timeout, transport))
        self._closed = threading.Event()

    def close(self) -> None:
        self._closed.set()
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- creators and managers ------------------------------------------------------------

    def push(self, job: Job, **options: Any) -> RemotePushed:
        """Push a job object (its class name is its type); returns its id."""
        return self.push_named(type(job).__name__, dict(job.params), **options)

    def push_named(
        self, job_type: str, params: Mapping[str, Any] | None = None, **options: Any
    ) -> RemotePushed:
        pushed = self.request("POST", "/api/jobs", json=push_body(job_type, params, options))
        return RemotePushed(str(pushed["id"]), self, existing=bool(pushed.get("existing")))

    def wait(self, job_id: str, timeout: float | None = None) -> dict[str, Any]:
        """The job once it finished (completed, failed or cancelled); TimeoutError past
        `timeout` seconds (None: never), JobNotFound if there is no such job. Each request
        is a long poll of at most 30 s."""
        waiting = Waiting(job_id, timeout)
        while True:
            try:
                answer = self.request("GET", f"/api/jobs/{job_id}/wait", **waiting.request())
            except RemoteError as exc:
                raise waiting.refused(exc) from None
            if (job := waiting.finished(answer)) is not None:
                return job

    def events(
        self, kinds: str | Iterable[str] | None = None, types: str | Iterable[str] | None = None
    ) -> Iterator[dict[str, Any]]:
        """The job events as they happen (server-sent events from `GET /api/events`): each
        a dict with `kind`, `job_id`, `type`, `at` and the result, error or progress. The
        iteration ends when the connection does (a `for` loop may `break` any time)."""
        with httpx_sse.connect_sse(
            self._http, "GET", "/api/events", **events_request(kinds, types)
        ) as source:
            if not source.response.is_success:
                source.response.read()
                answer_of(source.response)
            for message in source.iter_sse():
                if message.data:  # the opening `retry:` carries none
                    yield json.loads(message.data)

    def push_many(self, jobs: Iterable[Job], **options: Any) -> list[RemotePushed]:
        return [self.push(job, **options) for job in jobs]

    def get(self, job_id: str) -> dict[str, Any] | None:
        """The job as `GET /api/jobs/{id}` shows it; None if there is no such job."""
        try:
            found: dict[str, Any] = self.request("GET", f"/api/jobs/{job_id}")
        except RemoteError as exc:
            none_if_missing(exc)
            return None
        return found

    def find(
        self, *, type: str | None = None, status: str | None = None, limit: int = 50
    ) -> list[dict[str, Any]]:
        query = find_query(type, status, limit)
        jobs: list[dict[str, Any]] = self.request("GET", "/api/jobs", params=query)["jobs"]
        return jobs

    def act(self, action: str, job_id: str, **options: Any) -> dict[str, Any]:
        """A lifecycle action on one job: cancel, pause, resume, restart, rerun, remove..."""
        done: dict[str, Any] = self.request(
            "POST", f"/api/jobs/{job_id}/{action}", json=options or None
        )
        return done

    def act_many(self, action: str, ids: list[str], **options: Any) -> dict[str, Any]:
        done: dict[str, Any] = self.request(
            "POST", f"/api/actions/{action}", json={"ids": ids, **options}
        )
        return done

    def cancel(self, job_id: str, **options: Any) -> dict[str, Any]:
        return self.act("cancel", job_id, **options)

    # -- workers ---------------------------------------------------------------------------

    def process_jobs(
        self,
        types: str | list[str],
        handler: Handler,
        *,
        concurrency: int = 4,
        cargo: int = 1,
        name: str | None = None,
        wait: float = 20.0,
    ) -> JobQueue:
        """Work jobs of `types` with `handler(job)` (or `handler(jobs)` with `cargo` > 1) on
        `concurrency` threads, as meteor-job's processJobs; the queue starts at once."""
        kinds = [types] if isinstance(types, str) else list(types)
        return JobQueue(
            self, kinds, handler, concurrency=concurrency, cargo=cargo, name=name, wait=wait
        )

    # -- the wire -------------------------------------------------------------------------

    def request(self, method: str, path: str, *, retry: bool = True, **kwargs: Any) -> Any:
        """The JSON answer; transient failures retried for `retry_for` seconds (with
        backoff and jitter), or not at all when `retry` is off."""
        retrying = Retrying(f"{method} {self.url}{path}", self.retry_for if retry else 0.0)
        while True:
            try:
                response = self._http.request(method, path, **kwargs)
            except httpx.TransportError as exc:
                pause = retrying.after(exc, None, self._closed.is_set())
            else:
                if response.status_code not in TRANSIENT:
                    return answer_of(response)
                pause = retrying.after(None, response, self._closed.is_set())
            self._closed.wait(pause)


class RemotePushed(PushedId):
    """A pushed job's id, with `wait` and `result` over the service (as a local `Pushed`)."""

    client: Client

    def wait(self, timeout: float | None = None) -> dict[str, Any]:
        return self.client.wait(str(self), timeout)

    def result(self, timeout: float | None = None) -> Any:
        """The result once the job completed; JobFailed with its error if it failed,
        JobCancelled if it was cancelled; TimeoutError and JobNotFound as `wait`."""
        return outcome_of(self.wait(timeout))


def run(args: Any) -> int:
    """`workers remote`: the `*Job` classes of `--jobs` worked through the service at
    `--url`, with no settings file and no database: only the token. SIGTERM or Ctrl-C
    stops it at the `normal` level (running jobs finish, taken ones go back); a second
    one at `hard`."""
    classes = _job_classes(args.jobs, args.types)
    token = read_token_file(args.token_file, "--token-file") if args.token_file else None
    client = connect(args.url, token)
    queue = JobQueue(client, sorted(classes), class_handler(classes),
                     concurrency=args.threads, name=args.name)  # fmt: skip
    stops: list[int] = []
    done = threading.Event()

    def shut(level: str) -> None:
        queue.shutdown(level)
        done.set()

    def stop(signum: int, frame: FrameType | None) -> None:
        stops.append(signum)
        level = "normal" if len(stops) == 1 else "hard"
        threading.Thread(target=shut, args=(level,), daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print(f"workers remote: {queue.name} works {', '.join(sorted(classes))} from {client.url} "
          f"on {args.threads} threads", file=sys.stderr)  # fmt: skip
    while not done.wait(0.5):
        pass
    client.close()
    return 0


def _job_classes(package: str, types: list[str] | None) -> dict[str, type[Job]]:
    """The package's `*Job` classes (importable from the current folder), or `types` of them."""
    if str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))
    found = dict(registry.discover([package]).classes)
    if not found:
        raise DiscoveryError(f"workers remote: the jobs package {package} defines no *Job class")
    unknown = sorted(set(types or ()) - set(found))
    if unknown:
        raise DiscoveryError(
            f"workers remote --types: {', '.join(unknown)} not found in {package} "
            f"(its job classes: {', '.join(sorted(found))})"
        )
    return {name: cls for name, cls in found.items() if not types or name in types}
