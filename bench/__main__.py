"""`python -m bench [--runs 3] [--quick] [--out docs]`: every figure as the median of its runs,
printed as a table with ratios to the server's own rates, written as JSON and drawn as a PNG."""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import measure, peers, redis_peers, remote
from bench.server import database_url

CONFIGS = [(1, 1), (1, 4), (2, 4), (4, 4)]
# Other jobs beside a drain of 1,000 at 2 x 4: (scheduled for tomorrow, finished)
CROWDS = {"empty": (0, 0), "50k+20k": (50_000, 20_000), "100k+100k": (100_000, 100_000)}
PEER_CONFIGS = [(1, 4), (2, 4)]


def median(runs: int, figure: Callable[[], float]) -> float:
    return statistics.median(figure() for _ in range(runs))


def median_of(runs: int, figure: Callable[[], dict[str, float]]) -> dict[str, float]:
    results = [figure() for _ in range(runs)]
    return {key: statistics.median(r[key] for r in results) for key in results[0]}


def step(name: str) -> None:
    print(f"  measuring {name} ...", flush=True)


def interleaved(runs: int, figures: dict[str, Callable[[], float]]) -> dict[str, float]:
    """The median of each figure, measured round by round (each round measures every figure
    once): the server slows down as its oplog grows, so figures measured in blocks one after
    the other would be compared across different states of the server."""
    rounds = [{name: figure() for name, figure in figures.items()} for _ in range(runs)]
    return {name: statistics.median(r[name] for r in rounds) for name in figures}


def run(url: str, runs: int, backlogs: list[int], window: int) -> dict[str, Any]:
    results: dict[str, Any] = {"ceilings": {}, "push": {}, "throughput": {}, "pickup": {}}
    step("raw inserts and push, in turns")
    pushes = interleaved(
        runs,
        {
            "insert_one": lambda: measure.raw_insert_one(url),
            "push": lambda: measure.push_one(url),
            "insert_many": lambda: measure.raw_insert_many(url),
            "push_many": lambda: measure.push_many(url),
        },
    )
    results["ceilings"].update({k: pushes[k] for k in ("insert_one", "insert_many")})
    results["push"].update({k: pushes[k] for k in ("push", "push_many")})
    for backlog in backlogs:
        step(f"raw claim ceiling and throughput at backlog {backlog}, in turns")
        figures: dict[str, Callable[[], float]] = {
            "ceiling": functools.partial(measure.raw_claim, url, backlog, window)
        }
        for processes, threads in CONFIGS:
            drain = functools.partial(measure.throughput, url, processes, threads, backlog, window)
            figures[f"{processes}x{threads}@{backlog}"] = drain
            raw = functools.partial(measure.raw_concurrent, url, processes, threads)
            figures[f"raw {processes}x{threads}@{backlog}"] = raw
            found = functools.partial(measure.raw_found, url, processes, threads, backlog, window)
            figures[f"found {processes}x{threads}@{backlog}"] = found
        rates = interleaved(runs, figures)
        results["ceilings"][f"claim@{backlog}"] = rates.pop("ceiling")
        for kind, label in (("raw ", "concurrency"), ("found ", "found")):
            results.setdefault(label, {}).update(
                {
                    key.removeprefix(kind): rates.pop(key)
                    for key in list(rates)
                    if key.startswith(kind)
                }
            )
        results["throughput"].update(rates)
    results["crowded"] = crowded(url, runs, window, CROWDS)
    results["limits"] = limits_cost(url, runs, window)
    for streams in (True, False):
        step(f"pickup {'with' if streams else 'without'} change streams")
        results["pickup"]["streams" if streams else "polling"] = median_of(
            runs, functools.partial(measure.pickup, url, streams)
        )
    step("memory after 10,000 jobs")
    results["memory"] = median_of(1, lambda: measure.memory(url))
    results["remote"] = remote_figures(url, runs)
    return results


def remote_figures(url: str, runs: int, backlog: int = 1000) -> dict[str, Any]:
    """2 remote workers x 4 threads (`workers remote` through one `workers web`) against a
    local 2 x 4 tree, in turns, each draining `backlog` no-op jobs to the last; and the
    pickup of a remote worker waiting in a long poll."""
    step(f"remote 2 x 4 against local 2 x 4, {backlog} jobs to the last, in turns")
    rates = interleaved(
        runs,
        {
            "remote": functools.partial(remote.throughput, url, 2, 4, backlog, backlog),
            "local": functools.partial(measure.throughput, url, 2, 4, backlog, backlog),
        },
    )
    step("pickup by a remote worker waiting in POST /api/work")
    picked = median_of(runs, functools.partial(remote.pickup, url))
    return {**rates, "ratio": rates["remote"] / rates["local"], "pickup": picked}


def remote_lines(results: dict[str, Any]) -> list[str]:
    found = results.get("remote")
    if not found:
        return []
    pickup = found["pickup"]
    return [
        f"remote workers 2 x 4 over HTTP: {found['remote']:.0f} jobs/s, local 2 x 4: "
        f"{found['local']:.0f} jobs/s ({found['ratio']:.2f}x the local drain)",
        f"remote pickup (a worker waiting in POST /api/work): p50 {pickup['p50']:.0f} ms, "
        f"p95 {pickup['p95']:.0f} ms",
    ]


def crowded(url: str, runs: int, window: int, crowds: dict[str, tuple[int, int]]) -> dict[str, Any]:
    """A drain of 1,000 at 2 x 4, and pushes, next to scheduled and finished jobs; each
    crowd in turn within a round, so every crowd meets the server in the same state."""
    step("drains of 1,000 at 2 x 4 next to scheduled and finished jobs, in turns")
    drains = interleaved(
        runs,
        {
            name: _told(name, functools.partial(
                measure.crowded_throughput, url, 2, 4, 1000, window, *crowd))
            for name, crowd in crowds.items()
        },
    )  # fmt: skip
    step("push and push_many into those collections")
    pushes = {
        name: median_of(runs, functools.partial(measure.crowded_push, url, *crowd))
        for name, crowd in crowds.items()
    }
    step("the dashboard's overview and /metrics, cold, in those collections")
    pages = {
        name: measure.dashboard(url, *crowd) for name, crowd in crowds.items() if name != "50k+20k"
    }
    crowds_ = {k: list(v) for k, v in crowds.items()}
    return {"drain": drains, "push": pushes, "dashboard": pages, "crowds": crowds_}


def limits_cost(url: str, runs: int, window: int) -> dict[str, float]:
    """A 2 x 4 drain of 1,000 jobs of a type without limits, with and without two limited
    types held back at their caps beside it, in turns (measure.limited_throughput)."""
    step("flow control: a drain of 1,000 at 2 x 4 beside types held at their caps, in turns")
    return interleaved(
        runs,
        {
            name: _told(name, functools.partial(
                measure.limited_throughput, url, 2, 4, 1000, window, name == "limited"))
            for name in ("unlimited", "limited")
        },
    )  # fmt: skip


def limits_lines(results: dict[str, Any]) -> list[str]:
    found = results.get("limits")
    if not found:
        return []
    return [
        f"2x4 drain of 1,000 beside 2 types held at their caps {found['limited']:9.1f}   "
        f"{found['limited'] / found['unlimited']:5.2f}x without ({found['unlimited']:.1f})"
    ]


def _told(name: str, figure: Callable[[], float]) -> Callable[[], float]:
    """`figure`, printing what it measured as soon as it has (a crowd takes minutes)."""

    def told() -> float:
        value = figure()
        print(f"    beside {name}: {value:.1f} jobs/s", flush=True)
        return value

    return told


def crowded_lines(results: dict[str, Any]) -> list[str]:
    found = results.get("crowded")
    if not found:
        return []
    lines, drain, push = [], found["drain"], found["push"]
    for name in drain:
        lines.append(
            f"2x4 drain of 1,000 beside {name:9}     {drain[name]:9.1f}   "
            f"{drain[name] / drain['empty']:5.2f}x empty   push {push[name]['push']:6.0f} "
            f"({push[name]['push'] / push['empty']['push']:4.2f}x)  push_many "
            f"{push[name]['push_many']:6.0f} "
            f"({push[name]['push_many'] / push['empty']['push_many']:4.2f}x)  raw insert_one "
            f"{push[name]['insert_one'] / push['empty']['insert_one']:4.2f}x"
            + _many_line(push, name)
        )
    pages = found.get("dashboard", {})
    for name, page in pages.items():
        lines.append(
            f"dashboard, cold, beside {name:9} overview {page['overview_ms']:7.0f} ms "
            f"({page['overview_ms'] / pages['empty']['overview_ms']:5.1f}x empty)  /metrics "
            f"{page['metrics_ms']:7.0f} ms "
            f"({page['metrics_ms'] / pages['empty']['metrics_ms']:5.1f}x)  raw $group count "
            f"{page['raw_ms']:7.0f} ms"
        )
    return lines


def _many_line(push: dict[str, Any], name: str) -> str:
    """The raw `insert_many` ratio, where the run measured it (since 2026-12-06)."""
    if "insert_many" not in push[name]:
        return ""
    return f"  raw insert_many {push[name]['insert_many'] / push['empty']['insert_many']:4.2f}x"


def run_peers(url: str, runs: int, backlogs: list[int], window: int) -> dict[str, Any]:
    """Celery on the same Mongo-wire server (backlogs to 5,000: kombu's transport reads its
    whole queue per message there), then Celery, RQ and Dramatiq on a Redis of their own."""
    celery: dict[str, Any] = {"throughput": {}}
    for backlog in [b for b in backlogs if b <= 5000]:
        for processes, threads in PEER_CONFIGS:
            step(f"Celery {processes} x {threads} at backlog {backlog}")
            drain = functools.partial(peers.throughput, url, processes, threads, backlog, window)
            celery["throughput"][f"{processes}x{threads}@{backlog}"] = median(runs, drain)
    step("Celery pickup")
    celery["pickup"] = median_of(runs, lambda: peers.pickup(url))
    found = {"Celery (MongoDB)": celery}
    missing = redis_peers.available()
    if missing:
        raise SystemExit(f"--peers: {missing}")
    found.update(redis_peers.run(runs, backlogs, window, PEER_CONFIGS, median, median_of, step))
    return found


def table(results: dict[str, Any]) -> str:
    ceilings, lines = results["ceilings"], []
    push = results["push"]
    lines.append("figure                                   jobs/s     ratio")
    lines.append(f"raw insert_one                        {ceilings['insert_one']:9.0f}")
    lines.append(f"raw insert_many (1,000 a call)        {ceilings['insert_many']:9.0f}")
    lines.append(f"Job.push                              {push['push']:9.0f}   "
                 f"{push['push'] / ceilings['insert_one']:5.2f}x insert_one")  # fmt: skip
    lines.append(f"Job.push_many                         {push['push_many']:9.0f}   "
                 f"{push['push_many'] / ceilings['insert_many']:5.2f}x insert_many")  # fmt: skip
    lines += drain_lines("drain ", results["throughput"], ceilings)
    lines += scaling_lines(results)
    lines += alone_lines(results)
    lines += crowded_lines(results)
    lines += limits_lines(results)
    lines += remote_lines(results)
    for mode, p in results["pickup"].items():
        lines.append(
            f"pickup ({mode:8}) ms               p50 {p['p50']:6.1f}  p95 {p['p95']:6.1f}  "
            f"p99 {p['p99']:6.1f}"
        )
    for name, peer in results.get("peers", {}).items():
        for key, rate in peer["throughput"].items():
            config, backlog = key.split("@")
            lines.append(
                f"{name:17} {config} backlog {backlog:>5}  {rate:9.1f} jobs/s  "
                f"(ours {results['throughput'][key]:.1f})"
            )
        p = peer["pickup"]
        lines.append(
            f"{name} pickup (push → done) ms     p50 {p['p50']:6.1f}  p95 {p['p95']:6.1f}  "
            f"p99 {p['p99']:6.1f}"
        )
    m = results["memory"]
    lines.append(
        f"worker RSS MB                      idle {m['idle_mb']:.1f}  after 10,000 jobs "
        f"{m['after_mb']:.1f}  growth {m['growth_mb']:+.1f}"
    )
    return "\n".join(lines)


def drain_lines(label: str, throughput: dict[str, float], ceilings: dict[str, float]) -> list[str]:
    """One line per `processes x threads @ backlog`, with its ratio to the raw claim."""
    lines = []
    for key, rate in throughput.items():
        config, backlog = key.split("@")
        ceiling = ceilings[f"claim@{backlog}"]
        lines.append(
            f"{label + config:11} backlog {backlog:>5}           {rate:9.1f}   "
            f"{rate / ceiling:5.2f}x raw claim ({ceiling:.1f}/s)"
        )
    return lines


def alone_lines(results: dict[str, Any]) -> list[str]:
    """Ours ÷ the server alone at the same concurrency: claiming by `_id` (no finding), and
    with its one find of the jobs in queue order (`measure.raw_found`)."""
    lines = []
    ours, raw, found = (
        results["throughput"],
        results.get("concurrency", {}),
        results.get("found", {}),
    )
    for key in found:
        config, backlog = key.split("@")
        lines.append(
            f"{config:5} ÷ server alone, backlog {backlog:>5}: {ours[key] / raw[key]:4.2f}x "
            f"({raw[key]:.0f}/s by _id), {ours[key] / found[key]:4.2f}x with its one find "
            f"({found[key]:.0f}/s)"
        )
    return lines


def scaling_lines(results: dict[str, Any]) -> list[str]:
    """How throughput moves from 1 x 4 to p x t: ours, and the server's own (disjoint raw
    batches at the same concurrency), so a slowdown the engine imposes is told apart."""
    lines = []
    ours, raw = results["throughput"], results.get("concurrency", {})
    for key in raw:
        config, backlog = key.split("@")
        base = f"1x4@{backlog}"
        if key == base or base not in raw:
            continue
        lines.append(
            f"{config:5} ÷ 1x4, backlog {backlog:>5}: ours {ours[key] / ours[base]:4.2f}  "
            f"server alone {raw[key] / raw[base]:4.2f} ({raw[key]:.0f} vs {raw[base]:.0f} jobs/s)"
        )
    return lines


def chart(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 5, figsize=(25, 4.5))
    _alone_panel(axes[0], results)
    _peers_panel(axes[1], results)
    _crowded_panel(axes[2], results)
    _pickup_panel(axes[3], results)
    _remote_panel(axes[4], results)
    figure.suptitle(results["machine"], fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=100)


def _backlogs(results: dict[str, Any]) -> list[int]:
    return sorted({int(k.split("@")[1]) for k in results["throughput"]})


def _alone_panel(axis: Any, results: dict[str, Any]) -> None:
    """Ours ÷ the server alone (bars), and ÷ the server alone with its one find (dots)."""
    backlogs, width = _backlogs(results), 0.8 / len(_backlogs(results))
    raw, found = results.get("concurrency", {}), results.get("found", {})
    for i, backlog in enumerate(backlogs):
        keys = [f"{p}x{t}@{backlog}" for p, t in CONFIGS]
        xs = [n + i * width for n in range(len(CONFIGS))]
        if all(k in raw for k in keys):
            ratios = [results["throughput"][k] / raw[k] for k in keys]
            axis.bar(xs, ratios, width, label=f"backlog {backlog:,}")
        if all(k in found for k in keys):
            axis.scatter(xs, [results["throughput"][k] / found[k] for k in keys], marker="o",
                         color="black", s=12, zorder=3,
                         label="÷ server alone with its one find" if i == 0 else None)  # fmt: skip
    axis.axhline(0.9, color="red", linestyle=":", linewidth=1, label="target 0.9x")
    axis.set_xticks([n + width * (len(backlogs) - 1) / 2 for n in range(len(CONFIGS))])
    axis.set_xticklabels([f"{p} x {t}" for p, t in CONFIGS])
    axis.set_ylabel("our drain ÷ the server alone, same concurrency")
    axis.set_title("Throughput ÷ the server's own (processes x threads)")
    axis.legend(fontsize=7)


def _peers_panel(axis: Any, results: dict[str, Any]) -> None:
    """Jobs/s at 2 x 4 per backlog: ours and each peer (log scale: Redis is another store)."""
    backlogs = _backlogs(results)
    series = {"workers (MongoDB wire)": results["throughput"]}
    series.update({name: peer["throughput"] for name, peer in results.get("peers", {}).items()})
    width = 0.8 / len(series)
    for i, (name, rates) in enumerate(series.items()):
        xs = [n + i * width for n in range(len(backlogs))]
        axis.bar(xs, [rates.get(f"2x4@{b}", 0) for b in backlogs], width, label=name)
    axis.set_xticks([n + width * (len(series) - 1) / 2 for n in range(len(backlogs))])
    axis.set_xticklabels([f"backlog {b:,}" for b in backlogs])
    axis.set_yscale("log")
    axis.set_ylabel("completed jobs/s, 2 x 4")
    axis.set_title("Beside the queues users pick instead")
    axis.legend(fontsize=7)


def _crowded_panel(axis: Any, results: dict[str, Any]) -> None:
    """Drain, push and push_many beside other jobs, ÷ the same in an empty collection."""
    found = results.get("crowded")
    if not found:
        return
    names = list(found["drain"])
    figures = {
        "2 x 4 drain of 1,000": [found["drain"][n] / found["drain"]["empty"] for n in names],
        "push": [found["push"][n]["push"] / found["push"]["empty"]["push"] for n in names],
        "push_many": [found["push"][n]["push_many"] / found["push"]["empty"]["push_many"]
                      for n in names],
        "raw insert_one": [found["push"][n]["insert_one"] / found["push"]["empty"]["insert_one"]
                           for n in names],
    }  # fmt: skip
    for i, (label, ratios) in enumerate(figures.items()):
        axis.bar([n + (i - 1.5) * 0.2 for n in range(len(names))], ratios, 0.2, label=label)
    axis.axhline(0.9, color="red", linestyle=":", linewidth=1, label="target 0.9x")
    axis.set_xticks(range(len(names)))
    axis.set_xticklabels([f"beside {n}" for n in names], fontsize=8)
    axis.set_ylabel("÷ the same in an empty collection")
    axis.set_title("Beside scheduled + finished jobs")
    axis.legend(fontsize=7)


def _remote_panel(axis: Any, results: dict[str, Any]) -> None:
    """Remote 2 x 4 over HTTP ÷ the local 2 x 4 drain (same run, in turns), and the pickup
    of a remote worker waiting in a long poll."""
    found = results.get("remote")
    if not found:
        return
    axis.bar(
        [0], [found["ratio"]], 0.5, label=f"{found['remote']:.0f} ÷ {found['local']:.0f} jobs/s"
    )
    axis.axhline(0.5, color="red", linestyle=":", linewidth=1, label="target 0.5x")
    axis.set_xticks([0])
    axis.set_xticklabels(["remote 2 x 4 ÷ local 2 x 4\n(1,000 no-op jobs)"], fontsize=8)
    axis.set_ylabel("remote drain ÷ local drain")
    pickup = found["pickup"]
    axis.set_title(
        f"Remote workers over HTTP (pickup p50 {pickup['p50']:.0f} ms, p95 {pickup['p95']:.0f} ms)",
        fontsize=9,
    )
    axis.legend(fontsize=7)


def _pickup_panel(axis: Any, results: dict[str, Any]) -> None:
    pickups = {"change streams": results["pickup"]["streams"],
               "polling (1 s)": results["pickup"]["polling"]}  # fmt: skip
    for name, peer in results.get("peers", {}).items():
        pickups[f"{name}\n(push → done)"] = peer["pickup"]
    for q, offset in (("p50", -0.2), ("p95", 0.0), ("p99", 0.2)):
        axis.bar([n + offset for n in range(len(pickups))],
                 [p[q] for p in pickups.values()], 0.2, label=q)  # fmt: skip
    axis.set_xticks(range(len(pickups)))
    axis.set_xticklabels(list(pickups), fontsize=7, rotation=20)
    axis.set_ylabel("push → start, ms")
    axis.set_yscale("log")
    axis.set_title("Pickup on an idle service")
    axis.legend(fontsize=8)


def _redraw_with(out: Path, remote_found: dict[str, Any]) -> None:
    """The published chart, with these remote figures in its remote panel (they are their
    own ratio, measured in turns in one run)."""
    published = out / "bench.json"
    if not published.exists():
        return
    results = json.loads(published.read_text())
    results["remote"] = remote_found
    published.write_text(json.dumps(results, indent=2) + "\n")
    chart(results, out / "bench.png")
    print(f"redrew {out / 'bench.png'} with these remote figures")


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--runs", type=int, default=3, help="runs per figure; the median counts")
    parser.add_argument("--quick", action="store_true", help="one run, backlog 1,000 only")
    parser.add_argument("--window", type=int, default=300, help="jobs drained per throughput run")
    parser.add_argument("--peers", action="store_true", help="also Celery (the bench extra)")
    parser.add_argument("--out", default="docs", help="folder for bench.json and bench.png")
    parser.add_argument(
        "--crowded-only",
        action="store_true",
        help="only the drains and pushes next to scheduled and finished jobs (printed)",
    )
    parser.add_argument(
        "--crowds", default=",".join(CROWDS), help=f"with --crowded-only: some of {list(CROWDS)}"
    )
    parser.add_argument(
        "--limits-only",
        action="store_true",
        help="only what flow control costs a type without limits (printed, and written as "
        "bench-limits.json)",
    )
    parser.add_argument(
        "--remote-only",
        action="store_true",
        help="only remote workers against a local tree, and their pickup (printed, and "
        "written as bench-remote.json)",
    )
    args = parser.parse_args()
    if args.remote_only:
        with database_url() as (url, server):
            machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"
            print(f"on {machine}, {server}; median of {args.runs} run(s)")
            figures: dict[str, Any] = {"remote": remote_figures(url, args.runs)}
            print("\n".join(remote_lines(figures)))
        figures.update(machine=f"{machine}, {server}", runs=args.runs)
        Path(args.out).mkdir(parents=True, exist_ok=True)
        Path(args.out, "bench-remote.json").write_text(json.dumps(figures, indent=2) + "\n")
        _redraw_with(Path(args.out), figures["remote"])
        return
    if args.limits_only:
        with database_url() as (url, server):
            machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"
            print(f"on {machine}, {server}; median of {args.runs} run(s)")
            found: dict[str, Any] = {"limits": limits_cost(url, args.runs, args.window)}
            print("\n".join(limits_lines(found)))
        found.update(machine=f"{machine}, {server}", runs=args.runs)
        Path(args.out, "bench-limits.json").write_text(json.dumps(found, indent=2) + "\n")
        return
    if args.crowded_only:
        crowds = {name: CROWDS[name] for name in dict.fromkeys(["empty", *args.crowds.split(",")])}
        with database_url() as (url, server):
            print(f"on {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
                  f"{server}; median of {args.runs} run(s)")  # fmt: skip
            found = crowded(url, args.runs, args.window, crowds)
            print("\n".join(crowded_lines({"crowded": found})))
        return
    runs, backlogs = (1, [1000]) if args.quick else (args.runs, [1000, 5000, 20000])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    with database_url() as (url, server):
        machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {server}"
        print(f"benchmark on {machine}; median of {runs} run(s) per figure")
        results = run(url, runs, backlogs, args.window)
        if args.peers:
            if not peers.available():
                raise SystemExit("--peers needs Celery: pip install -e '.[bench]'")
            step("the peers")
            results["peers"] = run_peers(url, runs, backlogs, args.window)
    results["machine"] = machine
    results["runs"] = runs
    results["seconds"] = round(time.monotonic() - started)
    print(table(results))
    (out / "bench.json").write_text(json.dumps(results, indent=2) + "\n")
    chart(results, out / "bench.png")
    print(f"wrote {out / 'bench.json'} and {out / 'bench.png'} in {results['seconds']} s")


if __name__ == "__main__":
    main()
