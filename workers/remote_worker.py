"""Working jobs on another machine, over the service's worker verbs (web/work.py): a
`JobQueue` as meteor-job's processJobs, and `workers remote`, which runs a jobs
package's `*Job` classes there as headless mode runs them here.

One fetcher thread asks for as many jobs as there are idle threads (a long poll, so a
pushed job starts at once); a beat thread renews the leases of the jobs held, every
lease/3 seconds, and learns of a cancel; each job's outcome is reported by its token.
An outcome the service could not be told (it was away) is kept and reported again until
it answers: the report is fenced, so a late one is refused (409), never doubled.
"""

from __future__ import annotations

import logging
import queue
import socket
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from workers.errors import (
    JobCancelled,
    JobFailed,
    JobTimeout,
    LeaseLost,
    RemoteError,
    WorkersError,
)
from workers.execution import EventLoop, awaited, instantiate
from workers.job import Attempt, Job
from workers.params import ParamsError

log = logging.getLogger(__name__)


class Service(Protocol):
    """What a queue takes jobs from and reports to: workers.remote.Client."""

    def request(self, method: str, path: str, *, retry: bool = True, **kwargs: Any) -> Any:
        """The JSON answer; raises RemoteError (a refusal) or WorkersError (unreachable)."""
        ...


LEVELS = ("soft", "normal", "hard")
_IDLE_BACKOFF = 5.0  # seconds before asking again after the service was unreachable


@dataclass(eq=False)
class RemoteJob:
    """A job held by this worker: its params, and its reports to the service."""

    id: str
    type: str
    params: dict[str, Any]
    attempt: int
    token: str
    lease: float
    timeout: float | None
    client: Service = field(repr=False)
    cancelled: bool = False
    reporting: bool = False  # its outcome is on its way: a beat refused now is no news
    started: float = field(default_factory=time.monotonic)
    # called with the attempt's error (None: it completed) once its outcome is reported:
    # a Job class's after_job (`workers remote`)
    after: Callable[[BaseException | None], Any] | None = field(default=None, repr=False)

    def progress(self, completed: float, total: float) -> None:
        """Record how far the job is; raises JobCancelled once the job was cancelled."""
        self._report("progress", {"completed": completed, "total": total})

    def log(self, message: str, level: str = "info") -> None:
        self._report("log", {"message": str(message), "level": level})

    def _report(self, verb: str, body: dict[str, Any]) -> None:
        if self.cancelled:
            raise JobCancelled(f"{self.type} {self.id} was cancelled while it ran")
        if not self.send(verb, body):
            log.warning("job %s %s refused: the attempt no longer holds the job", self.id, verb)

    def send(self, verb: str, body: dict[str, Any]) -> bool:
        """One report on this attempt; False when refused (409: no longer ours). Progress
        and log are best effort: an unreachable service is logged, not raised."""
        try:
            path = f"/api/work/{self.id}/{verb}"
            self.client.request("POST", path, json={"token": self.token, **body}, retry=False)
        except RemoteError as exc:
            if exc.status == 409:
                return False
            raise
        except WorkersError as exc:
            log.warning("job %s %s not recorded: %s", self.id, verb, exc)
        return True


class RemoteReports:
    """`Reports` (job.py) over HTTP: a Job class's `self.progress()` and `self.log()` on a
    remote worker go to the service, fenced by the attempt's token."""

    def __init__(self, job: RemoteJob) -> None:
        self.job = job

    def set_progress(self, job_id: str, owner: str, progress: dict[str, Any]) -> bool:
        return self.job.send("progress", {k: progress[k] for k in ("completed", "total")})

    def add_log(self, job_id: str, owner: str, entry: dict[str, Any]) -> bool:
        level = entry.get("level", "info")
        return self.job.send("log", {"message": entry["message"], "level": level})

    def get_job(self, job_id: str) -> dict[str, Any] | None:
        """Only what `was_cancelled` asks: the beats say whether the job was cancelled."""
        return {"status": "cancelled"} if self.job.cancelled else None


Handler = Callable[[Any], Any]


class JobQueue:
    """Jobs of `types` run by `handler` on `concurrency` threads; meteor-job's JobQueue:
    pause(), resume(), shutdown(level), length(), full(), running(), idle()."""

    def __init__(
        self,
        client: Service,
        types: list[str],
        handler: Handler,
        *,
        concurrency: int = 4,
        cargo: int = 1,
        name: str | None = None,
        wait: float = 20.0,
    ) -> None:
        if concurrency < 1 or cargo < 1:
            raise ValueError(
                f"concurrency and cargo must be at least 1, got {concurrency} and {cargo}"
            )
        self.client, self.types, self.handler = client, types, handler
        self.concurrency, self.cargo, self.wait = concurrency, cargo, wait
        self.name = name or f"{socket.gethostname()}-{threading.get_native_id()}"
        self._ready: queue.Queue[list[RemoteJob] | None] = queue.Queue()
        self._held: dict[str, RemoteJob] = {}
        self._busy = 0
        self._lock = threading.Condition()
        self._paused = threading.Event()
        self._stopping = threading.Event()
        self._hard = threading.Event()
        self._threads = [
            threading.Thread(target=self._work, name=f"remote-{n}", daemon=True)
            for n in range(concurrency)
        ]
        self._fetcher = threading.Thread(target=self._fetch, name="remote-fetch", daemon=True)
        self._beater = threading.Thread(target=self._beat, name="remote-beat", daemon=True)
        for thread in (*self._threads, self._fetcher, self._beater):
            thread.start()

    # -- meteor-job's JobQueue --------------------------------------------------------------

    def pause(self) -> None:
        """Take no more jobs; the running ones go on."""
        self._paused.set()

    def resume(self) -> None:
        self._paused.clear()
        with self._lock:
            self._lock.notify_all()

    def length(self) -> int:
        """Jobs taken and not started yet."""
        return self._ready.qsize()

    def running(self) -> int:
        with self._lock:
            return self._busy

    def full(self) -> bool:
        return self.running() >= self.concurrency

    def idle(self) -> bool:
        return self.running() == 0 and self.length() == 0

    def shutdown(self, level: str = "normal", timeout: float | None = None) -> None:
        """Stop taking jobs. `soft`: finish the jobs taken and those running; `normal`:
        finish the running ones, hand back those not started; `hard`: hand back all now
        (a running handler's outcome is then not reported). Waits up to `timeout`."""
        if level not in LEVELS:
            raise ValueError(f"shutdown level must be one of {', '.join(LEVELS)}, got {level!r}")
        self._stopping.set()
        if level != "soft":
            self._drop_waiting()
        if level == "hard":
            self._hard.set()
        for _ in self._threads:
            self._ready.put(None)
        deadline = None if timeout is None else time.monotonic() + timeout
        for thread in self._threads:
            thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        if level == "hard" or any(thread.is_alive() for thread in self._threads):
            self._drop_held()
        with self._lock:
            self._lock.notify_all()

    # -- the threads ----------------------------------------------------------------------

    def _fetch(self) -> None:
        while not self._stopping.is_set():
            free = self._free()
            if free < 1:
                continue
            try:
                answer = self.client.request(
                    "POST",
                    "/api/work",
                    json={
                        "types": self.types,
                        "max": min(free, 100),
                        "wait": self.wait,
                        "worker": self.name,
                    },
                    timeout=self.wait + 30,
                )
            except WorkersError as exc:
                log.warning("could not take jobs: %s", exc)
                self._stopping.wait(_IDLE_BACKOFF)
                continue
            jobs = [self._job(found) for found in answer["jobs"]]
            with self._lock:
                self._held.update({job.id: job for job in jobs})
            if self._stopping.is_set():
                self._release(jobs)
                return
            for start in range(0, len(jobs), self.cargo):
                self._ready.put(jobs[start : start + self.cargo])

    def _free(self) -> int:
        """Threads with nothing to do (waits while none is, or while paused)."""
        with self._lock:
            while not self._stopping.is_set():
                free = self.concurrency - self._busy - self._ready.qsize() * self.cargo
                if free > 0 and not self._paused.is_set():
                    return free
                self._lock.wait(0.5)
        return 0

    def _job(self, found: dict[str, Any]) -> RemoteJob:
        return RemoteJob(
            found["id"],
            found["type"],
            found["params"],
            found["attempt"],
            found["token"],
            found["lease"],
            found.get("timeout"),
            self.client,
        )

    def _work(self) -> None:
        while True:
            jobs = self._ready.get()
            if jobs is None:
                return
            with self._lock:
                self._busy += 1
            try:
                self._run(jobs)
            finally:
                with self._lock:
                    self._busy -= 1
                    self._lock.notify_all()

    def _run(self, jobs: list[RemoteJob]) -> None:
        deadline = min((j.timeout for j in jobs if j.timeout), default=None)
        result, error = _call(self.handler, jobs[0] if self.cargo == 1 else jobs, deadline)
        results = (
            result
            if self.cargo > 1 and isinstance(result, list) and len(result) == len(jobs)
            else [result] * len(jobs)
        )
        for job, one in zip(jobs, results, strict=True):
            job.reporting = True
            status = None if self._hard.is_set() else report_outcome(self.client, job, one, error)
            with self._lock:
                self._held.pop(job.id, None)
            if job.after is not None:
                job.after(_after_error(job, status, error))

    def _beat(self) -> None:
        while not self._hard.is_set() and not (
            self._stopping.is_set() and self.idle() and not self._held
        ):
            with self._lock:
                held = list(self._held.values())
            for job in held:
                self._beat_one(job)
            lease = min((job.lease for job in held), default=9.0)
            self._hard.wait(lease / 3)

    def _beat_one(self, job: RemoteJob) -> None:
        try:
            answer = self.client.request(
                "POST", f"/api/work/{job.id}/beat", json={"token": job.token}, retry=False
            )
        except RemoteError as exc:
            if exc.status == 409 and not job.reporting:  # rescued elsewhere: so is its outcome
                log.warning("lost the lease of job %s: %s", job.id, exc.detail)
            return
        except WorkersError as exc:
            log.warning("beat failed: %s", exc)
            return
        if answer.get("cancelled"):
            job.cancelled = True

    def _drop_waiting(self) -> None:
        """Jobs taken but not started go back to the service."""
        waiting: list[RemoteJob] = []
        while True:
            try:
                jobs = self._ready.get_nowait()
            except queue.Empty:
                break
            if jobs:
                waiting.extend(jobs)
        self._release(waiting)

    def _drop_held(self) -> None:
        with self._lock:
            held = list(self._held.values())
            self._held.clear()
        self._release(held)

    def _release(self, jobs: list[RemoteJob]) -> None:
        """Hand jobs back: a failed report would cost them an attempt, so they are left to
        lapse and be rescued unless the service takes them back (the `release` verb)."""
        for job in jobs:
            with self._lock:
                self._held.pop(job.id, None)
            try:
                self.client.request(
                    "POST", f"/api/work/{job.id}/release", json={"token": job.token}, retry=False
                )
            except WorkersError as exc:
                log.warning("could not hand job %s back (its lease will lapse): %s", job.id, exc)


def _call(handler: Handler, arg: Any, timeout: float | None) -> tuple[Any, BaseException | None]:
    """The handler's result or error; past `timeout` a JobTimeout (the thread runs on,
    and what it returns later is ignored)."""
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["result"] = handler(arg)
        except BaseException as exc:  # reported as the attempt's failure
            box["error"] = exc

    if timeout is None:
        run()
    else:
        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        thread.join(timeout)
        if thread.is_alive():
            return None, JobTimeout(f"the handler ran past its timeout of {timeout:g} s")
    return box.get("result"), box.get("error")


def _after_error(
    job: RemoteJob, status: str | None, error: BaseException | None
) -> BaseException | None:
    """What after_job gets: the attempt's error, or, when its outcome was refused, why."""
    if status is not None:
        return error
    if job.cancelled:
        return JobCancelled(f"{job.type} {job.id} was cancelled while it ran")
    lost = LeaseLost(
        f"the outcome of {job.type} {job.id} (attempt {job.attempt}) was refused: this worker "
        "no longer holds the job (rescued after its lease lapsed, or handed back)"
    )
    lost.__cause__ = error
    return lost


def report_outcome(
    client: Service, job: RemoteJob, result: Any, error: BaseException | None
) -> str | None:
    """Report done or fail, through outages until the service answers; the status the
    service gave (None: refused, the attempt no longer holds the job)."""
    if error is None:
        verb, body = "done", {"token": job.token, "result": result}
    else:
        fatal = isinstance(error, JobFailed) and error.fatal
        kind = type(error)
        detail = {
            "message": str(error) or kind.__name__,
            "type": f"{kind.__module__}.{kind.__qualname__}",
            "traceback": "".join(traceback.format_exception(error)),
        }
        verb, body = "fail", {"token": job.token, "error": detail, "fatal": fatal}
    while True:
        try:
            answer = client.request("POST", f"/api/work/{job.id}/{verb}", json=body)
            return str(answer["status"])
        except RemoteError as exc:
            if exc.status == 409:
                log.warning("the outcome of job %s was refused: %s", job.id, exc.detail)
                return None
            if verb == "done" and exc.status == 422:  # a result the service cannot store
                return report_outcome(client, job, None, TypeError(exc.detail))
            raise
        except WorkersError as exc:  # unreachable for now: keep the outcome, tell it later
            log.warning("could not report job %s yet: %s", job.id, exc)
            time.sleep(_IDLE_BACKOFF)


def class_handler(job_classes: dict[str, type[Job]]) -> Handler:
    """A handler that runs each job as headless mode does: its `*Job` class, made with its
    params, `before_job` and `handle_job` (async too), `self.fail()`, and `after_job` once
    the outcome is reported."""

    def handle(remote: RemoteJob) -> Any:
        job_class = job_classes.get(remote.type)
        if job_class is None:
            raise JobFailed(f"no job class here is named {remote.type}", fatal=False)
        job = instantiate(job_class, remote.params)
        loop = EventLoop()
        remote.after = lambda error: _after_job(job, error, loop)
        try:
            job.load_stored(remote.params)
        except ParamsError as exc:  # params this class no longer takes: no retry fits either
            raise JobFailed(str(exc), fatal=True) from None
        job.attempt = Attempt(RemoteReports(remote), remote.id, remote.token, remote.attempt)
        awaited(job.before_job(), loop)
        result = awaited(job.handle_job(), loop)
        if job.attempt.failure is not None:
            raise job.attempt.failure
        return result

    return handle


def _after_job(job: Job, error: BaseException | None, loop: EventLoop) -> None:
    try:
        awaited(job.after_job(error), loop)
    except Exception:
        log.exception("after_job raised; ignored", extra={"job_id": job.id})
    finally:
        loop.__exit__()
