"""`make bench`: how fast the whole running system handles cancellations, against the practical
limit of this machine measured in the same run.

1. Baseline: the same number of hops (4: request → booking → policy → booking → downstream) as
   bare aiokafka + asyncpg loops, one process per hop: throughput, and latency at a fixed rate.
2. The system (six services as processes, real SMTP server, local SMS provider, sandbox card
   gateway): sustained end-to-end throughput on a burst of realistic traffic, per-service
   throughput, and latency p50/p95/p99 from the request to its last downstream effect at a fixed
   offered rate; every effect checked exactly once.
3. Variants that switch one optimisation off (or scale out) to show what each buys.

Writes bench-results/bench-<time>.json and .png; prints a summary with ratios to the baseline.
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

from tests.load import scenario as scenarios
from tests.load.checker import Collector, check, outbox_backlog, percentile
from tests.load.driver import Progress, prepare, send_requests, wait_complete
from tests.load.system import System

from .baseline import Baseline

VARIANTS = {
    "a savepoint, an inbox claim and an outbox write per record (CONSUMER_SAVEPOINT_PER_RECORD=true)": (
        {"CONSUMER_SAVEPOINT_PER_RECORD": "true"},
        {},
    ),
    "one record per consumer transaction (CONSUMER_MAX_RECORDS=1)": ({"CONSUMER_MAX_RECORDS": "1"}, {}),
    "relay publishes one row per round trip (RELAY_BATCH_SIZE=1)": ({"RELAY_BATCH_SIZE": "1"}, {}),
    "two replicas of booking, billing and notification": ({}, {"booking": 2, "billing": 2, "notification": 2}),
}


def _summary(latencies: list[float]) -> dict[str, float | None]:
    return {f"p{p}": percentile(latencies, p) for p in (50, 95, 99)}


async def burst(system: System, size: int, seed: int, label: str) -> dict:
    collector = Collector(system.bootstrap)
    await collector.start()
    try:
        scenario = scenarios.build(size, seed=seed)
        await prepare(system.bootstrap, system.admin_dsn, scenario)
        before = system.processed()
        progress = Progress(f"{label}: sending", size)
        started = time.monotonic()
        sent = await send_requests(system.bootstrap, scenario, rate=None, on_sent=progress.update)
        await wait_complete(scenario, collector, timeout=600, label=f"{label}: effects")
        elapsed = time.monotonic() - started
        after = system.processed()
        await asyncio.sleep(2)  # anything still to come (a duplicate) arrives
        verdict = check(scenario, collector, sent, poison=[])
    finally:
        await collector.stop()
    return {
        "stories": size,
        "seconds": round(elapsed, 2),
        "throughput_per_s": round(size / elapsed, 2),
        "per_service_messages_per_s": {s: round((after.get(s, 0) - before.get(s, 0)) / elapsed, 1) for s in after},
        "lost": verdict.lost,
        "duplicated": verdict.duplicated,
        "out_of_order": verdict.out_of_order,
        "unexpected": verdict.unexpected,
    }


async def at_rate(system: System, count: int, rate: float, seed: int) -> dict:
    collector = Collector(system.bootstrap)
    await collector.start()
    try:
        scenario = scenarios.build(count, seed=seed)
        await prepare(system.bootstrap, system.admin_dsn, scenario)
        progress = Progress(f"latency at {rate:g}/s: sending", count)
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
    }


def chart(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 5))
    for label, values in (
        ("system: request → last effect", result["system"]["latency"]["latencies_ms"]),
        ("baseline: 4 bare hops", result["baseline"]["latency"]["latencies_ms"]),
    ):
        ordered = sorted(values)
        if ordered:
            left.plot(ordered, [i / len(ordered) for i in range(1, len(ordered) + 1)], label=label)
    left.set_xscale("log")
    left.set_xlabel("latency (ms, log scale)")
    left.set_ylabel("share of requests")
    left.set_title(f"Latency at {result['config']['rate']:g} requests/s")
    left.legend()
    names = ["baseline (msgs through 4 hops)", "system (cancellations)"] + [f"variant: {k}" for k in result["variants"]]
    values = [result["baseline"]["throughput_per_s"], result["system"]["burst"]["throughput_per_s"]] + [
        v["throughput_per_s"] for v in result["variants"].values()
    ]
    right.barh(range(len(names)), values, color=["grey", "tab:blue"] + ["tab:orange"] * len(result["variants"]))
    right.set_yticks(range(len(names)), [n if len(n) < 48 else n[:45] + "…" for n in names], fontsize=8)
    right.invert_yaxis()
    right.set_xlabel("per second")
    right.set_title("Sustained throughput")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


async def main(args: argparse.Namespace) -> int:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    system = System.from_environment(out / f"logs-{stamp}")
    result: dict = {"config": vars(args) | {"cpus": os.cpu_count()}, "started": stamp}

    async with Baseline(system.bootstrap, system.admin_dsn) as baseline:
        await baseline.measure(200, None)  # warm up: group joins, connections
        tp = await baseline.measure(args.baseline_size, None, Progress("baseline: throughput", args.baseline_size))
        lat = await baseline.measure(
            args.latency_count, args.rate, Progress(f"baseline: {args.rate:g}/s", args.latency_count)
        )
    result["baseline"] = {
        "hops": tp.hops,
        "throughput_per_s": round(tp.throughput_per_s, 1),
        "latency": {"latency_ms": _summary(lat.latencies_ms), "latencies_ms": lat.latencies_ms},
    }

    system.start()
    try:
        await burst(system, 50, seed=1, label="warm-up")
        result["system"] = {
            "burst": await burst(system, args.size, seed=2, label="burst"),
            "latency": await at_rate(system, args.latency_count, args.rate, seed=3),
        }
    finally:
        system.stop()

    result["variants"] = {}
    for name, (env, replicas) in VARIANTS.items() if args.variants else ():
        variant = System.from_environment(out / f"logs-{stamp}", env=env, replicas=replicas).start()
        try:
            await burst(variant, 30, seed=4, label="warm-up")
            result["variants"][name] = await burst(variant, args.size, seed=5, label="variant")
        finally:
            variant.stop()

    result["outbox_backlog_after"] = await outbox_backlog(system.admin_dsn)
    base_tp, base_lat = result["baseline"]["throughput_per_s"], result["baseline"]["latency"]["latency_ms"]
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
    path = out / f"bench-{stamp}.json"
    path.write_text(json.dumps(result, indent=2, default=str))
    chart(result, out / f"bench-{stamp}.png")
    _print(result, path)
    problems = result["system"]["burst"]["lost"] + result["system"]["burst"]["duplicated"]
    return 1 if problems else 0


def _print(r: dict, path: Path) -> None:
    b, s = r["baseline"], r["system"]
    print("\n== bench ==")
    print(
        f"baseline ({b['hops']} bare hops): {b['throughput_per_s']} msgs/s; latency at {r['config']['rate']:g}/s "
        f"p50/p95/p99 = {b['latency']['latency_ms']}"
    )
    print(
        f"system: {s['burst']['throughput_per_s']} cancellations/s sustained over {s['burst']['stories']} "
        f"(lost {s['burst']['lost']}, duplicated {s['burst']['duplicated']}, out of order {s['burst']['out_of_order']})"
    )
    print(f"system latency request→last effect at {r['config']['rate']:g}/s: {s['latency']['latency_ms']}")
    print(f"per service (messages/s): {s['burst']['per_service_messages_per_s']}")
    for name, value in r["ratios"].items():
        print(f"  {name}: {value}")
    print(f"written: {path} and {path.with_suffix('.png')}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        prog="make bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--size", type=int, default=int(os.environ.get("BENCH_SIZE", "400")), help="stories in the burst"
    )
    parser.add_argument(
        "--rate", type=float, default=float(os.environ.get("BENCH_RATE", "10")), help="offered requests/s for latency"
    )
    parser.add_argument("--latency-count", type=int, default=int(os.environ.get("BENCH_LATENCY_COUNT", "150")))
    parser.add_argument("--baseline-size", type=int, default=int(os.environ.get("BENCH_BASELINE_SIZE", "3000")))
    parser.add_argument("--no-variants", dest="variants", action="store_false")
    parser.add_argument("--out", default="bench-results")
    sys.exit(asyncio.run(main(parser.parse_args())))
