"""What every response and every request passes through, before any route: the security
headers, the refusal of an unknown caller's state-changing request before its body is
read (routes read their body before their dependencies run), and the body's size limit."""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

from starlette.datastructures import Headers, MutableHeaders
from starlette.exceptions import HTTPException
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from workers.errors import WorkersError
from workers.web.access import principal
from workers.web.problems import PROBLEM_TYPE, Problem, from_workers_error, problem_response

# self only: no inline script or style, nothing from another site, never in a frame
POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; object-src 'none'; base-uri 'self'; form-action 'self'; "
    "frame-ancestors 'none'"
)
HEADERS = {
    "content-security-policy": POLICY,
    "x-frame-options": "DENY",
    "x-content-type-options": "nosniff",
    "referrer-policy": "same-origin",
}
_SAFE = frozenset({"GET", "HEAD", "OPTIONS"})
_ANONYMOUS_POSTS = frozenset({"/login"})  # its body is the credential
PROBES = frozenset({"/healthz", "/readyz"})  # no auth, no Host check, no job data
METRICS = "/metrics"


class SecurityHeaders:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        static = _route_path(scope).startswith("/static/")
        started = False

        async def with_headers(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                headers = MutableHeaders(scope=message)
                for name, value in HEADERS.items():
                    headers.setdefault(name, value)
                if not static:  # job data (params, results, logs) stays out of every cache
                    headers.setdefault("Cache-Control", "no-store")
                _relative(headers)
            await send(message)

        try:
            await self.app(scope, receive, with_headers)
        except Exception:
            # Starlette's own 500 is made outside every middleware, without these headers:
            # ours goes first, and the error goes on to be logged (the server then sees
            # the response started and sends no second one)
            if not started:
                failed = Problem(500, "Internal error", "the server failed: its log says why")
                answer = JSONResponse(failed.body(), 500, media_type=PROBLEM_TYPE)
                await answer(scope, receive, with_headers)
            raise


def _relative(headers: MutableHeaders) -> None:
    """A redirect within this site names its path alone: an absolute `Location` built from
    the request's Host header (the trailing-slash redirect) would echo whatever it said."""
    location = headers.get("location")
    if location and "://" in location:
        parts = urlsplit(location)
        headers["location"] = urlunsplit(("", "", parts.path or "/", parts.query, parts.fragment))


class HostCheck:
    """Starlette's Host check (DNS rebinding) on everything but the probes and a scrape
    that brings a token: a kubelet, a load balancer or Prometheus asks by the pod's or the
    host's address. A probe tells nothing; /metrics with an Authorization header is a
    caller that holds a token (Gate checks it), which a page on a rebound name cannot
    make a browser send."""

    def __init__(self, app: ASGIApp, allowed_hosts: list[str]) -> None:
        self.app = app
        self.checked = TrustedHostMiddleware(app, allowed_hosts=allowed_hosts)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and _unchecked(scope):
            await self.app(scope, receive, send)
        else:
            await self.checked(scope, receive, send)


def _unchecked(scope: Scope) -> bool:
    path = _route_path(scope)
    return path in PROBES or (path == METRICS and "authorization" in Headers(scope=scope))


class Gate:
    """A request that changes state is refused (401/403) before its body is read unless
    its caller is known; the principal found is kept for the route's own check."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if _changes_state(scope) and _route_path(scope) not in _ANONYMOUS_POSTS:
            request = Request(scope)
            try:
                await principal(request)
            except Problem as problem:
                await problem_response(request, problem)(scope, receive, send)
                return
            except WorkersError as exc:  # the sessions' database did not answer: 503
                await problem_response(request, from_workers_error(exc))(scope, receive, send)
                return
        await self.app(scope, receive, send)


def _changes_state(scope: Scope) -> bool:
    return scope["type"] == "http" and scope["method"] not in _SAFE


class BodyLimit:
    """413 for a body over `limit` bytes: at once when Content-Length says so, else as soon
    as the bytes read pass it (an HTTPException from `receive` reaches the app's handler:
    the routes re-raise it as it is)."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = Headers(scope=scope).get("content-length", "")
        if declared.isdigit() and int(declared) > self.limit:
            await problem_response(Request(scope), self._too_large())(scope, receive, send)
            return
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                raise HTTPException(413)
            return message

        await self.app(scope, counted, send)

    def _too_large(self) -> Problem:
        return Problem(413, "Content too large", f"the request body is over {self.limit} bytes")


def _route_path(scope: Scope) -> str:
    path, root = str(scope["path"]), str(scope.get("root_path", ""))
    return path[len(root) :] if root and path.startswith(root) else path
