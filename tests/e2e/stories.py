"""The end-to-end tier's practice and booking, built once: Harbour Dental with a late-cancellation
fee and a PMS integration, and a 45-minute appointment for Ann. Each test says only what differs."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from shared.testing import iso

LATE_FEE = {"amount": "45.00", "currency": "AUD", "code": "D9987", "code_system": "CDT"}


def harbour_dental(practice_id: str, *, fees: dict[str, Any] | None = None, **override: Any) -> dict[str, Any]:
    """`practice.configured` data; `fees` replaces the default fees, `override` any other field
    (None removes it)."""
    settings: dict[str, Any] = {
        "practice_id": practice_id,
        "name": "Harbour Dental",
        "timezone": "Australia/Sydney",
        "locale": "en",
        "contact": {"email": "frontdesk@harbour.test", "preferred_channel": "email"},
        "fees": fees if fees is not None else {"late_cancellation": LATE_FEE, "charge_card_on_file": True},
        "pms": {"integration": "praktika"},
        **override,
    }
    return {k: v for k, v in settings.items() if v is not None}


def ann_booked(
    booking_id: str,
    practice_id: str,
    patient_id: str,
    starts: datetime,
    *,
    patient: dict[str, Any] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """`booking.scheduled` data with the patient Ann; `patient` adds to or replaces her fields
    (None removes one), `extra` adds booking fields (a deposit, a professional)."""
    ann: dict[str, Any] = {
        "patient_id": patient_id,
        "first_name": "Ann",
        "portal_account": True,
        "card_on_file": True,
        "locale": "en",
        **(patient or {}),
    }
    return {
        "booking_id": booking_id,
        "practice_id": practice_id,
        "starts_at": iso(starts),
        "ends_at": iso(starts + timedelta(minutes=45)),
        "practitioner_id": "dr-lee",
        "service_code": "D1110",
        "patient": {k: v for k, v in ann.items() if v is not None},
        **extra,
    }
