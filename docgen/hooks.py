"""MkDocs hooks (mkdocs.yml `hooks:`): a page that names an issue or speaks in the first
person fails the build (voice.py)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from mkdocs.exceptions import PluginError

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # mkdocs loads this file alone

from docgen import voice


def on_page_markdown(markdown: str, page: Any, **_: Any) -> str:
    found = voice.problems(markdown)
    if found:
        raise PluginError(
            f"{page.file.src_path} speaks of our issues or in the first person (the docs "
            f"speak to users): {'; '.join(found[:5])}"
        )
    return markdown
