"""Remote workers in the benchmark: `workers remote` processes that work through one
`workers web` over HTTP, against the same drain by a local headless tree, in turns; and
the pickup of a job pushed while a remote worker waits in `POST /api/work`."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from bench.measure import (
    ROOT,
    _drained,
    _finished,
    _push_due_after_the_push,
    _wait,
    booted,
    pushed_apart,
    settings,
)
from workers.web.auth import hash_token

_TOKEN = "bench-remote-worker-token"
_SETTLE = 2.0


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def remote_service(url: str, database: str, processes: int, threads: int) -> Iterator[str]:
    """`workers web` on a free port and `processes` x `workers remote --threads threads`
    working `NoopJob` through it with a worker token, as users run them; TERM on exit."""
    folder = Path(tempfile.mkdtemp(prefix="workers-bench-remote-"))
    raw = settings(url, database)
    raw["web"] = {"tokens": [{"name": "bench", "role": "worker", "sha256": hash_token(_TOKEN)}]}
    (folder / "settings.json").write_text(json.dumps(raw))
    (folder / "token").write_text(_TOKEN + "\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("MONGO_URL", None)
    port = _free_port()
    web_url = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "workers"]
    started = [subprocess.Popen([*command, "web", "--settings", "settings.json", "--port",
                                 str(port)], cwd=folder, env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)]  # fmt: skip
    try:
        _wait(lambda: _answers(f"{web_url}/healthz"), 60, every=0.2)
        for n in range(processes):
            started.append(subprocess.Popen(
                [*command, "remote", "--url", web_url, "--token-file", "token", "--jobs",
                 "bench.jobs", "--types", "NoopJob", "--threads", str(threads),
                 "--name", f"bench-{n}"],
                cwd=folder, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            ))  # fmt: skip
        yield web_url
    finally:
        for process in reversed(started):
            process.send_signal(signal.SIGTERM)
        for process in started:
            process.wait(timeout=60)


def _answers(address: str) -> bool:
    try:
        with urllib.request.urlopen(address, timeout=2):
            return True
    except OSError:
        return False


def _remote_nodes(app: object, count: int) -> bool:
    nodes = app.store.list_nodes()  # type: ignore[attr-defined]
    return sum(str(node["_id"]).startswith("remote:") for node in nodes) >= count


def throughput(url: str, processes: int, threads: int, backlog: int, window: int) -> float:
    """Completed jobs/s over the first `window` of `backlog` no-op jobs due at one instant,
    by the server's clock (as `measure.throughput` for a local tree)."""
    with booted(url) as app, remote_service(url, app.store.db.name, processes, threads):
        _wait(lambda: _remote_nodes(app, processes), 60, every=0.2)
        time.sleep(_SETTLE)
        due, ids = _push_due_after_the_push(app, backlog)
        _wait(lambda: _drained(app, ids, 0) >= window, 600)
        finished = sorted(_finished(app, ids))
        return float(window / (finished[window - 1] - due).total_seconds())


def pickup(url: str, count: int = 100, gap: float = 0.05) -> dict[str, float]:
    """Push -> start latency (ms, the server's clock) of jobs pushed one at a time while a
    1 x 4 remote worker waits for work in a long poll."""
    with booted(url) as app, remote_service(url, app.store.db.name, 1, 4):
        _wait(lambda: _remote_nodes(app, 1), 60, every=0.2)
        time.sleep(_SETTLE)
        return pushed_apart(app, count, gap)
