"""The checks every route runs: who is asking (auth.py), may they, and the CSRF token.

CSRF: every state-changing request must carry the token its page was rendered
with, in the `X-CSRF-Token` header or the `csrf` form field (the pages carry it
in their forms and in `<body data-csrf>`). The token is an HMAC, under a key kept
in the database (store/web.py), of the browser's session (the random, HttpOnly
`workers_session` cookie) and of who is asking. Cookies ignore ports, so a page
on another port of this host can plant cookies; it cannot read the dashboard's
pages, nor make a token for a session and a login it does not hold. Compared in
constant time. A request with a Bearer token is exempt: no browser sends one by
itself.
"""

from __future__ import annotations

import base64
import hmac
import math
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fastapi import Request
from starlette.datastructures import MutableHeaders
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from workers.app import App
from workers.web.auth import OWNERS, Authenticator, Principal, owners_of
from workers.web.problems import Problem, forbidden, too_many, unauthorized

SESSION_COOKIE, CSRF_HEADER, CSRF_FIELD = "workers_session", "x-csrf-token", "csrf"
_SAFE = frozenset({"GET", "HEAD", "OPTIONS"})


def booted(request: Request) -> App:
    app: App = request.app.state.booted()
    return app


def cached_counts(request: Request) -> dict[str, Any]:
    """The overview's counts, reused for `web.cache` seconds (views.Cached)."""
    counts: dict[str, Any] = request.app.state.counts.get()
    return counts


async def principal(request: Request) -> Principal:
    """The principal, or 401 (unknown) / 403 (no auth configured, and not let in)."""
    cached = getattr(request.state, "principal", None)
    if isinstance(cached, Principal):
        return cached
    auth: Authenticator = request.app.state.auth
    client = client_address(request)
    presented = auth.presents_credentials(request)
    if presented:
        refuse_while_locked_out(auth, client)
    found = await auth.identify(request)
    if found is None and presented:
        auth.failures.failed(client)
    if found is None and not auth.configured:
        raise forbidden(_NO_AUTH_LOCAL if auth.trust_loopback else _NO_AUTH)
    if found is None:
        raise unauthorized()
    request.state.principal = found
    return found


class StoredSessions:
    """The login sessions in the database (store/web.py), lasting `seconds` each."""

    def __init__(self, get_app: Callable[[], App], seconds: float) -> None:
        self._get_app, self._seconds = get_app, seconds

    def open(self, token_sha256: str) -> str:
        return self._get_app().store.open_session(token_sha256, self._seconds)

    def token_of(self, session: str) -> str | None:
        return self._get_app().store.session_token(session)

    def close(self, session: str) -> None:
        self._get_app().store.close_session(session)


def client_address(request: Request) -> str:
    """The client's address (as the proxy says, where web.forwarded_allow trusts it)."""
    return request.client.host if request.client else "unknown"


def refuse_while_locked_out(auth: Authenticator, client: str) -> None:
    """429 while `client` has failed too many times of late (auth.FailedAttempts)."""
    wait = auth.failures.wait(client)
    if wait > 0:
        raise too_many(
            f"too many failed credentials from {client}: try again in {math.ceil(wait)} s",
            math.ceil(wait),
        )


_HOW = "set web.tokens in the settings, or pass auth= to workers.web.app()"
_NO_AUTH_LOCAL = (
    f"no authentication is configured, so only clients on this machine are let in: {_HOW}"
)
_NO_AUTH = (
    "no authentication is configured, and loopback is not trusted here (web.trust_loopback "
    f"is off, or the dashboard is mounted in a host app), so nobody gets in: {_HOW}"
)


async def reader(request: Request) -> Principal:
    return await _may(request, "can_read", "use the dashboard or the API", "read", writes=False)


async def pusher(request: Request) -> Principal:
    return await _may(request, "can_push", "push jobs", "push", writes=True)


async def actor(request: Request) -> Principal:
    # each action and each job's type are checked by check_ownership
    return await _may(request, "can_act", "act on jobs", None, writes=True)


async def worker(request: Request) -> Principal:
    return await _may(request, "can_work", "take or report on jobs", "work", writes=True)


async def _may(
    request: Request, permission: str, doing: str, action: str | None, *, writes: bool
) -> Principal:
    """The principal if its role has `permission` (403 naming the role if not) and its
    rules allow `action`; a request that changes something must also carry the CSRF token."""
    who = await principal(request)
    if not getattr(who, permission):
        raise forbidden(f"the {who.role} role cannot {doing}", role=who.role)
    if action is not None:
        authorize(request, who, action)
    if writes:
        check_csrf(request, who)
    return who


Rule = Callable[[Principal, str, "str | None", "dict[str, Any] | None"], bool]


@dataclass(frozen=True)
class Rules:
    """The host app's rules, as jobCollection's allow and deny: each gets (principal,
    action, job type, params) and returns a bool; a deny that says True refuses, and so
    does an allow that says False. Deny wins."""

    allow: Rule | None = None
    deny: Rule | None = None

    def refusal(
        self, who: Principal, action: str, job_type: str | None, params: dict[str, Any] | None
    ) -> str | None:
        if self.deny is not None and self.deny(who, action, job_type, params):
            return "the host app's deny rule refuses it"
        if self.allow is not None and not self.allow(who, action, job_type, params):
            return "the host app's allow rule does not allow it"
        return None

    @property
    def see_params(self) -> bool:
        return self.allow is not None or self.deny is not None


def authorize(
    request: Request,
    who: Principal,
    action: str,
    job_type: str | None = None,
    params: dict[str, Any] | None = None,
) -> None:
    """403 naming the rule when the principal's own rules (a token's `types`, `allow` and
    `deny`) or the host app's refuse `action` (on a job of `job_type` with `params`)."""
    rules: Rules = request.app.state.rules
    why = who.refusal(action, job_type) or rules.refusal(who, action, job_type, params)
    if why:
        on = f" {job_type}" if job_type else ""
        raise forbidden(f"{who.name} ({who.role}) may not {action}{on}: {why}", rule=why)


def check_ownership(
    request: Request,
    app: App,
    who: Principal,
    ids: list[str],
    doing: str = "act on",
    action: str | None = None,
) -> None:
    """A creator acts only on the jobs it pushed: 403 naming the others, and nothing done.
    With `action`, every job's type and params must pass the rules too (`authorize`)."""
    rules: Rules = request.app.state.rules
    narrowed = who.types is not None or who.allow is not None or bool(who.deny)
    if action is not None and (narrowed or rules.see_params):
        authorize(request, who, action)
        docs = app.store.jobs_by_ids(list(ids)) if rules.see_params else app.store.jobs_by_id(ids)
        for doc in docs:
            params = doc.get("params") if isinstance(doc.get("params"), dict) else None
            authorize(request, who, action, str(doc.get("type")), params)
    if scope_of(who) is None:
        return
    # an id no job has is nobody's: the action reports it as refused (no such job)
    denied = who.not_allowed_on(owners_of(app.store.jobs_by_id(list(ids))))
    if denied:
        raise forbidden(
            f"{who.name} ({who.role}) may only {doing} jobs it pushed; not on {', '.join(denied)}",
            jobs=denied,
        )


def scope_of(who: Principal) -> str | None:
    """The owner whose jobs an action (and its cascades) may change for `who`: a creator's
    own name; None (any job) for a manager or an admin."""
    return who.name if who.role in OWNERS else None


def check_csrf(request: Request, who: Principal, submitted: str | None = None) -> None:
    if who.via == "bearer" or request.method in _SAFE:
        return
    given = submitted if submitted is not None else request.headers.get(CSRF_HEADER, "")
    session = request.cookies.get(SESSION_COOKIE, "")
    expected = _sign(request, session, who) if session else ""
    if not (expected and given and hmac.compare_digest(expected.encode(), given.encode())):
        raise Problem(
            403,
            "CSRF check failed",
            "this request changes state and must carry the CSRF token of its page (the "
            "csrf form field, or the X-CSRF-Token header from <body data-csrf>), for this "
            "session and login; or use a Bearer token",
        )


def csrf_token(request: Request, who: Principal | None) -> str:
    """The token a page rendered for `who` carries in its forms."""
    session = getattr(request.state, "session", "") or request.cookies.get(SESSION_COOKIE, "")
    return _sign(request, session, who or ANONYMOUS)


def _sign(request: Request, session: str, who: Principal) -> str:
    key: bytes = request.app.state.csrf_key()
    message = f"{session}\0{who.via}\0{who.name}\0{who.role}".encode()
    return base64.urlsafe_b64encode(hmac.digest(key, message, "sha256")).decode().rstrip("=")


ANONYMOUS = Principal("anonymous", "viewer", "form")  # the login form's visitor


def cookie_options(request: Request) -> dict[str, Any]:
    """HttpOnly, SameSite=Strict, on this app's path; Secure over HTTPS (or by setting)."""
    secure = request.app.state.secure_cookies
    if secure is None:
        secure = request.url.scheme == "https"
    path = str(request.scope.get("root_path", "")).rstrip("/") or "/"
    return {"httponly": True, "samesite": "strict", "secure": secure, "path": path}


class Session:
    """Give every browser a session (the key of its CSRF tokens) before it needs one."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or SESSION_COOKIE in Request(scope).cookies:
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        fresh = request.state.session = secrets.token_urlsafe(32)

        async def with_cookie(message: Message) -> None:
            if message["type"] == "http.response.start":
                cookie = Response()
                cookie.set_cookie(SESSION_COOKIE, fresh, **cookie_options(request))
                MutableHeaders(scope=message).append("set-cookie", cookie.headers["set-cookie"])
            await send(message)

        await self.app(scope, receive, with_cookie)
