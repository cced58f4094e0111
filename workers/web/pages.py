"""The dashboard's pages: overview, jobs, a job, nodes, cron, login; and the forms that act.

Jinja2 escapes every value (params, logs and errors included). Every form that
changes something carries the CSRF token and is checked again on the server;
an action asks for confirmation on a page of its own, so it needs no script.
A page asked for with `X-Fragment: 1` returns only its content: live.js swaps
it in when the server reports a change (live.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from starlette.concurrency import run_in_threadpool

import workers.web.views as views
from workers import lifecycle
from workers.app import App
from workers.record import ALLOWED, STATUSES, ActionResult
from workers.version import __version__
from workers.web.access import (
    ANONYMOUS,
    booted,
    cached_counts,
    check_csrf,
    check_ownership,
    client_address,
    cookie_options,
    csrf_token,
    principal,
    reader,
    refuse_while_locked_out,
    scope_of,
)
from workers.web.auth import TOKEN_COOKIE, Principal, hash_token
from workers.web.problems import Problem, forbidden, not_found

templates = Jinja2Templates(directory=str(Path(__file__).parent / "templates"))
router = APIRouter(include_in_schema=False)
Reader = Annotated[Principal, Depends(reader)]
App_ = Annotated[App, Depends(booted)]
PAGE_SIZE = 50


def base_path(request: Request) -> str:
    return str(request.scope.get("root_path", "")).rstrip("/")


def render(request: Request, template: str, who: Principal | None, **context: Any) -> Response:
    fragment = request.headers.get("x-fragment") == "1"
    return templates.TemplateResponse(
        request,
        template,
        {
            "who": who,
            "base": base_path(request),
            "csrf": csrf_token(request, who),
            "fragment": fragment,
            "version": __version__,
            "statuses": STATUSES,
            "allowed": ALLOWED,
            "local": who is not None and who.via == "local",
            **context,
        },
    )


def error_page(request: Request, problem: Problem) -> Response:
    if problem.status == 401:
        base = base_path(request)
        path = request.url.path[len(base) :] if request.url.path.startswith(base) else "/"
        target = base + "/login?" + urlencode({"next": path or "/"})
        return RedirectResponse(target, status_code=303)
    response = render(request, "error.html", None, problem=problem.body())
    response.status_code = problem.status
    return response


@router.get("/", response_class=HTMLResponse)
def overview(
    request: Request,
    app: App_,
    who: Reader,
    counts: Annotated[dict[str, Any], Depends(cached_counts)],
) -> Response:
    series = views.throughput(app)
    return render(
        request,
        "overview.html",
        who,
        page="overview",
        counts=counts,
        chart=chart(series),
        series=series,
        limits=views.limits(app),
    )


def chart(series: list[dict[str, Any]], width: int = 720, height: int = 160) -> dict[str, Any]:
    """Bars for an inline SVG: completed stacked under failed, per minute."""
    top = max([s["completed"] + s["failed"] for s in series] + [1])
    step = width / max(len(series), 1)
    bars = []
    for i, point in enumerate(series):
        done_h = height * point["completed"] / top
        fail_h = height * point["failed"] / top
        bars.append(
            {
                "x": round(i * step, 1),
                "w": round(step * 0.8, 1),
                "minute": point["minute"],
                "done_y": round(height - done_h, 1),
                "done_h": round(done_h, 1),
                "fail_y": round(height - done_h - fail_h, 1),
                "fail_h": round(fail_h, 1),
                "completed": point["completed"],
                "failed": point["failed"],
            }
        )
    return {"bars": bars, "width": width, "height": height, "top": top}


@router.get("/jobs", response_class=HTMLResponse)
def jobs(
    request: Request,
    app: App_,
    who: Reader,
    type: str | None = None,
    status: str | None = None,
    q: str | None = None,
    before: str | None = None,
) -> Response:
    status = status if status in STATUSES else None
    type, q, before = type or None, (q or "").strip()[:200] or None, before or None
    page = views.find_page(app, type=type, status=status, q=q, before=before, limit=PAGE_SIZE)
    filters = {k: v for k, v in {"type": type, "status": status, "q": q}.items() if v}
    next_url = "?" + urlencode({**filters, "before": page.next}) if page.next else None
    return render(
        request,
        "jobs.html",
        who,
        page="jobs",
        jobs=page.jobs,
        filters=filters,
        next_url=next_url,
        searched=page.searched,
        types=app.registry.types,
        message=_notice(request),
    )


@router.get("/jobs/{job_id}", response_class=HTMLResponse)
def job(request: Request, job_id: str, app: App_, who: Reader) -> Response:
    doc = app.store.get_job(job_id)
    if doc is None:
        raise not_found(f"no job has the id {job_id}")
    detail = views.job_detail(doc)
    return render(
        request,
        "job.html",
        who,
        page="jobs",
        job=detail,
        unrun=not views.runs_type(app, detail),
        related=views.related(app, doc),
        message=_notice(request),
    )


@router.get("/nodes", response_class=HTMLResponse)
def nodes(request: Request, app: App_, who: Reader) -> Response:
    return render(request, "nodes.html", who, page="nodes", nodes=views.nodes(app))


@router.get("/cron", response_class=HTMLResponse)
def cron(request: Request, app: App_, who: Reader) -> Response:
    return render(request, "cron.html", who, page="cron", cron=views.cron(app))


@router.post("/act", response_class=HTMLResponse)
async def act(request: Request, app: App_) -> Response:
    """An action on the jobs ticked (or one job): a confirmation page, then the action."""
    who = await principal(request)
    form = await request.form()
    check_csrf(request, who, str(form.get("csrf", "")))
    action = str(form.get("action", ""))
    ids = [str(i) for i in form.getlist("ids") if str(i)]
    back = _local_path(str(form.get("back", "")), base_path(request) + "/jobs")
    if action not in ALLOWED:
        raise Problem(422, "Invalid request", f"unknown action {action!r}")
    if not ids:
        return RedirectResponse(_with_message(back, {"done": "none"}), status_code=303)
    if not who.can_act:
        raise forbidden(f"the {who.role} role cannot act on jobs", role=who.role)
    # pymongo blocks: not on the loop
    await run_in_threadpool(check_ownership, request, app, who, ids, "act on", action)
    if form.get("confirm") != "yes":
        return render(request, "confirm.html", who, page="jobs", action=action, ids=ids, back=back)
    owner = scope_of(who)
    result = await run_in_threadpool(lifecycle.act, app.store, action, ids, owner=owner)
    if action == "remove" and back.rstrip("/").endswith(tuple(ids)):
        back = base_path(request) + "/jobs"
    return RedirectResponse(_with_message(back, _summary(result)), status_code=303)


_COUNTS = ("changed", "refused", "spared", "failed")


def _summary(result: ActionResult) -> dict[str, str]:
    """What an action did, as the page it returns to is told it: the action and counts
    only, from which that page writes its notice (`_notice`): a link cannot put words of
    its own in the dashboard's mouth."""
    counts = [len(result.changed), len(result.refused), len(result.spared), len(result.errors)]
    return {"done": result.action} | {
        name: str(count) for name, count in zip(_COUNTS, counts, strict=True) if count
    }


def _notice(request: Request) -> str | None:
    """The notice of the action a redirect reported (`_summary`), or None: anything but
    a known action and counts is ignored."""
    query = request.query_params
    action = query.get("done")
    if action == "none":
        return "no job was selected"
    if action not in ALLOWED:
        return None
    counts = {name: int(query[name]) for name in _COUNTS if query.get(name, "").isdigit()}
    parts = [f"{action}: {counts.get('changed', 0)} changed"]
    if counts.get("refused"):
        parts.append(f"{counts['refused']} refused ({action} needs {' or '.join(ALLOWED[action])})")
    if counts.get("spared"):
        parts.append(f"{counts['spared']} of other owners left as they were")
    if counts.get("failed"):
        parts.append(f"{counts['failed']} failed (the server's log says why)")
    return ", ".join(parts)


def _with_message(url: str, summary: dict[str, str]) -> str:
    path = url.split("?", 1)[0]
    return f"{path}?{urlencode(summary)}"


@router.get("/api/docs", response_class=HTMLResponse)
def api_docs(request: Request, who: Reader) -> Response:
    """The HTTP API, from its OpenAPI document, as a page of this site (no script)."""
    schema = request.app.openapi()
    operations = [
        {"method": method.upper(), "path": path, **operation}
        for path, item in schema.get("paths", {}).items()
        for method, operation in item.items()
    ]
    return render(request, "api.html", who, page="api", operations=operations)


@router.get("/login", response_class=HTMLResponse)
def login_form(request: Request, next: str = "/") -> Response:
    return render(request, "login.html", None, page="login", next=_local_path(next), failed=False)


@router.post("/login", response_class=HTMLResponse)
def login(
    request: Request,
    token: Annotated[str, Form()],
    csrf: Annotated[str, Form()] = "",
    next: Annotated[str, Form()] = "/",
) -> Response:
    """Keep a valid API token in an HttpOnly, SameSite=Strict cookie."""
    check_csrf(request, ANONYMOUS, csrf)
    auth, client = request.app.state.auth, client_address(request)
    refuse_while_locked_out(auth, client)
    found = auth.by_token(token.strip(), "cookie")
    if found is None:
        auth.failures.failed(client)
        response = render(
            request, "login.html", None, page="login", next=_local_path(next), failed=True
        )
        response.status_code = 401
        return response
    response = RedirectResponse(base_path(request) + _local_path(next), status_code=303)
    # a session of its own, ended by logout for every web process: never the token itself
    session = auth.sessions.open(hash_token(token.strip()))
    response.set_cookie(TOKEN_COOKIE, session, **cookie_options(request))
    return response


@router.post("/logout")
async def logout(request: Request) -> Response:
    who = await principal(request)
    form = await request.form()
    check_csrf(request, who, str(form.get("csrf", "")))
    session = request.cookies.get(TOKEN_COOKIE)
    if session and request.app.state.auth.sessions is not None:
        await run_in_threadpool(request.app.state.auth.sessions.close, session)
    response = RedirectResponse(base_path(request) + "/login", status_code=303)
    options = cookie_options(request)
    response.delete_cookie(TOKEN_COOKIE, path=options["path"], secure=options["secure"],
                           httponly=True, samesite="strict")  # fmt: skip
    return response


def _local_path(target: str, otherwise: str = "/") -> str:
    """Only a path of this site: no other host (`//host`, `/\\host`, which browsers read
    as `//host`), no scheme (`https:`, `javascript:`), no control characters."""
    local = (
        target.startswith("/")
        and not target.startswith(("//", "/\\"))
        and target.isprintable()
        and "\\" not in target
    )
    return target if local else otherwise
