"""The dashboard under test: an ASGI app on the test's booted app, with a token per role."""

from __future__ import annotations

import re
from typing import Any

from starlette.testclient import TestClient

from workers.settings import ROLES
from workers.web.auth import hash_token

LOCAL = ("127.0.0.1", 40000)  # a client on this machine
REMOTE = ("203.0.113.9", 40000)  # a client elsewhere (TEST-NET-3)


def token_of(role: str, name: str | None = None) -> str:
    return f"test-token-{name or role}"


def token_settings(*extra: tuple[str, str]) -> list[dict[str, str]]:
    """One token per role (named after it), plus (name, role) pairs."""
    pairs = [(role, role) for role in ROLES] + list(extra)
    return [{"name": n, "role": r, "sha256": hash_token(token_of(r, n))} for n, r in pairs]


def bearer(role: str, name: str | None = None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token_of(role, name)}"}


def client_for(
    app: Any,
    *,
    client: tuple[str, int] = LOCAL,
    headers: dict[str, str] | None = None,
    base_url: str = "http://testserver",
    **options: Any,
) -> TestClient:
    """The app as a host app mounts it (`workers.web.app()`): no Host check, no loopback
    trust."""
    from workers.web.server import create_app

    web = create_app(booted_app=app, **options)
    return TestClient(
        web, client=client, headers=headers, base_url=base_url, follow_redirects=False
    )


def page_csrf(
    client: TestClient, headers: dict[str, str] | None = None, path: str = "/jobs"
) -> str:
    """The CSRF token a page carries (`<body data-csrf>`), rendered for whoever asks (the login
    page's, for nobody): tokens belong to the session and the caller."""
    html = {"Accept": "text/html", **(headers or {})}
    page = client.get(path, headers=html)
    if page.status_code == 303:
        page = client.get(page.headers["location"], headers=html)
    found = re.search(r'data-csrf="([^"]+)"', page.text)
    assert found, f"no CSRF token on {path}: {page.status_code} {page.text[:200]}"
    return found.group(1)
