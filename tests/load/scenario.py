"""Realistic upstream traffic and, for every request in it, the effects it must have.

A `Scenario` is a set of practices and bookings; each booking gets one upstream story (a staff
cancellation timely or late, a patient cancelling online, a no-show, a completion, or a
reschedule followed by a cancellation) whose downstream effects are known exactly, so a run can
be checked afterwards: nothing lost, nothing duplicated, per-booking order kept.
"""

from __future__ import annotations

import random
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from shared.testing import envelope, iso
from shared.topics import UPSTREAM_BOOKINGS, UPSTREAM_PRACTICES

LATE_FEE = {"amount": "45.00", "currency": "AUD", "code": "D9987", "code_system": "CDT"}
NO_SHOW_FEE = {"amount": "60.00", "currency": "AUD", "code": "D9986", "code_system": "CDT"}
STAFF = {"kind": "staff", "id": "staff-load", "roles": ["reception"]}
KINDS = ("staff_timely", "staff_late", "patient_online", "no_show", "completed", "rescheduled_cancel")
WEIGHTS = (3, 3, 2, 1, 1, 1)


@dataclass
class Practice:
    practice_id: str
    integration: str  # praktika | none


@dataclass
class Story:
    """One booking's upstream messages, in order, and the effects they must cause."""

    booking_id: str
    kind: str
    practice: Practice
    patient_email: str
    starts_at: datetime
    messages: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)  # (topic, key, envelope)
    expected: Counter[str] = field(default_factory=Counter)  # event type -> count
    request_id: str | None = None
    final_starts_at: datetime | None = None

    @property
    def request_envelope_id(self) -> str | None:
        """The envelope id of the request whose effects we time (the correlation id downstream)."""
        for _, _, env in self.messages:
            if env["type"] in ("booking.cancellation_requested", "booking.no_show_reported", "booking.completed"):
                return env["id"]
        return None


def _uid(prefix: str, rng: random.Random) -> str:
    return f"{prefix}-{uuid.UUID(int=rng.getrandbits(128)).hex[:16]}"


@dataclass
class Scenario:
    run_id: str
    practices: list[Practice]
    stories: list[Story]
    # The practices are configured as of this time, before any of their bookings was scheduled:
    # the policy decides a booking by the settings in force when it was scheduled (rules.md).
    configured_at: datetime = field(default_factory=lambda: datetime.now(UTC) - timedelta(minutes=5))

    def setup_messages(self) -> list[tuple[str, str, dict[str, Any]]]:
        return [
            (
                UPSTREAM_PRACTICES,
                p.practice_id,
                envelope(
                    "practice.configured",
                    p.practice_id,
                    {
                        "practice_id": p.practice_id,
                        "name": f"Load practice {i}",
                        "timezone": "Australia/Sydney",
                        "locale": "en",
                        "contact": {"email": f"front-{i}@load.test", "preferred_channel": "email"},
                        "fees": {"late_cancellation": LATE_FEE, "no_show": NO_SHOW_FEE, "charge_card_on_file": True},
                        "pms": {"integration": p.integration},
                    },
                    source="upstream/load",
                    time=self.configured_at,
                ),
            )
            for i, p in enumerate(self.practices)
        ]

    def schedule_messages(self) -> list[tuple[str, str, dict[str, Any]]]:
        return [s.messages[0] for s in self.stories]

    def request_messages(self) -> list[list[tuple[str, str, dict[str, Any]]]]:
        return [s.messages[1:] for s in self.stories]


def build(count: int, *, seed: int = 7, practices: int = 4, now: datetime | None = None) -> Scenario:
    """`count` bookings across `practices` practices, each with one story; deterministic per seed."""
    rng = random.Random(seed)
    run_id = uuid.uuid4().hex[:8]
    now = now or datetime.now(UTC)
    places = [Practice(f"load-{run_id}-p{i}", "praktika" if i % 2 == 0 else "none") for i in range(practices)]
    stories = []
    for i in range(count):
        kind = rng.choices(KINDS, WEIGHTS)[0]
        practice = places[i % len(places)]
        booking_id = f"load-{run_id}-{i:06d}-{_uid('b', rng)[-6:]}"
        starts = (
            now
            + {
                "staff_timely": timedelta(hours=72),
                "staff_late": timedelta(hours=6),
                "patient_online": timedelta(hours=96),
                "no_show": timedelta(minutes=-30),
                "completed": timedelta(hours=-2),
                "rescheduled_cancel": timedelta(hours=80),
            }[kind]
        )
        story = Story(booking_id, kind, practice, f"{booking_id}@patients.load.test", starts)
        story.messages.append(
            (
                UPSTREAM_BOOKINGS,
                booking_id,
                envelope(
                    "booking.scheduled",
                    booking_id,
                    {
                        "booking_id": booking_id,
                        "practice_id": practice.practice_id,
                        "starts_at": iso(starts),
                        "ends_at": iso(starts + timedelta(minutes=30)),
                        "practitioner_id": f"dr-{i % 5}",
                        "service_code": "D1110",
                        "patient": {
                            "patient_id": f"pat-{booking_id}",
                            "first_name": "Load",
                            "email": story.patient_email,
                            "portal_account": True,
                            "card_on_file": True,
                            "locale": "en",
                        },
                    },
                    source="upstream/load",
                ),
            )
        )
        _add_story(story, rng, now)
        stories.append(story)
    return Scenario(run_id, places, stories, configured_at=now - timedelta(minutes=5))


def _request(story: Story, type_: str, data: dict[str, Any]) -> None:
    story.messages.append(
        (UPSTREAM_BOOKINGS, story.booking_id, envelope(type_, story.booking_id, data, source="upstream/load"))
    )


def _add_story(story: Story, rng: random.Random, now: datetime) -> None:
    b, e = story.booking_id, story.expected
    synced = story.practice.integration == "praktika"
    story.request_id = f"req-{b}"  # unique per run: booking ids carry the run id
    story.final_starts_at = story.starts_at
    if story.kind == "completed":
        _request(story, "booking.completed", {"booking_id": b, "completed_at": iso(now)})
        e["booking.completed"] = 1
        return
    if story.kind == "no_show":
        _request(
            story,
            "booking.no_show_reported",
            {
                "request_id": story.request_id,
                "booking_id": b,
                "reported_at": iso(now),
                "actor": STAFF,
                "party": "patient",
                "code": "FTA",
            },
        )
        # ... and the patient's email about the no-show fee (RULES.md "Notifications").
        e.update(
            {
                "cancellation.assessed": 1,
                "booking.no_show_recorded": 1,
                "charge.created": 1,
                "payment.captured": 1,
                "notification.sent": 1,
            }
        )
        if synced:
            e["pms.record_no_show"] = 1
        return
    if story.kind == "rescheduled_cancel":
        story.final_starts_at = story.starts_at + timedelta(days=1)
        _request(
            story,
            "booking.rescheduled",
            {
                "booking_id": b,
                "starts_at": iso(story.final_starts_at),
                "ends_at": iso(story.final_starts_at + timedelta(minutes=30)),
            },
        )
    patient = story.kind == "patient_online"
    _request(
        story,
        "booking.cancellation_requested",
        {
            "request_id": story.request_id,
            "booking_id": b,
            "requested_at": iso(now),
            "actor": {"kind": "patient", "id": f"pat-{b}", "roles": []} if patient else STAFF,
            "channel": "patient_portal" if patient else "practice",
            "reason_code": "illness",
            "reason_text": "Load test cancellation",
        },
    )
    e.update(
        {"cancellation.assessed": 1, "booking.cancelled": 1, "booking.slot_released": 1, "notification.sent": 1}
    )  # the patient's email; the patient has no phone
    if story.kind == "staff_late":
        e.update({"charge.created": 1, "payment.captured": 1})
    if synced:
        e["pms.cancel_booking"] = 1


# The types the checker counts: everything a story can cause (others are ignored).
COUNTED_TYPES = frozenset(
    {
        "cancellation.assessed",
        "booking.cancelled",
        "booking.slot_released",
        "booking.no_show_recorded",
        "booking.completed",
        "charge.created",
        "payment.captured",
        "payment.failed",
        "notification.sent",
        "pms.cancel_booking",
        "pms.record_no_show",
        "booking.cancellation_rejected",
        "booking.no_show_rejected",
    }
)
