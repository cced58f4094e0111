"""The ASGI app (FastAPI: the API, its OpenAPI document, the pages) and `workers web`."""

from __future__ import annotations

import contextlib
import functools
import logging
import signal
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from types import FrameType
from typing import Annotated, Any

import uvicorn
from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles

import workers.web.api as api
import workers.web.pages as pages
import workers.web.problems as problems
import workers.web.views as views
import workers.web.work as work
from workers import app as app_module
from workers.app import App
from workers.dispatch import Dispatcher
from workers.errors import DatabaseUnavailable, SettingsError, StoreError, WorkersError
from workers.registry import Registry
from workers.settings import Settings, TokenSettings
from workers.version import __version__
from workers.web.access import Rule, Rules, Session, StoredSessions, booted, reader
from workers.web.auth import (
    LOCAL_HOSTS,
    LOOPBACK_NAMES,
    Authenticator,
    Principal,
    Resolver,
    is_loopback,
)
from workers.web.guard import BodyLimit, Gate, HostCheck, SecurityHeaders
from workers.web.live import Feed, events
from workers.web.metrics import CONTENT_TYPE, render

log = logging.getLogger(__name__)

_STATIC = Path(__file__).parent / "static"


def create_app(
    *,
    auth: Resolver | None = None,
    booted_app: App | None = None,
    settings: Settings | None = None,
    trust_loopback: bool = False,
    allowed_hosts: Sequence[str] | None = None,
    allow: Rule | None = None,
    deny: Rule | None = None,
) -> FastAPI:
    """The dashboard, API and /metrics as one ASGI app.

    `auth(request)` is the host app's own login: it returns a `Principal`, a
    `(name, role)` pair or None; it sees the request's headers and cookies, not its
    body. `booted_app` defaults to the process's booted app (`workers.boot()`, or the
    settings lookup on first use). `allow` and `deny` are the host app's rules,
    `(principal, action, job_type, params) -> bool` (access.Rules). Mounted in a host
    app, loopback is not trusted and the host app's own Host check decides (`served_app`
    is what `workers web` serves)."""
    get_app: Callable[[], App] = (lambda: booted_app) if booted_app else app_module.current
    settings = settings or (booted_app.settings if booted_app else get_app().settings)
    feed = Feed(get_app)
    dispatcher = functools.cache(lambda: Dispatcher(get_app()))  # made by the first /api/work

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        feed.stop()  # served by uvicorn (`workers web`): the feed ends with the server
        if dispatcher.cache_info().currsize:
            dispatcher().stop()

    web = FastAPI(
        lifespan=lifespan,
        title="workers",
        version=__version__,
        summary="See and steer the job queue",
        docs_url=None,  # /api/docs is a page of ours (pages.py): no script from a CDN
        redoc_url=None,
        openapi_url=None,  # /openapi.json needs a reader (below)
    )
    web.state.booted = get_app
    web.state.rules = Rules(allow, deny)
    web.state.auth = Authenticator(
        settings.web.tokens,
        auth,
        trust_loopback=trust_loopback,
        sessions=StoredSessions(get_app, settings.web.session_ttl),
    )
    web.state.counts = views.Counts(get_app, settings.web.cache)
    web.state.feed = feed
    web.state.dispatcher = dispatcher
    web.state.csrf_key = functools.cache(lambda: get_app().store.csrf_key())  # read once
    web.state.secure_cookies = settings.web.secure_cookies
    web.state.max_body = settings.web.max_body
    problems.install(web, pages.error_page)
    # the last added runs first: headers on every answer, then the Host, then the caller
    web.add_middleware(Session)
    web.add_middleware(BodyLimit, limit=settings.web.max_body)
    web.add_middleware(Gate)
    if allowed_hosts is not None:
        web.add_middleware(HostCheck, allowed_hosts=list(allowed_hosts))
    web.add_middleware(SecurityHeaders)
    web.include_router(api.router)
    web.include_router(work.router)
    web.include_router(pages.router)
    web.mount("/static", StaticFiles(directory=_STATIC), name="static")
    _add_streams(web)
    _add_probes(web, get_app)
    _document_job_types(web, get_app)
    return web


def _document_job_types(web: FastAPI, get_app: Callable[[], App]) -> None:
    """The OpenAPI document lists the registered job types as the values `type` may take,
    and publishes the params schema of each type that declares its params (params.py)."""
    generate = web.openapi

    def openapi() -> dict[str, Any]:
        if web.openapi_schema is None:
            schema = generate()
            registry = get_app().registry
            if registry.types:
                push = schema["components"]["schemas"]["PushRequest"]["properties"]
                push["type"]["enum"] = registry.types
                _document_params(schema, registry)
        return web.openapi_schema or {}

    web.openapi = openapi  # type: ignore[method-assign]


def _document_params(schema: dict[str, Any], registry: Registry) -> None:
    """Each typed type's params as a component (`<Type>Params`), and `x-job-params`
    mapping every such type to it: what a client in any language sends as `params`."""
    components = schema["components"]["schemas"]
    by_type: dict[str, Any] = {}
    for job_type in registry.types:
        job_class = registry.get(job_type)
        model = job_class.params_model if job_class is not None else None
        if model is None:
            continue
        found = model.model_json_schema(ref_template="#/components/schemas/{model}")
        components.update(found.pop("$defs", {}))
        components[model.__name__] = found
        by_type[job_type] = {"$ref": f"#/components/schemas/{model.__name__}"}
    if by_type:
        schema["x-job-params"] = by_type
        params = components["PushRequest"]["properties"]["params"]
        params["description"] = (
            "the job's params; for the types listed in `x-job-params`, as that schema says "
            "(422 naming the field otherwise)"
        )


def served_app(
    settings: Settings,
    *,
    booted_app: App | None = None,
    host: str | None = None,
    port: int | None = None,
) -> FastAPI:
    """The app `workers web` serves on `host`: loopback is trusted (with no tokens and
    `web.trust_loopback` on) only on a loopback bind, where the Host names default to
    this machine's; elsewhere tokens are required and any name is accepted unless
    `web.allowed_hosts` says which."""
    loopback = is_loopback(host or settings.web.host)
    hosts = settings.web.allowed_hosts
    if hosts is None:
        hosts = list(LOOPBACK_NAMES) if loopback else ["*"]
    trusted = loopback and settings.web.trust_loopback
    if trusted and not settings.web.tokens:
        _refuse_public_names(hosts)
    return create_app(
        booted_app=booted_app,
        settings=settings,
        trust_loopback=trusted,
        allowed_hosts=hosts,
    )


def _refuse_public_names(hosts: list[str]) -> None:
    """Loopback trust with a Host name of another machine allowed: a proxy on this machine
    that serves that name would make each of its visitors admin. SettingsError naming both."""
    public = [name for name in hosts if name == "*" or name not in LOOPBACK_NAMES]
    if public:
        raise SettingsError(
            f"web.allowed_hosts names {', '.join(public)} while loopback is trusted "
            "(web.trust_loopback, and no web.tokens): behind a proxy for that name every "
            "visitor would come from this machine and be admin; set web.tokens, or allow "
            "only this machine's names, or set web.trust_loopback to false"
        )


READY_WITHIN = 2.0  # seconds the database has to answer /readyz (a probe's own deadline)


def _add_probes(web: FastAPI, get_app: Callable[[], App]) -> None:
    """/healthz: the process serves; /readyz: and the database answers. For a load balancer
    and Kubernetes: no auth, no Host check (guard.HostCheck), no job data."""

    @web.get("/healthz", include_in_schema=False)
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @web.get("/readyz", include_in_schema=False)
    def readyz() -> Response:
        try:
            get_app().store.ping(READY_WITHIN)
        except (DatabaseUnavailable, StoreError):
            body = {"status": "unavailable", "reason": "the database does not answer"}
            return JSONResponse(body, status_code=503, headers={"Cache-Control": "no-store"})
        return JSONResponse({"status": "ready"}, headers={"Cache-Control": "no-store"})


def _add_streams(web: FastAPI) -> None:
    @web.get("/openapi.json", include_in_schema=False)
    def openapi(_: Annotated[Principal, Depends(reader)]) -> Response:
        return JSONResponse(web.openapi())

    @web.get("/metrics", include_in_schema=False)
    def metrics(
        app: Annotated[App, Depends(booted)], _: Annotated[Principal, Depends(reader)]
    ) -> Response:
        return Response(render(app, web.state.counts), media_type=CONTENT_TYPE)

    @web.get("/events", include_in_schema=False)
    async def live(request: Request, _: Annotated[Principal, Depends(reader)]) -> Response:
        return StreamingResponse(
            events(web.state.feed, request.is_disconnected),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )


def run(
    settings: Settings,
    host: str | None = None,
    port: int | None = None,
    root_path: str = "",
    reload_tokens: Callable[[], list[TokenSettings]] | None = None,
) -> int:
    """`workers web`: boot, then serve until Ctrl-C. With no tokens configured it listens on
    this machine only, and says so. SIGHUP reads the tokens again (`reload_tokens`)."""
    host = host or settings.web.host
    port = port or settings.web.port
    if not settings.web.tokens and host not in LOCAL_HOSTS:
        raise SettingsError(
            f"workers web --host {host}: no API tokens are configured (web.tokens), so the "
            "dashboard may only listen on 127.0.0.1; add a token with `workers token` first"
        )
    booted_app = app_module.boot(settings=settings)
    if not settings.web.tokens:
        who = "anyone on this machine is admin"
        if not settings.web.trust_loopback:
            who = "nobody gets in (web.trust_loopback is off)"
        print(f"workers web: no authentication configured: {who}; listening on this machine only")
    elif settings.web.allowed_hosts is None and not is_loopback(host):
        print(
            "workers web: any Host name is accepted; set web.allowed_hosts to the names "
            "the dashboard is reached by"
        )
    where = f"http://{host}:{port}{root_path.rstrip('/')}"
    print(f"workers web: the dashboard is at {where}/ (API: /api/docs, /metrics)")
    # uvicorn stops on SIGTERM, then raises it again once it has stopped: with the default
    # handler that kills the process before `finally` releases the embedded server
    previous = signal.signal(signal.SIGTERM, _exit_quietly)
    try:
        web = served_app(settings, booted_app=booted_app, host=host, port=port)
        if reload_tokens is not None:
            signal.signal(signal.SIGHUP, lambda *_: _reload_tokens(web, reload_tokens))
        _PatientServer(server_config(web, settings, host, port, root_path)).run()
    except SystemExit as stop:
        return int(stop.code or 0)
    except KeyboardInterrupt:  # Ctrl-C: uvicorn stopped, then raised it again (or a second one)
        return 130
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # stopping already: more Ctrl-Cs wait
        app_module.shutdown()
        signal.signal(signal.SIGTERM, previous)
    return 0


def _reload_tokens(web: FastAPI, read: Callable[[], list[TokenSettings]]) -> None:
    """SIGHUP: the tokens as the settings say now; settings that no longer load keep the
    tokens in force, and say why."""
    try:
        tokens = read()
    except WorkersError as exc:
        log.error("SIGHUP: the tokens were not reloaded, the old ones stay: %s", exc)
        return
    web.state.auth.replace_tokens(tokens)
    log.warning("SIGHUP: %d token(s) reloaded: %s", len(tokens),
                ", ".join(token.name for token in tokens) or "none")  # fmt: skip


_GRACE = 5  # seconds open connections get to finish once the server stops


def server_config(
    web: FastAPI, settings: Settings, host: str, port: int, root_path: str = ""
) -> uvicorn.Config:
    """How `workers web` serves: the scheme and the client's address are the proxy's
    word (X-Forwarded-Proto, X-Forwarded-For) only from web.forwarded_allow."""
    return uvicorn.Config(
        web, host=host, port=port, root_path=root_path, log_level="warning",
        timeout_graceful_shutdown=_GRACE, proxy_headers=True,
        forwarded_allow_ips=settings.web.forwarded_allow,
    )  # fmt: skip


class _PatientServer(uvicorn.Server):
    """A second Ctrl-C does not force the exit, which cancels the app's lifespan mid-way
    and prints its traceback: the first already stops the server, within `_GRACE` s."""

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self._captured_signals.append(sig)  # raised again once stopped: Ctrl-C exits 130
        self.should_exit = True


def _exit_quietly(signum: int, _: object) -> None:
    raise SystemExit(0)
