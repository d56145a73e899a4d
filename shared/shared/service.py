"""The composition of one service: broker, subscribers, pool, migrations, relay, HTTP, runner.

Guarantees (docs/style.md#the-habits 2, 5, 7):
- Nothing is created at import time: pools, producers and the relay are built in the app's
  startup hooks and closed in its shutdown hooks.
- Every subscriber is explicit about delivery: the service's consumer group, manual
  acknowledgement that commits offsets only after the batch transaction committed,
  `auto_offset_reset="earliest"`; the relay's producer is idempotent with acks=all.
- Subscribers only translate: a batch of raw records in, `MessageProcessor.handle`, commit.
- Shutdown stops consuming first, then lets the relay publish what was committed.
- Every replica prunes inbox claims older than INBOX_RETENTION_HOURS in the background
  (shared.inbox.prune: batched, safe with replicas).
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import uvicorn
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from faststream import AckPolicy
from faststream.asgi import AsgiFastStream, AsgiResponse, get
from faststream.kafka import KafkaBroker
from faststream.kafka.annotations import KafkaMessage

from . import db, inbox
from .backoff import backoff_delay
from .consumer import Handler, InvalidRequestAnswer, MessageProcessor
from .contracts.base import Payload
from .http import json_response, metrics_route
from .logging import configure_logging, get_logger
from .redaction import mask_text
from .outbox import OutboxRelay
from .settings import ServiceSettings

log = get_logger(__name__)

BackgroundTask = Callable[["Service"], Awaitable[None]]


@dataclass
class ServiceDefinition:
    """What makes one service: its name, schema, what it consumes and publishes, its extras."""

    name: str
    description: str
    settings: ServiceSettings
    migrations: Path
    consumes: Mapping[str, Mapping[str, Handler]]  # topic -> event type -> handler
    publishes: Mapping[str, Sequence[type[Payload]]]  # topic -> the models it may publish
    # Build the handlers' dependencies once the pool exists (SMTP client, gateways, ...).
    make_deps: Callable[["Service"], Awaitable[Any]] | None = None
    close_deps: Callable[[Any], Awaitable[None]] | None = None
    background: Sequence[BackgroundTask] = ()  # long-running loops: schedulers, senders
    http_routes: Callable[["Service"], Sequence[tuple[str, Any]]] | None = None
    # event type -> what to answer besides the dead letter when its payload breaks the contract
    answer_invalid: Mapping[str, InvalidRequestAnswer] = field(default_factory=dict)


@dataclass
class Service:
    """The running parts of a service, built at startup."""

    definition: ServiceDefinition
    broker: KafkaBroker
    pool: asyncpg.Pool | None = None
    producer: AIOKafkaProducer | None = None
    relay: OutboxRelay | None = None
    processor: MessageProcessor | None = None
    deps: Any = None
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    started: bool = False
    stopping: bool = False

    @property
    def settings(self) -> ServiceSettings:
        return self.definition.settings

    def wake_relay(self) -> None:
        if self.relay is not None:
            self.relay.wake()


def _broker_security(settings: ServiceSettings) -> Any:
    from faststream.security import (
        BaseSecurity,
        SASLPlaintext,
        SASLScram256,
        SASLScram512,
    )

    protocol = settings.kafka_security_protocol
    if protocol == "PLAINTEXT":
        return None
    use_ssl = protocol.endswith("SSL")
    if protocol == "SSL":
        import ssl

        return BaseSecurity(ssl_context=ssl.create_default_context(), use_ssl=True)
    password = settings.kafka_sasl_password.get_secret_value() if settings.kafka_sasl_password else ""
    mechanism = (settings.kafka_sasl_mechanism or "SCRAM-SHA-512").upper()
    kinds = {"PLAIN": SASLPlaintext, "SCRAM-SHA-256": SASLScram256, "SCRAM-SHA-512": SASLScram512}
    if mechanism not in kinds:
        raise ValueError(f"KAFKA_SASL_MECHANISM {mechanism!r} is not one of {sorted(kinds)}")
    return kinds[mechanism](username=settings.kafka_sasl_username or "", password=password, use_ssl=use_ssl)


async def _connect_pool(settings: ServiceSettings, name: str) -> asyncpg.Pool:
    """The pool, waiting for the database for up to a minute (it may start after us)."""
    for attempt in range(1, 1000):
        try:
            return await db.create_pool(
                settings.database_url,
                settings.schema,
                application_name=name,
                max_size=settings.database_pool_size,
                statement_timeout_ms=settings.database_statement_timeout_ms,
                lock_timeout_ms=settings.database_lock_timeout_ms,
            )
        except (OSError, asyncpg.PostgresConnectionError, asyncpg.exceptions.CannotConnectNowError) as exc:
            if attempt >= 20:
                raise
            log.warning("database not reachable yet", error=type(exc).__name__, attempt=attempt)
            await asyncio.sleep(backoff_delay(attempt, base=0.5, cap=5.0))
    raise RuntimeError("unreachable")


async def prune_inbox(service: Service) -> None:
    """Background task (every service, every replica): delete inbox claims older than
    INBOX_RETENTION_HOURS, once shortly after startup and then every
    INBOX_PRUNE_INTERVAL_SECONDS (jittered, so replicas do not all prune at once)."""
    settings = service.settings
    assert service.pool is not None
    await asyncio.sleep(random.uniform(5.0, 30.0))  # let startup traffic settle first
    while not service.stopping:
        started = asyncio.get_running_loop().time()
        pruned = await inbox.prune(
            service.pool, retention_hours=settings.inbox_retention_hours, batch_size=settings.inbox_prune_batch_size
        )
        elapsed = asyncio.get_running_loop().time() - started
        if pruned:
            log.info(
                "inbox pruned", rows=pruned, retention_hours=settings.inbox_retention_hours, seconds=round(elapsed, 2)
            )
        else:
            log.debug("inbox pruned", rows=0, retention_hours=settings.inbox_retention_hours)
        interval = settings.inbox_prune_interval_seconds
        await asyncio.sleep(random.uniform(0.75 * interval, 1.25 * interval))


def build_app(definition: ServiceDefinition) -> AsgiFastStream:
    settings = definition.settings
    broker = KafkaBroker(
        settings.kafka_bootstrap_servers,
        security=_broker_security(settings),
        client_id=definition.name,
        enable_idempotence=True,
        acks="all",
        allow_auto_create_topics=False,  # topics are created from the contract by provisioning
        graceful_timeout=15.0,
        log_level=logging.DEBUG,  # one line per message only at DEBUG
    )
    service = Service(definition=definition, broker=broker)

    topics = list(definition.consumes)
    if topics:

        @broker.subscriber(
            *topics,
            group_id=definition.name,
            batch=True,
            max_records=settings.consumer_max_records,
            batch_timeout_ms=settings.consumer_batch_timeout_ms,
            auto_offset_reset="earliest",
            ack_policy=AckPolicy.MANUAL,
            decoder=_raw_decoder,
            title=f"{definition.name}:consume",
        )
        async def on_records(msg: KafkaMessage) -> None:
            """Subscribers only translate: raw records in, the recipe, then commit offsets."""
            assert service.processor is not None
            records = msg.raw_message if isinstance(msg.raw_message, tuple) else (msg.raw_message,)
            if not records:
                return
            try:
                await service.processor.handle(records)
            except Exception:
                # Not committed (the processor gives up only when stopping): the next batch's
                # offset commit must not skip past it, so rewind every partition of the batch to
                # its first record and it is delivered again.
                await msg.nack()
                raise
            try:
                await msg.ack()
            except KafkaError as exc:
                # The batch committed in Postgres; a redelivery after a rebalance is harmless.
                log.warning("offset commit failed; records will be redelivered", error=type(exc).__name__)

    async def on_startup() -> None:
        service.pool = await _connect_pool(settings, definition.name)
        await db.migrate(service.pool, settings.schema, definition.migrations)
        service.producer = await _start_producer(settings, definition.name)

        async def reset_producer(exc: Exception) -> None:
            # An idempotent producer that lost its sequence (a broker restart can leave it
            # OutOfOrderSequence forever) is replaced; the unmarked rows are published again
            # and consumers de-duplicate them by envelope id.
            if isinstance(exc, KafkaError) and service.producer is not None:
                old, service.producer = service.producer, await _start_producer(settings, definition.name)
                await old.stop()

        service.relay = OutboxRelay(
            service.pool,
            _publisher(service),
            service=definition.name,
            batch_size=settings.relay_batch_size,
            poll_interval=settings.relay_poll_interval_seconds,
            on_publish_failure=reset_producer,
        )
        if definition.make_deps is not None:
            service.deps = await definition.make_deps(service)
        service.processor = MessageProcessor(
            service=definition.name,
            pool=service.pool,
            handlers=definition.consumes,
            deps=service.deps,
            answer_invalid=definition.answer_invalid,
            on_committed=service.wake_relay,
            savepoint_per_record=settings.consumer_savepoint_per_record,
        )

    async def after_startup() -> None:
        assert service.relay is not None
        service.relay.start()
        for task in (*definition.background, prune_inbox):
            service.tasks.append(asyncio.create_task(_supervised(task, service), name=task.__name__))
        service.started = True
        log.info("service started", topics=topics)

    async def on_shutdown() -> None:
        service.stopping = True
        if service.processor is not None:
            service.processor.stopping = True  # an in-flight batch stops retrying; not committed
        for task in service.tasks:
            task.cancel()
        await asyncio.gather(*service.tasks, return_exceptions=True)

    async def after_shutdown() -> None:
        # Consumers have stopped; publish what they committed, then close.
        if service.relay is not None:
            await service.relay.stop()
        if service.producer is not None:
            await service.producer.stop()
        if definition.close_deps is not None and service.deps is not None:
            await definition.close_deps(service.deps)
        if service.pool is not None:
            await service.pool.close()
        log.info("service stopped")

    @get
    async def healthz(scope: Any) -> AsgiResponse:
        """Liveness: the process answers."""
        return json_response({"status": "ok", "service": definition.name})

    @get
    async def readyz(scope: Any) -> AsgiResponse:
        """Readiness: started, database answering, broker connected."""
        checks: dict[str, bool] = {"started": service.started and not service.stopping}
        try:
            assert service.pool is not None
            async with asyncio.timeout(2):
                checks["database"] = await service.pool.fetchval("SELECT true")
        except Exception:
            checks["database"] = False
        checks["relay_leader"] = bool(service.relay and service.relay.is_leader)
        ready = checks["started"] and checks["database"]
        return json_response({"ready": ready, "checks": checks}, status=200 if ready else 503)

    routes: list[tuple[str, Any]] = [("/healthz", healthz), ("/readyz", readyz), ("/metrics", metrics_route())]
    app = AsgiFastStream(
        broker,
        asgi_routes=routes,
        on_startup=[on_startup],
        after_startup=[after_startup],
        on_shutdown=[on_shutdown],
        after_shutdown=[after_shutdown],
    )
    if definition.http_routes is not None:
        for path, route in definition.http_routes(service):
            app.mount(path, route)
    app.service = service  # type: ignore[attr-defined]  # for tests and tooling
    return app


async def _raw_decoder(msg: Any) -> Any:
    """Leave decoding to the recipe, so a malformed record reaches us and is dead-lettered."""
    return None


async def _start_producer(settings: ServiceSettings, name: str) -> AIOKafkaProducer:
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap_servers,
        client_id=f"{name}-relay",
        enable_idempotence=True,
        acks="all",
        linger_ms=5,
        **settings.kafka_client_args(),
    )
    await producer.start()
    return producer


def _publisher(service: Service):
    async def publish(topic: str, key: bytes, value: bytes, headers: dict[str, str]):
        assert service.producer is not None  # looked up per call: the relay may have replaced it
        return await service.producer.send(
            topic, value=value, key=key or None, headers=[(k, v.encode()) for k, v in headers.items()]
        )

    return publish


async def _supervised(task: BackgroundTask, service: Service) -> None:
    """Keep a background loop alive: log and restart it after an unexpected error."""
    while not service.stopping:
        try:
            await task(service)
            return
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.error("background task failed; restarting", task=task.__name__, error=type(exc).__name__, detail=mask_text(str(exc))[:300])
            await asyncio.sleep(2.0)


def run(definition_factory: Callable[[], ServiceDefinition]) -> None:
    """`python -m <service>`: JSON logs, the app under uvicorn, graceful stop on SIGTERM/SIGINT."""
    definition = definition_factory()
    settings = definition.settings
    configure_logging(definition.name, settings.log_level, settings.log_format)
    app = build_app(definition)
    config = uvicorn.Config(
        app,
        host=settings.http_host,
        port=settings.http_port,
        log_config=None,
        lifespan="on",
        access_log=False,
        timeout_graceful_shutdown=20,
    )
    uvicorn.Server(config).run()
