"""What a job's own text may do on a terminal or in a log: nothing. Log lines, errors,
tracebacks and types are stored as their job wrote them, and a byte like ESC in them would
recolor, move or clear a terminal that shows them (`workers jobs show`, the worker's log
read with `less -R` or `tail`), or a line break would forge a log line of its own."""

from __future__ import annotations

import re
import textwrap

# C0 controls but tab and line feed, DEL and C1 controls (CSI is 0x9b)
_CONTROLS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
# the same, and every line break (one log record is one line)
_CONTROLS_AND_BREAKS = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029]")


def _escaped(found: re.Match[str]) -> str:
    return found.group().encode("unicode_escape").decode("ascii")


def printable(text: object, *, lines: bool = False) -> str:
    """`text` with its control characters written as escapes (ESC as `\\x1b`); with
    `lines`, tabs and line feeds stay (a traceback), otherwise they are escaped too."""
    pattern = _CONTROLS if lines else _CONTROLS_AND_BREAKS
    return pattern.sub(_escaped, str(text))


def block(text: object, indent: str = "  ") -> str:
    """Lines of a job's text (a traceback) as a block: control characters escaped, and
    every line indented, so that none of them can pass for a line of its own (a log
    record, a field of `workers jobs show`)."""
    return textwrap.indent(printable(text, lines=True), indent, lambda line: True)
