"""Where the tests find real infrastructure (docs/design.md#running-it):

1. `KAFKA_BOOTSTRAP_SERVERS` and `ADMIN_DATABASE_URL` (a superuser: provisioning and checks only) when set
   — `make test` brings up the local no-Docker infrastructure and sources .local/env.sh and
   .local/admin.env: the harness connects to the broker as its superuser, and every service
   process it starts as the service's own principal (.local/clients/<service>.env);
2. otherwise testcontainers (Kafka and Postgres) when a Docker engine answers;
3. otherwise the project's own no-Docker infrastructure, started with `infra/up.sh`.

Unit tests (tests/unit) use none of this.
"""

from __future__ import annotations

import asyncio
import os
import shlex
import shutil
import subprocess
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from shared.testing import Mailbox, SmsProvider, free_port

ROOT = Path(__file__).resolve().parent.parent

# The tests are development: billing (in-process and as a process, which inherits this
# environment) defaults to the sandbox gateway here, and only here. A test that wants
# production behaviour sets ENVIRONMENT itself.
os.environ.setdefault("ENVIRONMENT", "development")
os.environ.setdefault("PAYMENT_GATEWAY", "sandbox")


@dataclass(frozen=True)
class Infra:
    bootstrap: str
    admin_dsn: str


def _docker_answers() -> bool:
    if shutil.which("docker") is None:
        return False
    return subprocess.run(["docker", "info"], capture_output=True, timeout=20).returncode == 0


def _local_infra() -> Infra:
    """Brings it up and takes its settings into this process, as `make test` would source them."""
    subprocess.run(["bash", str(ROOT / "infra" / "up.sh")], check=True, cwd=ROOT)
    for name in ("env.sh", "admin.env"):
        for line in (ROOT / ".local" / name).read_text().splitlines():
            if line.startswith("export ") and "=" in line:
                k, v = line[len("export ") :].split("=", 1)
                os.environ[k] = shlex.split(v)[0] if v else ""
    return Infra(os.environ["KAFKA_BOOTSTRAP_SERVERS"], os.environ["ADMIN_DATABASE_URL"])


@pytest.fixture(scope="session")
def infra() -> Iterator[Infra]:
    bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    admin = os.environ.get("ADMIN_DATABASE_URL")
    containers = []
    if bootstrap and admin:
        found = Infra(bootstrap, admin)
    elif _docker_answers():
        from testcontainers.kafka import KafkaContainer
        from testcontainers.postgres import PostgresContainer

        kafka = KafkaContainer("confluentinc/cp-kafka:7.6.0").with_kraft()
        postgres = PostgresContainer("postgres:16", username="postgres", password="postgres", dbname="cancellations")
        containers = [kafka.start(), postgres.start()]
        found = Infra(
            kafka.get_bootstrap_server(),
            f"postgresql://postgres:postgres@{postgres.get_container_host_ip()}:"
            f"{postgres.get_exposed_port(5432)}/cancellations",
        )
    else:
        found = _local_infra()

    from shared.provision import provision
    from shared.topics import ensure_topics

    asyncio.run(provision(found.admin_dsn))
    asyncio.run(ensure_topics(found.bootstrap, int(os.environ.get("TOPIC_PARTITIONS", "6"))))
    os.environ.setdefault("KAFKA_BOOTSTRAP_SERVERS", found.bootstrap)
    os.environ.setdefault("ADMIN_DATABASE_URL", found.admin_dsn)
    yield found
    for container in containers:
        container.stop()


@pytest.fixture
async def publisher(infra: Infra) -> AsyncIterator:
    from shared.testing import Publisher

    async with Publisher(infra.bootstrap) as p:
        yield p


@pytest.fixture
def log_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("service-logs")


@pytest.fixture(scope="session")
def mailbox() -> Iterator[Mailbox]:
    from aiosmtpd.controller import Controller

    box = Mailbox(free_port())
    controller = Controller(box, hostname="127.0.0.1", port=box.port)
    controller.start()
    try:
        yield box
    finally:
        controller.stop()


@pytest.fixture(scope="session")
def sms() -> Iterator[SmsProvider]:
    provider = SmsProvider().start()
    try:
        yield provider
    finally:
        provider.stop()
