"""Booting: settings, the database (embedded or not), indexes, the job registry.

`boot()` is what an app calls at startup (web mode); `Job.push` calls
`current()`, which boots on first use with the same settings lookup, so app
code needs no extra call.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import threading
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, Unpack

from workers import embedded, lifecycle, listening, registry, tracing, waiting
from workers import job as job_module
from workers import settings as settings_module
from workers.completions import Completions
from workers.errors import DatabaseUnavailable, PushError
from workers.job import Job, ManyOptions, PushOptions
from workers.lifecycle import Pushed, StoredJob
from workers.metrics import Tally
from workers.options import parse_options
from workers.params import check
from workers.record import RetryPolicy, new_document
from workers.registry import Registry
from workers.settings import Settings
from workers.store import Store, bson_problem, new_id

log = logging.getLogger(__name__)

_current: App | None = None
_inline_runner: Callable[[App, str], None] | None = None
_lock = threading.RLock()


class App:
    """One booted process: its settings, its store and its job classes."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        jobs: Registry,
        server: embedded.EmbeddedServer | None = None,
        *,
        one_shot: bool = False,
    ) -> None:
        self.settings = settings
        self.store = store
        self.registry = jobs
        self.server = server
        self.one_shot = one_shot  # a CLI command's: the embedded server is left running after
        self.closed = False
        self.tally = Tally()  # this app's attempts, for /metrics; its workers' heartbeat writes it
        self.completions = Completions(store)  # its job threads' completions, written together
        self.limits = jobs.limits(settings)  # flow control by type (limits.py)

    @property
    def node_types(self) -> list[str]:
        """The job types this node's workers run (workers.types; every type by default)."""
        chosen = self.settings.workers.types
        return self.registry.select(chosen.include, chosen.exclude)

    @property
    def retry_defaults(self) -> RetryPolicy:
        """The retries, wait and backoff of a push that names none (workers.queue)."""
        queue = self.settings.workers.queue
        return RetryPolicy(queue.retries, queue.retry_wait, queue.backoff)

    def push(self, job: Job, **options: Any) -> Pushed:
        """Validate the job and its options, then insert it whole (or raise, writing nothing).

        One insert and nothing else: the params are encoded once, by the insert itself
        (a push with `depends` also reads and flags its antecedents). Inline mode runs
        the job before returning."""
        job_type = self._registered_type(job)
        if options.get("unique") is None:
            options["unique"] = job.unique_key()
        return self._insert(job_type, job.params, **options)  # checked when the job was made

    def push_named(
        self, job_type: str, params: dict[str, Any], *, owner: str | None = None, **options: Any
    ) -> Pushed:
        """Push by type name, for the jobs a `process_jobs` handler runs (no class needed).
        `owner` names who pushed it (the web API's caller: a creator may act on its own)."""
        if not isinstance(job_type, str) or not job_type:
            raise PushError(f"push: the job type must be a non-empty string, got {job_type!r}")
        self._dict(params)
        return self._insert(job_type, self._typed(job_type, params), owner=owner, **options)

    def _insert(
        self, job_type: str, params: dict[str, Any], *, owner: str | None = None, **options: Any
    ) -> Pushed:
        """One job document from checked params and options, inserted (inline: run)."""
        self._dict(params)
        job_id = new_id()
        try:
            document = self.job_document(job_id, job_type, params, owner=owner, **options)
            job_id, existing = self.store.push_job(document)
        except DatabaseUnavailable as exc:
            raise DatabaseUnavailable(
                f"could not push {job_type} (id {job_id}) within {self.store.timeout:g} s: {exc}; "
                "if the connection dropped during the write, the job may exist under that id"
            ) from exc
        except PushError as exc:
            problem = bson_problem(params)
            if problem:
                raise PushError(f"{job_type} params are not BSON-encodable: {problem}") from exc
            raise
        log.debug("job pushed", extra={"action": "job_pushed", "job_id": job_id, "type": job_type})
        if self.settings.mode == "inline" and not existing:
            _run_inline(self, job_id)
        return Pushed(job_id, existing, self.store)

    @staticmethod
    def _dict(params: object) -> None:
        if not isinstance(params, dict):
            raise PushError(f"push: params must be a dict, got {params!r}")

    def _typed(self, job_type: str, params: dict[str, Any]) -> dict[str, Any]:
        """Params pushed by name, checked against the registered class's fields if it has
        any (read as JSON is: a date may come as text), in the form stored."""
        job_class = self.registry.get(job_type)
        model = job_class.params_model if job_class is not None else None
        if model is None:
            return params
        return check(job_type, model, params, strict=False)[1]

    def push_many(self, jobs: Sequence[Job], **options: Any) -> list[Pushed]:
        """Validate every job, then insert them all in one unordered bulk insert.

        If any job is refused, PushError lists each refused job by position and
        nothing of the batch is written. Returns the ids in the order given."""
        documents: list[dict[str, Any]] = []
        refused: list[tuple[int, str]] = []
        for position, job in enumerate(jobs):
            try:
                job_type = self._registered_type(job)
                problem = bson_problem(job.params)
                if problem:
                    raise PushError(f"{job_type} params are not BSON-encodable: {problem}")
                documents.append(self.job_document(new_id(), job_type, job.params, **options))
            except PushError as exc:
                refused.append((position, str(exc)))
        if refused:
            raise PushError(
                f"push_many refused {len(refused)} of {len(jobs)} jobs, so none was written: "
                + "; ".join(f"#{position}: {reason}" for position, reason in refused),
                refused=refused,
            )
        ids = self.store.insert_jobs(documents)
        if self.settings.mode == "inline":
            for job_id in ids:
                _run_inline(self, job_id)
        return [Pushed(job_id, False, self.store) for job_id in ids]

    def job_document(
        self,
        job_id: str,
        job_type: str,
        params: dict[str, Any],
        owner: str | None = None,
        **options: Any,
    ) -> dict[str, Any]:
        """The document of a push or a cron tick: options validated, defaults from the
        settings, a timeout from the class unless given, run_at by the database clock."""
        if options.get("timeout") is None:
            job_class = self.registry.get(job_type)
            class_timeout = job_class.timeout if job_class else None
            options["timeout"] = class_timeout or self.settings.workers.queue.timeout
        parsed = parse_options(self.retry_defaults, **options)
        document = new_document(job_id, job_type, params, parsed, self.store.now(), owner)
        trace = tracing.carrier()
        if trace is not None:  # the pushing code's trace, for the attempts' spans to link
            document["trace"] = trace
        return document

    def _registered_type(self, job: Job) -> str:
        if not isinstance(job, Job):
            raise PushError(f"Job.push expects a Job instance, got {job!r}")
        cls = type(job)
        registered = self.registry.get(cls.__name__)
        if registered is None or registered.__module__ != cls.__module__:
            raise PushError(
                f"{cls.__module__}.{cls.__name__} is not a registered job class, so no worker "
                f"would run it: define it in one of the jobs packages {self.settings.jobs} "
                "with a name ending in 'Job'"
            )
        return cls.__name__

    def close(self) -> None:
        """Stop this app's waiters and listeners, close its connections and release the
        embedded server; the app is unusable after."""
        self.closed = True  # what outlives it (the dashboard's feed) stops on this
        waiting.close(self.store)
        listening.close(self.store)
        self.store.close()
        if self.server is not None:
            if self.one_shot:
                self.server.leave()
            else:
                self.server.release()
            self.server = None


def bind_inline_runner(runner: Callable[[App, str], None]) -> None:
    """Called once by workers.inline, which runs jobs with the execution code that imports
    this module (so this module cannot import it back)."""
    global _inline_runner
    _inline_runner = runner


def _run_inline(app: App, job_id: str) -> None:
    if _inline_runner is None:
        raise PushError("inline mode needs workers.inline: import workers before pushing")
    _inline_runner(app, job_id)


def boot(
    settings_path: str | None = None,
    *,
    mode: str | None = None,
    settings: Settings | None = None,
    one_shot: bool = False,
) -> App:
    """Load settings, discover job classes, connect and ensure indexes. Starts no workers.
    `one_shot`: a CLI command, which leaves an embedded server it starts running."""
    global _current
    with _lock:
        if _current is not None:
            _current.close()
            _current = None
    settings = settings or settings_module.load(settings_path, mode=mode)
    jobs = registry.discover_checked(settings)
    store, server = connect(settings, one_shot=one_shot)
    try:
        store.check_server()
        log.log(logging.DEBUG if one_shot else logging.INFO, "using MongoDB at %s", store.where())
        store.ensure_indexes(
            create=settings.mongo.create_indexes, time_limit=settings.mongo.index_build_timeout
        )
    except BaseException:
        store.close()
        if server is not None:
            server.release()
        raise
    app = App(settings, store, jobs, server, one_shot=one_shot)
    with _lock:
        _current = app
    return app


def connect(
    settings: Settings, *, app_name: str = "workers", one_shot: bool = False
) -> tuple[Store, embedded.EmbeddedServer | None]:
    """A store on the configured server, or on the embedded one (started if needed; left
    running after a `one_shot` command, for the next one to reuse)."""
    url = settings.mongo_url()
    server = None
    if url is None:
        server = embedded.acquire(
            settings.embedded_dir(), one_cpu=settings.mongo.embedded_one_cpu, stays=one_shot
        )
        atexit.register(server.release)
        url = server.url
    mongo = settings.mongo
    store = Store(
        url,
        mongo.database,
        prefix=mongo.prefix,
        timeout=mongo.timeout,
        pool_size=mongo.pool_size,
        app_name=app_name,
        write_concern=mongo.write_concern,
        retention=settings.workers.retention.model_dump(),
    )
    return store, server


@contextlib.contextmanager
def connected(settings: Settings) -> Iterator[Store]:
    """A store for one command (status, cron): closed after, the embedded server left running."""
    store, server = connect(settings, one_shot=True)
    try:
        store.check_server()
        store.use_indexes()
        yield store
    finally:
        store.close()
        if server is not None:
            server.leave()


def current() -> App:
    """The booted app of this process, booting it from the default settings on first use."""
    with _lock:  # re-entrant: boot() takes it too, and a second thread waits for the first boot
        return _current if _current is not None else boot()


job_module.bind_app(current)
lifecycle.bind_store(lambda: current().store)


def database() -> Any:
    """The app's own MongoDB database (a pymongo Database), on a connection pool of its own
    (`mongo.pool_size`) beside the workers' runtime, which its slow queries cannot starve."""
    return current().store.app_database()


def push_named(
    job_type: str, params: Mapping[str, Any] | None = None, /, **options: Unpack[PushOptions]
) -> Pushed:
    """Push a job by its type's name, with the options of `Job.push`: for the types a
    `process_jobs` handler runs, or a class this process does not import. The params are
    checked against the type's class where this process knows it (typed params)."""
    return current().push_named(job_type, dict(params or {}), **options)


def push_many(jobs: Sequence[Job], /, **options: Unpack[ManyOptions]) -> list[Pushed]:
    """As `Job.push_many`: the jobs in one bulk insert, all or none."""
    return current().push_many(jobs, **options)


def push(job_type: str, params: dict[str, Any] | None = None, **options: Any) -> Pushed:
    """Deprecated: `workers.push_named("Type", params, ...)`."""
    warnings.warn(
        'workers.push("Type", params) is deprecated: use workers.push_named("Type", params)',
        DeprecationWarning,
        stacklevel=2,
    )
    return current().push_named(job_type, dict(params or {}), **options)


def wait(
    ids: Iterable[str], timeout: float | None = None, return_when: lifecycle.ReturnWhen = "all"
) -> list[StoredJob]:
    """Wait for the jobs of `ids` to finish (`Pushed.wait` for many): all of them, or the
    first (`return_when="first"`); returns the finished ones, in the order of `ids`."""
    return lifecycle.wait_jobs(current().store, ids, timeout, return_when)


async def wait_async(
    ids: Iterable[str], timeout: float | None = None, return_when: lifecycle.ReturnWhen = "all"
) -> list[StoredJob]:
    """`wait` for asyncio: one shared stream wakes the loop, no thread per waiter."""
    return await lifecycle.wait_jobs_async(current().store, ids, timeout, return_when)


def on(
    kind: str | Iterable[str],
    callback: Callable[[listening.JobEvent], Any],
    *,
    types: str | Iterable[str] | None = None,
    type: str | None = None,
) -> listening.Subscription:
    """Call `callback(event)` for every event of `kind` (started, progress, retried,
    completed, failed, cancelled; or several) of `types` (None: all), from any process,
    on one thread of this app. Returns a handle: `close()` it to stop. (`type=` is the
    deprecated name of `types=`, as `workers.events` names it.)"""
    if type is not None:
        warnings.warn(
            "workers.on(..., type=) is deprecated: use types=", DeprecationWarning, stacklevel=2
        )
        types = type
    return listening.on(current().store, kind, callback, types)


def events(
    kinds: str | Iterable[str] | None = None, types: str | Iterable[str] | None = None
) -> listening.EventStream:
    """The events of every process as they happen: `for event in workers.events(): ...`
    (or `async for`); `close()` it, or leave the loop, to stop."""
    return listening.events(current().store, kinds, types)


def shutdown() -> None:
    """Close the current app (and release the embedded server); for tests and clean exits."""
    global _current
    with _lock:
        app, _current = _current, None
    if app is not None:
        app.close()
