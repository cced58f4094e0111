"""A database to measure against: `MONGO_URL`, or a SecantusDB server of the bench's own."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from workers.embedded import keep_on_one_cpu


@contextlib.contextmanager
def database_url() -> Iterator[tuple[str, str]]:
    """(url, description); a server started here is stopped on exit and its folder removed.

    The server keeps its data in a folder, as the embedded default does, and not in
    `:memory:`. That test mode never checkpoints, and some 35,000 jobs into a run it starts
    spells in which the same operations cost the server 2.5x the CPU: drains of 5,000 ran at
    half speed at drains 6-7 and 10-11 of every run on one server (six runs, whatever the TTL
    sweep, oplog cap or idle time before). A 4 GB cache or a data folder (checkpoints every
    60 s) removed every spell in 12 drains, which points at WiredTiger evicting dirty pages
    on the server's one CPU."""
    if os.environ.get("MONGO_URL"):
        yield os.environ["MONGO_URL"], "MONGO_URL"
        return
    program = Path(sys.executable).parent / "secantusd-py"
    found = str(program) if program.exists() else shutil.which("secantusd-py")
    if not found:
        raise SystemExit("no MONGO_URL and no secantusd-py: pip install -e '.[embedded,bench]'")
    folder = tempfile.mkdtemp(prefix="workers-bench-server-")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen(
        [found, "--host", "127.0.0.1", "--port", str(port), "--storage-path", folder],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_listening(port)
        keep_on_one_cpu(process.pid)  # as the embedded default runs it
        yield f"mongodb://127.0.0.1:{port}/?directConnection=true", "SecantusDB (data folder)"
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        shutil.rmtree(folder, ignore_errors=True)


def _wait_listening(port: int) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        time.sleep(0.1)
    raise SystemExit(f"the bench server did not listen on port {port}")
