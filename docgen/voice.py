"""The docs speak to users: no issue numbers of ours, no first-person notes ("I measured").
The build fails on either (hooks.py), naming the page and the line."""

from __future__ import annotations

import re

_ISSUE = re.compile(r"\b[Ii]ssues? #?\d+|\(#\d+\)")
_FIRST_PERSON = re.compile(r"(?<![\w'`-])(I|I'm|I've|I'd|me|my)(?![\w'`-])")
_FENCE = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)
_CODE = re.compile(r"`[^`\n]*`")


def problems(markdown: str) -> list[str]:
    """Each line that names an issue or speaks in the first person, as `line N: text`.
    Code (fenced blocks, inline spans) is not prose and is not read."""
    prose = _FENCE.sub(lambda block: "\n" * block[0].count("\n"), markdown)
    found = []
    for number, line in enumerate(prose.splitlines(), start=1):
        text = _CODE.sub("", line)
        if _ISSUE.search(text) or _FIRST_PERSON.search(text):
            found.append(f"line {number}: {line.strip()}")
    return found
