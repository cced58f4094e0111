"""MkDocs hooks (mkdocs.yml `hooks:`): a page's `<!-- generated: NAME -->` line is
replaced by that reference, made from the code as the site is built."""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # mkdocs loads this file alone

from docgen import references

_MARK = re.compile(r"^<!-- generated: ([a-z-]+) -->$", re.MULTILINE)
_MAKERS = {
    "settings": references.settings_reference,
    "cli": references.cli_reference,
    "http": references.http_reference,
}


def on_page_markdown(markdown: str, **_: Any) -> str:
    return _MARK.sub(lambda found: _MAKERS[found[1]](), markdown)
