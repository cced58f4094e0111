"""Argument parsing: the `workers` script, `python -m workers`, and app entry points."""

from __future__ import annotations

import argparse
import functools
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from types import FrameType
from typing import Any

from workers import app as app_module
from workers import commands as commands_module
from workers import embedded, headless, health, registry
from workers import settings as settings_module
from workers.cron import iso
from workers.errors import DatabaseUnavailable, WorkersError
from workers.retrying import Backoff
from workers.settings import Settings, TokenSettings
from workers.terminal import block, printable
from workers.version import DISTRIBUTION

log = logging.getLogger(__name__)

SETTINGS_HELP = "settings file (default: $WORKERS_SETTINGS, else ./settings.json)"
TYPES_FLAG: dict[str, Any] = {
    "metavar": "A,B",
    "type": lambda text: [name.strip() for name in text.split(",") if name.strip()],
    "default": None,
    "help": "run only these job types on this node, a pool of its own (workers.types.include)",
}

_STANDARD_RECORD_KEYS = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


class StructuredFormatter(logging.Formatter):
    """Appends the `extra=` fields of a record as key=value pairs."""

    def format(self, record: logging.LogRecord) -> str:
        """The message, then the record's extra fields as JSON: one line, whatever text a
        job put in it (its control characters and line breaks escaped, a traceback's kept)."""
        message = record.getMessage()
        shown = printable(message)
        if shown != message or record.exc_info or record.exc_text:  # a copy: other handlers
            record = logging.makeLogRecord({**vars(record), "msg": shown, "args": None})
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = block(record.exc_text)
        line = super().format(record)
        extras = {k: v for k, v in vars(record).items() if k not in _STANDARD_RECORD_KEYS}
        if extras:
            line += " " + " ".join(f"{k}={json.dumps(v, default=str)}" for k, v in extras.items())
        return line


def setup_logging(level: int = logging.INFO) -> None:
    """Log to stderr, one line per record with its extra fields, at `level`."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        StructuredFormatter(
            "%(asctime)s %(levelname)s [%(process)d %(threadName)s] %(name)s: %(message)s"
        )
    )
    logging.basicConfig(level=level, handlers=[handler], force=True)


def parser(prog: str = "workers") -> argparse.ArgumentParser:
    """The command line's parser: every command and option of `workers` (prog: the name
    an app's own entry point shows)."""
    top = argparse.ArgumentParser(prog=prog, description="A MongoDB-backed job queue.")
    top.add_argument("--settings", metavar="PATH", help=SETTINGS_HELP)
    # --settings is accepted after the command too (`workers cron --settings s.json`)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--settings", metavar="PATH", help=SETTINGS_HELP, default=argparse.SUPPRESS)
    top.add_argument(
        "--headless",
        action="store_true",
        help="run the workers (cluster.count processes x workers.count threads)",
    )
    top.add_argument("--types", **TYPES_FLAG)
    commands = top.add_subparsers(dest="command", metavar="COMMAND")
    add = functools.partial(commands.add_parser, parents=[common])
    worker = add("worker", help="run one worker process (supervisord's, or a container's command)")
    worker.add_argument("--types", **{**TYPES_FLAG, "default": argparse.SUPPRESS})
    status = add(
        "status",
        help="count the jobs by status, list the worker processes and the types none runs",
    )
    status.add_argument("--json", action="store_true", help="one JSON document instead of prose")
    health = add(
        "health",
        help="exit 0 if the database answers and this host's worker processes beat in time",
    )
    health.add_argument(
        "--timeout", type=float, default=5.0, help="seconds the database has to answer (5)"
    )
    add("cron", help="list the cron schedules, their next ticks and the leader")
    commands_module.add_parsers(add, common)
    web = add("web", help="serve the dashboard, the HTTP API and /metrics")
    web.add_argument("--host", help="address to listen on (default: web.host, 127.0.0.1)")
    web.add_argument("--port", type=int, help="port (default: web.port, 8181)")
    web.add_argument(
        "--root-path",
        default="",
        help="the path prefix a reverse proxy serves it under (/workers), for its links",
    )
    remote = add(
        "remote",
        help="work jobs from another machine, through `workers web` with a token (no database)",
    )
    remote.add_argument("--url", help="the service, http(s)://... (default: $WORKERS_REMOTE__URL)")
    remote.add_argument(
        "--token-file",
        metavar="PATH",
        help="a file holding the token (default: $WORKERS_REMOTE__TOKEN or __TOKEN_FILE)",
    )
    remote.add_argument(
        "--jobs", required=True, metavar="PACKAGE", help="the *Job classes' package"
    )
    remote.add_argument("--types", **{**TYPES_FLAG, "help": "only these of its job types"})
    remote.add_argument("--threads", type=int, default=4, help="jobs at once (4)")
    remote.add_argument("--name", help="this worker's name on the nodes page (host-pid)")
    token = add("token", help="make an API token and print the settings entry that admits it")
    token.add_argument("--name", required=True, help="who uses it (a creator's jobs are its own)")
    token.add_argument("--role", required=True, choices=settings_module.ROLES)
    db = add("db", help="the embedded server of this folder (status, stop); the indexes")
    db.add_argument("action", choices=["status", "stop", "indexes"])
    db.add_argument(
        "--create", action="store_true", help="indexes: build the missing ones, fix TTLs"
    )
    return top


WebMain = Callable[[app_module.App], int | None]


def main(
    argv: Sequence[str] | None = None, *, prog: str = "workers", web: WebMain | None = None
) -> int:
    """Entry point; returns the exit code. Every WorkersError becomes one line on stderr.

    An app's own `__main__` passes `web`, what its web mode does once booted.
    """
    args = parser(prog).parse_args(argv)
    setup_logging()
    try:
        return _dispatch(args, web or _report, prog)
    except WorkersError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 1


def _dispatch(args: argparse.Namespace, web: WebMain, prog: str) -> int:
    if args.command == "remote":  # no settings and no database: a URL and a token
        from workers import remote

        return remote.run(args)
    settings = settings_module.load(
        args.settings, mode="headless" if args.headless else None, types=args.types
    )
    _make_importable(settings)
    if args.command == "worker":  # supervisord's child: its parent said where settings came from
        return run_worker(settings)
    if args.command == "token":
        return _token(args.name, args.role)
    command = _COMMANDS.get(args.command)
    if command is not None:
        _say_settings(settings, prog, only_if_missing=args.command != "web")
        return command(args, settings)
    if settings.mode == "headless":
        registry.discover_checked(settings)  # broken jobs, schedules or limits stop startup
        _say_settings(settings, prog)
        return headless.run(settings)
    _say_settings(settings, prog)
    return _web(settings, web)


def _say_settings(settings: Settings, prog: str, *, only_if_missing: bool = False) -> None:
    """One line on stderr: the settings file in use, or that none was found (the defaults
    apply, and with them the embedded database in ./.workers/)."""
    if settings.source is None:
        looked = settings_module.settings_path()[0].resolve()
        print(f"{prog}: no settings file ({looked} not found): the defaults apply", file=sys.stderr)
    elif not only_if_missing:
        print(f"{prog}: settings from {settings.source}", file=sys.stderr)


def _make_importable(settings: Settings) -> None:
    """The jobs packages named in the settings live beside the settings file (or in the
    current folder): importable from there, as `celery -A` and `rq worker` do, whether
    this is the installed `workers` script or `python -m workers`."""
    for folder in (Path.cwd(), settings.base_dir):
        path = str(folder.resolve())
        if path not in sys.path:
            sys.path.insert(0, path)


def run_worker(settings: Settings) -> int:
    """One worker process: boot (waiting for the database), claim and run until TERM/INT.

    A second TERM/INT escalates to a hard shutdown. The process ends with
    os._exit: a job thread that never returned (see timeouts) must not keep it alive.
    """
    from workers.worker import Worker

    registry.require_jobs(settings)
    stop_requested = threading.Event()
    workers: list[Worker] = []

    def stop(signum: int, frame: FrameType | None) -> None:
        stop_requested.set()
        for worker in workers:
            worker.stop()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        app = _boot_when_reachable(settings, stop_requested)
        if app is None:
            return 0
        workers.append(Worker(app))
    except WorkersError as exc:  # bad settings, an index conflict: restarting cannot help
        if headless.report_boot_failure(f"a worker process could not boot: {exc}"):
            log.error("could not boot: %s", exc)
            return headless.EXIT_BOOT_FAILED
        raise
    code = 0 if stop_requested.is_set() else workers[0].run()
    app_module.shutdown()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _boot_when_reachable(settings: Settings, stop: threading.Event) -> app_module.App | None:
    """Boot, waiting out a database outage with backoff; None if stopped meanwhile."""
    backoff = Backoff(0.5, 10.0)
    while not stop.is_set():
        try:
            return app_module.boot(settings=settings)
        except DatabaseUnavailable as exc:
            delay = backoff.next()
            log.warning("database unavailable at startup, retrying in %.1f s: %s", delay, exc)
            stop.wait(delay)
    return None


def _web(settings: Settings, web: WebMain) -> int:
    app = app_module.boot(settings=settings)
    try:
        return web(app) or 0
    finally:
        app_module.shutdown()


def _report(app: app_module.App) -> int:
    """The generic web mode: booted (indexes ensured, jobs discovered); say so and exit."""
    print(
        f"web mode: {len(app.registry)} job classes ({', '.join(app.registry.types)}); "
        f"jobs by status: {app.store.count_by_status()}"
    )
    return 0


def _serve(
    settings: Settings, host: str | None, port: int | None, root_path: str, path: str | None
) -> int:
    try:
        from workers.web.server import run
    except ImportError as exc:
        raise WorkersError(
            f"workers web needs the web extra ({exc.name} is missing): "
            f"pip install '{DISTRIBUTION}[web]'"
        ) from None

    def tokens() -> list[TokenSettings]:
        """The tokens as the settings say now (file, WORKERS_* and _FILE variables): read
        again on SIGHUP, so a token removed or added takes effect without a restart."""
        return settings_module.load(path).web.tokens

    return run(settings, host, port, root_path, reload_tokens=tokens)


def _token(name: str, role: str) -> int:
    """A new token, shown once; only its SHA-256 goes into the settings."""
    from workers.web.auth import hash_token, new_token

    token = new_token()
    entry = {"name": name, "role": role, "sha256": hash_token(token)}
    print(f"token (shown once; send it as 'Authorization: Bearer <token>'): {token}")
    print(f"add to web.tokens in the settings: {json.dumps(entry)}")
    return 0


def _health(settings: Settings, seconds: float) -> int:
    """One line and 0 when well; one line naming what failed and 1 when not."""
    from workers.health import check

    health = check(settings, seconds)
    print(health.line if health.well else f"unhealthy: {health.line}")
    return 0 if health.well else 1


# How old the shared counts (the dashboard's and /metrics') may be for `workers status`:
# younger, it reads them (one document); older, it counts every job, and shares the count.
STATUS_COUNTS_AGE = 60.0


def _status(settings: Settings, as_json: bool) -> int:
    with app_module.connected(settings) as store:
        recent = store.recent_counts(STATUS_COUNTS_AGE)
        if recent is None:
            began = time.monotonic()
            recent = store.count_by_status_and_type(), 0.0
            store.save_counts(recent[0], time.monotonic() - began)
        pairs, age = recent
        by_type: dict[str, dict[str, int]] = {}
        for (status, job_type), n in pairs.items():
            by_type.setdefault(job_type, {})[status] = n
        now, lease = store.now(), settings.workers.queue.lease
        nodes = [_node_state(node, now, lease) for node in store.list_nodes()]
        unrun = health.without_node(by_type, store.live_types(lease))
    totals: dict[str, int] = {}
    for row in by_type.values():
        for status, n in row.items():
            totals[status] = totals.get(status, 0) + n
    if as_json:
        report = {"jobs": dict(sorted(totals.items())), "nodes": nodes, "without_node": unrun,
                  "counted_seconds_ago": round(age, 1)}  # fmt: skip
        print(json.dumps(report, default=str, sort_keys=True))
        return 0
    shown = ", ".join(f"{n} {status}" for status, n in sorted(totals.items()))
    print(f"jobs: {shown or 'none'}" + (f" (counted {age:.0f} s ago)" if age >= 1 else ""))
    for job_type, n in unrun.items():
        print(f"no live worker process runs {job_type}: its {n} job(s) to run wait for one")
    for node in nodes:
        print(
            f"node {node['id']} ({node['state']}): {node['busy']} threads busy, "
            f"runs {node['runs']}, last beat {node['last_beat']}"
        )
    if not nodes:
        print("no worker process has beaten: none is running (start one: workers --headless)")
    return 0


def _node_state(node: dict[str, Any], now: datetime, lease: float) -> dict[str, Any]:
    silent = (now - node["last_beat"]).total_seconds()
    return {
        "id": node["_id"],
        "state": f"silent for {silent:.0f} s" if silent > lease else node.get("state"),
        "busy": f"{len(node.get('running', []))}/{node.get('threads')}",
        "runs": runs(node),
        "last_beat": iso(node["last_beat"]),
    }


def runs(node: dict[str, Any]) -> str:
    """Which job types a worker process runs, as its heartbeat says."""
    types = [str(name) for name in node.get("types") or []]
    if not node.get("pool"):
        return f"every type ({len(types)})" if types else "every type"
    return ", ".join(types)


def _cron(settings: Settings) -> int:
    schedules = registry.discover(settings.jobs).schedules
    with app_module.connected(settings) as store:
        now = store.now()
        leader = store.leader()
        handled = store.schedule_states()
    if not schedules:
        print(f"no schedules: no job class in {settings.jobs} defines setup_cron")
        return 0
    if settings.workers.cron.disable:
        print("cron is disabled on this node (workers.cron.disable)")
    if leader and leader["expires"] > now:
        print(
            f"leader: {leader['owner']} since {iso(leader['since'])}, "
            f"lease until {iso(leader['expires'])}"
        )
    else:
        print("leader: none (no live worker process holds the cron lease)")
    for schedule in schedules:
        last = handled.get(schedule.id)
        print(
            f"{schedule.job_type}  {schedule.expression!r}  params={schedule.params}  "
            f"tz={schedule.timezone}  next={iso(schedule.next_after(now))}  "
            f"last={iso(last) if last else '-'}  missed={schedule.missed}"
        )
    return 0


def _indexes(settings: Settings, create: bool) -> int:
    """Every index the service needs and how it stands; 1 unless each is served."""
    with app_module.connected(settings) as store:
        # no time limit: on a primary an interrupted build is aborted, and starts again from
        # zero (mongo.index_build_timeout bounds a boot's builds)
        states = store.create_missing_indexes(None) if create else store.index_states()
        for state in states:
            print(state.line(store.namespace(state.spec)))
    return 0 if all(state.serving and state.state != "ttl" for state in states) else 1


def _db(settings: Settings, action: str) -> int:
    folder = settings.embedded_dir()
    if action == "stop":
        print("stopped" if embedded.stop(folder) else "not running")
        return 0
    state = embedded.status(folder)
    print(f"running: pid {state['pid']}, port {state['port']}" if state else "not running")
    return 0


# the commands that connect, by name: each takes the parsed arguments and the settings
_COMMANDS: dict[str, Callable[[argparse.Namespace, Settings], int]] = {
    "db": lambda a, s: _indexes(s, a.create) if a.action == "indexes" else _db(s, a.action),
    "status": lambda a, s: _status(s, a.json),
    "health": lambda a, s: _health(s, a.timeout),
    "cron": lambda a, s: _cron(s),
    "jobs": commands_module.run,
    "push": commands_module.run,
    "web": lambda a, s: _serve(s, a.host, a.port, a.root_path, a.settings),
}
