"""The worker verbs of the HTTP API (`/api/work`): a worker on another machine takes jobs
with a token and reports on each attempt by the attempt's token; a report from an attempt
whose lease moved on is 409 and changes nothing; done and fail repeated get one answer."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from datetime import timedelta
from typing import Any

import pytest
from starlette.testclient import TestClient

import workers
import workers.jobs
from tests.conftest import wait_for
from tests.faulty import count_candidate_scans
from tests.jobs import RecordJob
from tests.limitjobs import CappedJob, RatedJob
from tests.test_limits import most_at_once
from tests.test_worker import running
from tests.web_support import bearer, client_for, token_settings
from workers import Job
from workers.app import App
from workers.settings import Settings

LEASE = 3.0


@pytest.fixture
def web_app(make_settings: Callable[..., Settings]) -> Iterator[App]:
    booted = workers.boot(
        settings=make_settings(
            web__tokens=token_settings(),
            workers__queue={"poll_interval": 0.2, "lease": LEASE},
            jobs=["tests.jobs", "tests.limitjobs"],
        )
    )
    yield booted
    workers.shutdown()


@pytest.fixture
def api(web_app: App) -> Iterator[TestClient]:
    with client_for(web_app, headers=bearer("worker")) as client:  # the lifespan stops dispatch
        yield client


def take(api: TestClient, types: list[str], **body: Any) -> list[dict[str, Any]]:
    answer = api.post("/api/work", json={"types": types, "worker": "w1", **body})
    assert answer.status_code == 200, answer.text
    jobs: list[dict[str, Any]] = answer.json()["jobs"]
    return jobs


def test_a_worker_takes_jobs_best_first_and_completes_one(api: TestClient) -> None:
    low = Job.push(RecordJob(echo="low"), priority="low")
    high = Job.push(RecordJob(echo="high"), priority="high")
    later = Job.push(RecordJob(), delay=3600)

    jobs = take(api, ["RecordJob"], max=5)

    assert [job["id"] for job in jobs] == [high, low]  # best first; the delayed one waits
    first = jobs[0]
    assert first["params"] == {"echo": "high"} and first["attempt"] == 1
    assert first["token"].startswith("remote:") and first["lease"] == LEASE
    done = api.post(f"/api/work/{high}/done", json={"token": first["token"], "result": [1]})
    assert done.status_code == 200 and done.json() == {"status": "completed"}
    job = workers.jobs.get(high)
    assert job is not None and (job.status, job.result) == ("completed", [1])
    assert workers.jobs.get(later).status == "scheduled"  # type: ignore[union-attr]


def test_progress_log_and_beat_are_recorded_under_the_token(api: TestClient) -> None:
    job_id = Job.push(RecordJob())
    (job,) = take(api, ["RecordJob"])
    token = {"token": job["token"]}

    progress = api.post(f"/api/work/{job_id}/progress", json={**token, "completed": 1, "total": 4})
    logged = api.post(f"/api/work/{job_id}/log", json={**token, "message": "half way"})
    beat = api.post(f"/api/work/{job_id}/beat", json=token)

    assert (progress.status_code, logged.status_code, beat.status_code) == (200, 200, 200)
    assert beat.json()["cancelled"] is False and beat.json()["lease_expires"]
    stored = workers.jobs.get(job_id)
    assert stored is not None and stored.progress["percent"] == 25.0
    assert any(entry["message"] == "half way" for entry in stored.log)


def test_a_report_from_an_attempt_whose_lease_moved_on_is_409_and_changes_nothing(
    web_app: App, api: TestClient
) -> None:
    job_id = Job.push(RecordJob(), retry={"retries": 3, "wait": 0})
    (stale,) = take(api, ["RecordJob"])
    web_app.store.jobs.update_one({"_id": job_id}, {"$set": {"lease_expires": None}})
    web_app.store.release({job_id: stale["token"]}, "handed back by the test")
    (fresh,) = take(api, ["RecordJob"])
    assert fresh["id"] == job_id and fresh["token"] != stale["token"]

    for verb, body in (
        ("done", {"result": "late"}),
        ("fail", {"error": {"message": "late"}}),
        ("progress", {"completed": 1, "total": 2}),
        ("log", {"message": "late"}),
        ("beat", {}),
    ):
        answer = api.post(f"/api/work/{job_id}/{verb}", json={"token": stale["token"], **body})
        assert answer.status_code == 409, (verb, answer.text)
        assert answer.json()["job_status"] == "running" and "no longer holds" in answer.text
    job = workers.jobs.get(job_id)
    assert job is not None and job.status == "running" and job.progress is None


def test_done_and_fail_repeated_get_the_same_answer(api: TestClient) -> None:
    done_id = Job.push(RecordJob())
    failed_id = Job.push(RecordJob(), retry={"retries": 1, "wait": 600})
    jobs = {job["id"]: job for job in take(api, ["RecordJob"], max=2)}
    done = {"token": jobs[done_id]["token"], "result": 7}
    failed = {"token": jobs[failed_id]["token"], "error": {"message": "no", "type": "IOError"}}

    answers = [api.post(f"/api/work/{done_id}/done", json=done) for _ in range(2)]
    fails = [api.post(f"/api/work/{failed_id}/fail", json=failed) for _ in range(2)]

    assert [a.json() for a in answers] == [{"status": "completed"}] * 2
    assert [a.json() for a in fails] == [{"status": "will retry"}] * 2
    job = workers.jobs.get(failed_id)
    assert job is not None and job.status == "scheduled" and job.attempts == 1
    assert job.error["type"] == "IOError" and job.error["message"] == "no"


def test_a_failure_follows_the_job_s_retries_then_fails_for_good(api: TestClient) -> None:
    job_id = Job.push(RecordJob(), retry={"retries": 1, "wait": 0})
    outcomes = []
    for _ in range(2):
        (job,) = take(api, ["RecordJob"])
        body = {"token": job["token"], "error": {"message": f"attempt {job['attempt']}"}}
        outcomes.append(api.post(f"/api/work/{job_id}/fail", json=body).json()["status"])
    assert outcomes == ["will retry", "failed"]
    fatal_id = Job.push(RecordJob(), retry={"retries": 5, "wait": 0})
    (job,) = take(api, ["RecordJob"])
    body = {"token": job["token"], "error": {"message": "bad input"}, "fatal": True}
    assert api.post(f"/api/work/{fatal_id}/fail", json=body).json() == {"status": "failed"}


def test_a_job_handed_back_is_ready_again_without_spending_an_attempt(api: TestClient) -> None:
    job_id = Job.push(RecordJob())
    (job,) = take(api, ["RecordJob"])
    released = api.post(f"/api/work/{job_id}/release", json={"token": job["token"]})
    assert released.status_code == 200
    stored = workers.jobs.get(job_id)
    assert stored is not None and (stored.status, stored.attempts) == ("ready", 0)
    again = api.post(f"/api/work/{job_id}/release", json={"token": job["token"]})
    assert again.status_code == 409


def test_a_beat_tells_the_worker_its_job_was_cancelled(web_app: App, api: TestClient) -> None:
    job_id = Job.push(RecordJob())
    (job,) = take(api, ["RecordJob"])
    workers.jobs.get(job_id).cancel()  # type: ignore[union-attr]
    beat = api.post(f"/api/work/{job_id}/beat", json={"token": job["token"]})
    assert beat.status_code == 200 and beat.json() == {"cancelled": True, "lease_expires": None}


def waiting(api: TestClient) -> int:
    """How many requests for work wait on the bell now."""
    return int(api.app.state.dispatcher().bell.waiting)  # type: ignore[attr-defined]


def test_a_waiting_request_gets_a_job_pushed_while_it_waits(api: TestClient) -> None:
    got: list[list[dict[str, Any]]] = []
    waiter = threading.Thread(target=lambda: got.append(take(api, ["RecordJob"], wait=20)))
    waiter.start()
    wait_for(lambda: waiting(api) == 1, timeout=10, what="the request to wait for a job")
    job_id = Job.push(RecordJob())
    waiter.join(timeout=20)
    assert [[job["id"] for job in jobs] for jobs in got] == [[job_id]]


def test_a_waiting_request_claims_the_pushed_job_by_id_without_a_scan(
    web_app: App, api: TestClient
) -> None:
    take(api, ["RecordJob"])  # the stream is open before the count starts
    wait_for(lambda: api.app.state.dispatcher()._wakeup.streaming, timeout=10, what="the stream")  # type: ignore[attr-defined]
    got: list[list[dict[str, Any]]] = []
    waiter = threading.Thread(target=lambda: got.append(take(api, ["RecordJob"], wait=20)))
    waiter.start()
    wait_for(lambda: waiting(api) == 1, timeout=10, what="the request to wait for a job")
    scans = count_candidate_scans(web_app.store)
    job_id = Job.push(RecordJob())
    waiter.join(timeout=20)
    # the stream named the job: the ring carried its id, and the waiter took it by _id
    assert [[job["id"] for job in jobs] for jobs in got] == [[job_id]]
    assert scans["n"] == 0, f"{scans['n']} claim scans for a job the stream named"


def test_waiters_that_lose_the_named_job_look_by_a_scan_for_the_rest(
    web_app: App, api: TestClient
) -> None:
    take(api, ["RecordJob"])
    wait_for(lambda: api.app.state.dispatcher()._wakeup.streaming, timeout=10, what="the stream")  # type: ignore[attr-defined]
    got: list[list[dict[str, Any]]] = []
    waiters = [
        threading.Thread(
            target=lambda n=n: got.append(take(api, ["RecordJob"], wait=20, worker=f"w{n}"))
        )
        for n in range(3)
    ]
    for waiter in waiters:
        waiter.start()
    wait_for(lambda: waiting(api) == 3, timeout=10, what="three requests to wait for a job")
    # three jobs in one insert: one ring names all three, and each waiter (max 1) tries the
    # first of them by _id; the two that lose it look by a scan and take the others
    ids = Job.push_many([RecordJob(n=n) for n in range(3)])
    for waiter in waiters:
        waiter.join(timeout=20)
    assert sorted(job["id"] for jobs in got for job in jobs) == sorted(ids)


def test_a_waiting_request_does_not_poll(web_app: App, api: TestClient) -> None:
    take(api, ["RecordJob"])  # the stream is open before the count starts
    wait_for(lambda: api.app.state.dispatcher()._wakeup.streaming, timeout=10, what="the stream")  # type: ignore[attr-defined]
    scans = count_candidate_scans(web_app.store)
    assert take(api, ["RecordJob"], wait=2) == []
    assert scans["n"] <= 2, f"{scans['n']} claim scans in a 2 s wait (the poll is 0.2 s)"


def test_an_empty_wait_ends_empty_and_zero_does_not_wait(api: TestClient) -> None:
    assert take(api, ["RecordJob"], wait=0) == []
    assert take(api, ["RecordJob"], wait=0.3) == []


def test_a_lapsed_remote_lease_is_rescued_by_the_web_process(api: TestClient) -> None:
    job_id = Job.push(RecordJob(), retry={"retries": 2, "wait": 0})
    (job,) = take(api, ["RecordJob"])  # and the worker dies: no beat, no report
    wait_for(
        lambda: workers.jobs.get(job_id).status == "ready",  # type: ignore[union-attr]
        timeout=LEASE * 10,
        what="the web process to rescue the job",
    )
    late = api.post(f"/api/work/{job_id}/done", json={"token": job["token"]})
    assert late.status_code == 409


def test_a_remote_worker_is_a_node_with_its_types_and_jobs(web_app: App, api: TestClient) -> None:
    job_id = Job.push(RecordJob())
    take(api, ["RecordJob", "FailJob"], max=3)
    admin = client_for(web_app, headers=bearer("admin"))
    nodes = {node["id"]: node for node in admin.get("/api/nodes").json()}
    node = nodes["remote:w1"]
    assert node["types"] == ["RecordJob", "FailJob"] and node["running"] == [job_id]
    assert node["threads"] == 3 and node["silent"] is False


def test_global_concurrency_holds_for_remote_workers(api: TestClient) -> None:
    cap = CappedJob.global_concurrency
    assert cap is not None
    for _ in range(cap + 2):
        Job.push(CappedJob())
    first = take(api, ["CappedJob"], max=10)
    second = api.post("/api/work", json={"types": ["CappedJob"], "worker": "w2", "max": 10}).json()[
        "jobs"
    ]
    assert len(first) + len(second) == cap


@pytest.mark.parametrize("role", ["viewer", "creator", "manager"])
def test_only_the_worker_and_admin_roles_take_work(web_app: App, role: str) -> None:
    client = client_for(web_app, headers=bearer(role))
    answer = client.post("/api/work", json={"types": ["RecordJob"], "worker": "w"})
    assert answer.status_code == 403 and f"the {role} role cannot take" in answer.text


def test_the_worker_role_reads_nothing(web_app: App) -> None:
    client = client_for(web_app, headers=bearer("worker"))
    for path in ("/api/jobs", "/api/stats", "/api/nodes", "/jobs", "/openapi.json"):
        assert client.get(path).status_code == 403, path


def test_a_local_attempt_s_token_is_refused_over_http(web_app: App, api: TestClient) -> None:
    job_id = Job.push(RecordJob())
    (doc,) = web_app.store.claim("somehost:123:w#1", ["RecordJob"], LEASE, 1)
    answer = api.post(f"/api/work/{job_id}/done", json={"token": doc["lease_owner"]})
    assert answer.status_code == 409
    assert workers.jobs.get(job_id).status == "running"  # type: ignore[union-attr]


def test_a_reader_waits_for_a_job_to_finish(web_app: App, api: TestClient) -> None:
    job_id = Job.push(RecordJob())
    viewer = client_for(web_app, headers=bearer("viewer"))
    early = viewer.get(f"/api/jobs/{job_id}/wait", params={"timeout": 0.2}).json()
    assert early["finished"] is False and early["job"]["status"] == "ready"
    (job,) = take(api, ["RecordJob"])
    finisher = threading.Timer(
        0.3, lambda: api.post(f"/api/work/{job_id}/done", json={"token": job["token"], "result": 5})
    )
    finisher.start()
    waited = viewer.get(f"/api/jobs/{job_id}/wait", params={"timeout": 20}).json()
    finisher.join()
    assert waited["finished"] is True and waited["job"]["result"] == 5
    assert viewer.get("/api/jobs/6b16b79df59465c1914904f5/wait").status_code == 404


@pytest.mark.slow
def test_rate_limit_and_global_concurrency_hold_across_local_and_remote_workers(
    web_app: App, api: TestClient
) -> None:
    # Given jobs of a type at 5 starts a second and of one at 2 at once, and a remote worker
    # that takes both (holding a capped job 0.3 s) beside a local worker of 2 threads
    rated = [Job.push(RatedJob()) for _ in range(12)]
    capped = [Job.push(CappedJob(seconds=0.3)) for _ in range(8)]
    # the remote worker takes some of each first, then goes on beside the local worker
    held = take(api, ["CappedJob"], max=1) + take(api, ["RatedJob"], max=3)
    took = [job["id"] for job in held]
    stop = threading.Event()

    def report(job: dict[str, Any]) -> None:
        if job["type"] == "CappedJob":
            stop.wait(0.3)
        done = {"token": job["token"], "result": None}
        assert api.post(f"/api/work/{job['id']}/done", json=done).status_code == 200

    def remote() -> None:
        for job in held:
            report(job)
        while not stop.is_set():
            for job in take(api, ["RatedJob", "CappedJob"], max=2, wait=1):
                took.append(job["id"])
                report(job)

    thread = threading.Thread(target=remote, name="remote-worker")
    with running(web_app):
        thread.start()
        try:
            wait_for(lambda: finished_all(web_app, rated + capped), timeout=60, what="the jobs")
        finally:
            stop.set()
            thread.join(timeout=30)
    docs = {doc["_id"]: doc for doc in web_app.store.jobs.find({"_id": {"$in": rated + capped}})}
    # Then both kinds of worker ran each type, and the limits held over all of them
    for ids in (rated, capped):
        assert 0 < len(set(took) & set(ids)) < len(ids), "local and remote each took some"
    starts = sorted(docs[i]["started"] for i in rated)
    gaps = [later - earlier for earlier, later in zip(starts, starts[5:], strict=False)]
    assert min(gaps) >= timedelta(seconds=1), starts
    assert most_at_once([(docs[i]["started"], docs[i]["finished"]) for i in capped]) <= 2


def finished_all(app: App, ids: Sequence[str]) -> bool:
    return app.store.jobs.count_documents({"_id": {"$in": ids}, "status": "completed"}) == len(ids)
