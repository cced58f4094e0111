"""A job's own text (log lines, errors, tracebacks, its type) reaches a terminal and the
worker's log with its control characters escaped: it cannot recolor, move or clear the
terminal, nor forge a log line."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import run_workers
from workers.cli import StructuredFormatter
from workers.terminal import block, printable

HOSTILE = "done\x1b[2J\x1b]0;owned\x07\rline\x9b31m\nFAKE ERROR forged"


def test_control_characters_become_escapes_and_lines_stay_only_where_asked() -> None:
    assert printable(HOSTILE) == (
        "done\\x1b[2J\\x1b]0;owned\\x07\\rline\\x9b31m\\nFAKE ERROR forged"
    )
    assert printable("a\tb\nc\x1bd", lines=True) == "a\tb\nc\\x1bd"
    assert printable("naïve — ünïcode ✓") == "naïve — ünïcode ✓"
    assert block("Traceback:\n  frame\x1b\nFAKE", "  ") == "  Traceback:\n    frame\\x1b\n  FAKE"


def test_a_log_record_is_one_line_whatever_the_job_wrote() -> None:
    formatter = StructuredFormatter("%(levelname)s %(message)s")
    record = logging.makeLogRecord(
        {"msg": "job failed: %s", "args": (HOSTILE,), "levelname": "ERROR", "job_id": "j\x1b1"}
    )
    try:
        raise ValueError(HOSTILE)
    except ValueError:
        record.exc_info = sys.exc_info()

    line = formatter.format(record)

    first, *traceback = line.split("\n")
    assert "\x1b" not in line and "\x9b" not in line and "\r" not in line
    assert first.startswith("ERROR job failed: done\\x1b[2J") and "FAKE ERROR" in first
    assert traceback and all(part.startswith("  ") for part in traceback), traceback
    assert 'job_id="j\\u001b1"' in line  # the extras are JSON


@pytest.mark.slow
@pytest.mark.processes
def test_workers_jobs_show_prints_a_jobs_text_escaped(
    settings_file: Callable[..., Path], db: Any, app: Any
) -> None:
    import workers

    job_id = workers.push_named("RecordJob", {}, delay=3600)
    entry = {"message": HOSTILE, "level": "info\x1b[31m"}
    error = {"type": "Bad\x1bType", "message": HOSTILE, "traceback": f"Traceback:\n  {HOSTILE}"}
    db["workers.jobs"].update_one({"_id": job_id}, {"$set": {"log": [entry], "error": error}})
    settings = settings_file()

    shown = run_workers("jobs", "show", job_id, "--settings", str(settings), cwd=settings.parent)
    listed = run_workers("jobs", "ls", "--settings", str(settings), cwd=settings.parent)

    assert shown.returncode == 0, shown.stderr
    for out in (shown.stdout, listed.stdout):
        assert "\x1b" not in out and "\x07" not in out and "\r" not in out and "\x9b" not in out
    assert "done\\x1b[2J" in shown.stdout and "Bad\\x1bType" in shown.stdout
    assert "FAKE ERROR forged" in shown.stdout
    assert not any(line.startswith("FAKE") for line in shown.stdout.splitlines())
