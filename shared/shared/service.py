"""The runtime of one service: pool, migrations, relay, handlers, subscriber, background work,
and its HTTP surface.

Guarantees (docs/style.md#the-habits 2, 5, 7):
- Nothing is created at import time. `Runtime.build` creates everything a service needs, and
  only a fully built runtime exists (no part of it is ever missing); `start()` begins
  consuming, publishing and background work, `stop()` ends them in the safe order.
- Every subscriber is explicit about delivery: the service's consumer group, manual
  acknowledgement that commits offsets only after the batch transaction committed,
  `auto_offset_reset="earliest"`; the relay's producer is idempotent with acks=all.
- Subscribers only translate: a batch of raw records in, `MessageProcessor.handle`, commit.
- Shutdown stops consuming first, then lets the relay publish what was committed.
- Background work runs on one building block (shared.background), supervised here: restarted
  after an unexpected error. Every replica prunes inbox claims older than
  INBOX_RETENTION_HOURS in the background (`inbox_pruning`: batched, safe with replicas).
- The HTTP surface (FastAPI, `http_app`) builds the runtime in its lifespan; liveness,
  readiness and metrics live there with the read API. A scrape of /metrics first reads the
  gauges that describe state (consumer lag, outbox backlog, a service's own `scrape_gauges`),
  within SCRAPE_REFRESH_SECONDS: a slow or failing read leaves the last values, never the scrape
  without an answer.
"""

from __future__ import annotations

import asyncio
import gc
import inspect
import logging
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import asyncpg
import uvicorn
from aiokafka import AIOKafkaProducer
from aiokafka.errors import IllegalStateError, KafkaError
from fastapi import APIRouter, FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from faststream import AckPolicy
from faststream.kafka import KafkaBroker
from faststream.kafka.annotations import KafkaMessage
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from . import access, db, inbox, outbox, tracing
from .background import DueWork
from .backoff import backoff_delay
from .consumer import Handler, InvalidRequestAnswer, MessageProcessor
from .contracts.base import Payload
from .contracts.envelope import use_fast_json
from .db import Connection
from .kafka import KafkaConnection
from .logging import configure_logging, get_logger
from .metrics import CONSUMER_LAG, OUTBOX_OLDEST_UNPUBLISHED_SECONDS, OUTBOX_PARKED_ROWS, OUTBOX_UNPUBLISHED
from .outbox import OutboxRelay
from .redaction import mask_text
from .settings import ServiceSettings

log = get_logger(__name__)

BackgroundTask = Callable[["Runtime"], Awaitable[None]]
# Sets a service's own gauges (shared.metrics) from its tables when Prometheus scrapes: one cheap,
# indexed query on the connection it is given.
ScrapeGauges = Callable[[Connection, str], Awaitable[None]]  # (connection, service name)

SCRAPE_REFRESH_SECONDS = 2.0


@dataclass(frozen=True)
class ServiceDefinition:
    """What makes one service: its name, schema, what it consumes and publishes, its extras."""

    name: str
    description: str
    settings: ServiceSettings
    migrations: Path
    consumes: Mapping[str, Mapping[str, Handler]]  # topic -> event type -> handler
    publishes: Mapping[str, Sequence[type[Payload]]]  # topic -> the models it may publish
    # The handlers' dependencies (SMTP client, gateways, rules from settings), built at startup
    # (a value, or an awaitable of one).
    make_deps: Callable[[], Any] | None = None
    close_deps: Callable[[Any], Awaitable[None]] | None = None
    # Background jobs (shared.background: a DueWork or DueCall declaration each), started, supervised
    # and stopped with the service.
    background: Sequence[BackgroundTask] = ()
    # The read API: a FastAPI router whose routes take the runtime from `runtime_of` and the
    # caller from shared.auth (every route with personal or financial data needs a token).
    http_routes: APIRouter | None = None
    # event type -> what to answer besides the dead letter when its payload breaks the contract
    answer_invalid: Mapping[str, InvalidRequestAnswer] = field(default_factory=dict)
    # Gauges read from the service's own tables at each scrape (pms-sync's backlog, say).
    scrape_gauges: Sequence[ScrapeGauges] = ()


class CommitSignal:
    """What a committed consumer batch wakes: the relay (its events are in the outbox) and the
    background jobs that asked to be (`Job.wake_on_commit`: the batch may have made their rows
    due)."""

    def __init__(self, relay: OutboxRelay) -> None:
        self.relay = relay
        # Held weakly: a job's loop that ends (and is restarted) takes its event with it.
        self.events: weakref.WeakSet[asyncio.Event] = weakref.WeakSet()

    def subscribe(self) -> asyncio.Event:
        event = asyncio.Event()
        self.events.add(event)
        return event

    def __call__(self) -> None:
        self.relay.wake()
        for event in list(self.events):
            event.set()


class Runtime:
    """A service, fully built: its pool (migrated), relay, dependencies, processor and broker."""

    def __init__(
        self,
        definition: ServiceDefinition,
        pool: asyncpg.Pool,
        relay: OutboxRelay,
        deps: Any,
        processor: MessageProcessor,
        commits: CommitSignal,
    ) -> None:
        self.definition = definition
        self.commits = commits
        self.settings = definition.settings
        self.pool = pool
        self.relay = relay
        self.deps = deps
        self.processor = processor
        self.broker, self.subscriber = _broker(self)
        self._lag_labels: set[tuple[str, str, str]] = set()
        self.tasks: list[asyncio.Task[None]] = []
        self.started = False
        self.stopping = False

    @classmethod
    async def build(cls, definition: ServiceDefinition) -> Runtime:
        settings = definition.settings
        pool = await _connect_pool(settings, definition.name)
        try:
            await _refuse_ddl_role(pool, settings.schema)
            await _refuse_broker_admin(settings)
            await migrate(settings, definition.name, definition.migrations)
            relay = OutboxRelay(
                pool,
                lambda: _start_producer(settings, definition.name),
                service=definition.name,
                batch_size=settings.relay_batch_size,
                poll_interval=settings.relay_poll_interval_seconds,
            )
            deps = definition.make_deps() if definition.make_deps is not None else None
            if inspect.isawaitable(deps):
                deps = await deps
        except BaseException:
            await pool.close()
            raise
        commits = CommitSignal(relay)
        processor = MessageProcessor(
            service=definition.name,
            pool=pool,
            handlers=definition.consumes,
            deps=deps,
            answer_invalid=definition.answer_invalid,
            on_committed=commits,
            savepoint_per_record=settings.consumer_savepoint_per_record,
            set_based=settings.consumer_set_based,
        )
        return cls(definition, pool, relay, deps, processor, commits)

    @property
    def name(self) -> str:
        return self.definition.name

    def wake_relay(self) -> None:
        self.relay.wake()

    def commit_signal(self) -> asyncio.Event:
        return self.commits.subscribe()

    async def start(self) -> None:
        await self.relay.start()
        if self.definition.consumes:
            await self.broker.start()
        jobs: list[BackgroundTask] = [*self.definition.background, inbox_pruning(self.settings)]
        for task in jobs:
            self.tasks.append(asyncio.create_task(_supervised(task, self), name=task.__name__))
        self.started = True
        log.info("service started", topics=list(self.definition.consumes))

    async def stop(self) -> None:
        """Stop consuming (an in-flight batch is not committed), end background work, let the
        relay publish what was committed, then close."""
        self.stopping = True
        self.processor.stopping = True
        await self.broker.stop()
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await self.relay.stop()
        if self.definition.close_deps is not None and self.deps is not None:
            await self.definition.close_deps(self.deps)
        await self.pool.close()
        log.info("service stopped")

    async def readiness(self) -> dict[str, Any]:
        checks: dict[str, bool] = {"started": self.started and not self.stopping}
        try:
            async with asyncio.timeout(2):
                checks["database"] = bool(await self.pool.fetchval("SELECT true"))
        except Exception:  # noqa: BLE001 - any failure means not ready
            checks["database"] = False
        checks["broker"] = await self._broker_answers() if self.definition.consumes else True
        checks["relay_leader"] = self.relay.is_leader
        return {"ready": checks["started"] and checks["database"] and checks["broker"], "checks": checks}

    async def refresh_metrics(self) -> None:
        """Read the gauges that describe state now (at a scrape); what cannot be read in time
        keeps its last value."""
        try:
            async with asyncio.timeout(SCRAPE_REFRESH_SECONDS):
                await self._refresh_consumer_lag()
                async with self.pool.acquire() as conn:
                    waiting = await outbox.backlog(conn)
                    OUTBOX_UNPUBLISHED.labels(self.name).set(waiting.unpublished)
                    OUTBOX_OLDEST_UNPUBLISHED_SECONDS.labels(self.name).set(waiting.oldest_unpublished_seconds)
                    OUTBOX_PARKED_ROWS.labels(self.name).set(waiting.parked)
                    for gauges in self.definition.scrape_gauges:
                        await gauges(conn, self.name)
        except Exception as exc:  # noqa: BLE001 - a scrape answers with the last values whatever failed
            log.warning("metrics not refreshed", error=type(exc).__name__)

    async def _refresh_consumer_lag(self) -> None:
        """`cancellations_consumer_lag` for the partitions this replica holds now; a partition it
        no longer holds loses its series (another replica reports it)."""
        lag = await consumer_lag(getattr(self.subscriber, "consumer", None))
        current = {(self.name, topic, str(partition)) for topic, partition in lag}
        for (topic, partition), records in lag.items():
            CONSUMER_LAG.labels(self.name, topic, str(partition)).set(records)
        for labels in self._lag_labels - current:
            CONSUMER_LAG.remove(*labels)
        self._lag_labels = current

    async def _broker_answers(self) -> bool:
        try:
            return bool(await self.broker.ping(timeout=2.0))
        except Exception:  # noqa: BLE001 - any failure means not ready
            return False


async def consumer_lag(consumer: Any) -> dict[tuple[str, int], int]:
    """(topic, partition) -> records not yet handed to this consumer, for every partition it is
    assigned: the highwater of the last fetch minus the consumer's position (aiokafka's
    `highwater` and `position`). A partition with neither known yet (just assigned, nothing
    fetched) is left out rather than guessed. Records handed out but not yet committed (the batch
    in hand) are not counted: the broker's view of the group (KEDA's trigger) includes them."""
    if consumer is None:
        return {}
    lag: dict[tuple[str, int], int] = {}
    for tp in consumer.assignment():
        highwater = consumer.highwater(tp)
        if highwater is None:
            continue
        try:
            # Immediate when the position is known; it waits only while one is being reset.
            position = await asyncio.wait_for(consumer.position(tp), timeout=0.5)
        except (IllegalStateError, TimeoutError):
            continue  # revoked meanwhile, or no position yet
        lag[(tp.topic, tp.partition)] = max(0, highwater - position)
    return lag


def _broker_security(settings: ServiceSettings) -> Any:
    """FastStream's `security` for the broker: the one translation of the Kafka settings (shared.kafka)."""
    return KafkaConnection.from_settings(settings).faststream_security()


class UnsafeDatabaseRole(RuntimeError):
    """DATABASE_URL names a role that could change the schema: the service does not start."""


class UnsafeBrokerPrincipal(RuntimeError):
    """KAFKA_SASL_USERNAME names a principal that could change the broker: the service does not start."""


async def _refuse_ddl_role(pool: asyncpg.Pool, schema: str) -> None:
    """The running service's role may read and write data, nothing more: refuse a superuser, the
    schema's owner (or a member of it) and a role that may create in the schema."""
    row = await pool.fetchrow(
        """
        SELECT current_user AS who,
               (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) AS superuser,
               coalesce((SELECT pg_has_role(current_user, nspowner, 'USAGE')
                         FROM pg_namespace WHERE nspname = $1), false) AS owner,
               coalesce((SELECT has_schema_privilege(current_user, oid, 'CREATE')
                         FROM pg_namespace WHERE nspname = $1), false) AS can_create
        """,
        schema,
    )
    assert row is not None
    why = (
        "is a superuser"
        if row["superuser"]
        else f"owns schema {schema!r}"
        if row["owner"]
        else f"may create in schema {schema!r}"
        if row["can_create"]
        else None
    )
    if why is not None:
        message = (
            f"refusing to start: DATABASE_URL connects as role {row['who']!r}, which {why}; "
            "DATABASE_URL must name the service's runtime role (data only) and "
            "DATABASE_MIGRATION_URL the role that owns the schema"
        )
        log.error(message)
        raise UnsafeDatabaseRole(message)


async def _refuse_broker_admin(settings: ServiceSettings) -> None:
    """Refuse to run as a principal that may change the broker itself (its superuser): a service
    connects as its own principal, which may only read and write its topics (shared.access)."""
    connection = KafkaConnection.from_settings(settings)
    if not connection.uses_sasl:
        return
    operations = await asyncio.to_thread(access.cluster_operations, connection)
    if operations and operations & access.ADMIN_OPERATIONS:
        message = (
            f"refusing to start: KAFKA_SASL_USERNAME {connection.sasl_username!r} may change the broker itself"
            f" ({', '.join(sorted(operations & access.ADMIN_OPERATIONS))}); a service connects as its own"
            " principal (.local/clients/<service>.env)"
        )
        log.error(message)
        raise UnsafeBrokerPrincipal(message)


async def migrate(settings: ServiceSettings, name: str, migrations: Path) -> list[str]:
    """Apply the migrations as the schema's owner (DATABASE_MIGRATION_URL), on a pool of its own
    that is closed before the service runs; returns the ones applied now. At every start, and
    alone in the deployment's migration Job (`python -m shared.migrate <service>`)."""
    if not settings.database_migration_url:
        message = "refusing to start: DATABASE_MIGRATION_URL is not set (the role that owns the schema)"
        log.error(message)
        raise UnsafeDatabaseRole(message)
    pool = await _connect_pool(settings, f"{name}-migrate", settings.database_migration_url, max_size=1)
    try:
        return await db.migrate(pool, settings.schema, migrations)
    finally:
        await pool.close()


async def _connect_pool(
    settings: ServiceSettings, name: str, dsn: str | None = None, max_size: int | None = None
) -> asyncpg.Pool:
    """The pool (DATABASE_URL unless told), waiting for the database for up to a minute (it may
    start after us)."""
    for attempt in range(1, 1000):
        try:
            return await db.create_pool(
                dsn or settings.database_url,
                settings.schema,
                application_name=name,
                max_size=max_size or settings.database_pool_size,
                statement_timeout_ms=settings.database_statement_timeout_ms,
                lock_timeout_ms=settings.database_lock_timeout_ms,
                sslmode=settings.database_sslmode,
            )
        except (OSError, asyncpg.PostgresConnectionError, asyncpg.exceptions.CannotConnectNowError) as exc:
            if attempt >= 20:
                raise
            log.warning("database not reachable yet", error=type(exc).__name__, attempt=attempt)
            await asyncio.sleep(backoff_delay(attempt, base=0.5, cap=5.0))
    raise RuntimeError("unreachable")


def inbox_pruning(settings: ServiceSettings) -> DueWork[asyncpg.Record, Any]:
    """Background job (every service, every replica): delete inbox claims older than
    INBOX_RETENTION_HOURS, first shortly after startup (jittered, once startup traffic has
    settled) and then every INBOX_PRUNE_INTERVAL_SECONDS, INBOX_PRUNE_BATCH_SIZE rows per
    transaction until none is left, skipping rows another replica holds (shared.inbox)."""

    async def claim(conn: Connection, now: datetime, limit: int) -> list[asyncpg.Record]:
        return await inbox.prune_batch(conn, retention_hours=settings.inbox_retention_hours, limit=limit)

    return DueWork(
        name="prune_inbox",
        claim=claim,  # deleting them is the whole work
        interval_seconds=settings.inbox_prune_interval_seconds,
        batch_size=settings.inbox_prune_batch_size,
        first_delay_seconds=30.0,
        log_rounds=True,
    )


def _broker(runtime: Runtime) -> tuple[KafkaBroker, Any]:
    """The FastStream broker with the service's one subscriber (all its topics, one group), and
    that subscriber (None for a service that consumes nothing)."""
    settings, definition = runtime.settings, runtime.definition
    broker = KafkaBroker(
        settings.kafka_bootstrap_servers,
        security=_broker_security(settings),
        client_id=definition.name,
        allow_auto_create_topics=False,  # topics are created from the contract by provisioning
        graceful_timeout=15.0,
        log_level=logging.DEBUG,  # one line per message only at DEBUG
    )
    if not definition.consumes:
        return broker, None

    subscriber = broker.subscriber(
        *definition.consumes,
        group_id=definition.name,
        batch=True,
        max_records=settings.consumer_max_records,
        batch_timeout_ms=settings.consumer_batch_timeout_ms,
        auto_offset_reset="earliest",
        ack_policy=AckPolicy.MANUAL,
        decoder=_raw_decoder,
        title=f"{definition.name}:consume",
    )

    @subscriber
    async def on_records(msg: KafkaMessage) -> None:
        """Subscribers only translate: raw records in, the recipe, then commit offsets."""
        records = msg.raw_message if isinstance(msg.raw_message, tuple) else (msg.raw_message,)
        if not records:
            return
        try:
            await runtime.processor.handle(records)
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

    return broker, subscriber


async def _raw_decoder(msg: Any) -> Any:
    """Leave decoding to the recipe, so a malformed record reaches us and is dead-lettered."""
    return None


async def _start_producer(settings: ServiceSettings, name: str) -> AIOKafkaProducer:
    producer = AIOKafkaProducer(
        client_id=f"{name}-relay",
        enable_idempotence=True,
        acks="all",
        linger_ms=5,
        **settings.kafka_client_args(),
    )
    await producer.start()
    return producer


async def _supervised(task: BackgroundTask, runtime: Runtime) -> None:
    """Keep a background loop alive: log and restart it after an unexpected error."""
    failures = 0
    while not runtime.stopping:
        try:
            await task(runtime)
            return
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - a supervisor logs and restarts whatever its task raised
            failures += 1
            log.error(
                "background task failed; restarting",
                task=task.__name__,
                error=type(exc).__name__,
                detail=mask_text(str(exc))[:300],
            )
            await asyncio.sleep(backoff_delay(failures, base=1.0, cap=30.0))


def http_app(definition: ServiceDefinition) -> FastAPI:
    """The service's HTTP surface; its lifespan builds, starts and stops the runtime."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.verifier = definition.settings.token_verifier()
        runtime = await Runtime.build(definition)
        app.state.runtime = runtime
        await runtime.start()
        if definition.settings.gc_freeze:
            gc.collect()
            gc.freeze()
        try:
            yield
        finally:
            await runtime.stop()

    app = FastAPI(title=definition.name, description=definition.description, lifespan=lifespan)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        """422 saying where and what, never echoing the value sent (it may be personal data)."""
        errors = [{"loc": list(e["loc"]), "msg": mask_text(str(e["msg"]))} for e in exc.errors()[:10]]
        return JSONResponse({"detail": errors}, status_code=422)

    if definition.http_routes is not None:
        app.include_router(definition.http_routes)

    @app.get("/healthz", tags=["operations"])
    async def healthz() -> dict[str, str]:
        """Liveness: the process answers."""
        return {"status": "ok", "service": definition.name}

    @app.get("/readyz", tags=["operations"])
    async def readyz(request: Request) -> JSONResponse:
        """Readiness: started, database answering (503 otherwise)."""
        runtime: Runtime | None = getattr(request.app.state, "runtime", None)
        if runtime is None:
            return JSONResponse({"ready": False, "checks": {"started": False}}, status_code=503)
        body = await runtime.readiness()
        return JSONResponse(body, status_code=200 if body["ready"] else 503)

    @app.get("/metrics", tags=["operations"])
    async def metrics(request: Request) -> Response:
        """Prometheus metrics of this process, the gauges of state read now."""
        runtime: Runtime | None = getattr(request.app.state, "runtime", None)
        if runtime is not None and runtime.started and not runtime.stopping:
            await runtime.refresh_metrics()
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    return app


def run(definition_factory: Callable[[], ServiceDefinition]) -> None:
    """`python -m <service>`: JSON logs, the app under uvicorn, graceful stop on SIGTERM/SIGINT."""
    definition = definition_factory()
    settings = definition.settings
    configure_logging(definition.name, settings.log_level, settings.log_format)
    use_fast_json(settings.fast_json)
    tracing.configure(definition.name)  # on only when OTEL_EXPORTER_OTLP_ENDPOINT names a collector
    config = uvicorn.Config(
        http_app(definition),
        host=settings.http_host,
        port=settings.http_port,
        log_config=None,
        lifespan="on",
        access_log=False,
        timeout_graceful_shutdown=20,
        loop=settings.event_loop,
    )
    try:
        uvicorn.Server(config).run()
    finally:
        tracing.shutdown()  # export the spans still buffered


def runtime_of(request: Request) -> Runtime:
    """A route's dependency: the running service (503 while it starts or stops)."""
    runtime: Runtime | None = getattr(request.app.state, "runtime", None)
    if runtime is None or not runtime.started or runtime.stopping:
        raise HTTPException(503, "the service is starting or stopping")
    return runtime
