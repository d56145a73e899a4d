"""One async function per message type: load, decide, save.

The consumer's transaction only *records* the messages to send (one delivery row per recipient
and channel, status pending, or skipped with the reason); it never talks to an SMTP server or
an SMS provider, so a rolled-back or redelivered batch can never have sent anything. The
sender (`delivery.send_deliveries`) sends what was committed.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

import asyncpg

from shared.consumer import Unit
from shared.contracts.booking import BookingCancellationRejected, BookingCancelled
from shared.contracts.upstream import (
    BookingCancellationRequested,
    BookingRescheduled,
    BookingScheduled,
    PracticeConfigured,
)
from shared.logging import get_logger

from . import domain, repository
from .delivery import Deps

log = get_logger(__name__)


# --- the contact directory ---------------------------------------------------------------------


async def configure_practice(unit: Unit, event: PracticeConfigured) -> None:
    await repository.upsert_practice(
        unit.conn,
        {
            "practice_id": event.practice_id,
            "name": event.name,
            "timezone": event.timezone,
            "locale": event.locale,
            "email": event.contact.email,
            "phone": event.contact.phone,
            "preferred_channel": event.contact.preferred_channel,
            "notify_practice_on_online_cancel": event.cancellation.notify_practice_on_online_cancel,
        },
        configured_at=unit.event.envelope.time,
    )


async def remember_patient(unit: Unit, event: BookingScheduled) -> None:
    await repository.upsert_patient(
        unit.conn,
        {
            "booking_id": event.booking_id,
            "practice_id": event.practice_id,
            "patient_id": event.patient.patient_id,
            "first_name": event.patient.first_name,
            "email": event.patient.email,
            "phone": event.patient.phone,
            "locale": event.patient.locale,
            "starts_at": event.starts_at,
        },
        scheduled_at=unit.event.envelope.time,
    )


async def reschedule_booking(unit: Unit, event: BookingRescheduled) -> None:
    await repository.reschedule(unit.conn, event.booking_id, event.starts_at)


async def remember_request(unit: Unit, event: BookingCancellationRequested) -> None:
    # Only who asked and how: a rejection is told to the patient when the patient asked.
    await repository.remember_request(
        unit.conn, event.request_id, event.booking_id, event.actor.kind, event.channel, event.requested_at
    )


# --- what to tell whom ---------------------------------------------------------------------------


async def notify_cancellation(unit: Unit, event: BookingCancelled) -> None:
    practice = await _practice(unit.conn, event.practice_id)
    patient = _patient(await repository.get_patient(unit.conn, event.booking_id))
    deps: Deps = unit.deps
    await _record(
        unit,
        domain.plan_cancellation(event.actor.kind, patient, practice),
        practice=practice,
        patient=patient,
        starts_at=event.starts_at,
        fee=(event.decision.fee.amount, event.decision.fee.currency) if event.decision.fee else None,
        booking_id=event.booking_id,
        service_code=event.service_code,
        practitioner_id=event.practitioner_id,
        professional_id=event.professional_id,
        classification=event.classification,
        reason_code=event.reason_code,
        reason_text=event.reason_text,
        series_count=len(event.series_booking_ids),
        rebook_url=(
            domain.rebook_url(deps.settings.portal_base_url, event.practice_id, event.booking_id)
            if event.actor.kind == "patient"
            else None
        ),
    )


async def notify_rejection(unit: Unit, event: BookingCancellationRejected) -> None:
    patient_row = await repository.get_patient(unit.conn, event.booking_id)
    patient = _patient(patient_row)
    practice = (
        await _practice(unit.conn, patient_row["practice_id"])
        if patient_row
        else domain.PracticeContact.unknown("")
    )
    requester = await repository.requester_kind(unit.conn, event.request_id)
    await _record(
        unit,
        domain.plan_rejection(event.reason, requester, patient, practice),
        practice=practice,
        patient=patient,
        starts_at=patient_row["starts_at"] if patient_row else None,
        booking_id=event.booking_id,
        reason=event.reason,
        message=event.message,
    )


async def _practice(conn: asyncpg.Connection, practice_id: str) -> domain.PracticeContact:
    row = await repository.get_practice(conn, practice_id)
    if row is None:
        return domain.PracticeContact.unknown(practice_id)
    return domain.PracticeContact(
        practice_id=row["practice_id"],
        name=row["name"],
        timezone=row["timezone"],
        locale=row["locale"],
        email=row["email"],
        phone=row["phone"],
        preferred_channel=row["preferred_channel"],
        notify_practice_on_online_cancel=row["notify_practice_on_online_cancel"],
    )


def _patient(row: asyncpg.Record | None) -> domain.PatientContact | None:
    if row is None:
        return None
    return domain.PatientContact(
        first_name=row["first_name"], email=row["email"], phone=row["phone"], locale=row["locale"]
    )


async def _record(
    unit: Unit,
    messages: list[domain.Message],
    *,
    practice: domain.PracticeContact,
    patient: domain.PatientContact | None,
    starts_at: datetime | None,
    fee: tuple[Decimal, str] | None = None,
    **facts: Any,
) -> None:
    """One delivery row per planned message: pending with its rendered text, or skipped."""
    deps: Deps = unit.deps
    for message in messages:
        row: dict[str, Any] = {
            "notification_id": domain.notification_id(unit.event.id, message.recipient, message.channel),
            "event_id": unit.event.id,
            "event_type": unit.event.type,
            "correlation_id": unit.event.correlation_id,
            "booking_id": facts.get("booking_id"),
            "practice_id": practice.practice_id or None,
            "recipient": message.recipient,
            "channel": message.channel,
            "template": message.template,
            "locale": message.locale,
            "address": None,
            "subject": None,
            "body": None,
            "status": "skipped",
            "reason": message.skip_reason,
        }
        if not message.skipped:
            context = domain.template_context(message, starts_at=starts_at, practice=practice, patient=patient, fee=fee, **facts)
            rendered = deps.renderer.render(message.template, message.recipient, message.channel, message.locale, context)
            row |= {
                "address": message.address,
                "subject": rendered.subject,
                "body": rendered.body,
                "status": "pending",
                "reason": None,
            }
        if await repository.record_delivery(unit.conn, row):
            log.info(
                "notification recorded",
                notification_id=str(row["notification_id"]),
                recipient=message.recipient,
                channel=message.channel,
                template=message.template,
                status=row["status"],
                skip_reason=message.skip_reason,
            )
