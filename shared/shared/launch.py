"""`python -m shared.launch <service> [module]`: start a service with its own credentials.

For a container whose credentials are files in a mounted folder (docker compose's secrets
volume) rather than variables: the process is replaced by `python -m <module>` (default: the
service's package) with the environment `make run` would give it (shared.access.service_env):
DATABASE_URL and DATABASE_MIGRATION_URL for its own roles on DATABASE_SERVER_URL, passwords from
DB_SECRETS_DIR, and its Kafka principal's settings from KAFKA_CLIENTS_DIR/<service>.env. With
`shared.migrate` as the module, it runs the service's migrations and exits.
"""

from __future__ import annotations

import argparse
import os
import sys

from .access import service_env
from .topics import SERVICES


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m shared.launch", description=__doc__)
    parser.add_argument("service", choices=SERVICES)
    parser.add_argument("module", nargs="?", help="the module to run (default: the service's package)")
    args = parser.parse_args(argv)
    server = os.environ.get("DATABASE_SERVER_URL")
    if not server:
        raise SystemExit("launch: DATABASE_SERVER_URL is not set (the database server, without credentials)")
    env = {**service_env(args.service, server, os.environ), "SERVICE_NAME": args.service}
    module = args.module or args.service.replace("-", "_")
    command = [sys.executable, "-m", module] + ([args.service] if module == "shared.migrate" else [])
    os.execve(sys.executable, command, env)


if __name__ == "__main__":
    main()
