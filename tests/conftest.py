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


# The heaviest tests first (measured with --durations=0 on 2 cores), one at the head of each
# test process's share: pytest-xdist's worksteal (the Makefile's) hands each process an
# equal run of the collection, and idle ones take the back half of the longest queue. In
# file order, a long test collected last ran on while the others sat idle (the parallel
# part: 389 s of tests over 4 processes took 470 s; dealt this way, 330 s took 360 s).
HEAVIEST_FIRST = (
    "test_plans_at_scale.py",
    "test_remote_far.py",
    "test_faults.py",
    "test_cron.py::test_three_nodes",
    "test_bulk.py::test_an_action_on_a_thousand",
    "test_web_schema.py::test_every_operation",
    "test_retention.py::test_finished_jobs_expire",
    "test_rolling_deploy.py",
)


@pytest.hookimpl(trylast=True)  # after -m and -k deselected theirs: the shares are of the rest
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The heaviest first, in that order, then the other slow tests, then the rest, in file
    order (a stable sort: every test process collects the same order, as xdist requires),
    dealt in turn to the test processes' shares."""

    def rank(item: pytest.Item) -> int:
        for place, name in enumerate(HEAVIEST_FIRST):
            if name in item.nodeid:
                return place
        return len(HEAVIEST_FIRST) + (0 if item.get_closest_marker("slow") else 1)

    items.sort(key=rank)
    processes = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    # worksteal's shares grow by one towards the last (len // processes left): the dealt
    # runs grow towards the first, so they go in reverse
    dealt = [items[share::processes] for share in reversed(range(processes))]
    items[:] = [item for run in dealt for item in run]


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
