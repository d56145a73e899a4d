"""The Kafka side of a connector: consume one integration's commands, apply each to the PMS,
acknowledge it on `pms-sync.acks.v1`, then commit its offset.

Guarantees: at least once. A command's offset is committed only after its acknowledgement
was written to the broker (or after deciding it gets none), so a crash anywhere before that
means the command is delivered again; the PMS applies a repeated `sync_id` (its
Idempotency-Key) once, and pms-sync ignores a repeated acknowledgement. Commands are applied
one at a time, in order within each partition (commands of one booking share a partition).

A record that is not a command (garbage, a newer type) is skipped with a log line; a command
that fails for a reason no retry changes is acknowledged as an error, so pms-sync asks the
practice to update by hand. Only the broker being away is retried, with jittered backoff, and
never by blocking the process in a tight loop.
"""

from __future__ import annotations

import asyncio
import json

import httpx
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.errors import KafkaError

from shared.backoff import backoff_delay
from shared.consumer import is_transient
from shared.contracts import ContractViolation, models_for, new_envelope, parse_envelope
from shared.contracts.envelope import Event
from shared.contracts.upstream import PmsSyncAcknowledged
from shared.logging import get_logger
from shared.topics import PMS_SYNC_ACKS

from . import pms
from .settings import ConnectorSettings

log = get_logger(__name__)


class Connector:
    def __init__(self, settings: ConnectorSettings, client: httpx.AsyncClient, producer: AIOKafkaProducer) -> None:
        self.settings = settings
        self.client = client
        self.producer = producer
        self.commands = models_for(settings.topic)  # pms.cancel_booking, pms.record_no_show
        self.source = f"connector/{settings.connector_integration}"
        self.failures: dict[tuple[TopicPartition, int], int] = {}  # transient failures per record

    async def handle(self, record: ConsumerRecord) -> None:
        """Apply one record's command and acknowledge it, or leave it for pms-sync to resend."""
        try:
            event = parse_envelope(record.value, self.commands)
        except ContractViolation as exc:
            # Not a command we know (a newer event type, or garbage): without a sync_id there is
            # nothing to acknowledge. Skip it; never stop the partition for it.
            log.warning(
                "skipped a record that is not a known command",
                offset=record.offset,
                partition=record.partition,
                error=str(exc)[:300],
            )
            return
        try:
            await self._apply(event)
        except Exception as exc:
            if is_transient(exc):
                raise
            # It would fail the same way every time: tell pms-sync, which asks for a manual update.
            log.error(
                "command cannot be applied; acknowledged as an error", offset=record.offset, error=type(exc).__name__
            )
            await self._acknowledge(
                event, "error", f"the connector could not apply this command ({type(exc).__name__})", None
            )

    async def _apply(self, event: Event) -> None:
        command = event.payload
        where: dict[str, str] = {"sync_id": command.sync_id, "booking_id": command.booking_id, "type": event.type}
        if self.settings.practice_ids and command.practice_id not in self.settings.practice_ids:
            return  # another practice's PMS: another connector's command

        result = await pms.apply(
            self.client,
            pms.request_for(command),
            attempts=self.settings.connector_http_attempts,
            backoff=self.settings.connector_http_backoff_seconds,
            max_backoff=self.settings.connector_http_max_backoff_seconds,
        )
        if result.outcome == "unavailable":
            # Say nothing: pms-sync sends it again after its ack timeout (same sync_id) and gives
            # up, asking the practice to update by hand, after its last attempt.
            # The PMS's own words may echo the request (reason, chart note): they go to pms-sync
            # in the acknowledgement, never to the log.
            log.warning("PMS unavailable; left unacknowledged for pms-sync to resend", **where)
            return
        await self._acknowledge(event, result.outcome, result.error, result.external_ref)
        log.info(
            "command applied" if result.outcome == "ok" else "command refused by the PMS",
            status=result.outcome,
            external_ref=result.external_ref,
            **where,
        )

    async def _acknowledge(self, event: Event, status: str, error: str | None, external_ref: str | None) -> None:
        command = event.payload
        ack = PmsSyncAcknowledged.new(
            sync_id=command.sync_id,
            booking_id=command.booking_id,
            status=status,
            error=None if error is None else error[:1000],
            external_ref=external_ref,
        )
        envelope = new_envelope(
            ack, source=self.source, subject=command.booking_id, correlation_id=event.correlation_id
        )
        # Keyed by booking id like everything about a booking; waits for the broker's ack.
        await self.producer.send_and_wait(PMS_SYNC_ACKS, json.dumps(envelope).encode(), key=command.booking_id.encode())


async def run(settings: ConnectorSettings, stop: asyncio.Event) -> None:
    """Consume until `stop` is set; the command in hand is finished (and committed) first."""
    kafka = settings.kafka_client_args()
    consumer = AIOKafkaConsumer(
        settings.topic,
        group_id=settings.group_id,
        enable_auto_commit=False,  # we commit each command after its ack is on the broker
        auto_offset_reset="earliest",  # a new group starts at the oldest command, never skips one
        **kafka,
    )
    producer = AIOKafkaProducer(enable_idempotence=True, acks="all", **kafka)
    headers = {"Authorization": f"Bearer {settings.pms_api_token.get_secret_value()}"} if settings.pms_api_token else {}
    async with httpx.AsyncClient(
        base_url=settings.pms_api_url, timeout=settings.pms_timeout_seconds, headers=headers
    ) as client:
        await producer.start()
        await consumer.start()
        log.info("connector started", topic=settings.topic, group_id=settings.group_id, pms=settings.pms_api_url)
        connector = Connector(settings, client, producer)
        try:
            while not stop.is_set():
                # One command at a time: even a PMS that needs every retry keeps us well inside
                # the consumer's max_poll_interval_ms, so the group never drops us mid-command.
                batches = await consumer.getmany(timeout_ms=500, max_records=1)
                for tp, records in batches.items():
                    for record in records:
                        await _apply_and_commit(connector, consumer, tp, record)
        finally:
            await consumer.stop()
            await producer.stop()
            log.info("connector stopped")


async def _apply_and_commit(
    connector: Connector, consumer: AIOKafkaConsumer, tp: TopicPartition, record: ConsumerRecord
) -> None:
    try:
        await connector.handle(record)
    except Exception as exc:  # noqa: BLE001 - sorted below: transient is retried, anything else skipped once
        if not is_transient(exc):  # not even an error acknowledgement could be made: skip it, once
            log.error("command skipped: it cannot be handled", offset=record.offset, error=type(exc).__name__)
            await _commit(consumer, tp, record)
            return
        attempt = connector.failures[(tp, record.offset)] = connector.failures.get((tp, record.offset), 0) + 1
        delay = backoff_delay(attempt, base=0.5, cap=30.0)
        log.warning(
            "command not handled; trying it again",
            offset=record.offset,
            error=type(exc).__name__,
            attempt=attempt,
            delay=round(delay, 2),
        )
        consumer.seek(tp, record.offset)  # not committed: this record comes again
        await asyncio.sleep(delay)
        return
    connector.failures.pop((tp, record.offset), None)
    await _commit(consumer, tp, record)


async def _commit(consumer: AIOKafkaConsumer, tp: TopicPartition, record: ConsumerRecord) -> None:
    try:
        await consumer.commit({tp: record.offset + 1})
    except KafkaError as exc:  # a rebalance took the partition: its new owner redelivers, harmlessly
        log.warning("offset commit failed; the command may be delivered again", error=type(exc).__name__)
