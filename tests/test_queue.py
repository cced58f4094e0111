"""The claim: atomic, index-backed, best priority first, never before run_at."""

from __future__ import annotations

import threading
import time
from datetime import timedelta
from typing import Any

import pytest

from tests.faulty import FaultyCollection, count_candidate_scans, count_claim_picks
from tests.jobs import FailJob, RecordJob
from tests.plans import assert_on_index, index_scans, plan_stages
from workers import Job
from workers.app import App
from workers.store import shared_scans as shared
from workers.store.shared_scans import SHARE, SPARE_SECONDS, Spare


@pytest.mark.slow
@pytest.mark.parametrize(
    ("query", "index"),
    [
        ("claim candidates", "claim_queue"),
        ("claim write", "_id_"),
        ("claim by woken ids", "_id_"),
        ("claim read-back", "_id_"),
        ("next ready", "ready_times"),
        ("next due", "schedule"),
        ("stage due", "schedule"),
        ("limit backlog", "ready_times"),  # what the dashboard counts per limited type
    ],
)
def test_every_query_of_the_claim_path_is_an_index_scan(app: App, query: str, index: str) -> None:
    for n in range(20):
        Job.push(RecordJob(n=n), priority=n % 3)
        Job.push(RecordJob(n=n), delay=3600 + n)
    command, explained = app.store.hot_path_queries(app.registry.types)[query]
    assert_on_index(query, command, explained, index, app.store.explain_find)
    if index == "claim_queue":  # the equalities on status and type lead the scanned index
        stages = plan_stages(explained["queryPlanner"]["winningPlan"])
        scan = next(stage for stage in stages if stage["stage"] == "IXSCAN")
        assert list(scan["keyPattern"])[:2] == ["status", "type"]
    if index == "schedule":  # partial on status scheduled: the due time leads, a range
        stages = plan_stages(explained["queryPlanner"]["winningPlan"])
        scan = next(stage for stage in stages if stage["stage"] == "IXSCAN")
        assert list(scan["keyPattern"]) == ["run_at"]


def test_a_backlog_of_types_this_node_does_not_know_is_not_scanned(app: App, db: Any) -> None:
    # Given 300 ready jobs of a type only another pool runs, and 3 of ours
    foreign = Job.push(RecordJob())
    template = db[app.store.jobs.name].find_one({"_id": foreign})
    db[app.store.jobs.name].insert_many(
        [{**template, "_id": f"foreign-{n}", "type": "OtherPoolJob"} for n in range(300)]
    )
    mine = [Job.push(RecordJob(n=n)) for n in range(2)]
    # When this node looks for work, the scan examines only our types' keys
    examined = app.store.claim_keys_examined(app.registry.types)
    assert examined <= 3, f"the claim scan examined {examined} index keys for 3 jobs of ours"
    claimed = app.store.claim("me", app.registry.types, 5, 10)
    assert {doc["_id"] for doc in claimed} == {foreign, *mine}


@pytest.mark.parametrize("spare", [False, True], ids=["scan each time", "with a spare"])
def test_best_priority_runs_first_and_equal_priorities_in_push_order(app: App, spare: bool) -> None:
    pushed = {
        "low": Job.push(RecordJob(), priority="low"),
        "normal-1": Job.push(RecordJob()),
        "critical": Job.push(RecordJob(), priority="critical"),
        "normal-2": Job.push(RecordJob()),
        "high": Job.push(RecordJob(), priority="high"),
        "normal-3": Job.push(RecordJob()),
    }
    order = []
    kept = Spare() if spare else None  # a lone claimer's spare keeps the queue's order
    while claimed := app.store.claim("me", app.registry.types, 5, 1, kept):
        order.append(claimed[0]["_id"])
    names = {job_id: name for name, job_id in pushed.items()}
    expected = ["critical", "high", "normal-1", "normal-2", "normal-3", "low"]
    assert [names[i] for i in order] == expected


def test_a_spare_claims_the_rest_of_a_scan_without_scanning_again(app: App) -> None:
    ids = [Job.push(RecordJob(n=n)) for n in range(12)]
    scans = count_candidate_scans(app.store)
    spare, types = Spare(), app.registry.types
    claimed = [d["_id"] for _ in range(4) for d in app.store.claim("me", types, 5, 3, spare)]
    assert claimed == ids
    assert scans["n"] == 1, "the three claims after the first should have come from the spare"


def test_a_delayed_job_is_not_claimed_before_its_run_at(app: App) -> None:
    later = Job.push(RecordJob(), delay=30)
    now = Job.push(RecordJob())
    claimed = app.store.claim("me", app.registry.types, 5, 10)
    assert [doc["_id"] for doc in claimed] == [now]
    assert app.store.get_job(later)["status"] == "ready"  # due within the HORIZON: ready


def test_only_registered_types_are_claimed(app: App) -> None:
    job_id = Job.push(RecordJob())
    assert app.store.claim("me", ["SomeOtherJob"], 5, 10) == []
    assert [d["_id"] for d in app.store.claim("me", ["RecordJob"], 5, 10)] == [job_id]


def test_a_claim_sets_the_owner_a_server_clock_lease_and_counts_the_attempt(app: App) -> None:
    Job.push(RecordJob())
    (doc,) = app.store.claim("node-a", app.registry.types, 12, 1)
    assert doc["status"] == "running"
    assert doc["lease_owner"] == "node-a"
    assert doc["attempts"] == 1
    assert (doc["lease_expires"] - doc["started"]).total_seconds() == 12


def test_concurrent_claimers_never_take_the_same_job(app: App) -> None:
    ids = {Job.push(FailJob(n=n)) for n in range(60)}
    taken: list[list[str]] = [[] for _ in range(4)]

    def claimer(slot: int) -> None:
        while docs := app.store.claim(f"node-{slot}", app.registry.types, 5, 3):
            taken[slot].extend(doc["_id"] for doc in docs)

    threads = [threading.Thread(target=claimer, args=(slot,)) for slot in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    everything = [job_id for slot in taken for job_id in slot]
    assert len(everything) == len(set(everything)) == 60
    assert set(everything) == ids


def test_a_state_change_by_a_process_that_does_not_hold_the_job_is_refused(app: App) -> None:
    job_id = Job.push(RecordJob())
    app.store.claim("node-a", app.registry.types, 5, 1)
    assert app.store.complete(job_id, "node-b", "stolen") is False
    assert app.store.fail(job_id, "node-b", {"message": "x"}, None) is False
    assert app.store.get_job(job_id)["status"] == "running"  # type: ignore[index]
    assert app.store.complete(job_id, "node-a", "mine") is True
    assert app.store.complete(job_id, "node-a", "twice") is False
    doc = app.store.get_job(job_id)
    assert doc is not None and doc["result"] == "mine"
    assert [e["message"] for e in doc["log"]] == ["attempt 1 completed by node-a"]


def test_released_jobs_are_claimable_at_once_and_the_attempt_is_not_counted(app: App) -> None:
    job_id = Job.push(RecordJob())
    app.store.claim("node-a", app.registry.types, 5, 1)
    assert app.store.release({job_id: "node-a"}, "shutting down") == 1
    doc = app.store.get_job(job_id)
    assert doc is not None
    assert (doc["status"], doc["attempts"], doc["lease_owner"]) == ("ready", 0, None)
    assert doc["log"][-1]["message"] == "shutting down"
    assert [d["_id"] for d in app.store.claim("node-b", app.registry.types, 5, 1)] == [job_id]


def test_a_failed_attempt_is_retried_after_the_wait_by_the_server_clock(app: App) -> None:
    job_id = Job.push(RecordJob())
    app.store.claim("node-a", app.registry.types, 5, 1)
    app.store.fail(job_id, "node-a", {"message": "boom", "attempt": 1}, retry_in=8)
    doc = app.store.get_job(job_id)
    assert doc is not None and doc["status"] == "ready"  # 8 s: within the HORIZON
    assert (doc["run_at"] - doc["updated"]).total_seconds() == 8
    assert doc["log"][-1]["level"] == "error" and "boom" in doc["log"][-1]["message"]


def test_a_claimer_of_another_process_takes_the_rest_of_a_scan_without_scanning(app: App) -> None:
    ids = [Job.push(RecordJob(n=n)) for n in range(3 + SHARE + 5)]  # more than a spare keeps
    scans, types = count_candidate_scans(app.store), app.registry.types
    # Given one claimer that scanned and took 3
    first = [d["_id"] for d in app.store.claim("one#1", types, 5, 3, Spare())]
    # When a claimer of another process that has seen a backlog too claims
    second = [d["_id"] for d in app.store.claim("two#1", types, 5, 3, Spare())]
    # Then it took 3 others from the published list, and nobody scanned again
    assert scans["n"] == 1
    assert len(second) == 3 and not set(first) & set(second) and set(second) <= set(ids)


def test_claimers_sharing_a_scan_hold_disjoint_shares_and_never_pick_the_same_job(
    app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(shared, "SPARE_SECONDS", 60.0)  # a slow machine must not age the list
    ids = [Job.push(RecordJob(n=n)) for n in range(4 * SHARE)]
    scans, types = count_candidate_scans(app.store), app.registry.types
    spares = {"one": Spare(), "two": Spare()}
    picks = count_claim_picks(app.store)
    # When two claimers of different processes take turns, 3 jobs a claim, for about two
    # shares each (the queue holds four)
    got: list[Any] = []
    for turn in range(22):
        name = "one" if turn % 2 == 0 else "two"
        got += [d["_id"] for d in app.store.claim(f"{name}#{turn}", types, 5, 3, spares[name])]
    # Then every claim was whole and took jobs no other claim took, all from one scan, and
    # no pick found a job already taken
    assert len(got) == len(set(got)) == 66 and set(got) <= set(ids)
    assert scans["n"] == 1
    assert picks["asked"] == picks["got"], picks


def test_a_stale_shared_list_is_not_used(app: App, db: Any) -> None:
    for n in range(12):
        Job.push(RecordJob(n=n))
    scans, types = count_candidate_scans(app.store), app.registry.types
    app.store.claim("one#1", types, 5, 3, Spare())
    old = app.store.now() - timedelta(seconds=SPARE_SECONDS + 1)
    db[app.store.candidates.name].update_many({}, {"$set": {"scanned": old}})
    app.store.claim("two#1", types, 5, 3, Spare())
    assert scans["n"] == 2, "a list older than SPARE_SECONDS must not be claimed from"


@pytest.mark.parametrize(("age", "scans_expected"), [(1.5, 1), (3.0, 2)])
def test_the_list_of_a_slow_scan_lives_scans_apart_times_that_scan(
    app: App, db: Any, age: float, scans_expected: int
) -> None:
    for n in range(3 + SHARE + 5):  # more than the first claimer's spare keeps
        Job.push(RecordJob(n=n))
    scans, types = count_candidate_scans(app.store), app.registry.types
    app.store.claim("one#1", types, 5, 3, Spare())
    # Given the list came from a scan that took 0.1 s (a large backlog on a slow server):
    # it lives 20 x 0.1 = 2 s, not SPARE_SECONDS
    scanned = app.store.now() - timedelta(seconds=age)
    db[app.store.candidates.name].update_many(
        {}, {"$set": {"scanned": scanned, "scan_seconds": 0.1}}
    )
    assert shared._lifetime(0.1) == 0.1 * shared.SCANS_APART > SPARE_SECONDS
    # When another claimer claims, it takes from the list while it lives, and scans after
    claimed = app.store.claim("two#1", types, 5, 3, Spare())
    assert len(claimed) == 3 and scans["n"] == scans_expected


def test_a_claimer_waits_a_bounded_time_for_another_scanning_then_scans_itself(
    app: App, db: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(shared, "TURN_MAX", 1.0)  # 10 s in use: the bound, not its size
    for n in range(12):
        Job.push(RecordJob(n=n))
    scans, types = count_candidate_scans(app.store), app.registry.types
    app.store.claim("one#1", types, 5, 3, Spare())
    # Given another claimer says it is scanning (and never publishes)
    busy = app.store.now() + timedelta(seconds=30)
    db[app.store.candidates.name].update_many(
        {}, {"$set": {"scanning_until": busy, "generation": "gone", "ids": []}}
    )
    # Then a claimer whose spare is dry waits for its list at most TURN_MAX in all, and
    # still claims, by a scan of its own
    waits: list[float] = []

    def pause(seconds: float) -> bool:
        waits.append(seconds)
        time.sleep(seconds)
        return False

    claimed = app.store.claim("two#1", types, 5, 3, Spare(pause=pause))
    assert len(claimed) == 3 and scans["n"] == 2
    assert len(waits) > 1 and sum(waits) <= 1.0 + 1e-6


def test_the_shared_candidate_list_is_read_by_id(app: App, db: Any) -> None:
    for n in range(5):
        Job.push(RecordJob(n=n))
    app.store.claim("one#1", app.registry.types, 5, 1, Spare())
    (doc,) = db[app.store.candidates.name].find()
    explained = db.command(
        "explain", {"find": app.store.candidates.name, "filter": {"_id": doc["_id"]}}
    )
    _, stages = index_scans(explained)
    assert "COLLSCAN" not in stages, stages


def test_claimers_woken_together_scan_once_the_later_waiting_for_the_first_ones_list(
    app: App, db: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    ids = [Job.push(RecordJob(n=n)) for n in range(3 * SHARE)]
    scans, types = count_candidate_scans(app.store), app.registry.types
    turns: list[Any] = []
    holder = {"_id": {"$regex": "^types:"}}

    def holder_publishes(seconds: float) -> None:
        """The first claimer's scan ends while the second waits: it claims and publishes."""
        turns.append(seconds)
        db[app.store.candidates.name].update_one(holder, {"$unset": {"scanning_until": ""}})
        first.extend(d["_id"] for d in app.store.claim("one#1", types, 5, 3, Spare()))

    # Given a claimer of another process holds the turn to scan (it was woken first)
    db[app.store.candidates.name].insert_one(
        {
            "_id": shared.list_key(types),
            "scanning_until": app.store.now() + timedelta(seconds=30),
        }
    )
    first: list[Any] = []
    # When a second claimer, new and woken by the clock too, claims
    waiting = Spare(pause=holder_publishes)
    second = [d["_id"] for d in app.store.claim("two#1", types, 5, 3, waiting)]
    # Then it waited for the holder's list and took from it, without a scan of its own
    assert len(turns) == 1, "it should have waited for the holder once"
    assert 0 < turns[0] <= shared.TURN_MAX
    assert scans["n"] == 1, "only the holder scans"
    assert len(first) == len(second) == 3 and not set(first) & set(second)
    assert set(first + second) <= set(ids)


def test_a_scanning_claimer_publishes_the_shared_list_before_its_own_claim_write(
    app: App, db: Any
) -> None:
    ids = [Job.push(RecordJob(n=n)) for n in range(3 + SHARE + 5)]
    published: list[list[Any]] = []

    def look(name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        if name == "update_many":  # the claim write
            published.extend(doc.get("ids", []) for doc in db[app.store.candidates.name].find())
        return None

    app.store.jobs = FaultyCollection(app.store.jobs, look, AssertionError)  # type: ignore[assignment]
    claimed = [d["_id"] for d in app.store.claim("one#1", app.registry.types, 5, 3, Spare())]
    # The 5 beyond this claim and its spare were offered before the claim was written, so
    # claimers waiting for this scan need not wait for its claim too
    assert published and published[0] == ids[3 + SHARE :]
    assert claimed == ids[:3]


def test_of_claimers_that_find_the_list_used_up_one_takes_the_turn_to_scan(
    app: App, db: Any
) -> None:
    for n in range(4):
        Job.push(RecordJob(n=n))
    types, now = app.registry.types, app.store.now()
    # Given no list yet: the first look creates it, with that claimer's turn
    doc = app.store._take_share(types, now, 3, "first")
    assert shared._granted(doc, "first") == ([], True)
    assert doc is not None
    held, ms = doc["scanning_until"], timedelta(milliseconds=1)  # BSON dates hold milliseconds
    assert (
        timedelta(seconds=shared.TURN_MIN) - ms <= held - now <= timedelta(seconds=shared.TURN_MAX)
    )
    # When another looks while that turn is held, the turn stays the first one's
    seen = app.store._take_share(types, now, 3, "second")
    assert shared._granted(seen, "second") == ([], False) and shared._turn_left(seen, now) > 0
    assert db[app.store.candidates.name].find_one()["scanning_until"] == held
    # And once the holder published an empty list (its scan of an empty queue took 3 ms),
    # the next look takes the turn, and that turn outlasts a scan of a backlog that came
    # due meanwhile (a second at least, not twice the empty scan): the others wait for its
    # list instead of scanning beside it
    app.store._publish(types, [], 0.003, [])
    later = app.store.now()
    seen = app.store._take_share(types, later, 3, "third")
    assert shared._granted(seen, "third") == ([], True)
    assert seen is not None and seen["scanning_until"] - later >= timedelta(seconds=1) - ms


def test_claimers_looking_at_the_same_instant_get_disjoint_shares_and_one_the_turn(
    app: App, db: Any
) -> None:
    types = app.registry.types
    for round_ in range(8):
        # Given a fresh list of 2 shares for 3 claimers (even rounds), or a used-up one (odd)
        listed = [f"job-{round_}-{n}" for n in range(2 * SHARE)] if round_ % 2 == 0 else []
        app.store._publish(types, listed, 0.003, [])
        barrier, verdicts = threading.Barrier(3), {}

        def look(name: str, barrier: threading.Barrier, verdicts: dict[str, Any]) -> None:
            barrier.wait()
            doc = app.store._take_share(types, app.store.now(), SHARE, name)
            verdicts[name] = shared._granted(doc, name)

        threads = [
            threading.Thread(target=look, args=(f"c{n}", barrier, verdicts)) for n in range(3)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        # Then each verdict is the one the server applied for that claimer (SecantusDB may
        # return a concurrent findAndModify's document as it was before another's write):
        # the shares are disjoint, and the one who found the list used up scans, alone
        shares = [ids for ids, _ in verdicts.values() if ids]
        turns = [name for name, (_, turn) in verdicts.items() if turn]
        assert len(turns) == 1, verdicts
        if listed:
            assert sorted(map(len, shares)) == [SHARE, SHARE], verdicts
            assert set(shares[0]) | set(shares[1]) == set(listed)
        else:
            assert shares == [], verdicts


def test_a_claimer_that_waited_for_a_turn_claims_the_jobs_that_came_due_meanwhile(
    app: App, db: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    types = app.registry.types
    # Given jobs due in 2 s (ready: within the HORIZON), and another claimer holding the
    # turn to scan for 2.5 s
    ids = [Job.push(RecordJob(n=n), delay=2) for n in range(3)]
    until = app.store.now() + timedelta(seconds=2.5)
    db[app.store.candidates.name].insert_one(
        {"_id": shared.list_key(types), "scanning_until": until}
    )

    def time_passes(seconds: float) -> None:  # the holder never publishes; 3 s pass
        app.store._offset += timedelta(seconds=3)

    # When a claimer looks, waits out the holder's turn, and scans itself
    claimed = [d["_id"] for d in app.store.claim("me#1", types, 5, 3, Spare(pause=time_passes))]
    # Then its scan counts from after the wait: the jobs are due by then
    assert claimed == ids


@pytest.mark.parametrize("list_age", [0.0, 120.0], ids=["list alive", "list expired"])
def test_a_claimer_that_scans_after_a_used_up_list_leaves_out_what_live_spares_hold(
    app: App, db: Any, monkeypatch: pytest.MonkeyPatch, list_age: float
) -> None:
    monkeypatch.setattr(shared, "SPARE_SECONDS", 60.0)  # a slow machine must not age the list
    ids = [Job.push(RecordJob(n=n)) for n in range(1 + SHARE + 7)]
    types = app.registry.types
    # Given one claimer scanned: it took the first job and keeps the next SHARE in its spare,
    # and a second claimer took the 7 others of the scan as its share, claiming one
    one = [d["_id"] for d in app.store.claim("one#1", types, 5, 1, Spare())]
    two = [d["_id"] for d in app.store.claim("two#1", types, 5, 1, Spare())]
    assert one == ids[:1] and two == ids[1 + SHARE : 2 + SHARE]
    (listed,) = db[app.store.candidates.name].find()
    assert listed["ids"] == [] and listed["out"] == ids
    ids += [Job.push(RecordJob(n=n)) for n in range(5)]  # pushed after that scan
    if list_age:  # the list, and so every spare taken from it, outlived its life
        old = app.store.now() - timedelta(seconds=list_age)
        db[app.store.candidates.name].update_many({}, {"$set": {"scanned": old}})
    # When a third claimer finds the list used up and scans
    three = [d["_id"] for d in app.store.claim("three#1", types, 5, 2, Spare())]
    # Then, while those spares live, it picks past what they hold (picking it would only
    # collide with its holders), and once they are dead it picks the queue's head again
    if list_age:
        assert three == ids[1:3]
    else:
        assert three == ids[1 + SHARE + 7 : 1 + SHARE + 9]


def test_a_claim_by_woken_ids_takes_only_those_still_ready_and_of_our_types(
    app: App, db: Any
) -> None:
    mine, taken = Job.push(RecordJob(n=1)), Job.push(RecordJob(n=2))
    template = db[app.store.jobs.name].find_one({"_id": mine})
    db[app.store.jobs.name].insert_one({**template, "_id": "foreign", "type": "OtherPoolJob"})
    app.store.claim_ids("other#1", app.registry.types, 5, [taken])
    claimed = app.store.claim_ids("me#1", app.registry.types, 5, ["foreign", taken, mine])
    assert [doc["_id"] for doc in claimed] == [mine]
    assert claimed[0]["lease_owner"] == "me#1" and claimed[0]["attempts"] == 1


def test_a_job_claimed_and_back_to_ready_at_once_is_claimed_by_the_next_scan(app: App) -> None:
    """The list records what the scanner claimed as handed out; a job retried at once is
    ready again while the list lives, and no event will name it again: left out of the
    scan, it would wait for a poll. The next scan that finds too little picks it anyway."""
    types = ["RecordJob"]
    flaky, other = Job.push(RecordJob(n=1)), Job.push(RecordJob(n=2))
    spare = Spare()
    first = [d["_id"] for d in app.store.claim("me#1", types, 30, 2, spare)]
    app.store.fail(flaky, "me#1", {"message": "flaky", "attempt": 1}, retry_in=0.0)

    again = [d["_id"] for d in app.store.claim("me#2", types, 30, 2, spare)]

    assert sorted(first) == sorted([flaky, other]) and again == [flaky]


def test_a_holder_whose_scan_outlasts_a_second_is_waited_for_not_scanned_beside(
    app: App, db: Any
) -> None:
    """The last scan read an empty queue in 2 ms; the holder's now reads a backlog that came
    due at once (1-1.2 s at 20,000 on this server). Its turn must outlast that: a waiter
    that scanned beside it after 1 s made three scans of one drain's start (see TURN_MIN)."""
    [Job.push(RecordJob(n=n)) for n in range(3 * SHARE)]
    scans, types = count_candidate_scans(app.store), app.registry.types
    long_ago = app.store.now() - timedelta(minutes=1)
    db[app.store.candidates.name].insert_one(
        {"_id": shared.list_key(types), "ids": [], "scan_seconds": 0.002, "scanned": long_ago}
    )
    turn = app.store._take_share(types, app.store.now(), 3, "holder")  # as its claim does
    assert shared._granted(turn, "holder") == ([], True)
    waits: list[float] = []
    first: list[Any] = []

    def the_holder_scans_for_2_s(seconds: float) -> bool:
        waits.append(seconds)
        app.store._offset += timedelta(seconds=0.5)  # the server's clock: 0.5 s per look
        if len(waits) == 4:  # 2 s on, the holder's scan ends: it publishes and claims
            app.store._offset -= timedelta(seconds=2)  # (the list is stamped by the server)
            list_ = db[app.store.candidates.name]
            list_.update_one({"_id": shared.list_key(types)}, {"$unset": {"scanning_until": ""}})
            first.extend(d["_id"] for d in app.store.claim("one#1", types, 5, 3, Spare()))
        return False

    second = app.store.claim("two#1", types, 5, 3, Spare(pause=the_holder_scans_for_2_s))
    assert len(waits) == 4, f"the waiter gave up on the holder after {len(waits)} looks"
    assert scans["n"] == 1, "only the holder scans"
    assert len(second) == 3 and not set(first) & {d["_id"] for d in second}


def test_a_claim_over_more_types_than_a_sorted_scan_may_explode_goes_in_runs(
    app: App, db: Any
) -> None:
    """Past 200 values of `$in` MongoDB sorts every match in memory: a node that runs 250
    types scans them in runs of 200 and takes the best of all, in queue order."""
    from tests.faulty import FaultyCollection
    from tests.plans import MAX_EXPLODED
    from workers.store.claims import CLAIM_SORT

    types = [f"Type{n:03d}Job" for n in range(250)]
    docs = [app.job_document(f"job-{n:03d}", t, {}, priority=("low" if n < 240 else "high"))
            for n, t in enumerate(types)]  # fmt: skip
    db[app.store.jobs.name].insert_many(docs)
    scanned: list[int] = []

    def record(name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        if name == "find" and kwargs.get("sort") == CLAIM_SORT:
            scanned.append(len(args[0]["type"]["$in"]))
        return None

    app.store.jobs = FaultyCollection(app.store.jobs, record, AssertionError)  # type: ignore[assignment]
    claimed = app.store.claim("node#1", types, 30, 10)
    due = app.store.next_due(types)

    assert scanned == [MAX_EXPLODED, 50]
    assert sorted(doc["_id"] for doc in claimed) == [f"job-{n:03d}" for n in range(240, 250)]
    assert due is not None
