"""A database to measure against: `MONGO_URL`, or a SecantusDB server of the bench's own."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from workers.embedded import keep_on_one_cpu


@contextlib.contextmanager
def database_url() -> Iterator[tuple[str, str]]:
    """(url, description); a server started here is stopped on exit."""
    if os.environ.get("MONGO_URL"):
        yield os.environ["MONGO_URL"], "MONGO_URL"
        return
    program = Path(sys.executable).parent / "secantusd-py"
    found = str(program) if program.exists() else shutil.which("secantusd-py")
    if not found:
        raise SystemExit("no MONGO_URL and no secantusd-py: pip install -e '.[embedded,bench]'")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen(
        [found, "--host", "127.0.0.1", "--port", str(port), "--storage-path", ":memory:"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_listening(port)
        keep_on_one_cpu(process.pid)  # as the embedded default runs it
        yield f"mongodb://127.0.0.1:{port}/?directConnection=true", "SecantusDB (:memory:)"
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _wait_listening(port: int) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        time.sleep(0.1)
    raise SystemExit(f"the bench server did not listen on port {port}")
