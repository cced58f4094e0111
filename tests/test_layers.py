"""The shape DESIGN.md agrees on, checked on the source: the modules import each other in
one direction (no circles, even for type hints or inside functions), and only the store
package talks to pymongo."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "workers"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[str]:
    """Every module named by an import anywhere in the file (functions and TYPE_CHECKING too)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    edges = {}
    for name, path in modules.items():
        if name == "workers":  # the package's face re-exports; it imports, nothing imports it
            continue
        edges[name] = {m for m in imports(path) if m in modules and m not in (name, "workers")}
    return edges


def test_the_modules_import_each_other_in_one_direction() -> None:
    edges = graph()
    state: dict[str, str] = {}
    circles: list[list[str]] = []

    def visit(node: str, trail: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == "open":
                circles.append([*trail[trail.index(nxt) :], nxt] if nxt in trail else [node, nxt])
            elif nxt not in state:
                visit(nxt, [*trail, nxt])
        state[node] = "done"

    for node in sorted(edges):
        if node not in state:
            visit(node, [node])
    assert not circles, f"import circles: {[' -> '.join(c) for c in circles]}"


def test_only_the_store_package_talks_to_pymongo() -> None:
    users = sorted(
        module_name(path)
        for path in PACKAGE.rglob("*.py")
        if any(m == "pymongo" or m.startswith("pymongo.") for m in imports(path))
        and not module_name(path).startswith("workers.store")
    )
    assert users == []


def test_the_fast_layer_leaves_out_the_browser_tests() -> None:
    """make check's selection collects none of them (a second `pytestmark =` once dropped
    the mark, and the fast layer drove Chromium for 30 s)."""
    import subprocess
    import sys

    fast = "not slow and not tooling and not browser"
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
         "-m", fast, "tests/test_web_browser.py"],
        cwd=PACKAGE.parent, capture_output=True, text=True,
    )  # fmt: skip
    assert "test_web_browser.py::" not in done.stdout, done.stdout
    assert "deselected" in done.stdout, done.stdout + done.stderr
