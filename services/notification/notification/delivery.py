"""The sender: sends the deliveries the consumer recorded, retries, and reports the outcome (a
`DueCall` on shared.background: claim and lease, send outside, record).

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
  `Idempotency-Key` header (the generic HTTP channel).
- SMS goes through one of two channels, by SMS_PROVIDER: `http` (a form POST to SMS_API_URL,
  bearer key) or `twilio` (the official SDK: Basic auth with the account SID and auth token).
  The SDK is synchronous: each send runs in a worker thread, at most SMS_MAX_CONCURRENT_SENDS at
  once, so the event loop never waits on Twilio. Twilio's message SID is kept on the row, and its
  status callbacks (`api.sms_status`) record the delivery's provider status.

The window that remains: when the SMTP server has accepted an email and this process dies (or
the database is unreachable for longer than the outcome retries) before the row is marked
sent, the lease expires and the email is sent again, with the same Message-ID. SMTP has no
idempotency key, so a mail server or client that does not de-duplicate on Message-ID shows it
twice. The window is one database round trip long; an SMS in the same window is repeated only
if the provider ignores the `Idempotency-Key`. Twilio's Messages API takes no idempotency key:
through the `twilio` channel an SMS in that window is sent twice.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import dataclass
from datetime import datetime
from email.header import Header
from email.message import Message
from email.mime.text import MIMEText
from email.utils import formatdate
from typing import Any, Literal, Protocol

import aiosmtplib
import asyncpg
import httpx
import requests
from twilio.base.exceptions import TwilioException, TwilioRestException
from twilio.http import HttpClient
from twilio.http.http_client import TwilioHttpClient
from twilio.rest import Client as TwilioClient

from shared.background import DueCall, WorkUnit
from shared.contracts.notification import NotificationFailed, NotificationSent
from shared.logging import get_logger
from shared.topics import NOTIFICATION_EVENTS
from shared.tracing import external_call

from . import domain, repository
from .rendering import Renderer
from .settings import NotificationSettings

log = get_logger(__name__)

SMS_NOT_CONFIGURED = "SMS delivery is not configured"


class DeliveryError(Exception):
    """A send that did not go through; `permanent` when trying again cannot help."""

    def __init__(self, message: str, *, permanent: bool) -> None:
        super().__init__(message)
        self.permanent = permanent


class EmailChannel:
    """Plain-text email through SMTP (aiosmtplib). Connections are kept and reused, at most
    SMTP_POOL_SIZE of them, which also bounds how many sends run at once; a connection that failed
    in any way is closed, never reused, and one idle for SMTP_IDLE_SECONDS is closed before use.
    SMTP_POOL_SIZE=0 opens a connection per message (make bench shows what reuse buys)."""

    def __init__(self, settings: NotificationSettings) -> None:
        self._settings = settings
        self._domain = settings.smtp_from.rpartition("@")[2] or "localhost"
        self._idle: list[tuple[aiosmtplib.SMTP, float]] = []
        self._slots = asyncio.Semaphore(max(1, settings.smtp_pool_size))

    def message(self, notification_id: uuid.UUID, to: str, subject: str, body: str) -> Message:
        """The message, built with the compat32 classes (several times cheaper than EmailMessage's
        header registry): a header that is not ASCII is an RFC 2047 encoded word, and a line break
        in a header value (which the contract's bounds already exclude) is refused."""
        msg = MIMEText(body, "plain", "utf-8")
        for name, value in (
            ("From", self._settings.smtp_from),
            ("To", to),
            ("Subject", subject),
            ("Date", formatdate(usegmt=True)),
            # The idempotency key of this message: the same on every retry of it.
            ("Message-ID", f"<{notification_id}@{self._domain}>"),
            ("Auto-Submitted", "auto-generated"),
        ):
            if "\r" in value or "\n" in value:
                raise DeliveryError(f"the {name} header would hold a line break", permanent=True)
            msg[name] = value if value.isascii() else Header(value, "utf-8").encode()
        return msg

    async def send(self, notification_id: uuid.UUID, to: str, subject: str, body: str) -> None:
        message = self.message(notification_id, to, subject, body)
        try:
            if self._settings.smtp_pool_size == 0:
                await aiosmtplib.send(message, **self._connection_args())
                return
            async with self._slots:
                smtp = await self._connection()
                try:
                    await smtp.send_message(message)
                except BaseException:
                    smtp.close()
                    raise
                self._idle.append((smtp, time.monotonic()))
        except aiosmtplib.SMTPRecipientsRefused as exc:
            raise DeliveryError(f"SMTP refused the recipient: {exc}", permanent=True) from None
        except aiosmtplib.SMTPResponseException as exc:
            # 5xx: the server will say the same next time; 4xx: try again later.
            raise DeliveryError(f"SMTP {exc.code}: {exc.message}", permanent=exc.code >= 500) from None
        except (TimeoutError, aiosmtplib.SMTPException, OSError) as exc:
            raise DeliveryError(f"SMTP unavailable: {type(exc).__name__}: {exc}", permanent=False) from None

    def _connection_args(self) -> dict[str, Any]:
        s = self._settings
        return {
            "hostname": s.smtp_host,
            "port": s.smtp_port,
            "username": s.smtp_username,
            "password": s.smtp_password.get_secret_value() if s.smtp_password else None,
            "start_tls": s.smtp_tls_mode == "starttls",  # required when asked for, never opportunistic
            "use_tls": s.smtp_tls_mode == "implicit",
            "timeout": s.smtp_timeout_seconds,
        }

    async def _connection(self) -> aiosmtplib.SMTP:
        """A kept connection that is still open and was used recently, else a new one."""
        while self._idle:
            smtp, since = self._idle.pop()
            if smtp.is_connected and time.monotonic() - since < self._settings.smtp_idle_seconds:
                return smtp
            smtp.close()
        smtp = aiosmtplib.SMTP(**self._connection_args())
        await smtp.connect()
        return smtp

    async def close(self) -> None:
        while self._idle:
            smtp, _ = self._idle.pop()
            try:
                await smtp.quit()
            except (aiosmtplib.SMTPException, OSError, TimeoutError):
                smtp.close()


class SmsChannel:
    """SMS through a Twilio-style provider: a form POST of To/Body (and From) per message."""

    def __init__(self, settings: NotificationSettings, client: httpx.AsyncClient) -> None:
        self._settings = settings
        self._client = client

    @property
    def configured(self) -> bool:
        return bool(self._settings.sms_api_url)

    async def send(self, notification_id: uuid.UUID, to: str, body: str) -> str | None:
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
            return None  # a generic provider's answer names no message we could follow
        raise DeliveryError(
            f"SMS provider answered {response.status_code}: {response.text[:200]}",
            permanent=not retry_may_pass(response.status_code),
        )


def retry_may_pass(status: int) -> bool:
    """408, 429 and 5xx may pass; any other refusal will be the same next time."""
    return status in (408, 429) or status >= 500


class SmsSender(Protocol):
    """An SMS channel: sends one message, returns the provider's id for it if it gives one."""

    @property
    def configured(self) -> bool: ...

    async def send(self, notification_id: uuid.UUID, to: str, body: str) -> str | None: ...


class TwilioSmsChannel:
    """SMS through Twilio's Messages API with the official SDK: Basic auth (account SID, auth
    token), `From` SMS_FROM, a status callback to SMS_STATUS_CALLBACK_URL when set.

    The SDK blocks: a send runs in a worker thread (`asyncio.to_thread`), and a semaphore holds
    the threads at SMS_MAX_CONCURRENT_SENDS, so a slow Twilio fills neither the loop nor the
    default executor. A refusal is permanent for 4xx (an invalid number, an unverified sender,
    wrong credentials) and retried for 408, 429, 5xx and anything on the network."""

    def __init__(self, settings: NotificationSettings, http_client: HttpClient | None = None) -> None:
        """`http_client`: the SDK's own transport port (its TwilioHttpClient when None)."""
        self._settings = settings
        self._slots = asyncio.Semaphore(settings.sms_max_concurrent_sends)
        self._client: TwilioClient | None = None
        if self.configured:
            assert settings.twilio_account_sid and settings.twilio_auth_token
            # The SDK logs every request's URL and headers at INFO: kept to warnings here.
            quiet = logging.getLogger("notification.twilio")
            quiet.setLevel(logging.WARNING)
            self._client = TwilioClient(
                settings.twilio_account_sid,
                settings.twilio_auth_token.get_secret_value(),
                http_client=http_client or TwilioHttpClient(timeout=settings.sms_timeout_seconds, logger=quiet),
            )
            if settings.twilio_api_base_url:  # a Twilio-speaking stand-in (tests) or a proxy
                self._client.api.base_url = settings.twilio_api_base_url.rstrip("/")

    @property
    def configured(self) -> bool:
        s = self._settings
        return bool(s.twilio_account_sid and s.twilio_auth_token and s.sms_from)

    async def send(self, notification_id: uuid.UUID, to: str, body: str) -> str | None:
        if self._client is None:
            raise DeliveryError(SMS_NOT_CONFIGURED, permanent=True)
        async with self._slots:
            try:
                return await asyncio.to_thread(self._create, to, body)
            except TwilioRestException as exc:
                # Twilio's message may quote the number: only its status and error code are kept.
                raise DeliveryError(
                    f"Twilio answered {exc.status} (error code {exc.code})", permanent=not retry_may_pass(exc.status)
                ) from None
            except (requests.RequestException, TwilioException, OSError) as exc:
                raise DeliveryError(f"Twilio unreachable: {type(exc).__name__}", permanent=False) from None

    def _create(self, to: str, body: str) -> str | None:
        """In a worker thread: one Messages.json POST."""
        assert self._client is not None
        s = self._settings
        message = self._client.messages.create(
            to=to, from_=s.sms_from, body=body, status_callback=s.sms_status_callback_url or None
        )
        return message.sid


def sms_channel(settings: NotificationSettings, http: httpx.AsyncClient) -> SmsSender:
    """The SMS channel SMS_PROVIDER names."""
    if settings.sms_provider == "twilio":
        return TwilioSmsChannel(settings)
    return SmsChannel(settings, http)


@dataclass
class Deps:
    """What handlers and the sender are given (built in the app's startup, closed at shutdown)."""

    settings: NotificationSettings
    renderer: Renderer
    email: EmailChannel
    sms: SmsSender
    http: httpx.AsyncClient

    @classmethod
    def build(cls, settings: NotificationSettings) -> Deps:
        # Keep-alive connections to the SMS provider, reused across sends (httpx pools them).
        http = httpx.AsyncClient(
            limits=httpx.Limits(max_connections=20, max_keepalive_connections=20, keepalive_expiry=30)
        )
        return cls(
            settings=settings,
            renderer=Renderer(),
            email=EmailChannel(settings),
            sms=sms_channel(settings, http),
            http=http,
        )

    async def close(self) -> None:
        await self.email.close()
        await self.http.aclose()


def sender(settings: NotificationSettings) -> DueCall[asyncpg.Record, Attempt, Deps]:
    """Background job: claim due deliveries (leased for DELIVERY_LEASE_SECONDS), send a batch at
    once, record each outcome; every DELIVERY_POLL_INTERVAL_SECONDS. At shutdown the sends in
    flight are let finish and be recorded, because a send cut off would be repeated when its
    lease ends."""

    async def claim(conn: asyncpg.Connection, now: datetime, limit: int) -> list[asyncpg.Record]:
        return await repository.claim_due(conn, limit, settings.delivery_lease_seconds)

    async def send(deps: Deps, row: asyncpg.Record) -> Attempt:
        return await send_one(deps, row, max_attempts=settings.delivery_max_attempts)

    async def record(unit: WorkUnit[Deps], row: asyncpg.Record, attempt: Attempt) -> None:
        await record_outcome(unit, row, attempt, settings)

    return DueCall(
        name="send_deliveries",
        claim=claim,
        call=send,
        record=record,
        correlation=lambda row: row["correlation_id"],
        key=lambda row: str(row["notification_id"]),
        interval_seconds=settings.delivery_poll_interval_seconds,
        batch_size=settings.delivery_batch_size,
        concurrency=settings.delivery_batch_size,
        drain_seconds=max(settings.smtp_timeout_seconds, settings.sms_timeout_seconds) + 5,
        wake_on_commit=True,  # the consumer records the messages to send
    )


@dataclass(frozen=True)
class Attempt:
    """What one send came to: sent, to be retried, or failed for good (with the redacted reason)."""

    step: Literal["sent", "retry", "failed"]
    reason: str | None = None
    provider_message_id: str | None = None  # what the provider calls the message it accepted


async def send_one(deps: Deps, row: asyncpg.Record, *, max_attempts: int) -> Attempt:
    """Send one claimed delivery, outside any transaction; what came of it."""
    notification_id: uuid.UUID = row["notification_id"]
    try:
        if row["channel"] == "email":
            with external_call("smtp send", "smtp"):
                await deps.email.send(notification_id, row["address"], row["subject"] or "", row["body"] or "")
            return Attempt("sent")
        with external_call("sms send", "sms"):
            provider_message_id = await deps.sms.send(notification_id, row["address"], row["body"] or "")
        return Attempt("sent", provider_message_id=provider_message_id)
    except DeliveryError as exc:
        error = exc
    except Exception as exc:  # noqa: BLE001 - an unforeseen fault of the client library: try again later
        error = DeliveryError(f"{type(exc).__name__}: {exc}", permanent=False)
    reason = domain.redact(str(error))
    step = domain.after_failure(row["attempts"], max_attempts=max_attempts, permanent=error.permanent)
    log.warning(
        "notification not delivered",
        notification_id=str(notification_id),
        channel=row["channel"],
        recipient=row["recipient"],
        attempts=row["attempts"],
        next=step,
        error=reason,
    )
    return Attempt(step, reason)


async def record_outcome(
    unit: WorkUnit[Any], row: asyncpg.Record, attempt: Attempt, settings: NotificationSettings
) -> None:
    """Mark the row and emit its event (sent or failed), or schedule its retry, in the unit's
    transaction. Until it commits the message counts as unsent and would be sent again, so the
    runner retries it while the database is down."""
    notification_id: uuid.UUID = row["notification_id"]
    if attempt.step == "retry":
        delay = domain.retry_delay(
            row["attempts"],
            base_seconds=settings.delivery_retry_base_seconds,
            max_seconds=settings.delivery_retry_max_seconds,
        )
        await repository.schedule_retry(unit.conn, notification_id, row["attempts"], delay, attempt.reason or "")
        return
    payload: NotificationSent | NotificationFailed
    if attempt.step == "sent":
        changed = await repository.mark_sent(unit.conn, notification_id, attempt.provider_message_id)
        payload = NotificationSent.new(**_outcome_fields(row))
    else:
        changed = await repository.mark_failed(unit.conn, notification_id, row["attempts"], attempt.reason or "")
        payload = NotificationFailed.new(**_outcome_fields(row), error=attempt.reason)
    if not changed:
        return  # another replica recorded this delivery's outcome already
    # CONTRACT.md: keyed by booking_id, or professional_id for notices about a professional.
    unit.emit(NOTIFICATION_EVENTS, payload, subject=row["booking_id"] or row["professional_id"] or str(notification_id))
    log.debug(  # one line per message: debug, not info (the hot path)
        "notification " + attempt.step,
        notification_id=str(notification_id),
        channel=row["channel"],
        recipient=row["recipient"],
    )


def _outcome_fields(row: asyncpg.Record) -> dict[str, Any]:
    """What the outcome events say: ids, roles and the template, never an address or a text."""
    return {
        "notification_id": str(row["notification_id"]),
        "booking_id": row["booking_id"],
        "recipient": row["recipient"],
        "channel": row["channel"],
        "template": row["template"],
    }
