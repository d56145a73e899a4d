"""`cancellations demo`: two practices and a realistic morning, played on the running system.

A dental practice (late and no-show fees, deposits, a waitlist, a Praktika PMS) and a
marketplace office (booked professionals, manual PMS updates) are configured; then bookings are
scheduled and cancelled by a patient (timely, and too late to do it online), by staff (late),
by professionals (timely and late, with an excuse submitted for the late one), and two no-shows
are reported. The slot of the late staff cancellation is offered to the waitlisted patient.

`morning()` is pure (the events to send, in order, built and checked as contract models);
`play()` sends them and reports what the services did. Every id carries the run's id, so a demo
can be played again and again. The names, addresses and numbers are invented.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from ..contracts.base import Payload
from ..contracts.upstream import (
    BookingCancellationRequested,
    BookingNoShowReported,
    BookingScheduled,
    ExcuseSubmitted,
    PracticeConfigured,
    WaitlistJoined,
)
from ..topics import UPSTREAM_BOOKINGS, UPSTREAM_PRACTICES, UPSTREAM_PROFESSIONALS

SOURCE = "tools/cancellations-demo"


@dataclass(frozen=True)
class Send:
    topic: str
    subject: str
    payload: Payload


@dataclass(frozen=True)
class Case:
    """One booking's story: its booking, then what is done to it."""

    title: str
    practice: str
    booking: BookingScheduled
    requests: list[Send] = field(default_factory=list)
    expect: str = ""  # what should happen, in words

    @property
    def booking_id(self) -> str:
        return self.booking.booking_id


@dataclass(frozen=True)
class Morning:
    practices: list[PracticeConfigured]
    waitlist: list[WaitlistJoined]
    cases: list[Case]
    excuses: list[Send]  # after the cases: they need the penalty they excuse


def _money(amount: str, currency: str = "AUD") -> dict[str, str]:
    return {"amount": str(Decimal(amount)), "currency": currency}


def _patient(run: str, n: int, name: str, *, portal: bool = True) -> dict[str, Any]:
    return {
        "patient_id": f"demo-{run}-patient-{n}",
        "first_name": name,
        "email": f"{name.lower()}.{run}@patients.example",
        "phone": f"+614{int(run[:6], 16) % 10**5:05d}{n:03d}",
        "portal_account": portal,
        "card_on_file": True,
        "locale": "en",
    }


def morning(now: datetime, run: str) -> Morning:
    """The whole demo for one run (`run`: 8 hex digits), relative to `now`."""
    dental, office = f"demo-{run}-harbour-dental", f"demo-{run}-northside-office"
    practices = [
        PracticeConfigured.model_validate(
            {
                "practice_id": dental,
                "name": "Harbour Dental (demo)",
                "timezone": "Australia/Sydney",
                "locale": "en",
                "contact": {"email": f"frontdesk.{run}@harbour-dental.example", "preferred_channel": "email"},
                "cancellation": {
                    "patient_cutoff_hours": 24,
                    "late_window_hours": 24,
                    "notify_practice_on_online_cancel": True,
                },
                "fees": {
                    "late_cancellation": {**_money("45.00"), "code": "D9987", "code_system": "CDT"},
                    "no_show": {**_money("60.00"), "code": "D9986", "code_system": "CDT"},
                    "charge_card_on_file": True,
                },
                "deposits": {"timely": "refund", "late": "keep", "no_show": "keep"},
                "waitlist": {"enabled": True, "offer_minutes": 30},
                "pms": {"integration": "praktika"},
            }
        ),
        PracticeConfigured.model_validate(
            {
                "practice_id": office,
                "name": "Northside Medical Office (demo)",
                "timezone": "Australia/Melbourne",
                "locale": "en",
                "contact": {"email": f"roster.{run}@northside.example", "preferred_channel": "email"},
                "cancellation": {"late_window_hours": 24, "professional_no_show_minutes": 30},
                "pms": {"integration": "manual"},
            }
        ),
    ]
    waitlist = [
        WaitlistJoined.model_validate(
            {
                "waitlist_id": f"demo-{run}-waitlist-1",
                "practice_id": dental,
                "patient": _patient(run, 9, "Wren"),
                "service_code": "D1110",
                "practitioner_id": "dr-lee",
                "joined_at": now - timedelta(days=2),
            }
        )
    ]

    def booking(n: int, practice: str, starts_in: timedelta, patient: dict[str, Any], **extra: Any) -> BookingScheduled:
        starts = now + starts_in
        return BookingScheduled.model_validate(
            {
                "booking_id": f"demo-{run}-booking-{n}",
                "practice_id": practice,
                "starts_at": starts,
                "ends_at": starts + timedelta(minutes=45),
                "practitioner_id": "dr-lee" if practice == dental else "gp-roster",
                "service_code": "D1110" if practice == dental else "GP-LONG",
                "patient": patient,
                **extra,
            }
        )

    def cancel(b: BookingScheduled, kind: str, actor_id: str, channel: str, **extra: Any) -> Send:
        roles = ["receptionist"] if kind == "staff" else []
        payload = BookingCancellationRequested.model_validate(
            {
                "request_id": f"{b.booking_id}-cancel",
                "booking_id": b.booking_id,
                "requested_at": now,
                "actor": {"kind": kind, "id": actor_id, "roles": roles},
                "channel": channel,
                **extra,
            }
        )
        return Send(UPSTREAM_BOOKINGS, b.booking_id, payload)

    def no_show(b: BookingScheduled, party: str, code: str) -> Send:
        payload = BookingNoShowReported.model_validate(
            {
                "request_id": f"{b.booking_id}-no-show",
                "booking_id": b.booking_id,
                "reported_at": now,
                "actor": {"kind": "staff", "id": f"demo-{run}-staff-1", "roles": ["receptionist"]},
                "party": party,
                "code": code,
            }
        )
        return Send(UPSTREAM_BOOKINGS, b.booking_id, payload)

    pro_1, pro_2 = f"demo-{run}-professional-1", f"demo-{run}-professional-2"
    staff = f"demo-{run}-staff-1"
    b1 = booking(1, dental, timedelta(days=3), _patient(run, 1, "Ava"), deposit=_money("20.00"), price=_money("180.00"))
    b2 = booking(
        2, dental, timedelta(hours=6), _patient(run, 2, "Ben"), deposit=_money("20.00"), price=_money("180.00")
    )
    b3 = booking(3, dental, timedelta(minutes=-50), _patient(run, 3, "Cleo"), price=_money("180.00"))
    b4 = booking(4, dental, timedelta(hours=5), _patient(run, 4, "Dev"))
    b5 = booking(
        5,
        office,
        timedelta(days=5),
        _patient(run, 5, "Eli", portal=False),
        professional_id=pro_1,
        price=_money("400.00"),
    )
    b6 = booking(
        6,
        office,
        timedelta(hours=8),
        _patient(run, 6, "Fay", portal=False),
        professional_id=pro_2,
        price=_money("400.00"),
    )
    b7 = booking(
        7,
        office,
        timedelta(minutes=-90),
        _patient(run, 7, "Gus", portal=False),
        professional_id=pro_1,
        price=_money("400.00"),
    )
    b8 = booking(
        8,
        office,
        timedelta(hours=10),
        _patient(run, 8, "Hal", portal=False),
        professional_id=pro_2,
        price=_money("400.00"),
    )
    cases = [
        Case(
            "patient cancels online, 3 days ahead",
            dental,
            b1,
            [cancel(b1, "patient", b1.patient.patient_id, "patient_portal", reason_code="illness")],
            "timely: no fee, deposit refunded, patient and practice told, PMS updated",
        ),
        Case(
            "staff cancel 6 hours ahead",
            dental,
            b2,
            [cancel(b2, "staff", staff, "practice", reason_code="rescheduling")],
            "late: D9987 fee charged to the card, deposit kept, slot offered to the waitlist",
        ),
        Case(
            "patient did not come",
            dental,
            b3,
            [no_show(b3, "patient", "FTA")],
            "no-show: D9986 fee charged, patient told, PMS updated",
        ),
        Case(
            "patient tries online, 5 hours ahead",
            dental,
            b4,
            [cancel(b4, "patient", b4.patient.patient_id, "patient_portal")],
            "rejected: within the online cutoff, the patient is asked to call",
        ),
        Case(
            "professional cancels 5 days ahead",
            office,
            b5,
            [cancel(b5, "professional", pro_1, "professional_app")],
            "timely: a small score change for the professional",
        ),
        Case(
            "professional cancels 8 hours ahead",
            office,
            b6,
            [cancel(b6, "professional", pro_2, "professional_app", reason_code="illness")],
            "late: score penalty and a hold; an excuse is submitted for review",
        ),
        Case(
            "professional did not come",
            office,
            b7,
            [no_show(b7, "professional", "DNA")],
            "professional no-show: score penalty and a hold, manual PMS update",
        ),
        Case(
            "office cancels a booked professional 10 hours ahead",
            office,
            b8,
            [cancel(b8, "staff", f"demo-{run}-office-manager", "practice")],
            "late office cancellation: the professional is told",
        ),
    ]
    excuses = [
        Send(
            UPSTREAM_PROFESSIONALS,
            pro_2,
            ExcuseSubmitted.model_validate(
                {
                    "excuse_id": f"demo-{run}-excuse-1",
                    "professional_id": pro_2,
                    "booking_id": b6.booking_id,
                    "document_ref": f"docs/demo-{run}/medical-certificate.pdf",
                    "submitted_at": now,
                }
            ),
        )
    ]
    return Morning(practices, waitlist, cases, excuses)


def first_sends(m: Morning) -> list[Send]:
    """Practices, the waitlist and the bookings: what must be in place before any request."""
    return [
        *(Send(UPSTREAM_PRACTICES, p.practice_id, p) for p in m.practices),
        *(Send(UPSTREAM_PRACTICES, w.practice_id, w) for w in m.waitlist),
        *(Send(UPSTREAM_BOOKINGS, c.booking_id, c.booking) for c in m.cases),
    ]


OUTCOMES = {
    "booking.cancelled",
    "booking.cancellation_rejected",
    "booking.no_show_recorded",
    "booking.no_show_rejected",
}


def outcome_line(event_type: str, data: dict[str, Any]) -> str:
    """What became of a request, in words (no personal data: the decision's facts only)."""
    decision = data.get("decision") or {}
    fee = decision.get("fee")
    fee_text = f", fee {fee['amount']} {fee['currency']} ({fee['code']})" if fee else ""
    if event_type == "booking.cancelled":
        return f"cancelled, {data.get('classification')}{fee_text}"
    if event_type == "booking.no_show_recorded":
        return f"no-show recorded ({data.get('party')}, {data.get('code')}){fee_text}"
    return f"rejected: {data.get('reason')}"
