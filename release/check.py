"""`make release-check`: the package as a user would install it, one command from a release.

Builds the wheel and the sdist from the tree, runs `twine check` on both, then installs
the wheel into a new virtual environment for each extra (none, embedded, web, otel) and
runs one job there in inline mode: on the embedded server where that extra brings it,
else on a test server started here. Nothing is published.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DIST = ROOT / "dist"
EXTRAS = ["", "embedded", "web", "otel"]

# A user's project: one job class, settings in inline mode, one push, its result read.
JOBS = """
from workers import Job

class AddJob(Job):
    def handle_job(self):
        return {"sum": self.params["a"] + self.params["b"]}
"""
SCRIPT = """
import workers
import workers.jobs
from workers import Job
from myjobs import AddJob

workers.boot()
pushed = Job.push(AddJob(a=2, b=3))
job = workers.jobs.get(pushed)
assert job.status == "completed" and job.result == {"sum": 5}, (job.status, job.result)
print("ran AddJob inline:", job.result)
workers.shutdown()
"""


def run(*command: str, cwd: Path = ROOT, env: dict[str, str] | None = None) -> None:
    print("+", " ".join(command), flush=True)
    subprocess.run(command, cwd=cwd, env=env, check=True)


def build() -> list[Path]:
    shutil.rmtree(DIST, ignore_errors=True)
    print("+ python -m build --no-isolation", flush=True)
    subprocess.run(
        [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(DIST), "."],
        cwd=ROOT,
        check=True,
        stdout=subprocess.DEVNULL,
    )
    built = sorted(DIST.iterdir())
    run(sys.executable, "-m", "twine", "check", "--strict", *map(str, built))
    return built


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def start_server() -> tuple[subprocess.Popen[bytes], str]:
    """A test server from this environment's SecantusDB, for the extras without it."""
    port = free_port()
    program = Path(sys.executable).parent / "secantusd-py"
    server = subprocess.Popen(
        [str(program), "--host", "127.0.0.1", "--port", str(port), "--storage-path", ":memory:"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    for _ in range(300):
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return server, f"mongodb://127.0.0.1:{port}/?directConnection=true"
        time.sleep(0.1)
    server.kill()
    raise SystemExit("the test server did not start")


def try_extra(wheel: Path, extra: str, url: str, work: Path) -> None:
    folder = work / (extra or "plain")
    folder.mkdir()
    run(sys.executable, "-m", "venv", str(folder / "venv"))
    python = str(folder / "venv" / "bin" / "python")
    run(python, "-m", "pip", "install", "-q", f"{wheel}[{extra}]" if extra else str(wheel))
    (folder / "myjobs.py").write_text(JOBS)
    (folder / "settings.json").write_text('{"mode": "inline", "jobs": ["myjobs"]}')
    (folder / "try.py").write_text(SCRIPT)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WORKERS_", "MONGO_URL"))}
    if extra != "embedded":  # the embedded extra runs on the embedded default, no URL
        env["MONGO_URL"] = url
    run(python, "try.py", cwd=folder, env=env)
    if extra == "embedded":
        run(python, "-m", "workers", "db", "stop", cwd=folder, env=env)


def main() -> int:
    wheel = next(path for path in build() if path.suffix == ".whl")
    server, url = start_server()
    try:
        with tempfile.TemporaryDirectory(prefix="workers-release-") as work:
            for extra in EXTRAS:
                try_extra(wheel, extra, url, Path(work))
    finally:
        server.terminate()
        server.wait(timeout=20)
    tried = ", ".join(extra or "(none)" for extra in EXTRAS)
    print(f"release check passed: {wheel.name} with the extras {tried}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
