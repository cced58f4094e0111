"""The checks every route runs: who is asking (auth.py), may they, and the CSRF token.

CSRF: a random token in the `workers_csrf` cookie (set on the first response), which
every state-changing request must repeat, in the `X-CSRF-Token` header (the
dashboard's scripts) or the `csrf` form field (its forms); compared in constant
time. A request with a Bearer token is exempt: no browser sends one by itself.
"""

from __future__ import annotations

import hmac
import secrets
from typing import Any

from fastapi import Request
from starlette.middleware.base import BaseHTTPMiddleware, RequestResponseEndpoint
from starlette.responses import Response

from workers.app import App
from workers.web.auth import Authenticator, Principal, owners_of
from workers.web.problems import Problem, forbidden, unauthorized

CSRF_COOKIE, CSRF_HEADER, CSRF_FIELD = "workers_csrf", "x-csrf-token", "csrf"
_SAFE = frozenset({"GET", "HEAD", "OPTIONS"})


def booted(request: Request) -> App:
    app: App = request.app.state.booted()
    return app


def cached_counts(request: Request) -> dict[str, Any]:
    """The overview's counts, reused for `web.cache` seconds (views.Cached)."""
    counts: dict[str, Any] = request.app.state.counts.get()
    return counts


async def principal(request: Request) -> Principal:
    """The principal, or 401 (unknown) / 403 (no auth configured and not on this machine)."""
    cached = getattr(request.state, "principal", None)
    if isinstance(cached, Principal):
        return cached
    auth: Authenticator = request.app.state.auth
    found = await auth.identify(request)
    if found is None and not auth.configured:
        raise forbidden(
            "no authentication is configured, so only clients on this machine are let in: "
            "set web.tokens in the settings, or pass auth= to workers.web.app()"
        )
    if found is None:
        raise unauthorized()
    request.state.principal = found
    return found


async def reader(request: Request) -> Principal:
    return await _may(request, "can_read", "use the dashboard or the API", writes=False)


async def pusher(request: Request) -> Principal:
    return await _may(request, "can_push", "push jobs", writes=True)


async def actor(request: Request) -> Principal:
    return await _may(request, "can_act", "act on jobs", writes=True)


async def _may(request: Request, permission: str, doing: str, *, writes: bool) -> Principal:
    """The principal if its role has `permission` (403 naming the role if not); a request
    that changes something must also carry the CSRF token."""
    who = await principal(request)
    if not getattr(who, permission):
        raise forbidden(f"the {who.role} role cannot {doing}", role=who.role)
    if writes:
        check_csrf(request, who)
    return who


def check_ownership(app: App, who: Principal, ids: list[str]) -> None:
    """A creator acts only on the jobs it pushed: 403 naming the others, and nothing done."""
    if who.role not in ("creator",):
        return
    # an id no job has is nobody's: the action reports it as refused (no such job)
    denied = who.not_allowed_on(owners_of(app.store.jobs_by_id(list(ids))))
    if denied:
        raise forbidden(
            f"{who.name} ({who.role}) may only act on jobs it pushed; not on {', '.join(denied)}",
            jobs=denied,
        )


def check_csrf(request: Request, who: Principal, submitted: str | None = None) -> None:
    if who.via == "bearer" or request.method in _SAFE:
        return
    expected = request.cookies.get(CSRF_COOKIE, "")
    given = submitted if submitted is not None else request.headers.get(CSRF_HEADER, "")
    if not (expected and given and hmac.compare_digest(expected.encode(), given.encode())):
        raise Problem(
            403,
            "CSRF check failed",
            "this request changes state and must repeat the workers_csrf cookie in the "
            "X-CSRF-Token header or the csrf form field (or use a Bearer token)",
        )


def csrf_token(request: Request) -> str:
    token: str = getattr(request.state, "csrf", "") or request.cookies.get(CSRF_COOKIE, "")
    return token


class CsrfCookie(BaseHTTPMiddleware):
    """Give every browser a CSRF token before it needs one."""

    async def dispatch(self, request: Request, call_next: RequestResponseEndpoint) -> Response:
        fresh = None
        if not request.cookies.get(CSRF_COOKIE):
            fresh = request.state.csrf = secrets.token_urlsafe(32)
        response = await call_next(request)
        if fresh:
            path = request.scope.get("root_path", "") or "/"
            response.set_cookie(CSRF_COOKIE, fresh, httponly=False, samesite="strict", path=path)
        return response
