"""The docs site: it builds in strict mode (a broken link or reference fails), its
references are generated from the code (every settings key and every command is on the
built pages), and the README stays a landing page."""

from __future__ import annotations

import html
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from mkdocs.exceptions import PluginError

from docgen import hooks, pages, voice
from docgen.references import commands, setting_keys
from tests.conftest import ROOT

pytestmark = pytest.mark.tooling


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    out = tmp_path_factory.mktemp("site")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    yield out


def page(site: Path, name: str) -> str:
    return html.unescape((site / name / "index.html").read_text())


@pytest.mark.processes
def test_every_settings_key_is_on_the_settings_page(site: Path) -> None:
    text = page(site, "settings")
    missing = [key for key, _ in setting_keys() if f"<code>{key}</code>" not in text]
    assert not missing, missing
    assert "WORKERS_WORKERS__QUEUE__LEASE" in text
    assert "collections are <prefix>.jobs" in text  # shown, not swallowed as a tag


@pytest.mark.processes
def test_every_command_and_option_is_on_the_command_line_page(site: Path) -> None:
    text = page(site, "cli")
    for path, parser in commands():
        assert f"<code>{path}</code>" in text, path
        for action in parser._actions:
            for option in action.option_strings:
                assert option in text, (path, option)


@pytest.mark.processes
def test_the_python_and_http_references_are_generated(site: Path) -> None:
    api = page(site, "api")
    for name in ("workers.Job.push", "workers.lifecycle.Pushed.result", "workers.app.wait"):
        assert f'id="{name}"' in api, name
    assert 'id="workers.errors.JobFailed"' in api
    http = page(site, "http-api")
    assert "<code>/api/jobs/{job_id}/{action}</code>" in http


def test_the_readme_is_a_landing_page_that_links_into_the_docs() -> None:
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 150
    assert readme.startswith("# workers\n\n```sh\nmake run")
    for link in ("docs/getting-started.md", "docs/settings.md", "docs/cli.md"):
        assert f"({link})" in readme and (ROOT / link).exists(), link


def test_the_generated_references_in_the_pages_are_current() -> None:
    # the pages read whole in the repository: `python -m docgen` (make docs) rewrites them
    assert pages.stale() == []
    text = (ROOT / "docs" / "settings.md").read_text()
    assert "collections are &lt;prefix>.jobs" in text  # not an HTML tag that hides it


def test_the_docs_build_refuses_an_issue_number_or_a_first_person_note() -> None:
    bad = "# A page\n\nAs issue 22 asked, I measured it twice.\n\nFine: `my_var`, (#1 in code)\n"
    assert voice.problems(bad) == ["line 3: As issue 22 asked, I measured it twice."]
    assert voice.problems("We speak to users.\n```\nI = 1  # my code\n```\n") == []

    class Page:
        class file:
            src_path = "bad.md"

    with pytest.raises(PluginError, match=r"bad.md speaks of our issues .*line 3"):
        hooks.on_page_markdown(bad, page=Page)


def test_every_page_of_the_docs_speaks_to_users() -> None:
    for path in [*sorted((ROOT / "docs").glob("*.md")), ROOT / "CHANGELOG.md"]:
        assert voice.problems(path.read_text()) == [], path
