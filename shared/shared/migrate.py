"""`python -m shared.migrate <service>`: apply one service's migrations and exit (the
deployment's migration Job, run before a rollout).

Guarantees: the same migrations as the service applies at start (shared.db.migrate: once each,
in name order, under the schema's advisory lock, so a Job and a starting replica never apply one
twice), as the schema's owner (DATABASE_MIGRATION_URL) and nothing else: it reads no other
setting of the service (no payment key, no SMTP password), so the Job is handed only what
migrating needs. Exit status 0 when the schema is up to date.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import sys
from pathlib import Path

from .logging import configure_logging, get_logger
from .service import migrate
from .settings import ServiceSettings
from .topics import SERVICES

log = get_logger(__name__)


def migrations_of(service: str) -> Path:
    """The service's `migrations/` folder, beside its package (`services/<service>/migrations`):
    where every `app.definition()` says its migrations are."""
    spec = importlib.util.find_spec(service.replace("-", "_"))
    if spec is None or spec.origin is None:
        raise SystemExit(f"migrate: the package of service {service!r} is not installed")
    return Path(spec.origin).parent.parent / "migrations"


async def main(service: str) -> list[str]:
    settings = ServiceSettings(service_name=service)
    configure_logging(f"{service}-migrate", settings.log_level, settings.log_format)
    applied = await migrate(settings, service, migrations_of(service))
    log.info("schema up to date", schema=settings.schema, applied=len(applied))
    return applied


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        prog="python -m shared.migrate", description="Apply one service's migrations and exit."
    )
    parser.add_argument("service", choices=SERVICES)
    args = parser.parse_args()
    asyncio.run(main(args.service))
    sys.exit(0)
