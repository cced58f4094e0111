"""The dashboard, HTTP API, permissions and /metrics of workers, as one ASGI app.

from workers.web import app
dashboard = app(auth=my_resolver)   # mount it: Mount("/workers", app=dashboard)
"""

from __future__ import annotations

from typing import Any

from workers.web.auth import Principal, Resolver, hash_token, new_token


def app(*, auth: Resolver | None = None, **options: Any) -> Any:
    """The ASGI app. `auth(request)` returns a `Principal`, `(name, role)` or None."""
    from workers.web.server import create_app  # FastAPI loads only when a dashboard is made

    return create_app(auth=auth, **options)


__all__ = ["Principal", "Resolver", "app", "hash_token", "new_token"]
