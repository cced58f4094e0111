"""The ASGI app (FastAPI: the API, its OpenAPI document, the pages) and `workers web`."""

from __future__ import annotations

import contextlib
import signal
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Annotated, Any

import uvicorn
from fastapi import Depends, FastAPI, Request
from fastapi.responses import Response, StreamingResponse
from fastapi.staticfiles import StaticFiles

import workers.web.api as api
import workers.web.pages as pages
import workers.web.problems as problems
import workers.web.views as views
from workers import app as app_module
from workers.app import App
from workers.errors import SettingsError
from workers.settings import Settings
from workers.version import __version__
from workers.web.access import CsrfCookie, booted, reader
from workers.web.auth import LOCAL_HOSTS, Authenticator, Principal, Resolver
from workers.web.live import Feed, events
from workers.web.metrics import CONTENT_TYPE, render

_STATIC = Path(__file__).parent / "static"


def create_app(
    *, auth: Resolver | None = None, booted_app: App | None = None, settings: Settings | None = None
) -> FastAPI:
    """The dashboard, API and /metrics as one ASGI app.

    `auth(request)` is the host app's own login: it returns a `Principal`, a
    `(name, role)` pair or None. `booted_app` defaults to the process's booted app
    (`workers.boot()`, or the settings lookup on first use)."""
    get_app: Callable[[], App] = (lambda: booted_app) if booted_app else app_module.current
    settings = settings or (booted_app.settings if booted_app else get_app().settings)
    feed = Feed(get_app)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        feed.stop()  # served by uvicorn (`workers web`): the feed ends with the server

    web = FastAPI(
        lifespan=lifespan,
        title="workers",
        version=__version__,
        summary="See and steer the job queue",
        docs_url="/api/docs",
        redoc_url=None,
    )
    web.state.booted = get_app
    web.state.auth = Authenticator(settings.web.tokens, auth)
    web.state.counts = views.Cached(lambda: views.counts(get_app()), settings.web.cache)
    web.state.feed = feed
    problems.install(web, pages.error_page)
    web.add_middleware(CsrfCookie)
    web.include_router(api.router)
    web.include_router(pages.router)
    web.mount("/static", StaticFiles(directory=_STATIC), name="static")
    _add_streams(web)
    _document_job_types(web, get_app)
    return web


def _document_job_types(web: FastAPI, get_app: Callable[[], App]) -> None:
    """The OpenAPI document lists the registered job types as the values `type` may take."""
    generate = web.openapi

    def openapi() -> dict[str, Any]:
        if web.openapi_schema is None:
            schema = generate()
            types = get_app().registry.types
            if types:
                schema["components"]["schemas"]["PushRequest"]["properties"]["type"]["enum"] = types
        return web.openapi_schema or {}

    web.openapi = openapi  # type: ignore[method-assign]


def _add_streams(web: FastAPI) -> None:
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
    settings: Settings, host: str | None = None, port: int | None = None, root_path: str = ""
) -> int:
    """`workers web`: boot, then serve until Ctrl-C. With no tokens configured it listens on
    this machine only, and says so."""
    host = host or settings.web.host
    port = port or settings.web.port
    if not settings.web.tokens and host not in LOCAL_HOSTS:
        raise SettingsError(
            f"workers web --host {host}: no API tokens are configured (web.tokens), so the "
            "dashboard may only listen on 127.0.0.1; add a token with `workers token` first"
        )
    booted_app = app_module.boot(settings=settings)
    if not settings.web.tokens:
        print(
            "workers web: no authentication configured: anyone on this machine is admin; "
            "listening on this machine only"
        )
    where = f"http://{host}:{port}{root_path.rstrip('/')}"
    print(f"workers web: the dashboard is at {where}/ (API: /api/docs, /metrics)")
    # uvicorn stops on SIGTERM, then raises it again once it has stopped: with the default
    # handler that kills the process before `finally` releases the embedded server
    previous = signal.signal(signal.SIGTERM, _exit_quietly)
    try:
        web = create_app(booted_app=booted_app)
        uvicorn.run(web, host=host, port=port, root_path=root_path, log_level="warning")
    except SystemExit as stop:
        return int(stop.code or 0)
    finally:
        app_module.shutdown()
        signal.signal(signal.SIGTERM, previous)
    return 0


def _exit_quietly(signum: int, _: object) -> None:
    raise SystemExit(0)
