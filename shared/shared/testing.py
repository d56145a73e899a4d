"""Test helpers for every tier: build contract events, publish them, watch what the services
publish, run services as real processes (start, SIGTERM, SIGKILL, SIGSTOP), and keep the handler
tier's fakes true to the repositories they stand for (`assert_same_functions`).

Guarantee: `EventWatcher` sees only events published after it started (it is positioned at the
end of every partition before the test publishes), so tests never depend on older traffic.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email import message_from_bytes
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import parse_qs

import asyncpg
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from . import db
from .access import service_env
from .kafka import client_args

SERVICE_MODULES = {
    "booking": "booking",
    "cancellation-policy": "cancellation_policy",
    "scoring": "scoring",
    "billing": "billing",
    "notification": "notification",
    "pms-sync": "pms_sync",
}


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def iso(t: datetime) -> str:
    return t.astimezone(UTC).isoformat().replace("+00:00", "Z")


def envelope(
    type_: str,
    subject: str,
    data: dict[str, Any],
    *,
    event_id: str | None = None,
    source: str = "upstream/test",
    time: datetime | None = None,
    correlation_id: str | None = None,
) -> dict[str, Any]:
    env = {
        "specversion": "1.0",
        "id": event_id or str(uuid.uuid4()),
        "type": type_,
        "source": source,
        "subject": subject,
        "time": iso(time or datetime.now(UTC)),
        "datacontenttype": "application/json",
        "data": data,
    }
    if correlation_id:
        env["correlationid"] = correlation_id
    return env


class Publisher:
    """Publishes raw bytes or envelopes to the real broker, keyed like the contract says."""

    def __init__(self, bootstrap: str) -> None:
        self._producer = AIOKafkaProducer(**client_args(bootstrap), enable_idempotence=True, acks="all")

    async def __aenter__(self) -> Publisher:
        await self._producer.start()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self._producer.stop()

    async def raw(self, topic: str, key: str | None, value: bytes | None) -> None:
        await self._producer.send_and_wait(topic, value=value, key=key.encode() if key else None)

    async def event(self, topic: str, type_: str, subject: str, data: dict[str, Any], **kw: Any) -> dict[str, Any]:
        env = envelope(type_, subject, data, **kw)
        await self.raw(topic, subject, json.dumps(env).encode())
        return env


@dataclass
class Seen:
    topic: str
    partition: int
    offset: int
    key: str | None
    value: dict[str, Any]
    size: int = 0  # bytes of the record's value

    @property
    def type(self) -> str:
        return str(self.value.get("type", ""))

    @property
    def data(self) -> dict[str, Any]:
        data: dict[str, Any] = self.value.get("data", {})
        return data


@dataclass
class EventWatcher:
    """Collects what is published on some topics from the moment it starts."""

    bootstrap: str
    topics: list[str]
    seen: list[Seen] = field(default_factory=list)
    _consumer: AIOKafkaConsumer | None = None
    _task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> EventWatcher:
        self._consumer = AIOKafkaConsumer(**client_args(self.bootstrap), enable_auto_commit=False)
        await self._consumer.start()
        partitions = []
        for topic in self.topics:
            for p in self._consumer.partitions_for_topic(topic) or await self._partitions(topic):
                partitions.append(TopicPartition(topic, p))
        self._consumer.assign(partitions)
        await self._consumer.seek_to_end(*partitions)
        for tp in partitions:  # resolve the end positions now, before the test publishes
            await self._consumer.position(tp)
        self._task = asyncio.create_task(self._collect())
        return self

    async def _partitions(self, topic: str) -> set[int]:
        assert self._consumer is not None
        await self._consumer._client.force_metadata_update()
        return self._consumer.partitions_for_topic(topic) or set()

    async def _collect(self) -> None:
        assert self._consumer is not None
        while True:
            batches = await self._consumer.getmany(timeout_ms=200)
            for records in batches.values():
                for r in records:
                    try:
                        value = json.loads(r.value) if r.value else {}
                    except (ValueError, RecursionError):  # what hostile-input tests publish
                        value = {"raw": r.value.decode("utf-8", "replace")[:1000]}
                    if not isinstance(value, dict):
                        value = {"raw": str(value)[:1000]}
                    key = r.key.decode("utf-8", "replace") if r.key else None
                    self.seen.append(Seen(r.topic, r.partition, r.offset, key, value, len(r.value or b"")))

    async def __aexit__(self, *exc: Any) -> None:
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._consumer:
            await self._consumer.stop()

    def matching(self, predicate: Callable[[Seen], bool]) -> list[Seen]:
        return [s for s in self.seen if predicate(s)]

    async def wait_for(self, predicate: Callable[[Seen], bool], count: int = 1, timeout: float = 30.0) -> list[Seen]:
        """At least `count` events matching `predicate`, or AssertionError after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.matching(predicate)
            if len(found) >= count:
                return found
            await asyncio.sleep(0.1)
        found = self.matching(predicate)
        raise AssertionError(
            f"expected {count} matching event(s) within {timeout}s, saw {len(found)}; "
            f"all seen: {[(s.topic, s.type, s.key) for s in self.seen][-30:]}"
        )

    async def settle(self, seconds: float = 2.0) -> None:
        """Wait so that anything still to come (a duplicate) would have arrived."""
        await asyncio.sleep(seconds)


async def wait_for_row(admin_dsn: str, sql: str, *args: Any, timeout: float = 30.0) -> None:
    """Until a service has stored what a test published (topics are consumed in no fixed order)."""
    import asyncpg

    conn = await asyncpg.connect(admin_dsn)
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if await conn.fetchval(sql, *args):
                return
            await asyncio.sleep(0.1)
        raise AssertionError(f"no row for {sql!r} {args} within {timeout}s")
    finally:
        await conn.close()


def assert_same_functions(fake: object, real: ModuleType) -> None:
    """Every public method of `fake` is a function of `real` with the same parameters (names,
    kinds and defaults), so a fake repository cannot drift from the repository.py it stands for."""
    for name, method in inspect.getmembers(fake, inspect.ismethod):
        if name.startswith("_"):
            continue
        assert hasattr(real, name), f"{real.__name__} has no {name}: the fake implements a function it lacks"
        ours = [(p.name, p.kind, p.default) for p in inspect.signature(method).parameters.values()]
        theirs = [(p.name, p.kind, p.default) for p in inspect.signature(getattr(real, name)).parameters.values()]
        assert ours == theirs, f"{name}: the fake takes {ours}, {real.__name__} takes {theirs}"


def dev_token(*, practice_ids: Sequence[str] = (), roles: Sequence[str], ttl_seconds: int = 3600) -> str:
    """A token the services of `make up` trust (signed with AUTH_PRIVATE_KEY_FILE)."""
    from .auth import mint

    key = Path(os.environ.get("AUTH_PRIVATE_KEY_FILE", ".local/auth/private.pem")).read_bytes()
    return mint(
        key,
        practice_ids=practice_ids,
        roles=roles,
        ttl_seconds=ttl_seconds,
        issuer=os.environ.get("AUTH_ISSUER", "cancellations-dev"),
        audience=os.environ.get("AUTH_AUDIENCE", "cancellations"),
    )


class ScratchSchemas:
    """`async with ScratchSchemas(admin_dsn, "billing_sets", MIGRATIONS) as scratch: pool = await
    scratch.new()`: a new schema holding a service's migrations for each `new()`, so a test runs
    the service's statements on its real tables apart from any running process of that service
    (which would otherwise act on the test's rows); every schema made is dropped at the end."""

    def __init__(self, admin_dsn: str, prefix: str, migrations: Path, *, max_size: int = 2) -> None:
        self.admin_dsn, self.prefix, self.migrations, self.max_size = admin_dsn, prefix, migrations, max_size
        self._made: list[tuple[str, asyncpg.Pool]] = []
        self._admin: asyncpg.Connection | None = None

    async def __aenter__(self) -> ScratchSchemas:
        self._admin = await asyncpg.connect(self.admin_dsn)
        return self

    async def new(self) -> asyncpg.Pool:
        assert self._admin is not None, "use ScratchSchemas with async with"
        schema = f"{self.prefix}_{uuid.uuid4().hex[:10]}"
        await self._admin.execute(f'CREATE SCHEMA "{schema}"')
        pool = await db.create_pool(
            self.admin_dsn, schema, application_name=f"test-{self.prefix}", max_size=self.max_size
        )
        self._made.append((schema, pool))
        await db.migrate(pool, schema, self.migrations)
        return pool

    async def __aexit__(self, *exc: object) -> None:
        assert self._admin is not None
        try:
            for schema, pool in self._made:
                await pool.close()
                await self._admin.execute(f'DROP SCHEMA "{schema}" CASCADE')
        finally:
            await self._admin.close()


async def group_state(bootstrap: str, group: str) -> tuple[str, int]:
    """(state, number of members) of a consumer group, as the coordinator sees it."""
    admin = AIOKafkaAdminClient(**client_args(bootstrap))
    await admin.start()
    try:
        [response] = await admin.describe_consumer_groups([group])
        _error, _group, state, _ptype, _protocol, members, *_ = response.groups[0]
        return state, len(members)
    finally:
        await admin.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class ServiceProcess:
    """One service as a real OS process (`python -m <module>`), as `make run` starts it."""

    service: str
    bootstrap: str
    admin_dsn: str
    log_dir: Path
    env: dict[str, str] = field(default_factory=dict)
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None
    _log: Any = None

    def start(self, wait_ready: bool = True, timeout: float = 60.0) -> ServiceProcess:
        self.port = self.port or free_port()
        env = {
            "ENVIRONMENT": "development",  # so billing takes the sandbox card gateway, as in `make run`
            # As `make run`: the runtime role (data only), the migration role (owns the schema)
            # and the service's own Kafka principal; never the harness's superusers.
            **service_env(self.service, self.admin_dsn, os.environ),
            "KAFKA_BOOTSTRAP_SERVERS": self.bootstrap,
            "HTTP_PORT": str(self.port),
            "HTTP_HOST": "127.0.0.1",
            "LOG_FORMAT": "json",
            "CONSUMER_BATCH_TIMEOUT_MS": "20",
            "RELAY_POLL_INTERVAL_SECONDS": "0.05",
            **self.env,
        }
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_dir / f"{self.service}-{self.port}.log", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", SERVICE_MODULES[self.service]],
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        if wait_ready:
            self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"{self.service} exited with {self.proc.returncode}; see {self.log_path}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/readyz", timeout=1) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.2)
        raise TimeoutError(f"{self.service} not ready within {timeout}s; see {self.log_path}")

    def start_expecting_exit(self, timeout: float = 60.0) -> tuple[int, str]:
        """Start it, wait for it to exit by itself (a refusal to start), and return its exit
        status and what it logged."""
        self.start(wait_ready=False)
        assert self.proc is not None
        try:
            returncode = self.proc.wait(timeout=timeout)
        finally:
            self.stop()
        return returncode, self.log_path.read_text()

    @property
    def log_path(self) -> Path:
        return self.log_dir / f"{self.service}-{self.port}.log"

    def get_json(self, path: str, token: str | None = None) -> Any:
        """GET `path` with a bearer token: `token`, else one for the `ops` role (every practice)."""
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.port}{path}",
            headers={"Authorization": f"Bearer {token or dev_token(roles=['ops'])}"},
        )
        with urllib.request.urlopen(request, timeout=5) as r:
            return json.loads(r.read())

    def get_status(self, path: str, token: str | None) -> int:
        """The status of GET `path` with that bearer token (none when `token` is None)."""
        headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
        try:
            with urllib.request.urlopen(
                urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", headers=headers), timeout=5
            ) as r:
                return int(r.status)
        except urllib.error.HTTPError as exc:
            return int(exc.code)

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def kill(self) -> None:
        """SIGKILL: no shutdown hook runs, nothing is flushed, offsets are not committed."""
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def stop(self, timeout: float = 30.0) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        if self._log:
            self._log.close()
            self._log = None


# --- an SMTP server's mailbox and an SMS provider, for real servers on free ports ---------------

FAILING_PHONE_PREFIX = "+1555"  # the test SMS provider answers 503 to these numbers, always


class Mailbox:
    """aiosmtpd handler: keeps every message the service hands over."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.messages: list[tuple[list[str], Message]] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append((list(envelope.rcpt_tos), message_from_bytes(envelope.content)))
        return "250 Message accepted for delivery"

    def to(self, address: str) -> list[Message]:
        return [m for rcpts, m in self.messages if address in rcpts]


@dataclass
class SmsRequest:
    path: str
    headers: dict[str, str]
    form: dict[str, str]


@dataclass
class SmsProvider:
    """A Twilio-style provider: form POSTs in, 201 out (503 for the failing numbers)."""

    requests: list[SmsRequest] = field(default_factory=list)
    server: ThreadingHTTPServer | None = None

    def start(self) -> SmsProvider:
        provider = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                form = {k: v[-1] for k, v in parse_qs(self.rfile.read(length).decode()).items()}
                provider.requests.append(SmsRequest(self.path, {k.lower(): v for k, v in self.headers.items()}, form))
                failing = form.get("To", "").startswith(FAILING_PHONE_PREFIX)
                body = json.dumps({"status": "queued"} if not failing else {"error": "carrier unavailable"}).encode()
                self.send_response(503 if failing else 201)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.server_address[1]}/2010-04-01/Messages.json"

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()

    def to(self, phone: str) -> list[SmsRequest]:
        return [r for r in self.requests if r.form.get("To") == phone]
