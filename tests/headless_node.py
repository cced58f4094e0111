"""A headless node (`workers --headless` and its supervisord tree) as a test helper."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from pathlib import Path
from types import TracebackType

from tests.conftest import workers_command, workers_env
from workers.headless import child_pids


class HeadlessNode:
    """Starts `workers --headless`; on exit makes sure the whole process tree is gone."""

    def __init__(
        self,
        settings: Path,
        cwd: Path,
        *command: str,
        env: dict[str, str] | None = None,
        log_dir: Path | None = None,
    ):
        self.log_path = (log_dir or cwd) / f"headless-{os.urandom(3).hex()}.log"
        self.command = list(command) or workers_command("--headless", "--settings", str(settings))
        self.cwd = cwd
        self.env = env or workers_env()
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> HeadlessNode:
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                self.command,
                cwd=self.cwd,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return self

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        assert self.process is not None
        self.process.send_signal(sig)
        return self.process.wait(timeout=timeout)

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=60)
        with contextlib.suppress(ProcessLookupError):  # anything left of the tree
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # read, don't check-then-read: the process may be reaped in between
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state != "Z"


def descendants(pid: int) -> list[int]:
    """Every live process below `pid` (read from /proc, tolerant of processes vanishing)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def supervisord_of(pid: int) -> int:
    """The supervisord child of a `workers --headless` process: found by its command line,
    since the same process may also be the parent of the embedded server it started."""
    found = []
    for child in child_pids(pid):
        try:
            argv = Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue  # gone meanwhile
        if any(arg.endswith(b"supervisord") for arg in argv):
            found.append(child)
    assert len(found) == 1, f"expected one supervisord below {pid}, found {found}"
    return found[0]
