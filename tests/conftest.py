"""A real Mongo-wire server (SecantusDB, as a separate process) for the whole session,
and a fresh database for every test, dropped after.

`make test TEST_MONGO_URL=mongodb://...` runs the suite against that server instead (a
MongoDB replica set in CI's mongodb workflow). Never `MONGO_URL`: a developer's shell may
point it at a real database. Against it, the tests that must start, stop or kill a server
of their own are skipped, each saying why (`needs_own_server`)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pymongo
import pytest
from hypothesis import settings as hypothesis_settings

import workers
from workers import embedded, overrides
from workers.app import App
from workers.settings import Settings, validate

ROOT = Path(__file__).resolve().parent.parent
TEST_MONGO_URL = os.environ.get("TEST_MONGO_URL") or None
OWN_SERVER_REASON = (
    "restarts or kills a database server of its own, which a server given by "
    "TEST_MONGO_URL cannot be"
)

# A shell's WORKERS_<SECTION>__<KEY> overrides would change every test's settings (and its
# children's): the tests set the ones they mean.
for _name in [name for name in os.environ if overrides.is_override(Settings, name)]:
    del os.environ[_name]

# HYPOTHESIS_PROFILE=fuzz for a long fuzzing run; the default keeps the suite quick.
hypothesis_settings.register_profile("default", max_examples=60, deadline=None)
hypothesis_settings.register_profile("fuzz", max_examples=2000, deadline=None)
hypothesis_settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))


# The heaviest tests (measured with --durations=0 on 2 cores), each starting many processes:
# pytest-xdist's worksteal (the Makefile's) hands each test process an equal run of the
# collection, and an idle one takes the back half of the longest queue. The heaviest go at
# the head of the first two runs, so that at most two of them run at once on two cores (four
# at once took half again as long each), and the rest are dealt in turn. In file order, with
# xdist's `load`, a long test collected last ran on while the others sat idle.
HEAVIEST = (
    "test_remote_far.py",
    "test_faults.py::test_ten_random_kills",
    "test_cron.py::test_three_nodes",
    "test_retention.py::test_finished_jobs_expire",
    "test_faults.py::test_a_database_restart",
    "test_plans_at_scale.py",
    "test_rolling_deploy.py",
    "test_at_scale.py",
    "test_bulk.py::test_an_action_on_a_thousand",
    "test_web_schema.py::test_every_operation",
    "test_faults.py::test_kill_9_during_long_jobs",
)
HEAVY_AT_ONCE = 2


def _heaviness(item: pytest.Item) -> int:
    """The place in HEAVIEST, then the other slow tests, then the rest."""
    for place, name in enumerate(HEAVIEST):
        if name in item.nodeid:
            return place
    return len(HEAVIEST) + (0 if item.get_closest_marker("slow") else 1)


@pytest.hookimpl(trylast=True)  # after -m and -k deselected theirs: the runs are of the rest
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The collection as the test processes' runs, one after another (a stable order:
    every process collects the same, as xdist requires)."""
    items.sort(key=_heaviness)
    processes = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if processes < 2:
        return
    sizes, left = [], len(items)
    for share in range(processes):  # worksteal's: len // processes, the extra ones last
        sizes.append(left // (processes - share))
        left -= sizes[-1]
    runs: list[list[pytest.Item]] = [[] for _ in sizes]
    heavy = [item for item in items if _heaviness(item) < len(HEAVIEST)]
    lanes = min(HEAVY_AT_ONCE, processes)
    for place, item in enumerate(heavy):
        runs[place % lanes].append(item)
    turn = 0
    for item in items[len(heavy) :]:
        while len(runs[turn % processes]) >= sizes[turn % processes]:
            turn += 1
        runs[turn % processes].append(item)
        turn += 1
    items[:] = [item for run in runs for item in run]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def start_server(port: int, storage: str) -> subprocess.Popen[bytes]:
    program = Path(sys.executable).parent / "secantusd-py"
    process = subprocess.Popen(
        [str(program), "--host", "127.0.0.1", "--port", str(port), "--storage-path", storage],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_for(lambda: listening(port), timeout=30, what=f"the test server on port {port}")
    return process


def stop_server(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), 0.5):
            return True
    except OSError:
        return False


def wait_for(
    condition: Callable[[], Any], *, timeout: float, what: str, every: float = 0.05
) -> Any:
    """Poll `condition` until it is truthy; fail the test naming `what` at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(every)


def needs_own_server() -> None:
    """Skip the calling test under TEST_MONGO_URL: it must restart or kill its server."""
    if TEST_MONGO_URL:
        pytest.skip(OWN_SERVER_REASON)


@contextlib.contextmanager
def own_server() -> Iterator[str]:
    """The URL of a new in-memory test server, stopped on exit; under TEST_MONGO_URL, that
    server (its tests keep to databases of their own)."""
    if TEST_MONGO_URL:
        yield TEST_MONGO_URL
        return
    port = free_port()
    process = start_server(port, ":memory:")
    try:
        yield f"mongodb://127.0.0.1:{port}/?directConnection=true"
    finally:
        stop_server(process)


@pytest.fixture(scope="session", autouse=True)
def no_embedded_server_left(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """A CLI command leaves the embedded server it started running for the next command:
    the ones the tests' commands left in their folders are stopped at the end."""
    yield
    for state in tmp_path_factory.getbasetemp().glob("**/.workers/db/server.json"):
        embedded.stop(state.parent)


@pytest.fixture(scope="session")
def mongo_url() -> Iterator[str]:
    with own_server() as url:
        yield url


@pytest.fixture
def db_name() -> str:
    return f"t_{uuid.uuid4().hex[:12]}"


@pytest.fixture
def client(mongo_url: str) -> Iterator[pymongo.MongoClient[dict[str, Any]]]:
    with pymongo.MongoClient(mongo_url, tz_aware=True, maxPoolSize=4) as raw:
        yield raw


@pytest.fixture
def db(client: pymongo.MongoClient[dict[str, Any]], db_name: str) -> Iterator[Any]:
    yield client[db_name]
    client.drop_database(db_name)


@pytest.fixture
def restartable_server(
    tmp_path: Path,
) -> Iterator[tuple[str, Callable[[], None], Callable[[], None]]]:
    """A server of its own (on disk, fixed port) that the test can stop and start again."""
    needs_own_server()
    port = free_port()
    storage = str(tmp_path / "db")
    state: dict[str, Any] = {"process": start_server(port, storage)}

    def stop() -> None:
        stop_server(state["process"])

    def start() -> None:
        state["process"] = start_server(port, storage)

    yield f"mongodb://127.0.0.1:{port}/?directConnection=true", stop, start
    stop_server(state["process"])


def settings_dict(mongo_url: str, db_name: str, **overrides: Any) -> dict[str, Any]:
    """Test settings: our test jobs, small pools, fast polling."""
    raw: dict[str, Any] = {
        "mongo": {"url": mongo_url, "database": db_name, "pool_size": 4, "timeout": 5},
        "jobs": ["tests.jobs"],
        "cluster": {"count": 1},
        "workers": {"count": 2, "queue": {"poll_interval": 0.05, "lease": 5}},
    }
    for dotted, value in overrides.items():
        section = raw
        *parents, last = dotted.split("__")
        for key in parents:
            section = section.setdefault(key, {})
        section[last] = value
    return raw


@pytest.fixture
def make_settings(mongo_url: str, db_name: str, db: Any) -> Callable[..., Settings]:
    def make(**overrides: Any) -> Settings:
        return validate(settings_dict(mongo_url, db_name, **overrides))

    return make


@pytest.fixture
def app(make_settings: Callable[..., Settings]) -> Iterator[App]:
    booted = workers.boot(settings=make_settings())
    yield booted
    workers.shutdown()


@pytest.fixture
def settings_file(tmp_path: Path, mongo_url: str, db_name: str, db: Any) -> Callable[..., Path]:
    def write(**overrides: Any) -> Path:
        path = tmp_path / "settings.json"
        path.write_text(json.dumps(settings_dict(mongo_url, db_name, **overrides)))
        return path

    return write


def workers_env(**extra: str) -> dict[str, str]:
    """The environment of a child `workers` process: our packages importable, no stray settings."""
    env = {k: v for k, v in os.environ.items() if k not in ("MONGO_URL", "WORKERS_SETTINGS")}
    env["PYTHONPATH"] = str(ROOT)
    env.update(extra)
    return env


def workers_command(*args: str) -> list[str]:
    script = Path(sys.executable).parent / "workers"
    return [str(script) if script.exists() else shutil.which("workers") or "workers", *args]


def run_workers(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run the `workers` script to completion, as a user would from `cwd`."""
    return run_command(workers_command(*args), cwd=cwd)


def run_command(
    command: list[str], *, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command, cwd=cwd, env=env or workers_env(), capture_output=True, text=True, timeout=90
    )
