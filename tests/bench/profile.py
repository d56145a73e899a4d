"""A sampling profile of service processes (py-spy, from the dev group) while the system works:
`py-spy record --nonblocking` on each process for a fixed time, then per process the share of
the time it was busy and where: the functions most often on top of the stack (self) and on it at
all (inclusive), without line numbers."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

RATE = 100  # samples a second

_LINE = re.compile(r"^(.*) (\d+)$")
_FRAME = re.compile(r"^(.*?) \(([^:()]*)(?::\d+)?\)$")


def py_spy() -> str | None:
    found = Path(sys.executable).with_name("py-spy")
    return str(found) if found.exists() else shutil.which("py-spy")


def start(pids: dict[str, int], seconds: float, out_dir: Path) -> dict[str, tuple[subprocess.Popen[bytes], Path]]:
    exe = py_spy()
    if exe is None:
        return {}
    out_dir.mkdir(parents=True, exist_ok=True)
    running = {}
    for name, pid in pids.items():
        path = out_dir / f"{name}.txt"
        proc = subprocess.Popen(
            [
                exe,
                "record",
                "--nonblocking",
                "--format",
                "raw",
                "--rate",
                str(RATE),
                "--duration",
                str(int(seconds)),
                "--pid",
                str(pid),
                "--output",
                str(path),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        running[name] = (proc, path)
    return running


def _frame(raw: str) -> str:
    m = _FRAME.match(raw.strip())
    if not m:
        return raw.strip()
    function, file = m.groups()
    return f"{function} ({'/'.join(Path(file).parts[-2:])})"


def summarize(path: Path, seconds: float, top: int = 12) -> dict:
    """busy share (samples over seconds x rate, of one core), the top frames by self and inclusive share."""
    self_count: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in path.read_text().splitlines() if path.exists() else []:
        m = _LINE.match(line)
        if not m:
            continue
        stack, n = m.group(1), int(m.group(2))
        frames = [_frame(f) for f in stack.split(";")]
        total += n
        self_count[frames[-1]] += n
        for f in set(frames):
            inclusive[f] += n
    share = lambda c: [(f, round(n / total, 3)) for f, n in c.most_common(top)] if total else []  # noqa: E731
    return {
        "samples": total,
        "busy_share_of_one_core": round(total / (seconds * RATE), 3),
        "top_self": share(self_count),
        "top_inclusive": share(inclusive),
    }


def finish(running: dict[str, tuple[subprocess.Popen[bytes], Path]], seconds: float) -> dict[str, dict]:
    result = {}
    for name, (proc, path) in running.items():
        try:
            proc.wait(seconds + 30)
        except subprocess.TimeoutExpired:
            proc.kill()
        result[name] = summarize(path, seconds) | {"raw": str(path)}
    return result
