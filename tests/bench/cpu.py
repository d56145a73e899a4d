"""Where the CPU went during a phase, read from /proc: each named process's share of one core
(user + system time over the wall time, so 100 means one whole core) and the machine's idle
share (idle + iowait jiffies of all cores in /proc/stat over all jiffies). The machine is shared:
the idle share counts everything running on it, ours or not."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

TICKS = os.sysconf("SC_CLK_TCK")


def _machine() -> tuple[int, int]:
    """(idle + iowait, total) jiffies of all cores."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return fields[3] + fields[4], sum(fields[:8])


def _cpu_seconds(pid: int) -> float:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime


def infrastructure() -> dict[str, list[int]]:
    """Kafka (its JVM) and every Postgres process on this machine: shared with whatever else runs."""
    found: dict[str, list[int]] = {"kafka": [], "postgres": []}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ")
            comm = (entry / "comm").read_text().strip()
        except OSError:
            continue
        if comm == "java" and b"kafka.Kafka" in cmdline:
            found["kafka"].append(int(entry.name))
        elif comm == "postgres":
            found["postgres"].append(int(entry.name))
    return found


class CpuMeter:
    """`with CpuMeter(lambda: {"booking": [pid]}) as m: ...; m.result` (processes found at the end
    are counted from the start; one that ended mid-phase loses its share)."""

    def __init__(self, processes: Callable[[], dict[str, list[int]]]) -> None:
        self._processes = processes

    def __enter__(self) -> CpuMeter:
        self._started = time.monotonic()
        self._machine = _machine()
        self._before = {pid: _cpu_seconds(pid) for pids in self._all().values() for pid in pids}
        return self

    def _all(self) -> dict[str, list[int]]:
        return {"bench harness": [os.getpid()], **infrastructure(), **self._processes()}

    def __exit__(self, *exc: object) -> None:
        wall = max(1e-6, time.monotonic() - self._started)
        idle, total = _machine()
        spent = {
            name: sum(_cpu_seconds(pid) - self._before.get(pid, 0.0) for pid in pids)
            for name, pids in self._all().items()
        }
        total_jiffies = max(1, total - self._machine[1])
        self.result = {
            "seconds": round(wall, 2),
            "machine_idle_share": round((idle - self._machine[0]) / total_jiffies, 3),
            "cores": os.cpu_count(),
            "process_cpu_percent": {name: round(100 * s / wall, 1) for name, s in sorted(spent.items())},
        }
