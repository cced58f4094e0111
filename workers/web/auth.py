"""Who is asking, and what their role lets them do.

The roles are jobCollection's, plus a read-only one:

| role    | read (pages, GET API, /metrics) | push | lifecycle actions |
|---------|------|------|-------------------|
| admin   | yes  | yes  | on any job        |
| manager | yes  | no   | on any job        |
| creator | yes  | yes  | on the jobs it pushed (`owner`) |
| worker  | no   | no   | no; takes jobs and reports on them (`/api/work`) |
| viewer  | yes  | no   | no                |

Who is who, in this order: a `Bearer` API token (settings `web.tokens`, kept as
SHA-256 digests and compared in constant time), a login session (the cookie holds
its id; the database, the token it was opened with), then the host app's resolver
(`workers.web.app(auth=...)`), which also sees a Bearer token that is not one of
ours (the host app's own JWTs). With neither tokens nor a resolver, a client on this
machine is admin only where
loopback is trusted: `workers web` on a loopback bind with `web.trust_loopback`
on (the default), and a client that no proxy forwarded. Anywhere else (mounted
in a host app, trust off) nobody gets in without credentials: deny by default.
"""

from __future__ import annotations

import collections
import hashlib
import hmac
import inspect
import ipaddress
import secrets
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol

from starlette.concurrency import run_in_threadpool

from workers.settings import ROLES, RuleAction, TokenSettings

if TYPE_CHECKING:
    from starlette.requests import Request

RULE_ACTIONS: tuple[str, ...] = RuleAction.__args__  # type: ignore[attr-defined]
READERS = frozenset({"admin", "manager", "creator", "viewer"})
PUSHERS = frozenset({"admin", "creator"})
MANAGERS = frozenset({"admin", "manager"})  # may act on any job
OWNERS = frozenset({"creator"})  # may act on its own jobs
WORKERS = frozenset({"admin", "worker"})  # may take jobs and report on them (/api/work)
TOKEN_COOKIE = "workers_token"  # noqa: S105 (a cookie's name, not a secret)
LOCAL_HOSTS = ("127.0.0.1", "::1", "localhost")
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "[::1]")  # Host header names of this machine


@dataclass(frozen=True)
class Principal:
    """Someone the dashboard knows: a name (what `owner` records) and a role."""

    name: str
    role: str
    via: str = "resolver"  # bearer, cookie, resolver or local
    # narrowed within the role (a token's `types`, `allow` and `deny`): None is no narrowing
    types: frozenset[str] | None = None
    allow: frozenset[str] | None = None
    deny: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ValueError(f"unknown role {self.role!r}; roles are {', '.join(ROLES)}")
        unknown = sorted(((self.allow or frozenset()) | self.deny) - set(RULE_ACTIONS))
        if unknown:
            raise ValueError(
                f"unknown action {', '.join(unknown)} in allow or deny; the actions are "
                f"{', '.join(RULE_ACTIONS)}"
            )

    def refusal(self, action: str, job_type: str | None = None) -> str | None:
        """Why this principal's own rules refuse `action` (on a job of `job_type`), or None.
        Deny wins; then allow, when given, lists all it may do; then its types."""
        if action in self.deny:
            return f"its rules deny {action}"
        if self.allow is not None and action not in self.allow:
            return f"its rules allow only {', '.join(sorted(self.allow)) or 'nothing'}"
        if job_type is not None and self.types is not None and job_type not in self.types:
            return f"it is limited to the types {', '.join(sorted(self.types))}"
        return None

    @property
    def can_read(self) -> bool:
        return self.role in READERS

    @property
    def can_push(self) -> bool:
        return self.role in PUSHERS

    @property
    def can_work(self) -> bool:
        return self.role in WORKERS

    @property
    def can_act(self) -> bool:
        return self.role in MANAGERS or self.role in OWNERS

    def not_allowed_on(self, owners: dict[str, Any]) -> list[str]:
        """The ids among `owners` (job id -> its owner) this principal may not act on."""
        if self.role in MANAGERS:
            return []
        if self.role in OWNERS:
            return [job_id for job_id, owner in owners.items() if owner != self.name]
        return list(owners)


Resolved = Principal | tuple[str, str] | None
Resolver = Callable[["Request"], Resolved | Awaitable[Resolved]]


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    """32 random bytes: long enough that a plain SHA-256 of it is safe to store."""
    return "wk_" + secrets.token_urlsafe(32)


# any of these says a proxy passed the request on: its visitor is not on this machine (some
# proxies set only a host, a `Via`, or a CDN's own client header)
_FORWARDED = (
    "forwarded", "x-forwarded-for", "x-real-ip", "x-forwarded-host", "via",
    "cf-connecting-ip", "true-client-ip", "x-client-ip",
)  # fmt: skip


def is_loopback(host: str) -> bool:
    """Is `host` (a bind address or a peer) this machine?"""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def is_local(request: Request) -> bool:
    """A client on this machine that no proxy forwarded (a proxy on localhost would make
    every visitor look local)."""
    if any(name in request.headers for name in _FORWARDED):
        return False
    return request.client is not None and is_loopback(request.client.host)


class Sessions(Protocol):
    """Where the login sessions live (the database's `web` collection: every web process
    sees the same ones, and a logout ends one for all of them)."""

    def open(self, token_sha256: str) -> str: ...
    def token_of(self, session: str) -> str | None: ...
    def close(self, session: str) -> None: ...


class Authenticator:
    def __init__(
        self,
        tokens: Sequence[TokenSettings],
        resolver: Resolver | None,
        *,
        trust_loopback: bool = False,
        sessions: Sessions | None = None,
    ) -> None:
        self._tokens = list(tokens)
        self._resolver = resolver
        self.trust_loopback = trust_loopback and not self.configured
        self.failures = FailedAttempts()
        self.sessions = sessions

    def replace_tokens(self, tokens: Sequence[TokenSettings]) -> None:
        """The tokens from now on (a reload on SIGHUP): loopback trust, off once any token
        was configured, stays off."""
        self._tokens = list(tokens)
        self.trust_loopback = self.trust_loopback and not self.configured

    @property
    def configured(self) -> bool:
        return bool(self._tokens) or self._resolver is not None

    @staticmethod
    def presents_credentials(request: Request) -> bool:
        """A Bearer header or the login cookie: an attempt that may fail, and is counted."""
        bearer = request.headers.get("authorization", "")[:7].lower() == "bearer "
        return bearer or TOKEN_COOKIE in request.cookies

    async def identify(self, request: Request) -> Principal | None:
        """The principal of `request`, or None (unknown: 401, or 403 with no auth)."""
        header = request.headers.get("authorization", "")
        if header[:7].lower() == "bearer ":
            found = self.by_token(header[7:].strip(), "bearer")
            if found or self._resolver is None:
                return found
        cookie = request.cookies.get(TOKEN_COOKIE)
        if cookie and self.sessions is not None:
            digest = await run_in_threadpool(self.sessions.token_of, cookie)
            if digest and (principal := self.by_digest(digest, "cookie")):
                return principal
        if self._resolver is not None:
            return await self._resolve(request)
        if self.trust_loopback and is_local(request):
            return Principal("local", "admin", "local")
        return None

    def by_token(self, token: str, via: str) -> Principal | None:
        return self.by_digest(hash_token(token), via)

    def by_digest(self, digest: str, via: str) -> Principal | None:
        """Every digest is compared (in constant time), so the time taken says nothing; a
        token past its `expires`, or no longer in the settings, is no token."""
        found = None
        for entry in self._tokens:
            if hmac.compare_digest(digest, entry.sha256):
                found = entry
        if found is None or (found.expires is not None and found.expires <= _now()):
            return None
        types = frozenset(found.types) if found.types is not None else None
        allow = frozenset(found.allow) if found.allow is not None else None
        return Principal(found.name, found.role, via, types, allow, frozenset(found.deny))

    async def _resolve(self, request: Request) -> Principal | None:
        if self._resolver is None:
            return None
        resolved = self._resolver(request)
        if inspect.isawaitable(resolved):
            resolved = await resolved
        if resolved is None or isinstance(resolved, Principal):
            return resolved
        if isinstance(resolved, tuple) and len(resolved) == 2:
            name, role = resolved
            return Principal(str(name), str(role), "resolver")
        raise TypeError(
            f"the auth resolver must return a Principal, (name, role) or None; got {resolved!r}"
        )


def _now() -> datetime:
    return datetime.now(UTC)


class FailedAttempts:
    """Credentials that failed, per client address: past `most` in `window` seconds, the
    client's every attempt is refused until the oldest of them leaves the window (a token
    cannot be guessed at the rate the server answers). In memory, per web process; at most
    `clients` addresses are followed (the longest quiet are forgotten first)."""

    def __init__(self, most: int = 10, window: float = 60.0, clients: int = 10_000) -> None:
        self.most, self.window, self.clients = most, window, clients
        self._failed: collections.OrderedDict[str, collections.deque[float]] = (
            collections.OrderedDict()
        )
        self._lock = threading.Lock()

    def wait(self, client: str) -> float:
        """Seconds `client` must wait before it may try again (0: it may now)."""
        with self._lock:
            times = self._recent(client)
            if len(times) < self.most:
                return 0.0
            return max(0.0, times[-self.most] + self.window - time.monotonic())

    def failed(self, client: str) -> None:
        with self._lock:
            times = self._recent(client)
            times.append(time.monotonic())
            self._failed[client] = times
            self._failed.move_to_end(client)
            while len(self._failed) > self.clients:
                self._failed.popitem(last=False)

    def _recent(self, client: str) -> collections.deque[float]:
        times = self._failed.get(client, collections.deque(maxlen=self.most))
        since = time.monotonic() - self.window
        while times and times[0] <= since:
            times.popleft()
        return times


def owners_of(docs: Iterable[dict[str, Any]]) -> dict[str, Any]:
    return {str(doc["_id"]): doc.get("owner") for doc in docs}
