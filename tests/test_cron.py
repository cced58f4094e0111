"""Cron: schedules, missed-tick policies, one leader, one job per tick."""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from tests.conftest import ROOT, run_workers, wait_for, workers_env
from tests.cronjobs import EverySecondJob, ReportJob
from tests.headless_node import HeadlessNode
from workers import boot, shutdown
from workers.app import App
from workers.cron import Schedule, Scheduler, due_ticks, iso, schedules_of
from workers.errors import CronError
from workers.registry import discover
from workers.settings import Settings

T0 = dt.datetime(2026, 11, 23, 12, 0, 0, tzinfo=dt.UTC)
SECONDS = dt.timedelta(seconds=1)


def test_setup_cron_gives_an_expression_a_list_or_expression_params_pairs() -> None:
    (every_second,) = schedules_of(EverySecondJob)
    assert (every_second.expression, every_second.params, every_second.timezone) == (
        "* * * * * *",
        {},
        "UTC",
    )
    assert every_second.next_after(T0) == T0 + SECONDS  # the sixth field is seconds
    eu, us = schedules_of(ReportJob)
    assert (eu.params, us.params) == ({"region": "eu"}, {"region": "us"})
    assert eu.id != us.id and eu.missed == "all"
    # 09:00 in Paris is 08:00 UTC in November
    assert eu.next_after(T0) == dt.datetime(2026, 11, 24, 8, 0, tzinfo=dt.UTC)


@pytest.mark.parametrize(
    ("package", "message"),
    [
        ("cron_expression", r"NightlyJob\.setup_cron\(\): '61 \* \* \* \*' is not a valid cron"),
        ("cron_raises", r"NightlyJob\.setup_cron\(\) raised KeyError: 'CRON_SETTING'"),
        ("cron_timezone", r"NightlyJob\.timezone 'Mars/Olympus_Mons' is not an IANA time zone"),
        ("cron_never", r"NightlyJob\.setup_cron\(\): '0 0 31 2 \*' never fires"),
        (
            "cron_params",
            r"NightlyJob\.setup_cron\(\): params of '0 3 \* \* \*' are not BSON: "
            r"params\.regions",
        ),
    ],
)
def test_a_bad_schedule_stops_startup_naming_the_class(package: str, message: str) -> None:
    with pytest.raises(CronError, match=rf"tests\.badjobs\.{package}\.jobs\.{message}"):
        discover([f"tests.badjobs.{package}"])


@pytest.mark.processes
def test_the_cli_refuses_to_start_with_a_bad_schedule(tmp_path: Path) -> None:
    settings = tmp_path / "settings.json"
    settings.write_text('{"jobs": ["tests.badjobs.cron_timezone"]}')
    done = run_workers("--headless", "--settings", str(settings), cwd=tmp_path)
    assert done.returncode == 1
    assert done.stderr.strip().count("\n") == 0
    assert "NightlyJob.timezone 'Mars/Olympus_Mons'" in done.stderr


# -- missed ticks -----------------------------------------------------------------------

GRACE = dt.timedelta(seconds=10)
EVERY_MINUTE = "* * * * *"


@pytest.mark.parametrize(
    ("policy", "fired", "skipped"),
    [
        ("latest", [T0 + dt.timedelta(minutes=10)], 9),
        ("all", [T0 + dt.timedelta(minutes=m) for m in range(1, 11)], 0),
        ("none", [], 10),
    ],
)
def test_ticks_missed_for_longer_than_the_grace_follow_the_policy(
    policy: str, fired: list[dt.datetime], skipped: int
) -> None:
    schedule = Schedule("CleanUpJob", EVERY_MINUTE, missed=policy)
    now = T0 + dt.timedelta(minutes=10, seconds=30)  # the 10 ticks since T0 are all > 10 s late
    assert due_ticks(schedule, T0, now, GRACE) == (fired, skipped)


@pytest.mark.parametrize("policy", ["latest", "all", "none"])
def test_ticks_late_by_less_than_the_grace_always_fire(policy: str) -> None:
    schedule = Schedule("EverySecondJob", "* * * * * *", missed=policy)
    ticks, skipped = due_ticks(schedule, T0, T0 + 5 * SECONDS, GRACE)
    assert ticks == [T0 + n * SECONDS for n in range(1, 6)] and skipped == 0


def test_after_a_long_gap_latest_runs_once_for_the_gap_when_nothing_is_on_time() -> None:
    schedule = Schedule("EverySecondJob", "* * * * * *")
    ticks, skipped = due_ticks(schedule, T0, T0 + 60 * SECONDS, GRACE)
    assert ticks == [T0 + n * SECONDS for n in range(51, 61)]  # on time: the gap is made up
    assert skipped == 50


# -- the leader ----------------------------------------------------------------------------


@pytest.fixture
def cron_app(make_settings: Callable[..., Settings]) -> Any:
    app = boot(settings=make_settings(jobs=["tests.cronjobs"], workers__queue={"lease": 3}))
    yield app
    shutdown()


def every_second(app: App, owner: str) -> Scheduler:
    schedule = Schedule("EverySecondJob", "* * * * * *")
    app.store.mark_fired(schedule.id, T0)
    return Scheduler(app, owner, [schedule])


def tick_jobs(app: App) -> list[dict[str, Any]]:
    return list(app.store.jobs.find({"type": "EverySecondJob"}).sort("params.tick", 1))


def test_only_the_leader_fires_and_each_tick_becomes_one_ordinary_job(cron_app: App) -> None:
    first, second = every_second(cron_app, "node-a"), every_second(cron_app, "node-b")
    assert len(first.step(now=T0 + 3 * SECONDS)) == 3
    assert second.step(now=T0 + 3 * SECONDS) == [] and not second.leading
    jobs = tick_jobs(cron_app)
    assert [j["params"]["tick"] for j in jobs] == [iso(T0 + n * SECONDS) for n in (1, 2, 3)]
    assert jobs[0]["params"]["tick"] == "2026-11-23T12:00:01Z"
    assert jobs[0]["unique_key"] == "cron:EverySecondJob@2026-11-23T12:00:01Z"
    assert {j["status"] for j in jobs} == {"ready"}
    assert cron_app.store.leader()["owner"] == "node-a"  # type: ignore[index]


def test_schedule_params_reach_the_job_next_to_the_tick(cron_app: App) -> None:
    eu, us = schedules_of(ReportJob)
    for schedule in (eu, us):
        cron_app.store.mark_fired(schedule.id, T0)
    Scheduler(cron_app, "node-a", [eu, us]).step(now=T0 + dt.timedelta(days=1))
    params = sorted(j["params"]["region"] for j in cron_app.store.jobs.find({"type": "ReportJob"}))
    assert params == ["eu", "us"]
    ticks = {j["params"]["tick"] for j in cron_app.store.jobs.find({"type": "ReportJob"})}
    assert ticks == {"2026-11-24T08:00:00Z"}


def test_two_leaders_overlapping_cannot_fire_one_tick_twice(cron_app: App) -> None:
    # A leader that stalled past its lease and a new one both act on the same ticks:
    # the unique index on (class, tick) refuses the second job for every tick.
    stalled, current = every_second(cron_app, "stalled"), every_second(cron_app, "current")
    schedule = stalled.schedules[0]
    assert len(stalled._fire(schedule, T0, T0 + 5 * SECONDS)) == 5
    assert current._fire(schedule, T0, T0 + 5 * SECONDS) == []
    assert len(tick_jobs(cron_app)) == 5


def test_a_leader_whose_clock_runs_ahead_fires_early_at_worst_never_twice(cron_app: App) -> None:
    # Workers read "now" from the server's clock (corrected for skew), so this takes a
    # clock error that correction missed: the leader believes it is 5 s later than it is.
    ahead = every_second(cron_app, "ahead")
    ahead.step(now=T0 + 5 * SECONDS)
    ahead.stop()  # resigns
    honest = every_second(cron_app, "honest")
    assert honest._fire(honest.schedules[0], T0, T0 + 5 * SECONDS) == []  # refused: fired
    for n in range(1, 31):
        honest.step(now=T0 + n * SECONDS)
    jobs = tick_jobs(cron_app)
    assert [j["params"]["tick"] for j in jobs] == [iso(T0 + n * SECONDS) for n in range(1, 31)]


def test_a_resigned_leader_is_replaced_at_once(cron_app: App) -> None:
    first, second = every_second(cron_app, "first"), every_second(cron_app, "second")
    first.step(now=T0 + SECONDS)
    assert second.step(now=T0 + 2 * SECONDS) == []
    first.stop()
    assert len(second.step(now=T0 + 2 * SECONDS)) == 1


def test_a_schedule_seen_for_the_first_time_fires_nothing_from_the_past(cron_app: App) -> None:
    schedule = Schedule("EverySecondJob", "* * * * * *")
    scheduler = Scheduler(cron_app, "node", [schedule])
    assert scheduler.step(now=T0) == []
    assert len(scheduler.step(now=T0 + 2 * SECONDS)) == 2


# -- three nodes, real processes ---------------------------------------------------------------


def leader_pid(app_db: Any) -> int | None:
    doc = app_db["workers.cron"].find_one({"_id": "leader"})
    if doc is None or doc["expires"] < server_now(app_db):
        return None
    return int(doc["owner"].split(":")[1])


def server_now(app_db: Any) -> dt.datetime:
    now: dt.datetime = app_db.client.admin.command("hello")["localTime"]
    return now.replace(tzinfo=dt.UTC) if now.tzinfo is None else now


def skewed(pid: int) -> bool:
    return b"WORKERS_TEST_CLOCK_SKEW=45" in Path(f"/proc/{pid}/environ").read_bytes()


def ticks_fired(app_db: Any) -> int:
    return int(app_db["workers.jobs"].count_documents({"type": "EverySecondJob"}))


@pytest.mark.processes
@pytest.mark.slow
def test_three_nodes_fire_every_tick_exactly_once_through_kill_9_and_sigterm(
    settings_file: Callable[..., Path], tmp_path: Path, db: Any
) -> None:
    path = settings_file(
        jobs=["tests.cronjobs"],
        cluster__count=1,
        workers__count=2,
        workers__queue={"lease": 3, "poll_interval": 0.1},
        workers__cron={"log": True},
    )
    skewed_env = workers_env(
        PYTHONPATH=f"{ROOT / 'tests' / 'skewed_clock'}:{ROOT}", WORKERS_TEST_CLOCK_SKEW="45"
    )
    folders = [tmp_path / name for name in ("skewed", "a", "b")]
    for folder in folders:
        folder.mkdir()
    with contextlib.ExitStack() as nodes:
        # the node whose clock is 45 s ahead starts first, so it is the first leader
        trees = [nodes.enter_context(HeadlessNode(path, folders[0], env=skewed_env))]
        first = wait_for(lambda: leader_pid(db), timeout=60, what="a first leader")
        assert skewed(first)
        trees += [nodes.enter_context(HeadlessNode(path, folder)) for folder in folders[1:]]
        wait_for(lambda: ticks_fired(db) >= 8, timeout=60, what="8 ticks")

        os.kill(first, signal.SIGKILL)
        wait_for(lambda: (p := leader_pid(db)) and p != first, timeout=30, what="a new leader")
        after_kill = ticks_fired(db)
        wait_for(lambda: ticks_fired(db) >= after_kill + 8, timeout=60, what="8 more ticks")

        second = leader_pid(db)
        assert second is not None
        os.kill(second, signal.SIGTERM)  # resigns, then exits; supervisord starts it again
        wait_for(lambda: (p := leader_pid(db)) and p != second, timeout=30, what="a third leader")
        after_term = ticks_fired(db)
        wait_for(lambda: ticks_fired(db) >= max(after_term + 8, 32), timeout=60, what="the rest")
        for tree in trees:
            assert tree.stop() == 0
        output = "".join(tree.output() for tree in trees)

    jobs = list(db["workers.jobs"].find({"type": "EverySecondJob"}))
    ticks = sorted(dt.datetime.fromisoformat(j["params"]["tick"]) for j in jobs)
    print(f"{len(ticks)} ticks from {iso(ticks[0])} to {iso(ticks[-1])}, {len(jobs)} jobs")
    assert len(ticks) >= 30
    assert len(set(ticks)) == len(ticks), "a tick was fired twice"
    expected = [ticks[0] + n * SECONDS for n in range(len(ticks))]
    assert ticks == expected, "a tick is missing"
    # no job ran before its tick by the server's clock, not even those the skewed node fired
    for run in db.ticks.find():
        assert run["server_time"] >= dt.datetime.fromisoformat(run["tick"]) - dt.timedelta(
            milliseconds=50
        )
    # every tick is logged by its leader, but the one leader killed with SIGKILL may die
    # between inserting a tick and writing its line: at most one line can be lost
    assert output.count("cron fired") >= len(ticks) - 1
    assert 'action="cron_fired"' in output and "node=" in output


@pytest.mark.processes
def test_the_cron_command_lists_schedules_next_ticks_and_the_leader(
    settings_file: Callable[..., Path], tmp_path: Path, make_settings: Callable[..., Settings]
) -> None:
    path = settings_file(jobs=["tests.cronjobs"])
    # a lease long enough to outlast the command's start on a busy machine (3 s did not)
    app = boot(settings=make_settings(jobs=["tests.cronjobs"], workers__queue={"lease": 120}))
    try:
        Scheduler(app, "host:123:abc", [Schedule("EverySecondJob", "* * * * * *")]).step()
    finally:
        shutdown()
    done = run_workers("cron", "--settings", str(path), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("leader: host:123:abc since ")
    assert any(x.startswith("EverySecondJob  '* * * * * *'") and "next=" in x for x in lines)
    assert sum(x.startswith("ReportJob  '0 9 * * *'") for x in lines) == 2


@pytest.mark.processes
def test_the_cron_command_says_when_there_are_no_schedules(
    settings_file: Callable[..., Path], tmp_path: Path
) -> None:
    done = run_workers("cron", "--settings", str(settings_file()), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "no schedules: no job class in ['tests.jobs'] defines setup_cron"
    ]  # and no "leader: none" that would read as if cron were broken


def test_cron_disable_keeps_a_node_out_of_the_leader_race(
    make_settings: Callable[..., Settings],
) -> None:
    from workers.worker import Worker

    app = boot(settings=make_settings(jobs=["tests.cronjobs"], workers__cron={"disable": True}))
    try:
        assert app.registry.schedules and Worker(app)._start_cron() is None
    finally:
        shutdown()


def test_a_schedule_whose_jobs_cannot_be_built_stops_the_scheduler_at_startup(
    make_settings: Callable[..., Settings],
) -> None:
    app = boot(settings=make_settings(jobs=["tests.badjobs.cron_job_options"]))
    try:
        with pytest.raises(CronError, match=r"'0 3 \* \* \*' of NightlyJob cannot fire: .*timeout"):
            Scheduler(app, "node-a", app.registry.schedules)
    finally:
        shutdown()


def test_one_failing_schedule_is_logged_and_the_others_keep_firing(
    cron_app: App, caplog: pytest.LogCaptureFixture
) -> None:
    scheduler = every_second(cron_app, "node-a")
    broken = Schedule("EverySecondJob", "0 0 31 2 *", {"broken": True})  # past the startup check
    cron_app.store.mark_fired(broken.id, T0)
    scheduler.schedules.insert(0, broken)
    pushed = scheduler.step(now=T0 + 3 * SECONDS)
    assert len(pushed) == 3
    failures = [r for r in caplog.records if getattr(r, "action", "") == "cron_schedule_failed"]
    assert [getattr(r, "schedule", None) for r in failures] == [broken.id]


def test_a_leader_with_nothing_missed_logs_no_skips(
    cron_app: App, caplog: pytest.LogCaptureFixture
) -> None:
    hourly = Schedule("EverySecondJob", "0 * * * *")
    assert due_ticks(hourly, T0 + 60 * SECONDS, T0 + 90 * SECONDS, GRACE) == ([], 0)
    cron_app.store.mark_fired(hourly.id, T0 + 60 * SECONDS)
    scheduler = Scheduler(cron_app, "node-a", [hourly])
    assert scheduler.step(now=T0 + 90 * SECONDS) == []
    assert scheduler.leading
    assert not [r for r in caplog.records if getattr(r, "action", "") == "cron_skipped"]


def test_no_node_leads_cron_without_the_unique_tick_index(
    cron_app: App, caplog: pytest.LogCaptureFixture
) -> None:
    cron_app.store.jobs.drop_index("unique_key")
    scheduler = every_second(cron_app, "node-a")
    assert scheduler.step(now=T0 + 3 * SECONDS) == []
    assert not scheduler.leading and cron_app.store.leader() is None
    assert [getattr(r, "action", "") for r in caplog.records].count("cron_refused") == 1
    cron_app.store.ensure_indexes()
    scheduler = every_second(cron_app, "node-a")
    assert len(scheduler.step(now=T0 + 3 * SECONDS)) == 3


# -- daylight saving time -------------------------------------------------------------


def paris(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> dt.datetime:
    paris_time = dt.datetime(year, month, day, hour, minute, tzinfo=ZoneInfo("Europe/Paris"))
    return paris_time.astimezone(dt.UTC)


def test_a_fixed_local_time_fires_once_on_the_autumn_change_day() -> None:
    daily = Schedule("ReportJob", "30 2 * * *", timezone="Europe/Paris")
    ticks = list(daily.ticks(paris(2026, 10, 24, 12), paris(2026, 10, 26, 12)))
    assert ticks == [paris(2026, 10, 25, 2, 30), paris(2026, 10, 26, 2, 30)]
    # asked again from just after the first 02:30, as the next leader step does
    after_first = paris(2026, 10, 25, 2, 31)
    assert daily.next_after(after_first) == paris(2026, 10, 26, 2, 30)
    assert daily.recent_ticks(paris(2026, 10, 24, 12), paris(2026, 10, 26, 12), 10) == ticks


def test_an_hourly_schedule_fires_in_both_copies_of_the_repeated_hour() -> None:
    hourly = Schedule("ReportJob", "0 * * * *", timezone="Europe/Paris")
    start = dt.datetime(2026, 10, 24, 23, 30, tzinfo=dt.UTC)  # 01:30 CEST
    ticks = list(hourly.ticks(start, start + dt.timedelta(hours=3)))
    local = [t.astimezone(ZoneInfo("Europe/Paris")).strftime("%H:%M %Z") for t in ticks]
    assert local == ["02:00 CEST", "02:00 CET", "03:00 CET"]


def test_a_local_time_that_does_not_exist_in_spring_fires_when_the_clock_jumps() -> None:
    daily = Schedule("ReportJob", "30 2 * * *", timezone="Europe/Paris")
    ticks = list(daily.ticks(paris(2026, 3, 28, 12), paris(2026, 3, 30, 12)))
    assert ticks == [paris(2026, 3, 29, 3, 0), paris(2026, 3, 30, 2, 30)]
