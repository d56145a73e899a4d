"""The sender: sends the deliveries the consumer recorded, retries, and reports the outcome.

Guarantees:
- Several replicas never send the same row at once: rows are claimed with
  `FOR UPDATE SKIP LOCKED` and leased (`next_attempt_at` pushed past the send timeouts), and
  nothing is sent inside a database transaction.
- Every recorded message ends in exactly one `notification.sent` or `notification.failed`,
  written through the outbox in the same transaction that marks the row: transient failures are
  retried with exponential backoff up to `DELIVERY_MAX_ATTEMPTS`, permanent ones (an address
  the server refuses, SMS not configured) are reported at once. Neither event carries an
  address, a name or a message text.
- The provider sees one idempotency key per message, the `notification_id` (uuid5 of the
  causing event, recipient and channel): the email's `Message-ID`, the SMS request's
  `Idempotency-Key` header.

The window that remains: when the SMTP server has accepted an email and this process dies (or
the database is unreachable for longer than the outcome retries) before the row is marked
sent, the lease expires and the email is sent again, with the same Message-ID. SMTP has no
idempotency key, so a mail server or client that does not de-duplicate on Message-ID shows it
twice. The window is one database round trip long; an SMS in the same window is repeated only
if the provider ignores the `Idempotency-Key`.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import formatdate
from typing import TYPE_CHECKING, Any

import aiosmtplib
import asyncpg
import httpx

from shared import outbox
from shared.backoff import backoff_delay
from shared.consumer import is_transient
from shared.contracts.notification import NotificationFailed, NotificationSent
from shared.logging import get_logger
from shared.topics import NOTIFICATION_EVENTS

from . import domain, repository
from .rendering import Renderer
from .settings import NotificationSettings

if TYPE_CHECKING:
    from shared.service import Runtime

log = get_logger(__name__)

SMS_NOT_CONFIGURED = "SMS delivery is not configured"


class DeliveryError(Exception):
    """A send that did not go through; `permanent` when trying again cannot help."""

    def __init__(self, message: str, *, permanent: bool) -> None:
        super().__init__(message)
        self.permanent = permanent


class EmailChannel:
    """Plain-text email through SMTP (aiosmtplib), one connection per message."""

    def __init__(self, settings: NotificationSettings) -> None:
        self._settings = settings
        self._domain = settings.smtp_from.rpartition("@")[2] or "localhost"

    def message(self, notification_id: uuid.UUID, to: str, subject: str, body: str) -> EmailMessage:
        msg = EmailMessage()
        msg["From"] = self._settings.smtp_from
        msg["To"] = to
        msg["Subject"] = subject
        msg["Date"] = formatdate(usegmt=True)
        # The idempotency key of this message: the same on every retry of it.
        msg["Message-ID"] = f"<{notification_id}@{self._domain}>"
        msg["Auto-Submitted"] = "auto-generated"
        msg.set_content(body)
        return msg

    async def send(self, notification_id: uuid.UUID, to: str, subject: str, body: str) -> None:
        s = self._settings
        try:
            await aiosmtplib.send(
                self.message(notification_id, to, subject, body),
                hostname=s.smtp_host,
                port=s.smtp_port,
                username=s.smtp_username,
                password=s.smtp_password.get_secret_value() if s.smtp_password else None,
                start_tls=s.smtp_starttls,
                timeout=s.smtp_timeout_seconds,
            )
        except aiosmtplib.SMTPRecipientsRefused as exc:
            raise DeliveryError(f"SMTP refused the recipient: {exc}", permanent=True) from None
        except aiosmtplib.SMTPResponseException as exc:
            # 5xx: the server will say the same next time; 4xx: try again later.
            raise DeliveryError(f"SMTP {exc.code}: {exc.message}", permanent=exc.code >= 500) from None
        except (aiosmtplib.SMTPException, OSError, asyncio.TimeoutError) as exc:
            raise DeliveryError(f"SMTP unavailable: {type(exc).__name__}: {exc}", permanent=False) from None


class SmsChannel:
    """SMS through a Twilio-style provider: a form POST of To/Body (and From) per message."""

    def __init__(self, settings: NotificationSettings, client: httpx.AsyncClient) -> None:
        self._settings = settings
        self._client = client

    @property
    def configured(self) -> bool:
        return bool(self._settings.sms_api_url)

    async def send(self, notification_id: uuid.UUID, to: str, body: str) -> None:
        s = self._settings
        if not s.sms_api_url:
            raise DeliveryError(SMS_NOT_CONFIGURED, permanent=True)
        form = {"To": to, "Body": body}
        if s.sms_from:
            form["From"] = s.sms_from
        headers = {"Idempotency-Key": str(notification_id)}
        if s.sms_api_key:
            headers["Authorization"] = f"Bearer {s.sms_api_key.get_secret_value()}"
        try:
            response = await self._client.post(s.sms_api_url, data=form, headers=headers, timeout=s.sms_timeout_seconds)
        except httpx.HTTPError as exc:
            raise DeliveryError(f"SMS provider unreachable: {type(exc).__name__}", permanent=False) from None
        if response.is_success:
            return
        # 408, 429 and 5xx may pass; any other refusal will be the same next time.
        transient = response.status_code in (408, 429) or response.status_code >= 500
        raise DeliveryError(
            f"SMS provider answered {response.status_code}: {response.text[:200]}", permanent=not transient
        )


@dataclass
class Deps:
    """What handlers and the sender are given (built in the app's startup, closed at shutdown)."""

    settings: NotificationSettings
    renderer: Renderer
    email: EmailChannel
    sms: SmsChannel
    http: httpx.AsyncClient

    @classmethod
    def build(cls, settings: NotificationSettings) -> Deps:
        http = httpx.AsyncClient()
        return cls(settings=settings, renderer=Renderer(), email=EmailChannel(settings), sms=SmsChannel(settings, http), http=http)

    async def close(self) -> None:
        await self.http.aclose()


async def send_deliveries(service: Runtime) -> None:
    """Background task: claim due deliveries, send them, record each outcome; forever."""
    settings: NotificationSettings = service.settings  # type: ignore[assignment]
    assert service.pool is not None
    while not service.stopping:
        claimed = await repository.claim_due(service.pool, settings.delivery_batch_size, settings.delivery_lease_seconds)
        if not claimed:
            await asyncio.sleep(settings.delivery_poll_interval_seconds)
            continue
        batch = asyncio.gather(*(deliver(service, row) for row in claimed), return_exceptions=True)
        try:
            results = await asyncio.shield(batch)
        except asyncio.CancelledError:
            # Shutting down: let the sends in flight finish and be recorded, because a send cut
            # off now would be repeated when its lease ends.
            await asyncio.wait_for(batch, timeout=max(settings.smtp_timeout_seconds, settings.sms_timeout_seconds) + 5)
            raise
        for row, result in zip(claimed, results, strict=True):
            if isinstance(result, BaseException):
                # The row stays claimed until its lease ends, then it is tried again.
                log.error(
                    "delivery failed unexpectedly",
                    notification_id=str(row["notification_id"]),
                    error=type(result).__name__,
                    detail=domain.redact(str(result)),
                )


async def deliver(service: Runtime, row: asyncpg.Record) -> None:
    """Send one claimed delivery and record what happened."""
    deps: Deps = service.deps
    settings = deps.settings
    notification_id: uuid.UUID = row["notification_id"]
    try:
        if row["channel"] == "email":
            await deps.email.send(notification_id, row["address"], row["subject"] or "", row["body"] or "")
        else:
            await deps.sms.send(notification_id, row["address"], row["body"] or "")
        error: DeliveryError | None = None
    except DeliveryError as exc:
        error = exc
    except Exception as exc:  # an unforeseen fault of the client library: try again later
        error = DeliveryError(f"{type(exc).__name__}: {exc}", permanent=False)

    attempts = row["attempts"]
    if error is None:
        await _record_outcome(service, row, "sent", None)
        return
    reason = domain.redact(str(error))
    step = domain.after_failure(attempts, max_attempts=settings.delivery_max_attempts, permanent=error.permanent)
    log.warning(
        "notification not delivered",
        notification_id=str(notification_id),
        channel=row["channel"],
        recipient=row["recipient"],
        attempts=attempts,
        next=step,
        error=reason,
    )
    await _record_outcome(service, row, step, reason)


async def _record_outcome(service: Runtime, row: asyncpg.Record, step: str, reason: str | None) -> None:
    """Mark the row and write its event in one transaction; keep trying while the database is down,
    because until this commits the message counts as unsent and would be sent again."""
    settings: NotificationSettings = service.deps.settings
    for attempt in range(1, 8):
        try:
            await _commit_outcome(service, row, step, reason, settings)
            service.wake_relay()
            return
        except Exception as exc:
            # Database down, a lock or statement timeout, a serialization failure: try again.
            if not is_transient(exc):
                raise
            log.warning("could not record a delivery outcome; retrying", error=type(exc).__name__, attempt=attempt)
            await asyncio.sleep(backoff_delay(attempt, base=0.5, cap=10.0))
    log.error(
        "delivery outcome not recorded; the message will be sent again when its lease ends",
        notification_id=str(row["notification_id"]),
    )


async def _commit_outcome(
    service: Runtime, row: asyncpg.Record, step: str, reason: str | None, settings: NotificationSettings
) -> None:
    assert service.pool is not None
    notification_id: uuid.UUID = row["notification_id"]
    async with service.pool.acquire() as conn, conn.transaction():
        if step == "retry":
            delay = domain.retry_delay(
                row["attempts"],
                base_seconds=settings.delivery_retry_base_seconds,
                max_seconds=settings.delivery_retry_max_seconds,
            )
            await repository.schedule_retry(conn, notification_id, row["attempts"], delay, reason or "")
            return
        if step == "sent":
            changed = await repository.mark_sent(conn, notification_id)
            payload: Any = NotificationSent.new(**_outcome_fields(row))
        else:
            changed = await repository.mark_failed(conn, notification_id, row["attempts"], reason or "")
            payload = NotificationFailed.new(**_outcome_fields(row), error=reason)
        if not changed:
            return  # another replica recorded this delivery's outcome already
        await outbox.write(
            conn,
            [
                outbox.outgoing(
                    NOTIFICATION_EVENTS,
                    payload,
                    # CONTRACT.md: keyed by booking_id, or professional_id for notices about a professional.
                    subject=row["booking_id"] or row["professional_id"] or str(notification_id),
                    source=f"service/{service.definition.name}",
                    correlation_id=row["correlation_id"],
                )
            ],
        )
    log.info("notification " + step, notification_id=str(notification_id), channel=row["channel"], recipient=row["recipient"])


def _outcome_fields(row: asyncpg.Record) -> dict[str, Any]:
    """What the outcome events say: ids, roles and the template, never an address or a text."""
    return {
        "notification_id": str(row["notification_id"]),
        "booking_id": row["booking_id"],
        "recipient": row["recipient"],
        "channel": row["channel"],
        "template": row["template"],
    }
