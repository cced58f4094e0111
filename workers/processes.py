"""Is a process alive, and which program is it? What the embedded server's bookkeeping and
`workers health` ask of a pid read from a file or the database (it may since belong to
another program)."""

from __future__ import annotations

import os
from pathlib import Path


def alive(pid: int) -> bool:
    """Running (a zombie is not); reaps it first if it is our own exited child."""
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done:
            return False
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # alive, as another user
    return not _zombie(pid)


def command_line(pid: int) -> list[bytes] | None:
    """Its arguments, or None where they cannot be read (no /proc: not Linux)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return None


def _zombie(pid: int) -> bool:
    """Exited but not yet reaped by its parent."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return False
