"""Runs the six services as separate processes, the way `make run` does.

    .venv/bin/python infra/supervise.py [--only booking,billing] [--replicas billing=2,scoring=3]

Each process gets SERVICE_NAME, HTTP_PORT, its own DATABASE_URL (its runtime role) and
DATABASE_MIGRATION_URL (its migration role) on DATABASE_SERVER_URL with the passwords provisioning
keeps in .local/secrets, its own Kafka principal's settings (.local/clients/<service>.env), on
top of the inherited environment, and ENVIRONMENT=development and
PAYMENT_GATEWAY=sandbox unless the environment names them. Every output line is prefixed with the
process's name. A process that dies is restarted with backoff; after 5 quick crashes in a row the
supervisor gives up on it and says why. SIGINT or SIGTERM stops everything: SIGTERM to each
process, SIGKILL to any still running 10 s later.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import os
import signal
import sys
import time

from shared.access import ADMIN_ONLY_SETTINGS, service_env
from shared.provision import DEFAULT_ADMIN_DSN

# service name -> (python module, HTTP port of its first replica)
SERVICES = {
    "booking": ("booking", 8001),
    "cancellation-policy": ("cancellation_policy", 8002),
    "scoring": ("scoring", 8003),
    "billing": ("billing", 8004),
    "notification": ("notification", 8005),
    "pms-sync": ("pms_sync", 8006),
}
# What a person uses beside them (no database, no Kafka principal of their own): the web console,
# a mail catcher (SMTP on 1025, its page on 8025) and an SMS sink (Twilio's API and a page on
# 8026) that the notification service of `make run` delivers to, both keeping what they caught
# under .local/.
TOOLS = {
    "console": ("console", 8010),
    "mail": ("console.mailcatcher", 8025),
    "sms": ("console.smssink", 8026),
}
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMS_SINK_KEY = "dev"  # the sink's own key: it stands in for the SMS provider
# notification of `make run` delivers to the sinks (a value in the environment wins).
NOTIFICATION_SINKS = {
    "SMTP_HOST": "127.0.0.1",
    "SMTP_PORT": "1025",
    "SMS_PROVIDER": "http",
    "SMS_API_URL": "http://127.0.0.1:8026/2010-04-01/Accounts/ACdevelopment/Messages.json",
    "SMS_API_KEY": SMS_SINK_KEY,
    "SMS_FROM": "+15550000000",
}

QUICK_CRASH_SECONDS = 30  # a process that dies sooner than this counts as a quick crash
MAX_QUICK_CRASHES = 5
STOP_GRACE_SECONDS = 10
LINE_LIMIT = 1 << 20
COLOURS = ["36", "33", "35", "32", "34", "91", "96", "93", "95", "92"]


def _die_with_parent() -> None:
    """In the child: get SIGTERM if the supervisor itself dies, even by SIGKILL (Linux)."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


class Process:
    def __init__(self, service: str, replica: int, width: int, colour: str | None) -> None:
        self.service = service
        self.module, base_port = SERVICES[service] if service in SERVICES else TOOLS[service]
        self.port = base_port + 100 * replica
        self.name = service if replica == 0 else f"{service}#{replica + 1}"
        label = self.name.ljust(width)
        self.prefix = f"\033[{colour}m{label}\033[0m | " if colour else f"{label} | "
        self.proc: asyncio.subprocess.Process | None = None
        self.stopping = False

    def env(self, database_server: str) -> dict[str, str]:
        if self.service in TOOLS:
            return self.tool_env()
        sinks = NOTIFICATION_SINKS if self.service == "notification" else {}
        return {
            "ENVIRONMENT": "development",  # this runs the system for development, not production
            "PAYMENT_GATEWAY": "sandbox",
            **sinks,
            **service_env(self.service, database_server, os.environ),
            "SERVICE_NAME": self.service,
            "HTTP_PORT": str(self.port),
            "PYTHONUNBUFFERED": "1",
        }

    def tool_env(self) -> dict[str, str]:
        return {
            "ENVIRONMENT": "development",
            **{k: v for k, v in os.environ.items() if k not in ADMIN_ONLY_SETTINGS},
            "HTTP_PORT": str(self.port),
            "MAIL_DIR": os.path.join(ROOT, ".local", "mail"),
            "SMS_SINK_DIR": os.path.join(ROOT, ".local", "sms"),
            "SMS_SINK_API_KEY": SMS_SINK_KEY,
            "PYTHONUNBUFFERED": "1",
        }

    def say(self, line: str) -> None:
        sys.stdout.write(self.prefix + line + "\n")
        sys.stdout.flush()

    async def run(self, database_server: str) -> bool:
        """Keep the process running until stopped; False if it was given up on."""
        quick_crashes = 0
        while not self.stopping:
            started = time.monotonic()
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                self.module,
                env=self.env(database_server),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                # Own session: a Ctrl-C reaches only the supervisor, which then stops each child.
                start_new_session=True,
                preexec_fn=_die_with_parent,
                limit=LINE_LIMIT,
            )
            self.say(f"started: python -m {self.module} (pid {self.proc.pid}, HTTP_PORT {self.port})")
            await self.relay_output()
            code = await self.proc.wait()
            if self.stopping:
                break
            ran = time.monotonic() - started
            quick_crashes = quick_crashes + 1 if ran < QUICK_CRASH_SECONDS else 0
            if quick_crashes >= MAX_QUICK_CRASHES:
                self.say(
                    f"GIVING UP: exited {quick_crashes} times in a row within "
                    f"{QUICK_CRASH_SECONDS}s of starting, last with {describe(code)}; "
                    "its last output is above"
                )
                return False
            delay = min(2**quick_crashes, 30)
            self.say(f"exited with {describe(code)} after {ran:.1f}s; restarting in {delay}s")
            await self.sleep_unless_stopped(delay)
        return True

    async def relay_output(self) -> None:
        stream = self.proc.stdout
        while True:
            try:
                line = await stream.readline()
            except ValueError:  # a line longer than LINE_LIMIT: pass it on in pieces
                line = await stream.read(LINE_LIMIT)
            if not line:
                return
            self.say(line.decode(errors="replace").rstrip("\n"))

    async def sleep_unless_stopped(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not self.stopping and time.monotonic() < deadline:
            await asyncio.sleep(0.1)

    def signal(self, sig: int) -> None:
        """Signal the process's whole group, so that anything it started goes too."""
        if self.proc and self.proc.returncode is None:
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                pass


def describe(code: int) -> str:
    if code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"exit code {code}"


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--only", default="", help="comma-separated services and tools to run (default: all six, console, mail, sms)"
    )
    parser.add_argument(
        "--replicas",
        action="append",
        default=[],
        help="SERVICE=N[,SERVICE=N...]: processes for a service (HTTP_PORT + 100 per extra replica)",
    )
    parser.add_argument("--no-colour", "--no-color", action="store_true", dest="no_colour")
    args = parser.parse_args(argv)

    services = [s.strip() for s in args.only.split(",") if s.strip()] or [*SERVICES, *TOOLS]
    replicas = {s: 1 for s in services}
    for item in ",".join(args.replicas).split(","):
        if not item.strip():
            continue
        service, _, count = item.partition("=")
        service = service.strip()
        if not count.strip().isdigit() or int(count) < 1:
            parser.error(f"--replicas wants SERVICE=N with N >= 1, got {item!r}")
        replicas[service] = int(count)
    unknown = [s for s in replicas if s not in SERVICES and s not in TOOLS]
    if unknown:
        parser.error(f"unknown service(s) {', '.join(unknown)}; known: {', '.join([*SERVICES, *TOOLS])}")
    single = [s for s, n in replicas.items() if s in TOOLS and n > 1]
    if single:
        parser.error(f"{', '.join(single)} run(s) once: their ports are fixed")
    extra = [s for s in replicas if s not in services]
    if extra:
        parser.error(f"--replicas names {', '.join(extra)}, which --only leaves out")
    args.replicas = replicas
    return args


async def supervise(args: argparse.Namespace) -> int:
    database_server = os.environ.get("DATABASE_SERVER_URL") or os.environ.get("ADMIN_DATABASE_URL", DEFAULT_ADMIN_DSN)
    colour = not args.no_colour and sys.stdout.isatty() and "NO_COLOR" not in os.environ
    names = [(s, i) for s, n in args.replicas.items() for i in range(n)]
    width = max(len(s if i == 0 else f"{s}#{i + 1}") for s, i in names)
    processes = [Process(s, i, width, COLOURS[k % len(COLOURS)] if colour else None) for k, (s, i) in enumerate(names)]

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    runs = [asyncio.create_task(p.run(database_server)) for p in processes]
    all_done = asyncio.gather(*runs)
    stopper = asyncio.create_task(stop.wait())
    await asyncio.wait([all_done, stopper], return_when=asyncio.FIRST_COMPLETED)

    if stop.is_set():
        print(f"supervise: stopping {len(processes)} process(es)", flush=True)
        for p in processes:
            p.stopping = True
            p.signal(signal.SIGTERM)
        _, pending = await asyncio.wait(runs, timeout=STOP_GRACE_SECONDS)
        if pending:
            for p in processes:
                if p.proc and p.proc.returncode is None:
                    p.say(f"still running {STOP_GRACE_SECONDS}s after SIGTERM, sending SIGKILL")
                    p.signal(signal.SIGKILL)
            await asyncio.wait(runs)
        print("supervise: all stopped", flush=True)
        return 0

    stopper.cancel()
    gave_up = [p.name for p, ok in zip(processes, all_done.result(), strict=True) if not ok]
    print(f"supervise: gave up on {', '.join(gave_up)}; nothing left to run", flush=True)
    return 1


def main() -> None:
    sys.exit(asyncio.run(supervise(parse_args(sys.argv[1:]))))


if __name__ == "__main__":
    main()
