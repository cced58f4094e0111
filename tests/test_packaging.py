"""The package as it is published: a wheel and an sdist built from the tree pass
`twine check`, the wheel holds the library alone (typed, no demo app) under its own
distribution name, and it runs from an empty folder with nothing of the checkout."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import ROOT
from workers.version import DISTRIBUTION, __version__

pytestmark = pytest.mark.tooling


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """`python -m build` on a copy of the tracked files (the build writes into its tree)."""
    tree = tmp_path_factory.mktemp("tree")
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    for name in listed:
        if (ROOT / name).is_file():
            (tree / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, tree / name)
    out = tmp_path_factory.mktemp("dist")
    built = subprocess.run(
        [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(tree)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert built.returncode == 0, built.stdout[-2000:] + built.stderr[-2000:]
    yield out


def wheel_of(dist: Path) -> Path:
    (wheel,) = dist.glob("*.whl")
    return wheel


@pytest.mark.processes
def test_twine_passes_the_wheel_and_the_sdist(dist: Path) -> None:
    files = sorted(str(path) for path in dist.iterdir())
    assert len(files) == 2, files
    checked = subprocess.run(
        [sys.executable, "-m", "twine", "check", "--strict", *files],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr


@pytest.mark.processes
def test_the_wheel_holds_the_typed_library_alone_under_its_own_name(dist: Path) -> None:
    wheel = wheel_of(dist)
    assert wheel.name == f"mongo_workers-{__version__}-py3-none-any.whl"
    names = zipfile.ZipFile(wheel).namelist()
    assert "workers/py.typed" in names
    assert "workers/web/templates/overview.html" in names
    tops = {name.split("/")[0] for name in names if not name.split("/")[0].endswith(".dist-info")}
    assert tops == {"workers"}, tops  # no app_jobs, no tests, no bench
    metadata = zipfile.ZipFile(wheel).read(f"mongo_workers-{__version__}.dist-info/METADATA")
    assert f"Name: {DISTRIBUTION}\n" in metadata.decode()
    assert f"Version: {__version__}\n" in metadata.decode()


@pytest.mark.processes
def test_the_wheel_runs_from_an_empty_folder_without_the_checkout(
    dist: Path, tmp_path: Path
) -> None:
    target = tmp_path / "installed"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target),
         str(wheel_of(dist))],
        check=True, timeout=120,
    )  # fmt: skip
    empty = tmp_path / "empty"
    empty.mkdir()
    probe = (
        "import sys, importlib.util\n"
        f"sys.path.insert(0, {str(target)!r})\n"
        "import workers\n"
        "print(workers.__file__)\n"
        "print(importlib.util.find_spec('app_jobs'))\n"
        "from workers.settings import Settings\n"
        "print(Settings().jobs)\n"
    )
    ran = subprocess.run(
        [sys.executable, "-c", probe], cwd=empty, capture_output=True, text=True, timeout=60
    )
    assert ran.returncode == 0, ran.stderr
    where, demo, jobs = ran.stdout.splitlines()
    assert where.startswith(str(target))
    assert demo == "None"  # the demo package is not installed
    assert jobs == "[]"


def test_every_install_hint_names_the_distribution() -> None:
    """`pip install 'workers[...]'` would install an unrelated 2011 package."""
    wrong = []
    for path in (ROOT / "workers").rglob("*.py"):
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if re.search(r"pip install ['\"]?workers\[", line):
                wrong.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    for path in [ROOT / "README.md", *(ROOT / "docs").glob("*.md")]:
        if re.search(r"pip install ['\"]?workers\[", path.read_text()):
            wrong.append(str(path.relative_to(ROOT)))
    assert not wrong, wrong
    assert DISTRIBUTION == "mongo-workers"
