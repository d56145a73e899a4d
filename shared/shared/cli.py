"""`cancellations`: the command line of the project (a console script of the shared package).

`cancellations token --practice P [--practice Q …] --role R [--role S …] [--ttl SECONDS]`
prints a bearer token for the read APIs, signed with the development key that `make run`
creates (`AUTH_PRIVATE_KEY_FILE`, default `.local/auth/private.pem`), for the issuer and
audience the services trust (`AUTH_ISSUER`, `AUTH_AUDIENCE`).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from . import auth


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="cancellations", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    token = commands.add_parser("token", help="print a development bearer token for the read APIs")
    token.add_argument("--practice", action="append", default=[], metavar="PRACTICE_ID", help="repeatable")
    token.add_argument("--role", action="append", default=[], choices=sorted(auth.ROLES), help="repeatable")
    token.add_argument("--subject", default="dev-user", help="who the token speaks for (sub)")
    token.add_argument("--ttl", type=int, default=3600, metavar="SECONDS", help="lifetime (default 3600)")
    token.add_argument(
        "--key", type=Path, default=Path(os.environ.get("AUTH_PRIVATE_KEY_FILE", ".local/auth/private.pem"))
    )
    args = parser.parse_args(argv)
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


if __name__ == "__main__":
    sys.exit(main())
