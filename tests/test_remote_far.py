"""Remote workers as they are deployed: on a host with no route to the database, and beside
a local node through a frozen worker, a killed one and a restart of `workers web`.

What ran is counted where no report can hide it: CountedJob notes every start and end in a
file of its process (tests/remotejobs), and the database says which attempt's outcome it
kept. Every job must complete once; an end the notes show beyond that must be an attempt
whose lease had moved on, and its late `done` refused (409).
"""

from __future__ import annotations

import collections
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest
from pymongo.uri_parser import parse_uri

import workers
from tests.conftest import free_port, wait_for, workers_command, workers_env
from tests.headless_node import HeadlessNode
from tests.netns import Network, unusable
from tests.remotejobs import OUT_ENV, CountedJob, notes
from tests.web_support import bearer, token_of, token_settings
from workers import Job
from workers.app import App
from workers.settings import Settings

pytestmark = [pytest.mark.processes, pytest.mark.slow]
# longer than a restart of workers web takes on a busy machine: a remote worker that cannot
# beat for longer loses its jobs to a rescue (rightly), and its ends are then refused
LEASE = 15.0


class Web:
    """`workers web` on `host:port`, which the test can restart on the same address."""

    def __init__(self, settings: Path, host: str, port: int, cwd: Path) -> None:
        self.settings, self.host, self.port, self.cwd = settings, host, port, cwd
        self.url = f"http://{host}:{port}"
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> None:
        self.starts += 1
        command = workers_command(
            "web", "--settings", str(self.settings), "--host", self.host, "--port", str(self.port)
        )
        with (self.cwd / f"web-{self.starts}.log").open("wb") as log:
            self.process = subprocess.Popen(
                command, cwd=self.cwd, env=workers_env(), stdout=log, stderr=subprocess.STDOUT
            )
        wait_for(self._answers, timeout=60, what=f"workers web at {self.url}")

    def _answers(self) -> bool:
        try:
            return httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=30)


@pytest.fixture
def remote_settings(
    settings_file: Callable[..., Path], make_settings: Callable[..., Settings]
) -> Iterator[tuple[Path, App]]:
    """A settings file for the web process (and a local node), and an app on the same
    database for the test to push and look."""
    overrides: dict[str, Any] = {
        "web__tokens": token_settings(),
        "workers__queue": {"poll_interval": 0.5, "lease": LEASE},
        "jobs": ["tests.remotejobs"],
        "cluster__count": 1,
        "workers__count": 2,
    }
    path = settings_file(**overrides)
    app = workers.boot(settings=make_settings(**overrides))
    try:
        yield path, app
    finally:
        workers.shutdown()


def remote_command(url: str, tmp_path: Path, name: str, threads: int) -> list[str]:
    token_file = tmp_path / f"{name}.token"
    token_file.write_text(token_of("worker") + "\n")
    return workers_command(
        "remote", "--url", url, "--token-file", str(token_file), "--jobs", "tests.remotejobs",
        "--types", "CountedJob", "--threads", str(threads), "--name", name,
    )  # fmt: skip


def start(command: list[str], tmp_path: Path, name: str, out: Path) -> subprocess.Popen[bytes]:
    env = workers_env(**{OUT_ENV: str(out)})
    env = {k: v for k, v in env.items() if not k.startswith("WORKERS_REMOTE")}
    with (tmp_path / f"{name}.log").open("wb") as log:
        return subprocess.Popen(command, cwd=tmp_path, env=env, stdout=log, stderr=log)


def completed(app: App, ids: Sequence[str]) -> int:
    """How many jobs completed (the test's database holds only `ids`): a cheap look, as the
    test looks every half second while the server is kept busy."""
    return app.store.jobs.count_documents({"status": "completed"})


def in_flight(out: Path, pid: int) -> dict[str, str]:
    """The jobs the process `pid` started and did not end, by its notes: id -> lease token."""
    counts: collections.Counter[str] = collections.Counter()
    tokens: dict[str, str] = {}
    for note in notes(str(out)):
        if note.pid == pid:
            counts[note.job_id] += 1 if note.event == "start" else -1
            tokens[note.job_id] = note.token
    return {job_id: tokens[job_id] for job_id, open_ in counts.items() if open_ > 0}


def hold_still(process: subprocess.Popen[bytes], out: Path) -> dict[str, str]:
    """Freeze `process` (SIGSTOP) in the middle of a job; the jobs it is running then (id ->
    the lease token it holds each by)."""
    for _ in range(200):
        process.send_signal(signal.SIGSTOP)
        time.sleep(0.05)  # the signal is delivered: its notes no longer change
        held = in_flight(out, process.pid)
        if held:
            return held
        process.send_signal(signal.SIGCONT)
        time.sleep(0.02)
    raise AssertionError(f"process {process.pid} never held a job")


# -- no route to the database ---------------------------------------------------------------

NETNS = unusable()


def refused(network: Network, address: str, port: int) -> bool:
    """True when a TCP connection from the host namespace to address:port fails."""
    probe = (
        "import socket,sys\n"
        "try: socket.create_connection((sys.argv[1], int(sys.argv[2])), 2)\n"
        "except OSError: sys.exit(0)\n"
        "sys.exit(1)"
    )
    command = [sys.executable, "-c", probe, address, str(port)]
    return subprocess.run(network.command_in(network.hosts[0], "far", command)).returncode == 0


@pytest.mark.skipif(NETNS is not None, reason=f"network namespaces: {NETNS}")
def test_a_remote_worker_with_no_route_to_the_database_runs_500_jobs(
    remote_settings: tuple[Path, App], mongo_url: str, tmp_path: Path
) -> None:
    path, app = remote_settings
    out = tmp_path / "notes"
    out.mkdir()
    ((_, database_port),) = parse_uri(mongo_url)["nodelist"]
    with Network(hosts=1) as network:
        # Given workers web on the test's address on the bridge, and a host namespace that
        # reaches it, and not the database (on the test's loopback)
        web = Web(path, network.address(2), free_port(), tmp_path)
        web.start()
        try:
            assert refused(network, "127.0.0.1", database_port)
            assert refused(network, network.address(2), database_port)
            ids = Job.push_many([CountedJob(seconds=0.01) for _ in range(500)])
            # When a remote worker on that host runs them with its token alone
            command = remote_command(web.url, tmp_path, "far", threads=4)
            worker = start(network.command_in(network.hosts[0], "far", command), tmp_path,
                           "far", out)  # fmt: skip
            try:
                wait_for(
                    lambda: completed(app, ids) == 500, timeout=180, what="500 jobs", every=0.5
                )
            finally:
                worker.send_signal(signal.SIGTERM)
                worker.wait(timeout=60)
            # Then the dashboard shows their progress and logs
            page = httpx.get(f"{web.url}/jobs/{ids[-1]}", headers=bearer("viewer"), timeout=10)
        finally:
            web.stop()
    assert worker.returncode == 0, (tmp_path / "far.log").read_text()
    assert page.status_code == 200 and "counted" in page.text and "100" in page.text
    ends = [note.job_id for note in notes(str(out)) if note.event == "end"]
    assert sorted(ends) == sorted(ids), "each job ran to its end once, on the far host"
    assert {doc["result"]["pid"] for doc in app.store.jobs.find({"_id": {"$in": ids}})} == {
        note.pid for note in notes(str(out))
    }


# -- beside a local node, through a freeze, a kill and a web restart -------------------------


def test_remote_and_local_workers_drain_1000_through_a_kill_and_a_web_restart(
    remote_settings: tuple[Path, App], tmp_path: Path
) -> None:
    path, app = remote_settings
    out = tmp_path / "notes"
    out.mkdir()
    web = Web(path, "127.0.0.1", free_port(), tmp_path)
    web.start()
    jobs = [CountedJob(reports=False) for _ in range(1000)]
    ids = Job.push_many(jobs, retry={"retries": 3, "wait": 0})
    names = [f"far-{n}" for n in range(1, 5)]
    remotes = {name: start(remote_command(web.url, tmp_path, name, 2), tmp_path, name, out)
               for name in names}  # fmt: skip
    local = HeadlessNode(path, tmp_path, env=workers_env(**{OUT_ENV: str(out)}))
    try:
        with local:
            wait_for(lambda: completed(app, ids) >= 150, timeout=120, what="150 jobs", every=0.5)
            # a remote worker frozen mid-job: its lease lapses, its jobs are rescued and
            # run elsewhere; thawed later, it reports them late
            frozen = remotes["far-1"]
            thawed = hold_still(frozen, out)
            # a remote worker killed mid-job
            killed = remotes["far-2"]
            lost = hold_still(killed, out)
            killed.kill()
            killed.wait(timeout=30)
            # workers web restarted under the others
            web.stop()
            web.start()
            before = {name: len(in_flight_ends(out, remotes[name].pid)) for name in names[2:]}
            wait_for(
                lambda: not any(app.store.jobs.count_documents({"_id": i, "lease_owner": token})
                                for i, token in thawed.items()),
                timeout=LEASE * 10,
                what="the frozen worker's jobs to be rescued",
                every=0.5,
            )  # fmt: skip
            frozen.send_signal(signal.SIGCONT)
            wait_for(lambda: completed(app, ids) == 1000, timeout=240, what="1000 jobs", every=0.5)
            late = _late_done(web.url, app, lost)
            assert local.stop() == 0, local.output()
    finally:
        for process in remotes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGCONT)
                process.terminate()
        codes = {name: process.wait(timeout=60) for name, process in remotes.items()}
        web.stop()
    assert {name: codes[name] for name in names if name != "far-2"} == dict.fromkeys(
        ["far-1", "far-3", "far-4"], 0
    )
    _check(app, ids, out, frozen.pid, killed.pid, set(thawed) | set(lost))
    assert "was refused" in (tmp_path / "far-1.log").read_text(), "the thawed worker's done"
    assert late == 409
    after = {name: len(in_flight_ends(out, remotes[name].pid)) for name in names[2:]}
    assert all(after[name] > before[name] for name in names[2:]), "they drained after the restart"


def in_flight_ends(out: Path, pid: int) -> list[str]:
    return [n.job_id for n in notes(str(out)) if n.event == "end" and n.pid == pid]


def _late_done(url: str, app: App, lost: dict[str, str]) -> int:
    """A `done` for one of the killed worker's jobs, with the token it held (its attempt,
    before the one that completed): the service refuses it."""
    job_id = sorted(lost)[0]
    doc = app.store.get_job(job_id)
    assert doc is not None and doc["status"] == "completed"
    stale = lost[job_id]
    answer = httpx.post(
        f"{url}/api/work/{job_id}/done",
        json={"token": stale, "result": {"late": True}},
        headers=bearer("worker"),
        timeout=10,
    )
    return answer.status_code


def _check(
    app: App, ids: Sequence[str], out: Path, frozen: int, killed: int, rescued: set[str]
) -> None:
    """Every job completed once, by the attempt the database kept; any other end noted is
    the frozen or killed worker's, of an attempt whose lease had moved on."""
    docs = {doc["_id"]: doc for doc in app.store.jobs.find({"_id": {"$in": ids}})}
    assert {doc["status"] for doc in docs.values()} == {"completed"}, "0 lost"
    ends: dict[str, list[tuple[int, int]]] = collections.defaultdict(list)
    for note in notes(str(out)):
        if note.event == "end":
            ends[note.job_id].append((note.attempt, note.pid))
    for job_id, doc in docs.items():
        kept = (doc["result"]["attempt"], doc["result"]["pid"])
        assert kept in ends[job_id], f"{job_id}: its outcome is of an attempt that ran"
        others = [end for end in ends[job_id] if end != kept]
        assert all(pid in (frozen, killed) and attempt < kept[0] for attempt, pid in others), (
            f"{job_id} ran to its end twice: {ends[job_id]}"
        )
    for job_id in rescued:  # run again by a later attempt (the thawed worker may take it too)
        assert docs[job_id]["result"]["attempt"] >= 2, f"{job_id} was not rescued"
