"""`workers jobs ...` and `workers push`: the lifecycle from the command line, and
`workers jobs watch`, its events live.

Tables for people (rich), `--json` for scripts. An action refused for any job
exits with status 1 and says why, job by job. A bulk action chosen by filter
(`--type/--status`) asks for confirmation unless `--yes`, and shows a progress
bar over its batches.
"""

from __future__ import annotations

import argparse
import functools
import json
import signal
import sys
import threading
from collections.abc import Callable
from typing import Any

from rich.console import Console
from rich.progress import track
from rich.table import Table

from workers import app as app_module
from workers import lifecycle, listening
from workers.errors import WorkersError
from workers.listening import KINDS
from workers.record import ALLOWED, STATUSES, ActionResult
from workers.settings import Settings
from workers.store.dependencies import BATCH
from workers.terminal import block, printable

EXIT_REFUSED = 1
_STOPS = (signal.SIGTERM, signal.SIGINT)
_ACTIONS = tuple(ALLOWED)
_LS_COLUMNS = ("id", "type", "status", "attempts", "progress", "created", "finished")


def add_parsers(
    add: Callable[..., argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    """The `jobs` and `push` commands; `common` holds the options every command takes."""
    jobs = add("jobs", help="list, show and manage stored jobs")
    subparsers = jobs.add_subparsers(dest="verb", metavar="VERB", required=True)
    verb_parser = functools.partial(subparsers.add_parser, parents=[common])
    ls = verb_parser("ls", help="list jobs, newest first")
    _filters(ls)
    ls.add_argument("--limit", type=_positive, default=50, help="at most N jobs (default 50)")
    ls.add_argument("--json", action="store_true", help="one JSON document per line")
    show = verb_parser("show", help="one job: document, progress, log, error")
    show.add_argument("id")
    show.add_argument("--json", action="store_true", help="the stored document as JSON")
    for action in _ACTIONS:
        verb = verb_parser(action, help=f"{action} jobs (statuses: {', '.join(ALLOWED[action])})")
        verb.add_argument("ids", nargs="*", metavar="ID")
        _filters(verb)
        verb.add_argument("--yes", action="store_true", help="do not ask before a bulk action")
        verb.add_argument("--json", action="store_true", help="the result as JSON")
    watch = verb_parser("watch", help="print job events live, until Ctrl-C (tail -f the queue)")
    watch.add_argument("--type", action="append", help="only jobs of this type (repeatable)")
    watch.add_argument(
        "--kind", action="append", choices=KINDS, help="only events of this kind (repeatable)"
    )
    watch.add_argument("--json", action="store_true", help="one JSON object per event")
    push = add("push", help="push a job of a registered type")
    push.add_argument("type", help="the job class name, e.g. LoadRetentionJob")
    push.add_argument(
        "--params", default="{}", help="the params as a JSON object, e.g. '{\"n\": 1}'"
    )
    push.add_argument("--delay", type=float, help="seconds from now")
    push.add_argument("--after", help='a time ("2026-12-01T09:00:00Z") or "in 5 minutes"')
    push.add_argument("--priority", help="an int or low/normal/medium/high/critical")
    push.add_argument("--retries", type=int, help="retries after a failed attempt")
    push.add_argument("--timeout", type=float, help="seconds per attempt")
    push.add_argument("--depends", nargs="+", metavar="ID", help="ids that must complete first")
    push.add_argument("--unique", help="at most one unfinished job with this key")


def _filters(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--type", help="only jobs of this type")
    parser.add_argument("--status", choices=STATUSES, help="only jobs in this status")


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {text}")
    return value


def run(args: argparse.Namespace, settings: Settings) -> int:
    app = app_module.boot(settings=settings, one_shot=True)
    try:
        if args.command == "push":
            return _push(app, args)
        if args.verb == "ls":
            return _ls(app, args)
        if args.verb == "show":
            return _show(app, args)
        if args.verb == "watch":
            return _watch(app, args)
        return _act(app, args)
    finally:
        app_module.shutdown()


def _watch(app: app_module.App, args: argparse.Namespace) -> int:
    """Print each event as it comes, flushed, until TERM or Ctrl-C (exit 0)."""
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in _STOPS}
    stream = listening.events(app.store, args.kind, args.type)
    print("workers jobs watch: following the jobs (Ctrl-C stops)", file=sys.stderr, flush=True)
    try:
        while not stop.is_set():
            event = stream.get(timeout=0.5)
            if event is not None:
                print(event.as_json() if args.json else printable(event.line()), flush=True)
    finally:
        stream.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0


def _push(app: app_module.App, args: argparse.Namespace) -> int:
    job_class = app.registry.get(args.type)
    if job_class is None:
        known = ", ".join(app.registry.types) or "none"
        raise WorkersError(f"push: no registered job class {args.type!r} (known: {known})")
    try:
        params = json.loads(args.params)
    except json.JSONDecodeError as exc:
        raise WorkersError(f"push: --params is not JSON: {exc.msg} at column {exc.colno}") from None
    if not isinstance(params, dict):
        raise WorkersError(f"push: --params must be a JSON object, got {args.params}")
    priority: Any = args.priority
    if priority is not None and priority.lstrip("-").isdigit():
        priority = int(priority)
    options = {
        "delay": args.delay,
        "after": args.after,
        "priority": priority,
        "retry": args.retries,
        "timeout": args.timeout,
        "depends": args.depends,
        "unique": args.unique,
    }
    job_id = app.push(job_class(params), **options)
    print(json.dumps({"id": str(job_id), "existing": job_id.existing}))
    return 0


def _ls(app: app_module.App, args: argparse.Namespace) -> int:
    jobs = lifecycle.find(app.store, type=args.type, status=args.status, limit=args.limit)
    if args.json:
        for job in jobs:
            print(json.dumps(job.document, default=str))
        return 0
    table = Table(*_LS_COLUMNS)
    for job in jobs:
        percent = (job.progress or {}).get("percent")
        table.add_row(
            printable(job.id),
            printable(job.type),
            printable(job.status),
            str(job.attempts),
            "-" if percent is None else f"{percent:g}%",
            _time(job.created),
            _time(job.finished),
        )
    _console().print(table)
    return 0


def _show(app: app_module.App, args: argparse.Namespace) -> int:
    job = lifecycle.get(app.store, args.id)
    if job is None:
        print(f"no job {args.id}", file=sys.stderr)
        return EXIT_REFUSED
    if args.json:
        print(json.dumps(job.document, default=str, indent=2))
        return 0
    console = _console()
    # the job's own text, with its control characters escaped (workers/terminal.py)
    head = f"{printable(job.type)} {job.id}: {printable(job.status)}, attempt {job.attempts}"
    console.print(head, markup=False, style="bold")
    for name in ("params", "priority", "progress", "result", "depends", "repeats_left"):
        console.print(f"  {name}: {json.dumps(getattr(job, name), default=str)}", markup=False)
    for name in ("created", "run_at", "started", "finished"):
        console.print(f"  {name}: {_time(getattr(job, name))}")
    for entry in job.log:
        level, message = printable(entry.get("level")), printable(entry.get("message"))
        console.print(f"  log {_time(entry.get('time'))} {level}: {message}", markup=False)
    if job.error:
        kind, message = printable(job.error.get("type")), printable(job.error.get("message"))
        console.print(f"  error: {kind}: {message}", markup=False)
        if job.error.get("traceback"):
            console.print(block(job.error["traceback"], "    "), markup=False)
    return 0


def _act(app: app_module.App, args: argparse.Namespace) -> int:
    action = args.verb
    ids = list(args.ids)
    by_filter = args.type is not None or args.status is not None
    if ids and by_filter:
        raise WorkersError(f"jobs {action}: give ids or --type/--status, not both")
    if not ids and not by_filter:
        raise WorkersError(f"jobs {action}: give the ids of the jobs, or --type/--status")
    if by_filter:
        ids = app.store.job_ids(type=args.type, status=args.status)
        if not ids:
            print(f"no job matches; nothing to {action}")
            return 0
        if not args.yes and not _confirm(f"{action} {len(ids)} jobs?"):
            print("nothing done")
            return EXIT_REFUSED
    result = ActionResult(action)
    batches = [ids[start : start + BATCH] for start in range(0, len(ids), BATCH)]
    shown = (
        track(batches, description=f"{action}", console=Console(stderr=True))
        if by_filter
        else batches
    )
    for batch in shown:
        result.add(lifecycle.act(app.store, action, batch))
    return _report(result, as_json=args.json)


def _confirm(question: str) -> bool:
    print(f"{question} [y/N] ", end="", flush=True)
    answer = sys.stdin.readline().strip().lower()
    return answer in ("y", "yes")


def _report(result: ActionResult, *, as_json: bool) -> int:
    refused = {
        job_id: f"it is {status}; {result.action} needs {' or '.join(ALLOWED[result.action])}"
        if status
        else "no job has that id"
        for job_id, status in result.refused.items()
    }
    refused.update(result.errors)
    if as_json:
        print(
            json.dumps({"changed": result.changed, "refused": refused, "created": result.created})
        )
    else:
        print(f"{result.action}: {len(result.changed)} changed, {len(refused)} refused")
        for job_id, clone in result.created.items():
            print(f"  {job_id} -> {clone}")
        for job_id, reason in refused.items():
            print(f"  refused {job_id}: {reason}", file=sys.stderr)
    return EXIT_REFUSED if refused else 0


def _console() -> Console:
    """A terminal's own width; piped, wide enough that ids are never wrapped."""
    return Console() if sys.stdout.isatty() else Console(width=160)


def _time(value: Any) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S") if hasattr(value, "strftime") else "-"
