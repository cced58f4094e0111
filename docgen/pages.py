"""The pages that hold a generated reference, and their content made afresh."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

from docgen import references

DOCS = references.ROOT / "docs"
MAKERS: dict[str, Callable[[], str]] = {
    "settings": references.settings_reference,
    "cli": references.cli_reference,
    "http": references.http_reference,
}
_BLOCK = re.compile(
    r"^<!-- generated: ([a-z-]+) -->\n.*?^<!-- end generated: \1 -->$", re.MULTILINE | re.DOTALL
)


def fresh(text: str) -> str:
    """The page with each generated block made again from the code."""

    def made(found: re.Match[str]) -> str:
        name = found[1]
        body = MAKERS[name]().rstrip("\n")
        return f"<!-- generated: {name} -->\n{body}\n<!-- end generated: {name} -->"

    return _BLOCK.sub(made, text)


def _pages() -> list[Path]:
    return [path for path in sorted(DOCS.glob("*.md")) if _BLOCK.search(path.read_text())]


def stale() -> list[Path]:
    """The pages whose generated blocks differ from what the code makes now."""
    return [path for path in _pages() if fresh(path.read_text()) != path.read_text()]


def write() -> list[Path]:
    """Rewrite the stale pages; returns them."""
    changed = stale()
    for path in changed:
        path.write_text(fresh(path.read_text()))
    return changed
