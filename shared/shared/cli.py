"""`cancellations`: the command line of the project (a console script of the shared package).

    cancellations demo                        two practices and a morning of cancellations, played
    cancellations practice apply FILE         settings (YAML or JSON) -> practice.configured, and the answer
    cancellations dlq list|show ID|replay ID  dead letters of every service; replay sends the original back
    cancellations events tail                 the outbound topics as one line per event (no personal data)
    cancellations report                      cancellation and no-show rates from booking's read API
    cancellations token ...                   a development bearer token (below)

Kafka is reached with the environment's KAFKA_* settings (shared.kafka); `--client NAME` reads
`.local/clients/NAME.env` on top (a principal of a secured broker). Without it, a tool that
writes an upstream topic or reads the outbound ones uses that topic's principal's file when the
system wrote one and the environment has no credentials of its own.

`cancellations token --practice P [--practice Q …] --role R [--role S …] [--ttl SECONDS]`
prints a bearer token for the read APIs, signed with the development key that `make run`
creates (`AUTH_PRIVATE_KEY_FILE`, default `.local/auth/private.pem`), for the issuer and
audience the services trust (`AUTH_ISSUER`, `AUTH_AUDIENCE`).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any

from . import auth, topics


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="cancellations", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--client", metavar="PRINCIPAL", help="Kafka client settings from .local/clients/PRINCIPAL.env")
    commands = parser.add_subparsers(dest="command", required=True)
    _tool_commands(commands)
    token = commands.add_parser("token", help="print a development bearer token for the read APIs")
    token.add_argument("--practice", action="append", default=[], metavar="PRACTICE_ID", help="repeatable")
    token.add_argument("--role", action="append", default=[], choices=sorted(auth.ROLES), help="repeatable")
    token.add_argument("--subject", default="dev-user", help="who the token speaks for (sub)")
    token.add_argument("--ttl", type=int, default=3600, metavar="SECONDS", help="lifetime (default 3600)")
    token.add_argument(
        "--key", type=Path, default=Path(os.environ.get("AUTH_PRIVATE_KEY_FILE", ".local/auth/private.pem"))
    )
    args = parser.parse_args(argv)
    if args.command != "token":
        return _run_tool(args)
    if not args.role:
        parser.error("give at least one --role")
    if not args.practice and "ops" not in args.role:
        parser.error("give at least one --practice (or the ops role, which reads every practice)")
    if not 1 <= args.ttl <= 7 * 24 * 3600:
        parser.error("--ttl is between 1 second and 7 days")
    if not args.key.is_file():
        parser.error(f"no signing key at {args.key}: run `make run` (or `make up`) first, or pass --key")
    print(
        auth.mint(
            args.key.read_bytes(),
            practice_ids=args.practice,
            roles=args.role,
            subject=args.subject,
            ttl_seconds=args.ttl,
            issuer=os.environ.get("AUTH_ISSUER", auth.DEV_ISSUER),
            audience=os.environ.get("AUTH_AUDIENCE", auth.DEV_AUDIENCE),
        )
    )
    return 0


def _tool_commands(commands: Any) -> None:
    demo = commands.add_parser("demo", help="configure two practices and play a morning of cancellations")
    demo.add_argument("--wait", type=float, default=60.0, metavar="SECONDS", help="how long to wait for answers")

    practice = commands.add_parser("practice", help="practice settings").add_subparsers(dest="action", required=True)
    apply = practice.add_parser("apply", help="send settings from a YAML or JSON file and print the answer")
    apply.add_argument("file", type=Path)
    apply.add_argument("--wait", type=float, default=30.0, metavar="SECONDS")

    dlq = commands.add_parser("dlq", help="dead letters").add_subparsers(dest="action", required=True)
    listing = dlq.add_parser("list", help="every dead letter still kept")
    listing.add_argument("--service", action="append", choices=topics.SERVICES, help="repeatable (default: all)")
    dlq.add_parser("show", help="one dead letter, original included").add_argument(
        "id", help="SERVICE:PARTITION:OFFSET"
    )
    dlq.add_parser("replay", help="send the original again to its topic").add_argument(
        "id", help="SERVICE:PARTITION:OFFSET"
    )

    events = commands.add_parser("events", help="events").add_subparsers(dest="action", required=True)
    tail = events.add_parser("tail", help="one line per event on the outbound topics")
    tail.add_argument("--topic", action="append", metavar="TOPIC", help="repeatable (default: every outbound topic)")
    tail.add_argument("--from-beginning", action="store_true", help="start at the oldest kept event")
    tail.add_argument("--limit", type=int, metavar="N", help="stop after N events")

    report = commands.add_parser("report", help="cancellation and no-show rates")
    report.add_argument("--days", type=int, default=30, help="appointments this many days either side of now")
    report.add_argument("--by", dest="group_by", default="practice", choices=("practice", "practitioner", "service"))
    report.add_argument("--practice", metavar="PRACTICE_ID")
    report.add_argument("--token", help="a bearer token (default: a development ops token)")


def _run_tool(args: argparse.Namespace) -> int:
    import asyncio

    from .kafka import KafkaSettingsError
    from .tools import commands as c

    key = (args.command, getattr(args, "action", None))
    runs: dict[tuple[str, str | None], Callable[[], Coroutine[Any, Any, int]]] = {
        ("demo", None): lambda: c.demo(args.client, args.wait),
        ("practice", "apply"): lambda: c.practice_apply(args.file, args.client, args.wait),
        ("dlq", "list"): lambda: c.dlq_list(args.service, args.client),
        ("dlq", "show"): lambda: c.dlq_show(args.id, args.client),
        ("dlq", "replay"): lambda: c.dlq_replay(args.id, args.client),
        ("events", "tail"): lambda: c.events_tail(args.topic, args.from_beginning, args.limit, args.client),
        ("report", None): lambda: c.report_rates(args.days, args.group_by, args.practice, args.token),
    }
    try:
        return asyncio.run(runs[key]())
    except KeyboardInterrupt:
        return 130
    except (KafkaSettingsError, FileNotFoundError, ValueError) as exc:
        print(f"cancellations: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001 - a tool says what failed in one line, not a traceback
        print(f"cancellations: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 3


if __name__ == "__main__":
    sys.exit(main())
