"""`make bench`: how fast the whole running system handles cancellations, against the practical
limit of this machine for the same topology, measured in the same run.

1. Baseline (tests/bench/baseline.py): the six services as bare aiokafka + asyncpg loops over the
   same topics, with the same fan-out and consumer transactions per cancellation, driven by the
   same stories: cancellations/s on a burst.
2. The system (six services as processes, real SMTP server, local SMS provider, sandbox card
   gateway): cancellations/s on a burst of realistic traffic, per-service throughput, every effect
   checked exactly once; then a profile (py-spy) of every service on a second burst.
3. Latency request → last effect at 20 % of the system's maximum rate (or --rate), for the system
   and the baseline alike.
4. Variants that switch one optimisation off (or scale out) to show what each buys.

Every phase records the CPU of each process and the machine's idle share (tests/bench/cpu.py).
Writes bench-results/bench-<time>.json and .png; prints a summary whose last line is
`ratio: <system cancellations/s ÷ baseline cancellations/s>`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from shared.testing import SERVICE_MODULES, group_state
from tests.load import scenario as scenarios
from tests.load.checker import Collector, check, outbox_backlog, percentile
from tests.load.driver import Progress, prepare, send_requests, wait_complete
from tests.load.system import System

from . import profile
from .baseline import Baseline
from .cpu import CpuMeter
from .statements import StatementMeter

VARIANTS = {
    "set-based handlers called record by record (CONSUMER_SET_BASED=false)": ({"CONSUMER_SET_BASED": "false"}, {}),
    "a new SMTP connection per email (SMTP_POOL_SIZE=0)": ({"SMTP_POOL_SIZE": "0"}, {}),
    "the standard library's JSON, not orjson (FAST_JSON=false)": ({"FAST_JSON": "false"}, {}),
    "the garbage collector walks every object (GC_FREEZE=false)": ({"GC_FREEZE": "false"}, {}),
    "asyncio's own event loop, not uvloop (EVENT_LOOP=asyncio)": ({"EVENT_LOOP": "asyncio"}, {}),
    "a savepoint, an inbox claim and an outbox write per record (CONSUMER_SAVEPOINT_PER_RECORD=true)": (
        {"CONSUMER_SAVEPOINT_PER_RECORD": "true"},
        {},
    ),
    "billing captures one charge at a time (CAPTURE_CONCURRENCY=1)": ({"CAPTURE_CONCURRENCY": "1"}, {}),
    "one record per consumer transaction (CONSUMER_MAX_RECORDS=1)": ({"CONSUMER_MAX_RECORDS": "1"}, {}),
    "relay publishes one row per round trip (RELAY_BATCH_SIZE=1)": ({"RELAY_BATCH_SIZE": "1"}, {}),
    "two replicas of booking, billing and notification": ({}, {"booking": 2, "billing": 2, "notification": 2}),
}


def _summary(latencies: list[float]) -> dict[str, float | None]:
    return {f"p{p}": percentile(latencies, p) for p in (50, 95, 99)}


def _pids(system: System) -> dict[str, list[int]]:
    return {
        s: [p.proc.pid for p in procs if p.proc is not None and p.proc.poll() is None]
        for s, procs in system.procs.items()
    }


async def burst(system: System, size: int, seed: int, label: str, *, profile_seconds: float = 0.0) -> dict:
    """A burst of `size` stories sent as fast as possible; with `profile_seconds`, every service is
    profiled (py-spy) from the first request on, for that long."""
    collector = Collector(system.bootstrap)
    await collector.start()
    profiles: dict = {}
    try:
        scenario = scenarios.build(size, seed=seed)
        await prepare(system.bootstrap, system.admin_dsn, scenario)
        before = system.processed()
        progress = Progress(f"{label}: sending", size)
        running = (
            profile.start(
                {s: pids[0] for s, pids in _pids(system).items() if pids},
                profile_seconds,
                system.log_dir / f"profile-{label}",
            )
            if profile_seconds
            else {}
        )
        async with StatementMeter(system.admin_dsn) as statements:
            with CpuMeter(lambda: _pids(system)) as cpu:
                started = time.monotonic()
                sent = await send_requests(system.bootstrap, scenario, rate=None, on_sent=progress.update)
                await wait_complete(scenario, collector, timeout=600, label=f"{label}: effects")
                elapsed = time.monotonic() - started
        after = system.processed()
        if running:
            profiles = await asyncio.to_thread(profile.finish, running, profile_seconds)
        await asyncio.sleep(2)  # anything still to come (a duplicate) arrives
        verdict = check(scenario, collector, sent, poison=[])
    finally:
        await collector.stop()
    return {
        "stories": size,
        "seconds": round(elapsed, 2),
        "throughput_per_s": round(size / elapsed, 2),
        "per_service_messages_per_s": {s: round((after.get(s, 0) - before.get(s, 0)) / elapsed, 1) for s in after},
        "messages_per_cancellation": round(sum(after.get(s, 0) - before.get(s, 0) for s in after) / size, 2),
        "lost": verdict.lost,
        "duplicated": verdict.duplicated,
        "out_of_order": verdict.out_of_order,
        "unexpected": verdict.unexpected,
        "cpu": cpu.result,
        "statements": statements.result(size),
        **({"profile": profiles} if profiles else {}),
    }


async def at_rate(system: System, count: int, rate: float, seed: int) -> dict:
    collector = Collector(system.bootstrap)
    await collector.start()
    try:
        scenario = scenarios.build(count, seed=seed)
        await prepare(system.bootstrap, system.admin_dsn, scenario)
        progress = Progress(f"latency at {rate:g}/s: sending", count)
        with CpuMeter(lambda: _pids(system)) as cpu:
            sent = await send_requests(system.bootstrap, scenario, rate=rate, on_sent=progress.update)
            await wait_complete(scenario, collector, timeout=300, label="latency: effects")
        await asyncio.sleep(2)
        verdict = check(scenario, collector, sent, poison=[])
    finally:
        await collector.stop()
    return {
        "offered_per_s": rate,
        "stories": count,
        "latency_ms": _summary(verdict.latencies_ms),
        "latencies_ms": verdict.latencies_ms,
        "lost": verdict.lost,
        "duplicated": verdict.duplicated,
        "cpu": cpu.result,
    }


async def baseline_phase(
    system: System, count: int, rate: float | None, seed: int, label: str, *, repeat: int = 1
) -> dict:
    """The bare topology, started for this phase alone (so it is idle during no other); measured
    `repeat` times, the run of median throughput reported (with every run's throughput)."""
    runs = []
    async with Baseline(system.bootstrap, system.admin_dsn) as baseline:
        await baseline.measure(50, None, seed=seed + 100)  # warm up: group joins, connections
        for i in range(repeat):
            async with StatementMeter(system.admin_dsn) as statements:
                with CpuMeter(lambda: baseline.pids) as cpu:
                    r = await baseline.measure(count, rate, seed=seed + i, progress=Progress(label, count))
            runs.append(
                {
                    "stories": r.stories,
                    "seconds": round(r.seconds, 2),
                    "throughput_per_s": round(r.throughput_per_s, 2),
                    "latency_ms": _summary(r.latencies_ms),
                    "latencies_ms": r.latencies_ms,
                    "lost": r.lost,
                    "duplicated": r.duplicated,
                    "cpu": cpu.result,
                    "statements": statements.result(r.stories),
                }
            )
    return median_run(runs)


def median_run(runs: list[dict]) -> dict:
    """The run of median throughput, with every run's throughput beside it: one burst of a
    thousand stories lasts seconds, so a single run says as much about the machine's other
    work at that moment as about the code."""
    chosen = sorted(runs, key=lambda r: r["throughput_per_s"])[len(runs) // 2]
    faults = {k: sum(r[k] for r in runs) for k in ("lost", "duplicated", "out_of_order", "unexpected") if k in chosen}
    return chosen | faults | {"runs_throughput_per_s": [r["throughput_per_s"] for r in runs]}


def _phases(result: dict) -> dict[str, dict]:
    """Every phase's CPU figures, by a short name."""
    phases = {
        "baseline burst": result["baseline"]["burst"]["cpu"],
        "system burst": result["system"]["burst"]["cpu"],
        "system latency": result["system"]["latency"]["cpu"],
        "baseline latency": result["baseline"]["latency"]["cpu"],
    }
    for name, v in result["variants"].items():
        phases[f"variant: {name}"] = v["cpu"]
    return phases


def chart(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, middle, right) = plt.subplots(1, 3, figsize=(20, 6), gridspec_kw={"width_ratios": [1, 1.2, 1.4]})
    rate = result["latency_rate"]
    for label, values in (
        ("system: request → last effect", result["system"]["latency"]["latencies_ms"]),
        ("baseline: same topology, bare", result["baseline"]["latency"]["latencies_ms"]),
    ):
        ordered = sorted(values)
        if ordered:
            left.plot(ordered, [i / len(ordered) for i in range(1, len(ordered) + 1)], label=label)
    left.set_xscale("log")
    left.set_xlabel("latency (ms, log scale)")
    left.set_ylabel("share of requests")
    left.set_title(f"Latency at {rate:g} requests/s")
    left.legend()
    names = ["baseline (same topology)", "system"] + [f"variant: {k}" for k in result["variants"]]
    values = [result["baseline"]["burst"]["throughput_per_s"], result["system"]["burst"]["throughput_per_s"]] + [
        v["throughput_per_s"] for v in result["variants"].values()
    ]
    middle.barh(range(len(names)), values, color=["grey", "tab:blue"] + ["tab:orange"] * len(result["variants"]))
    middle.set_yticks(range(len(names)), [n if len(n) < 48 else n[:45] + "…" for n in names], fontsize=8)
    middle.invert_yaxis()
    middle.set_xlabel("cancellations per second")
    middle.set_title("Sustained throughput (burst)")
    phases = _phases(result)
    processes = sorted({p for c in phases.values() for p in c["process_cpu_percent"]})
    lefts = [0.0] * len(phases)
    cmap = plt.get_cmap("tab20")
    for i, proc in enumerate(processes):
        widths = [c["process_cpu_percent"].get(proc, 0.0) for c in phases.values()]
        right.barh(range(len(phases)), widths, left=lefts, label=proc, color=cmap(i % 20))
        lefts = [a + b for a, b in zip(lefts, widths, strict=True)]
    for y, c in enumerate(phases.values()):
        right.text(lefts[y] + 2, y, f"idle {c['machine_idle_share']:.0%}", va="center", fontsize=7)
    right.set_yticks(range(len(phases)), [n if len(n) < 40 else n[:37] + "…" for n in phases], fontsize=8)
    right.invert_yaxis()
    right.set_xlabel(f"CPU % (100 = one core; {phases['system burst']['cores']} cores)")
    right.set_title("CPU per process and the machine's idle share, per phase")
    right.legend(fontsize=6, loc="lower right", ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


async def main(args: argparse.Namespace) -> int:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    system = System.from_environment(out / f"logs-{stamp}")
    result: dict = {
        "config": vars(args) | {"cpus": os.cpu_count()},
        "started": stamp,
        "loadavg_before": os.getloadavg(),
    }

    busy = {s: n for s in SERVICE_MODULES if (n := (await group_state(system.bootstrap, s))[1])}
    if busy:
        # Their partitions would be shared with the bench's services: the measure and the checks
        # would both be wrong.
        print(f"make bench: consumer groups already have members ({busy}); stop make run (or the other run) first")
        return 2

    result["baseline"] = {
        "burst": await baseline_phase(system, args.size, None, seed=20, label="baseline: burst", repeat=args.repeat)
    }

    system.start()
    try:
        await burst(system, 50, seed=1, label="warm-up")
        result["system"] = {
            "burst": median_run(
                [await burst(system, args.size, seed=20 + i, label=f"burst {i + 1}") for i in range(args.repeat)]
            )
        }
        sys_tp = result["system"]["burst"]["throughput_per_s"]
        if args.profile:
            seconds = min(30.0, max(3.0, 0.8 * args.size / sys_tp))
            profiled = await burst(system, args.size, seed=6, label="profiled", profile_seconds=seconds)
            result["system"]["profile"] = {
                "seconds": round(seconds, 1),
                "throughput_per_s": profiled["throughput_per_s"],
                "cpu": profiled["cpu"],
                "services": profiled.get("profile", {}),
            }
        rate = args.rate or round(max(1.0, 0.2 * sys_tp), 1)
        result["latency_rate"] = rate
        result["system"]["latency"] = await at_rate(system, args.latency_count, rate, seed=3)
    finally:
        system.stop()
    result["baseline"]["latency"] = await baseline_phase(
        system, args.latency_count, rate, seed=3, label=f"baseline: {rate:g}/s"
    )

    result["variants"] = {}
    for name, (env, replicas) in VARIANTS.items() if args.variants else ():
        variant = System.from_environment(out / f"logs-{stamp}", env=env, replicas=replicas).start()
        try:
            await burst(variant, 30, seed=4, label="warm-up")
            result["variants"][name] = await burst(variant, args.size, seed=5, label="variant")
        finally:
            variant.stop()

    result["outbox_backlog_after"] = await outbox_backlog(system.admin_dsn)
    result["loadavg_after"] = os.getloadavg()
    base_tp, base_lat = result["baseline"]["burst"]["throughput_per_s"], result["baseline"]["latency"]["latency_ms"]
    sys_tp, sys_lat = result["system"]["burst"]["throughput_per_s"], result["system"]["latency"]["latency_ms"]
    result["ratios"] = {
        "throughput_system_over_baseline": round(sys_tp / base_tp, 4) if base_tp else None,
        **{
            f"latency_{p}_system_over_baseline": round(sys_lat[p] / base_lat[p], 2)
            if sys_lat[p] and base_lat[p]
            else None
            for p in ("p50", "p95", "p99")
        },
        **{
            f"variant_throughput_over_system: {name}": round(v["throughput_per_s"] / sys_tp, 3)
            for name, v in result["variants"].items()
        },
    }
    result["cpu"] = _phases(result)
    path = out / f"bench-{stamp}.json"
    path.write_text(json.dumps(result, indent=2, default=str))
    chart(result, out / f"bench-{stamp}.png")
    _print(result, path)
    problems = sum(result["system"]["burst"][k] for k in ("lost", "duplicated")) + sum(
        v[k] for v in result["variants"].values() for k in ("lost", "duplicated")
    )
    return 1 if problems else 0


def _print(r: dict, path: Path) -> None:
    b, s = r["baseline"], r["system"]
    print("\n== bench ==")
    print(
        f"load average before {tuple(round(x, 2) for x in r['loadavg_before'])}, after "
        f"{tuple(round(x, 2) for x in r['loadavg_after'])}"
    )
    print(
        f"baseline (same topology, bare): {b['burst']['throughput_per_s']} cancellations/s over "
        f"{b['burst']['stories']} (lost {b['burst']['lost']}, duplicated {b['burst']['duplicated']}); "
        f"latency at {r['latency_rate']:g}/s p50/p95/p99 = {b['latency']['latency_ms']}"
    )
    print(
        f"bursts of {b['burst']['stories']}, the median of each compared: baseline "
        f"{b['burst']['runs_throughput_per_s']}, system {s['burst']['runs_throughput_per_s']} cancellations/s"
    )
    print(
        f"system: {s['burst']['throughput_per_s']} cancellations/s over {s['burst']['stories']} "
        f"(lost {s['burst']['lost']}, duplicated {s['burst']['duplicated']}, out of order {s['burst']['out_of_order']}); "
        f"{s['burst']['messages_per_cancellation']} messages handled per cancellation"
    )
    print(f"system latency request→last effect at {r['latency_rate']:g}/s: {s['latency']['latency_ms']}")
    print(f"per service (messages/s): {s['burst']['per_service_messages_per_s']}")
    print("CPU (% of one core) and the machine's idle share, per phase:")
    for name, c in r["cpu"].items():
        procs = ", ".join(f"{p} {v:g}" for p, v in c["process_cpu_percent"].items() if v >= 1)
        print(f"  {name}: idle {c['machine_idle_share']:.0%} over {c['seconds']}s; {procs}")
    _print_statements("baseline burst", b["burst"]["statements"])
    _print_statements("system burst", s["burst"]["statements"])
    for service, p in s.get("profile", {}).get("services", {}).items():
        top = "; ".join(f"{f} {share:.0%}" for f, share in p["top_self"][:5])
        print(f"  profile {service}: busy {p['busy_share_of_one_core']:.0%} of a core; top (self): {top}")
    for name, value in r["ratios"].items():
        print(f"  {name}: {value}")
    print(f"written: {path} and {path.with_suffix('.png')}")
    print(f"ratio: {r['ratios']['throughput_system_over_baseline']}")


def _print_statements(phase: str, figures: dict) -> None:
    if "missing" in figures:
        print(f"Postgres statements during the {phase}: {figures['missing']}")
        return
    print(f"Postgres statements per cancellation during the {phase}: {figures['total']['statements_per_cancellation']}")
    for service, f in figures.items():
        if service != "total":
            print(
                f"  {service}: {f['statements_per_cancellation']} statements, "
                f"{f['exec_ms_per_cancellation']} ms executing, per cancellation"
            )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        prog="make bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--size", type=int, default=int(os.environ.get("BENCH_SIZE", "1000")), help="stories in each burst"
    )
    parser.add_argument(
        "--rate",
        type=float,
        default=float(os.environ.get("BENCH_RATE", "0")) or None,
        help="offered requests/s for latency (default: 20 %% of the system's maximum)",
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=int(os.environ.get("BENCH_REPEAT", "3")),
        help="bursts of the system and of the baseline each; the median is compared",
    )
    parser.add_argument("--latency-count", type=int, default=int(os.environ.get("BENCH_LATENCY_COUNT", "150")))
    parser.add_argument("--no-variants", dest="variants", action="store_false")
    parser.add_argument("--no-profile", dest="profile", action="store_false", help="skip the py-spy burst")
    parser.add_argument("--out", default="bench-results")
    sys.exit(asyncio.run(main(parser.parse_args())))
