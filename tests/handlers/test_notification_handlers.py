"""Notification's handlers against fakes of their ports (the repository, the clock): who hears
what for each kind of event, what is recorded for a contact that cannot be reached, that one
business fact reaches a person once however often and in whatever order its events arrive, and
which language they read it in. No database, no broker, milliseconds each.

The plans and the words themselves are tables in tests/unit/test_notification_domain.py; the
sending, the SQL and the broker are tests/integration/test_notification_service.py.
"""

from __future__ import annotations

import itertools
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from notification import app, handlers, notices, repository
from notification.rendering import Renderer
from notification.settings import NotificationSettings
from shared.consumer import Unit
from shared.contracts.base import Payload
from shared.contracts.billing import ChargeCreated, PaymentCaptured, PaymentFailed, PaymentRefunded
from shared.contracts.booking import (
    BookingCancellationRejected,
    BookingCancelled,
    BookingNoShowRecorded,
    BookingNoShowSuspected,
    BookingSlotOffered,
)
from shared.contracts.pms_sync import PmsManualUpdateRequired
from shared.contracts.scoring import AccountReinstated, AccountSuspended, HoldPlaced, PatientStandingChanged
from shared.contracts.upstream import (
    BookingCancellationRequested,
    BookingRescheduled,
    BookingScheduled,
    PracticeConfigured,
    WaitlistJoined,
)
from shared.testing import assert_same_functions
from shared.topics import (
    BILLING_EVENTS,
    BOOKING_EVENTS,
    PMS_SYNC_EVENTS,
    SCORING_EVENTS,
    UPSTREAM_BOOKINGS,
    UPSTREAM_PRACTICES,
)

UnitFor = Callable[..., Unit[Any]]

T = datetime(2031, 3, 10, 22, 0, tzinfo=UTC)  # Tuesday 11 March 2031, 9:00 am in Sydney (AEDT)
PRACTICE = "prac-1"
BOOKING = "bk-1"
PROFESSIONAL = "pro-1"
PORTAL = "https://portal.clinic.test"

TOPICS = {
    PracticeConfigured: UPSTREAM_PRACTICES,
    WaitlistJoined: UPSTREAM_PRACTICES,
    BookingScheduled: UPSTREAM_BOOKINGS,
    BookingRescheduled: UPSTREAM_BOOKINGS,
    BookingCancellationRequested: UPSTREAM_BOOKINGS,
    BookingCancelled: BOOKING_EVENTS,
    BookingCancellationRejected: BOOKING_EVENTS,
    BookingNoShowRecorded: BOOKING_EVENTS,
    BookingSlotOffered: BOOKING_EVENTS,
    ChargeCreated: BILLING_EVENTS,
    PaymentCaptured: BILLING_EVENTS,
    PaymentFailed: BILLING_EVENTS,
    PaymentRefunded: BILLING_EVENTS,
    HoldPlaced: SCORING_EVENTS,
    AccountSuspended: SCORING_EVENTS,
    PmsManualUpdateRequired: PMS_SYNC_EVENTS,
    BookingNoShowSuspected: BOOKING_EVENTS,
    PatientStandingChanged: SCORING_EVENTS,
    AccountReinstated: SCORING_EVENTS,
}


# --- the fakes -----------------------------------------------------------------------------------


def _project(row: dict[str, Any] | None, columns: str) -> dict[str, Any] | None:
    """Only the columns the real statement selects: a handler reading another one fails here too."""
    return None if row is None else {c: row.get(c) for c in columns.split()}


PRACTICE_COLUMNS = "practice_id name timezone locale email phone preferred_channel notify_practice_on_online_cancel"
PATIENT_COLUMNS = "booking_id practice_id first_name email phone locale starts_at"
PROFESSIONAL_COLUMNS = "professional_id practice_id first_name email phone locale"
WAITLIST_COLUMNS = "waitlist_id practice_id first_name email phone locale"
OFFER_COLUMNS = "offer_id booking_id waitlist_id expires_at event_id correlation_id"
NO_SHOW_FEE_COLUMNS = "booking_id practice_id starts_at charge_card charge_id amount currency code code_system payment"


class FakeRepository:
    """The functions of notification/repository.py the handlers call, with the same names,
    arguments and results, over dicts; the connection argument is ignored. Conflicts behave as
    the SQL's do: a replayed older contact never overwrites a newer one, a delivery's id is
    recorded once, one no-show fee per booking with the first charge and the first answer.
    `calls` counts the calls of each function that takes a whole set."""

    def __init__(self) -> None:
        self.practices: dict[str, dict[str, Any]] = {}
        self.patients: dict[str, dict[str, Any]] = {}
        self.professionals: dict[str, dict[str, Any]] = {}
        self.requests: dict[str, dict[str, Any]] = {}
        self.waitlist: dict[str, dict[str, Any]] = {}
        self.offers: dict[str, dict[str, Any]] = {}  # in the order received
        self.no_show_fees: dict[str, dict[str, Any]] = {}
        self.late_fees_in_review: dict[str, dict[str, Any]] = {}
        self.deliveries: dict[uuid.UUID, dict[str, Any]] = {}  # in the order recorded
        self.calls: Counter[str] = Counter()

    @staticmethod
    def _newer_wins(table: dict[str, dict[str, Any]], key: str, row: dict[str, Any], at: str) -> None:
        if key not in table or table[key][at] <= row[at]:
            table[key] = row

    async def upsert_practice(self, conn: Any, p: dict[str, Any], configured_at: datetime) -> None:
        self._newer_wins(self.practices, p["practice_id"], p | {"configured_at": configured_at}, "configured_at")

    async def upsert_patient(self, conn: Any, p: dict[str, Any], scheduled_at: datetime) -> None:
        self._newer_wins(self.patients, p["booking_id"], p | {"scheduled_at": scheduled_at}, "scheduled_at")

    async def reschedule_many(self, conn: Any, moves: list[tuple[str, datetime]]) -> None:
        self.calls["reschedule_many"] += 1
        for booking_id, starts_at in moves:
            if booking_id in self.patients:
                self.patients[booking_id]["starts_at"] = starts_at

    async def remember_requests(self, conn: Any, requests: list[dict[str, Any]]) -> None:
        self.calls["remember_requests"] += 1
        for r in requests:
            self.requests.setdefault(
                r["request_id"], {"booking_id": r["booking_id"], "actor_kind": r["actor_kind"], "channel": r["channel"]}
            )

    @staticmethod
    def _found(table: dict[str, dict[str, Any]], ids: list[str], columns: str) -> dict[str, Any]:
        return {i: _project(table[i], columns) for i in ids if i in table}

    async def get_practices(self, conn: Any, practice_ids: list[str]) -> dict[str, Any]:
        self.calls["get_practices"] += 1
        return self._found(self.practices, practice_ids, PRACTICE_COLUMNS)

    async def get_patients(self, conn: Any, booking_ids: list[str]) -> dict[str, Any]:
        self.calls["get_patients"] += 1
        return self._found(self.patients, booking_ids, PATIENT_COLUMNS)

    async def requester_kind(self, conn: Any, request_id: str) -> str | None:
        request = self.requests.get(request_id)
        return request["actor_kind"] if request else None

    async def upsert_professional(self, conn: Any, p: dict[str, Any], scheduled_at: datetime) -> None:
        self._newer_wins(self.professionals, p["professional_id"], p | {"scheduled_at": scheduled_at}, "scheduled_at")

    async def get_professionals(self, conn: Any, professional_ids: list[str]) -> dict[str, Any]:
        self.calls["get_professionals"] += 1
        return self._found(self.professionals, professional_ids, PROFESSIONAL_COLUMNS)

    async def lock_waitlist_entry(self, conn: Any, waitlist_id: str) -> None:
        pass  # one test, one task: nothing to serialise

    async def upsert_waitlist_entry(self, conn: Any, w: dict[str, Any]) -> None:
        self._newer_wins(self.waitlist, w["waitlist_id"], dict(w), "joined_at")

    async def get_waitlist_entry(self, conn: Any, waitlist_id: str) -> dict[str, Any] | None:
        return _project(self.waitlist.get(waitlist_id), WAITLIST_COLUMNS)

    async def remember_offer(self, conn: Any, o: dict[str, Any]) -> None:
        self.offers.setdefault(o["offer_id"], o | {"told": False})

    async def untold_offers(self, conn: Any, waitlist_id: str) -> list[dict[str, Any]]:
        return [
            _project(o, OFFER_COLUMNS)  # type: ignore[misc]
            for o in self.offers.values()
            if o["waitlist_id"] == waitlist_id and not o["told"]
        ]

    async def mark_offer_told(self, conn: Any, offer_id: str) -> None:
        self.offers[offer_id]["told"] = True

    def _fee(self, booking_id: str) -> dict[str, Any]:
        return self.no_show_fees.setdefault(
            booking_id, dict.fromkeys(NO_SHOW_FEE_COLUMNS.split()) | {"booking_id": booking_id}
        )

    async def merge_no_shows(self, conn: Any, no_shows: list[dict[str, Any]]) -> dict[str, Any]:
        self.calls["merge_no_shows"] += 1
        merged = {}
        for n in no_shows:
            fee = self._fee(n["booking_id"])
            fee |= {k: n[k] for k in ("practice_id", "starts_at", "charge_card")}
            merged[n["booking_id"]] = dict(fee)
        return merged

    async def merge_no_show_charges(self, conn: Any, charges: list[dict[str, Any]]) -> dict[str, Any]:
        self.calls["merge_no_show_charges"] += 1
        merged = {}
        for c in charges:
            fee = self._fee(c["booking_id"])
            if fee["charge_id"] not in (None, c["charge_id"]):
                continue  # the first charge stands
            fee |= {k: c[k] for k in ("charge_id", "amount", "currency", "code", "code_system")}
            merged[c["booking_id"]] = dict(fee)
        return merged

    async def merge_no_show_payments(self, conn: Any, payments: list[tuple[str, str, str]]) -> dict[str, Any]:
        self.calls["merge_no_show_payments"] += 1
        merged = {}
        for booking_id, charge_id, payment in payments:
            fee = self.no_show_fees.get(booking_id)
            if fee is None or fee["charge_id"] != charge_id:
                continue
            fee["payment"] = fee["payment"] or payment
            merged[booking_id] = dict(fee)
        return merged

    async def remember_fees_in_review(self, conn: Any, fees: list[dict[str, Any]]) -> None:
        self.calls["remember_fees_in_review"] += 1
        for f in fees:
            self.late_fees_in_review.setdefault(
                f["charge_id"], {"booking_id": f["booking_id"], "review_until": f["review_until"], "final_at": None}
            )

    async def mark_fees_final(self, conn: Any, finals: list[tuple[str, datetime]]) -> set[str]:
        self.calls["mark_fees_final"] += 1
        marked = set()
        for charge_id, final_at in finals:
            fee = self.late_fees_in_review.get(charge_id)
            if fee is not None:
                fee["final_at"] = fee["final_at"] or final_at
                marked.add(charge_id)
        return marked

    async def record_deliveries(self, conn: Any, deliveries: list[dict[str, Any]]) -> None:
        self.calls["record_deliveries"] += 1
        for d in deliveries:
            self.deliveries.setdefault(d["notification_id"], dict(d))


def test_the_fake_takes_what_repository_py_takes() -> None:
    assert_same_functions(FakeRepository(), repository)


def told(repo: FakeRepository) -> list[tuple[str, str, str]]:
    """(recipient, channel, status) of every recorded delivery, sorted."""
    return sorted((d["recipient"], d["channel"], d["status"]) for d in repo.deliveries.values())


def delivery(repo: FakeRepository, recipient: str, channel: str) -> dict[str, Any]:
    [row] = [d for d in repo.deliveries.values() if d["recipient"] == recipient and d["channel"] == channel]
    return row


@dataclass
class Deps:
    """What `handlers.HandlerDeps` asks for, with the fakes; no channel, as in the service."""

    settings: NotificationSettings
    renderer: Renderer
    repository: FakeRepository
    clock: Any  # conftest's FixedClock: the test moves it


@pytest.fixture(scope="module")
def renderer() -> Renderer:
    return Renderer()  # compiled templates are kept: once per module


@pytest.fixture
def deps(renderer: Renderer, clock: Any) -> Deps:
    clock.now = T - timedelta(days=1)
    return Deps(
        settings=NotificationSettings(portal_base_url=PORTAL),
        renderer=renderer,
        repository=FakeRepository(),
        clock=clock,
    )


@pytest.fixture
def repo(deps: Deps) -> FakeRepository:
    return deps.repository


Handle = Callable[..., Awaitable[Unit[Any]]]


@pytest.fixture
def handle(unit_for: UnitFor, deps: Deps) -> Handle:
    """`await handle(handler, payload, **envelope)`: the payload parsed as the consumer would, on
    its topic, handed to `handler` in a unit of its own."""

    async def handle(handler: Callable[..., Awaitable[None]], payload: Payload, **envelope: Any) -> Unit[Any]:
        unit = unit_for("notification", deps, TOPICS[type(payload)], payload, **envelope)
        await handler(unit, unit.event.payload)
        # Handlers only record messages; the outcome events are the sender's (delivery.py).
        assert unit.emitted == []
        return unit

    return handle


# --- the events ----------------------------------------------------------------------------------


def practice_configured(practice_id: str = PRACTICE, **overrides: Any) -> PracticeConfigured:
    fields: dict[str, Any] = {
        "practice_id": practice_id,
        "name": "Harbour Dental",
        "timezone": "Australia/Sydney",
        "locale": "en",
        "contact": {"email": "desk@clinic.test", "phone": "+61290000000", "preferred_channel": "email"},
        "cancellation": {"notify_practice_on_online_cancel": False},
    }
    return PracticeConfigured.new(**(fields | overrides))


def booking_scheduled(booking_id: str = BOOKING, **patient: Any) -> BookingScheduled:
    return BookingScheduled.new(
        booking_id=booking_id,
        practice_id=PRACTICE,
        starts_at=T,
        ends_at=T + timedelta(minutes=30),
        practitioner_id="dr-lee",
        service_code="D1110",
        patient={
            "patient_id": "pat-1",
            "first_name": "Ada",
            "email": "ada@example.test",
            "phone": "+61400000001",
            "portal_account": True,
            "card_on_file": True,
            **patient,
        },
        professional_id=PROFESSIONAL,
        professional_contact={"first_name": "Grace", "email": "grace@example.test"},
    )


def cancelled(actor_kind: str = "staff", channel: str = "practice", **overrides: Any) -> BookingCancelled:
    fields: dict[str, Any] = {
        "booking_id": BOOKING,
        "request_id": "req-1",
        "practice_id": PRACTICE,
        "patient_id": "pat-1",
        "practitioner_id": "dr-lee",
        "service_code": "D1110",
        "starts_at": T,
        "ends_at": T + timedelta(minutes=30),
        "cancelled_at": T - timedelta(days=3),
        "actor": {"kind": actor_kind, "id": f"{actor_kind}-7", "roles": []},
        "channel": channel,
        "status_label": "Cancelled",
        "reason_text": "Flu",
        "classification": "timely",
        "decision": {
            "allowed": True,
            "classification": "timely",
            "charge_card": False,
            "deposit_action": "none",
            "policy_version": "r1.s1",
        },
    }
    return BookingCancelled.new(**(fields | overrides))


def no_show_recorded(*, charge_card: bool, party: str = "patient", fee: bool = True) -> BookingNoShowRecorded:
    return BookingNoShowRecorded.new(
        booking_id=BOOKING,
        request_id="req-ns",
        practice_id=PRACTICE,
        patient_id="pat-1",
        party=party,
        code="DNA",
        starts_at=T,
        recorded_at=T + timedelta(minutes=20),
        decision={
            "allowed": True,
            "classification": "no_show",
            "charge_card": charge_card,
            "deposit_action": "none",
            "policy_version": "r1.s1",
            **({"fee": {"amount": "45.00", "currency": "AUD", "code": "D9986", "code_system": "CDT"}} if fee else {}),
        },
    )


def charge_created(charge_id: str = "ch-1", kind: str = "no_show") -> ChargeCreated:
    return ChargeCreated.new(
        charge_id=charge_id,
        booking_id=BOOKING,
        patient_id="pat-1",
        kind=kind,
        amount=Decimal("45.00"),
        currency="AUD",
        code="D9986",
        code_system="CDT",
    )


def payment(outcome: type[PaymentCaptured | PaymentFailed], charge_id: str = "ch-1") -> Payload:
    return outcome.new(charge_id=charge_id, booking_id=BOOKING, amount=Decimal("45.00"), currency="AUD")


def waitlist_joined(locale: str | None = None, *, joined_at: datetime = T - timedelta(days=7)) -> WaitlistJoined:
    return WaitlistJoined.new(
        waitlist_id="wl-1",
        practice_id=PRACTICE,
        patient={
            "patient_id": "pat-9",
            "first_name": "Lin",
            "email": "lin@example.test",
            "phone": "+61400000009",
            "portal_account": True,
            "card_on_file": False,
            "locale": locale,
        },
        joined_at=joined_at,
    )


def slot_offered(expires_at: datetime = T - timedelta(hours=20)) -> BookingSlotOffered:
    return BookingSlotOffered.new(offer_id="of-1", booking_id=BOOKING, waitlist_id="wl-1", expires_at=expires_at)


def hold_placed(hold_id: str = "hold-1") -> HoldPlaced:
    return HoldPlaced.new(
        hold_id=hold_id,
        professional_id=PROFESSIONAL,
        booking_id=BOOKING,
        cause="late_cancellation",
        starts_at=T,
        ends_at=T + timedelta(days=7),
    )


def manual_update(action: str = "cancel_booking") -> PmsManualUpdateRequired:
    return PmsManualUpdateRequired.new(
        booking_id=BOOKING,
        practice_id=PRACTICE,
        integration="manual",
        action=action,
        message="Manual update required: cancel this booking in your PMS too",
    )


async def contacts(handle: Handle, **practice: Any) -> None:
    """The practice and the booking's patient (and professional) are known."""
    await handle(handlers.configure_practice, practice_configured(**practice))
    await handle(handlers.remember_patient, booking_scheduled())


# --- who hears about a cancellation ----------------------------------------------------------------


async def test_a_staff_cancellation_is_recorded_for_the_patient_by_email_and_sms_in_the_practices_time(
    handle: Handle, repo: FakeRepository
) -> None:
    await contacts(handle)
    unit = await handle(handlers.notify_cancellation, cancelled("staff"), correlation_id="corr-1")

    assert told(repo) == [("patient", "email", "pending"), ("patient", "sms", "pending")]
    email, sms = delivery(repo, "patient", "email"), delivery(repo, "patient", "sms")
    assert (email["address"], sms["address"]) == ("ada@example.test", "+61400000001")
    assert email["template"] == "booking_cancelled_by_staff"
    assert email["subject"] == "Your appointment on Tuesday, March 11, 2031, 9:00 AM AEDT has been cancelled"
    assert 'Reason: "Flu"' in sms["body"] and sms["subject"] is None
    for row in (email, sms):
        assert (row["event_id"], row["event_type"], row["correlation_id"]) == (
            unit.event.id,
            "booking.cancelled",
            "corr-1",
        )
        assert (row["booking_id"], row["practice_id"], row["professional_id"]) == (BOOKING, PRACTICE, None)


@pytest.mark.parametrize("asked", [True, False])
async def test_an_online_cancellation_gives_a_rebook_link_and_tells_the_practice_only_when_it_asked(
    handle: Handle, repo: FakeRepository, asked: bool
) -> None:
    await contacts(handle, cancellation={"notify_practice_on_online_cancel": asked})
    await handle(handlers.notify_cancellation, cancelled("patient", "patient_portal"))

    practice = [("practice", "email", "pending")] if asked else []
    assert told(repo) == [("patient", "email", "pending"), ("patient", "sms", "pending"), *practice]
    assert f"{PORTAL}/practices/{PRACTICE}/rebook?booking_id={BOOKING}" in delivery(repo, "patient", "sms")["body"]
    if asked:
        assert delivery(repo, "practice", "email")["address"] == "desk@clinic.test"


@pytest.mark.parametrize("actor", ["professional", "system"])
async def test_a_cancellation_by_a_professional_or_the_system_reaches_the_office_on_its_preferred_channel(
    handle: Handle, repo: FakeRepository, actor: str
) -> None:
    await contacts(handle, contact={"email": "desk@clinic.test", "phone": "+61290000000", "preferred_channel": "sms"})
    await handle(handlers.notify_cancellation, cancelled(actor, "system" if actor == "system" else "practice"))

    assert told(repo) == [("practice", "sms", "pending")]  # not the patient: the office rebooks them
    sms = delivery(repo, "practice", "sms")
    assert sms["address"] == "+61290000000" and sms["template"] == f"booking_cancelled_by_{actor}"


async def test_a_system_cancellation_for_a_suspended_professional_tells_the_office_so(
    handle: Handle, repo: FakeRepository
) -> None:
    await contacts(handle)
    await handle(handlers.notify_cancellation, cancelled("system", "system", reason_code="professional_suspended"))

    assert "because the booked professional's account is suspended" in delivery(repo, "practice", "email")["body"]


# --- who cannot be reached -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("patient", "expected"),
    [
        (
            {"email": None, "phone": None},
            {
                "email": ("skipped", "the patient has no email address on file"),
                "sms": ("skipped", "the patient has no mobile number on file"),
            },
        ),
        ({"email": None}, {"email": ("skipped", "the patient has no email address on file"), "sms": ("pending", None)}),
        ({"phone": None}, {"email": ("pending", None), "sms": ("skipped", "the patient has no mobile number on file")}),
    ],
)
async def test_a_channel_without_an_address_is_recorded_skipped_with_the_reason(
    handle: Handle, repo: FakeRepository, patient: dict[str, Any], expected: dict[str, tuple[str, str | None]]
) -> None:
    await handle(handlers.configure_practice, practice_configured())
    await handle(handlers.remember_patient, booking_scheduled(**patient))
    await handle(handlers.notify_cancellation, cancelled("staff"))

    for channel, (status, reason) in expected.items():
        row = delivery(repo, "patient", channel)
        assert (row["status"], row["reason"]) == (status, reason)
        if status == "skipped":  # nothing to send, and nothing written for no one
            assert (row["address"], row["subject"], row["body"]) == (None, None, None)


async def test_a_cancellation_of_a_booking_and_practice_never_seen_is_recorded_skipped_not_lost(
    handle: Handle, repo: FakeRepository
) -> None:
    await handle(handlers.notify_cancellation, cancelled("staff"))
    await handle(handlers.notify_cancellation, cancelled("professional", booking_id="bk-2"))

    reasons = {(d["recipient"], d["channel"], d["reason"]) for d in repo.deliveries.values()}
    assert reasons == {
        ("patient", "email", "no contact details are known for this booking's patient"),
        ("patient", "sms", "no contact details are known for this booking's patient"),
        ("practice", "email", "the practice has no email address or phone number on file"),
    }
    assert {d["status"] for d in repo.deliveries.values()} == {"skipped"}


async def test_a_professional_without_a_known_contact_is_recorded_skipped(handle: Handle, repo: FakeRepository) -> None:
    await handle(handlers.notify_hold, hold_placed())

    assert told(repo) == [("professional", "email", "skipped")]
    assert delivery(repo, "professional", "email")["reason"] == "no contact details are known for this professional"


# --- nobody hears twice about one fact -----------------------------------------------------------


async def test_a_cancellation_delivered_again_is_recorded_once(handle: Handle, repo: FakeRepository) -> None:
    await contacts(handle)
    first = await handle(handlers.notify_cancellation, cancelled("staff"))
    await handle(handlers.notify_cancellation, first.event.payload, event_id=first.event.id)

    assert told(repo) == [("patient", "email", "pending"), ("patient", "sms", "pending")]


@pytest.mark.parametrize(
    ("handler", "again", "other"),
    [
        # The same hold (hold_id) or suspension (professional and time) republished under a new
        # envelope; a different hold or a later suspension is a new fact.
        (handlers.notify_hold, hold_placed(), hold_placed("hold-2")),
        (
            handlers.notify_suspension,
            AccountSuspended.new(professional_id=PROFESSIONAL, holds=["h1", "h2", "h3"], suspended_at=T),
            AccountSuspended.new(
                professional_id=PROFESSIONAL, holds=["h4", "h5", "h6"], suspended_at=T + timedelta(days=90)
            ),
        ),
    ],
)
async def test_a_professional_hears_once_of_each_hold_and_suspension(
    handle: Handle, repo: FakeRepository, handler: Any, again: Payload, other: Payload
) -> None:
    await contacts(handle)
    first = await handle(handler, again)
    await handle(handler, again)  # a new envelope id: a replay or a resend upstream

    [row] = repo.deliveries.values()
    assert (row["recipient"], row["channel"], row["status"]) == ("professional", "email", "pending")
    assert (row["address"], row["event_id"], row["professional_id"]) == (
        "grace@example.test",
        first.event.id,
        PROFESSIONAL,
    )

    await handle(handler, other)
    assert len(repo.deliveries) == 2


NO_SHOW, CHARGE, CAPTURED = range(3)
NO_SHOW_EVENTS: list[tuple[Any, Callable[[], Payload]]] = [
    (handlers.note_no_show, lambda: no_show_recorded(charge_card=True)),
    (handlers.note_charge, charge_created),
    (handlers.note_payment, lambda: payment(PaymentCaptured)),
]
# booking.events.v1 and billing.events.v1 are read independently; billing publishes a charge
# before its payment, on the same key, so the payment never comes before its charge.
NO_SHOW_ORDERS = [o for o in itertools.permutations(range(3)) if o.index(CHARGE) < o.index(CAPTURED)]


@pytest.mark.parametrize("order", NO_SHOW_ORDERS, ids=str)
async def test_a_no_show_fee_on_the_card_is_told_once_whatever_order_its_events_arrive_in(
    handle: Handle, repo: FakeRepository, order: tuple[int, ...]
) -> None:
    await contacts(handle)
    units = [await handle(NO_SHOW_EVENTS[i][0], NO_SHOW_EVENTS[i][1]()) for i in order]

    assert told(repo) == [("patient", "email", "pending")]
    [row] = repo.deliveries.values()
    # Told when the card answered, even before the no-show itself was read (the practice and the
    # time then come from the booking).
    assert row["event_id"] == units[order.index(CAPTURED)].event.id
    assert row["practice_id"] == PRACTICE and "on Tuesday, March 11, 2031" in row["subject"]
    assert "A$45.00 applies (code D9986, CDT)" in row["body"]
    assert "charged to the card we hold on file" in row["body"]

    # Its events again, or the card's other answer after the first: nothing new.
    for handler, payload in [*NO_SHOW_EVENTS, (handlers.note_payment, lambda: payment(PaymentFailed))]:
        await handle(handler, payload())
    assert len(repo.deliveries) == 1


async def test_a_no_show_fee_not_for_the_card_is_told_once_the_charge_is_raised(
    handle: Handle, repo: FakeRepository
) -> None:
    await contacts(handle)
    await handle(handlers.note_no_show, no_show_recorded(charge_card=False))
    assert repo.deliveries == {}
    await handle(handlers.note_charge, charge_created())

    assert "outstanding on your account" in delivery(repo, "patient", "email")["body"]


@pytest.mark.parametrize(
    "events",
    [
        [(handlers.note_no_show, no_show_recorded(charge_card=False, party="professional"))],
        [(handlers.note_no_show, no_show_recorded(charge_card=False, fee=False))],
        [(handlers.note_charge, charge_created(kind="late_cancellation"))],  # told with the cancellation
        [(handlers.note_payment, payment(PaymentCaptured, "ch-unknown"))],
        [(handlers.note_no_show, no_show_recorded(charge_card=True)), (handlers.note_charge, charge_created())],
    ],
    ids=[
        "professional-no-show",
        "no-fee",
        "late-cancellation-charge",
        "payment-of-an-unknown-charge",
        "card-not-answered-yet",
    ],
)
async def test_what_tells_the_patient_nothing_about_a_no_show_fee(
    handle: Handle, repo: FakeRepository, events: list[tuple[Any, Payload]]
) -> None:
    await contacts(handle)
    for handler, payload in events:
        await handle(handler, payload)
    assert repo.deliveries == {}


async def test_a_second_no_show_charge_for_one_booking_is_never_told(handle: Handle, repo: FakeRepository) -> None:
    await contacts(handle)
    await handle(handlers.note_no_show, no_show_recorded(charge_card=False))
    await handle(handlers.note_charge, charge_created("ch-1"))
    await handle(handlers.note_charge, charge_created("ch-2"))
    await handle(handlers.note_payment, payment(PaymentFailed, "ch-2"))

    assert told(repo) == [("patient", "email", "pending")]


async def test_a_slot_offer_waits_for_the_waitlisted_patients_contacts_then_is_told_once(
    handle: Handle, repo: FakeRepository
) -> None:
    await contacts(handle)
    offer = await handle(handlers.notify_slot_offer, slot_offered(), correlation_id="corr-offer")
    assert repo.deliveries == {}  # whom to tell is not known yet

    await handle(handlers.remember_waitlist_entry, waitlist_joined())
    assert told(repo) == [("waitlist", "email", "pending"), ("waitlist", "sms", "pending")]
    for row in repo.deliveries.values():  # recorded as the offer's messages
        assert (row["event_id"], row["event_type"], row["correlation_id"]) == (
            offer.event.id,
            "booking.slot_offered",
            "corr-offer",
        )
    assert f"{PORTAL}/practices/{PRACTICE}/offers/of-1" in delivery(repo, "waitlist", "sms")["body"]

    # The entry again (newer contacts) and the offer again: nobody is told twice.
    await handle(handlers.remember_waitlist_entry, waitlist_joined(joined_at=T - timedelta(days=6)))
    await handle(handlers.notify_slot_offer, slot_offered())
    assert len(repo.deliveries) == 2


@pytest.mark.parametrize("contacts_first", [True, False])
async def test_an_offer_that_expired_by_the_clock_is_recorded_skipped(
    handle: Handle, deps: Deps, repo: FakeRepository, contacts_first: bool
) -> None:
    await contacts(handle)
    expires = T - timedelta(hours=20)
    if contacts_first:
        await handle(handlers.remember_waitlist_entry, waitlist_joined())
        deps.clock.now = expires  # a consumer that lagged until the offer was over
        await handle(handlers.notify_slot_offer, slot_offered(expires))
    else:
        await handle(handlers.notify_slot_offer, slot_offered(expires))
        deps.clock.now = expires + timedelta(minutes=1)  # the contacts came after the offer ended
        await handle(handlers.remember_waitlist_entry, waitlist_joined())

    assert told(repo) == [("waitlist", "email", "skipped"), ("waitlist", "sms", "skipped")]
    assert {d["reason"] for d in repo.deliveries.values()} == {"the offer expired before it could be sent"}


# --- rejections, reschedules, the practice's PMS -------------------------------------------------------


@pytest.mark.parametrize(("requester", "heard"), [("patient", True), ("staff", False)])
async def test_a_rejection_is_told_to_the_patient_only_when_the_patient_asked(
    handle: Handle, repo: FakeRepository, requester: str, heard: bool
) -> None:
    await contacts(handle)
    await handle(
        handlers.remember_request,
        BookingCancellationRequested.new(
            request_id="req-1",
            booking_id=BOOKING,
            requested_at=T - timedelta(hours=2),
            actor={"kind": requester, "id": "someone"},
            channel="patient_portal" if requester == "patient" else "practice",
        ),
    )
    # A reason a staff request can get too: only the remembered request says who asked.
    await handle(
        handlers.notify_rejection,
        BookingCancellationRejected.new(
            booking_id=BOOKING, request_id="req-1", reason="already_cancelled", message="It is cancelled already."
        ),
    )
    assert told(repo) == ([("patient", "email", "pending"), ("patient", "sms", "pending")] if heard else [])


async def test_a_rejection_names_the_appointments_rescheduled_time(handle: Handle, repo: FakeRepository) -> None:
    await contacts(handle)
    await handle(
        handlers.reschedule_booking,
        BookingRescheduled.new(
            booking_id=BOOKING, starts_at=T + timedelta(days=1), ends_at=T + timedelta(days=1, minutes=30)
        ),
    )
    # Never saw the request, but only a patient's portal request is refused for this reason.
    await handle(
        handlers.notify_rejection,
        BookingCancellationRejected.new(
            booking_id=BOOKING, request_id="req-x", reason="within_online_cutoff", message="Please call us."
        ),
    )
    assert "Wednesday, March 12, 2031, 9:00 AM AEDT" in delivery(repo, "patient", "sms")["body"]


async def test_a_manual_pms_update_is_told_to_the_office_once_per_booking_and_action(
    handle: Handle, repo: FakeRepository
) -> None:
    await contacts(handle, contact={"phone": "+61290000000", "preferred_channel": "sms"})
    await handle(handlers.notify_manual_update, manual_update())
    await handle(handlers.notify_manual_update, manual_update())  # re-published under a new envelope

    assert told(repo) == [("practice", "sms", "pending")]
    assert delivery(repo, "practice", "sms")["body"].startswith(
        "Manual update required: cancel this booking in your PMS too."
    )

    await handle(handlers.notify_manual_update, manual_update("record_no_show"))
    assert len(repo.deliveries) == 2


# --- which language ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("patient_locale", "practice_locale", "locale", "words"),
    [
        (None, "en", "en", "has been cancelled"),
        (None, "de", "de", "wurde abgesagt"),  # no locale of their own: the practice's
        ("de-AT", "en", "de", "wurde abgesagt"),  # the patient's own comes first
        ("fr-FR", "de", "de", "wurde abgesagt"),  # one we do not write: the practice's
        ("fr", "it", "en", "has been cancelled"),  # neither: English
    ],
)
async def test_the_patient_reads_their_own_language_else_the_practices_else_english(
    handle: Handle, repo: FakeRepository, patient_locale: str | None, practice_locale: str, locale: str, words: str
) -> None:
    await handle(handlers.configure_practice, practice_configured(locale=practice_locale))
    await handle(handlers.remember_patient, booking_scheduled(locale=patient_locale))
    await handle(handlers.notify_cancellation, cancelled("staff"))

    sms = delivery(repo, "patient", "sms")
    assert sms["locale"] == locale and words in sms["body"]


async def test_a_professional_without_a_locale_reads_the_practices(handle: Handle, repo: FakeRepository) -> None:
    await contacts(handle, locale="de")
    await handle(handlers.notify_hold, hold_placed())

    email = delivery(repo, "professional", "email")
    assert email["locale"] == "de"
    assert email["subject"] == "Ihr Konto ist vorübergehend gesperrt bis Dienstag, 18. März 2031, 09:00 AEDT"


# --- second release: fees in review, refunds -------------------------------------------------------


async def test_a_no_show_fee_in_review_is_told_only_once_it_is_due(handle: Handle, repo: FakeRepository) -> None:
    await contacts(handle)
    await handle(handlers.note_no_show, no_show_recorded(charge_card=False))
    in_review = charge_created().model_copy(update={"status": "pending_review", "review_until": T + timedelta(days=2)})
    await handle(handlers.note_charge, in_review)
    assert repo.deliveries == {}  # nobody is told of a fee still in review
    await handle(handlers.note_charge, charge_created().model_copy(update={"status": "due"}))
    assert "outstanding on your account" in delivery(repo, "patient", "email")["body"]


LATE_FEE = {"amount": "45.00", "currency": "AUD", "code": "D9987", "code_system": "CDT"}


def late_cancelled(review_hours: int) -> BookingCancelled:
    """A staff cancellation inside the late window with a fee (held for review when `review_hours`)."""
    decision = {
        "allowed": True,
        "classification": "late",
        "fee": LATE_FEE,
        "charge_card": False,
        "deposit_action": "none",
        "policy_version": "r1.s1",
        "review_hours": review_hours,
    }
    return cancelled("staff", classification="late", decision=decision)


def late_fee(status: str | None, amount: str = "45.00", charge_id: str = "ch-late") -> ChargeCreated:
    """billing's announcement of the late-cancellation fee: in review, or final (`due`)."""
    return ChargeCreated.new(
        charge_id=charge_id,
        booking_id=BOOKING,
        patient_id="pat-1",
        kind="late_cancellation",
        amount=Decimal(amount),
        currency="AUD",
        code="D9987",
        code_system="CDT",
        status=status,
        review_until=T - timedelta(days=1) if status == "pending_review" else None,
    )


def fee_emails(repo: FakeRepository) -> list[dict[str, Any]]:
    return [d for d in repo.deliveries.values() if d["template"] == "late_cancellation_fee"]


@pytest.mark.parametrize(
    ("locale", "amount", "words"),
    [
        ("en", "45.00", "a fee of A$45.00 applies (code D9987, CDT)"),  # approved, or the window ended
        ("en", "20.00", "a fee of A$20.00 applies (code D9987, CDT)"),  # edited lower in review
        ("de", "45.00", "Es fällt eine Gebühr von 45,00 AU$ an (Code D9987, CDT)"),
    ],
)
async def test_a_late_cancellation_fee_in_review_is_told_once_when_final(
    handle: Handle, repo: FakeRepository, locale: str, amount: str, words: str
) -> None:
    await contacts(handle, locale=locale)
    await handle(notices.notify_cancellation, late_cancelled(review_hours=48))
    # The cancellation is told at once, without the fee: it is not final yet.
    assert len(repo.deliveries) == 2 and fee_emails(repo) == []
    assert not any("45" in d["body"] for d in repo.deliveries.values())
    await handle(handlers.note_charge, late_fee("pending_review"))
    assert fee_emails(repo) == []  # nobody is told of a fee still in review

    final = late_fee("due", amount)
    unit = await handle(handlers.note_charge, final, correlation_id="corr-review")
    await handle(handlers.note_charge, final, event_id=unit.event.id)  # redelivered
    await handle(handlers.note_charge, final)  # published again under a new envelope id
    await handle(handlers.note_charge, late_fee("pending_review"))  # a late replay of the first

    [row] = fee_emails(repo)
    assert (row["recipient"], row["channel"], row["status"], row["address"]) == (
        "patient",
        "email",
        "pending",
        "ada@example.test",
    )
    assert (row["event_id"], row["event_type"], row["correlation_id"]) == (
        unit.event.id,
        "charge.created",
        "corr-review",
    )
    assert words in row["body"].replace("\xa0", " ")
    assert row["subject"].startswith("Cancellation fee for your appointment" if locale == "en" else "Ausfallgebühr")
    assert len(repo.deliveries) == 3  # the cancellation's email and SMS, and this one


async def test_a_late_cancellation_fee_waived_in_review_is_never_told(handle: Handle, repo: FakeRepository) -> None:
    """billing announces a fee waived in review `charge.waived`, never `due`: what notification
    reads of it is the announcement in review alone, and the app has no handler for the waiver."""
    await contacts(handle)
    await handle(notices.notify_cancellation, late_cancelled(review_hours=48))
    await handle(handlers.note_charge, late_fee("pending_review"))
    await handle(handlers.note_charge, late_fee("pending_review"))
    assert fee_emails(repo) == []
    assert repo.late_fees_in_review["ch-late"]["final_at"] is None
    assert "charge.waived" not in app.definition(NotificationSettings()).consumes[BILLING_EVENTS]


@pytest.mark.parametrize("status", ["due", None], ids=["due", "older-producer"])
async def test_a_late_cancellation_fee_without_review_is_told_with_the_cancellation_only(
    handle: Handle, repo: FakeRepository, status: str | None
) -> None:
    await contacts(handle)
    await handle(notices.notify_cancellation, late_cancelled(review_hours=0))
    await handle(handlers.note_charge, late_fee(status))
    await handle(handlers.note_charge, late_fee(status))

    assert told(repo) == [("patient", "email", "pending"), ("patient", "sms", "pending")]
    assert "A cancellation fee of A$45.00 applies." in delivery(repo, "patient", "email")["body"]
    assert fee_emails(repo) == [] and repo.late_fees_in_review == {}


async def test_each_reviewed_late_fee_is_told_once_of_its_own(handle: Handle, repo: FakeRepository) -> None:
    """Two charges in review (two bookings' fees, say): each one's final announcement tells its
    own fee; one being final tells nothing of the other."""
    await contacts(handle)
    await handle(handlers.note_charge, late_fee("pending_review", charge_id="ch-a"))
    await handle(handlers.note_charge, late_fee("pending_review", charge_id="ch-b"))
    await handle(handlers.note_charge, late_fee("due", "30.00", charge_id="ch-a"))
    assert [("A$30.00" in d["body"]) for d in fee_emails(repo)] == [True]
    await handle(handlers.note_charge, late_fee("due", "10.00", charge_id="ch-b"))
    assert sorted("A$10.00" in d["body"] for d in fee_emails(repo)) == [False, True]


@pytest.mark.parametrize(("locale", "words"), [("en", "refunding 15.00"), ("de", "erstatten Ihnen daher")])
async def test_a_refund_is_told_to_the_patient_once_by_email_in_their_language(
    locale: str, words: str, handle: Handle, repo: FakeRepository
) -> None:
    await handle(handlers.configure_practice, practice_configured(locale=locale))
    await handle(handlers.remember_patient, booking_scheduled())
    refund = PaymentRefunded.new(
        charge_id="ch-1",
        booking_id=BOOKING,
        refund_id="rf-1",
        amount=Decimal("15.00"),
        currency="AUD",
        reason="adjustment",
    )
    await handle(handlers.tell_refund, refund)
    await handle(handlers.tell_refund, refund)  # delivered again: told once
    [row] = repo.deliveries.values()
    assert (row["recipient"], row["channel"], row["template"], row["status"]) == (
        "patient",
        "email",
        "fee_refunded",
        "pending",
    )
    assert words in row["body"].replace("\xa0", " ").replace("A$", "").replace("$", "")


# --- second release (issue 17): standing, suspected no-shows, turn-away pay, reinstatement ----------


def standing_changed(standing: str = "deposit_required", previous: str = "good") -> PatientStandingChanged:
    return PatientStandingChanged.new(
        patient_id="pat-1",
        practice_id=PRACTICE,
        standing=standing,
        previous=previous,
        count=2,
        window_days=365,
        reason="2 no-shows or late cancellations at this practice in the last 365 days, 2 counted.",
    )


async def test_the_practice_hears_of_each_standing_move_once(handle: Handle, repo: FakeRepository) -> None:
    await contacts(handle)
    await handle(notices.notify_standing_change, standing_changed(), time=T)
    await handle(notices.notify_standing_change, standing_changed(), time=T)  # the same move again
    await handle(
        notices.notify_standing_change, standing_changed("good", "deposit_required"), time=T + timedelta(days=9)
    )

    rows = sorted(repo.deliveries.values(), key=lambda d: d["subject"])
    assert [(d["recipient"], d["channel"], d["status"], d["practice_id"]) for d in rows] == [
        ("practice", "email", "pending", PRACTICE),
        ("practice", "email", "pending", PRACTICE),
    ]
    assert [d["subject"] for d in rows] == ["Patient pat-1: deposit required", "Patient pat-1: good standing"]


async def test_the_practice_hears_of_a_suspected_no_show_once_in_its_time(handle: Handle, repo: FakeRepository) -> None:
    await contacts(handle)
    suspected = BookingNoShowSuspected.new(booking_id=BOOKING, practice_id=PRACTICE, starts_at=T, grace_minutes=15)
    await handle(notices.notify_suspected_no_show, suspected)
    await handle(notices.notify_suspected_no_show, suspected)

    assert told(repo) == [("practice", "email", "pending")]
    body = delivery(repo, "practice", "email")["body"]
    assert "patient Ada" in body and "9:00" in body and "15 minutes after its start" in body


@pytest.mark.parametrize(
    ("actor", "pay", "told_professional"),
    [
        ("staff", {"amount": "90.00", "currency": "AUD"}, True),
        ("staff", None, False),  # timely, or no price: nothing owed
        ("patient", {"amount": "90.00", "currency": "AUD"}, False),  # only the office owes it
    ],
)
async def test_the_professional_hears_of_turnaway_pay_once(
    handle: Handle, repo: FakeRepository, actor: str, pay: Any, told_professional: bool
) -> None:
    await contacts(handle)
    event = cancelled(
        actor,
        "practice" if actor == "staff" else "patient_portal",
        professional_id=PROFESSIONAL,
        decision={
            "allowed": True,
            "classification": "late",
            "charge_card": False,
            "deposit_action": "none",
            "policy_version": "r1.s1",
            **({"turnaway_pay": pay} if pay else {}),
        },
    )
    await handle(notices.notify_cancellation, event)
    await handle(notices.notify_cancellation, event)

    professional = [d for d in repo.deliveries.values() if d["recipient"] == "professional"]
    assert len(professional) == (1 if told_professional else 0)
    if told_professional:
        assert professional[0]["address"] == "grace@example.test"
        assert professional[0]["subject"] == "Turn-away pay owed to you: A$90.00"
    assert [d for d in repo.deliveries.values() if d["recipient"] == "patient"]  # the patient as before


async def test_the_professional_hears_of_a_reinstatement_once(handle: Handle, repo: FakeRepository) -> None:
    await contacts(handle)
    reinstated = AccountReinstated.new(professional_id=PROFESSIONAL, reinstated_at=T)
    await handle(notices.notify_reinstatement, reinstated)
    await handle(notices.notify_reinstatement, reinstated)

    assert told(repo) == [("professional", "email", "pending")]
    row = delivery(repo, "professional", "email")
    assert row["subject"] == "Your account has been reinstated" and "Tuesday, March 11, 2031" in row["body"]


# --- sets: what the consumer hands a set-based handler at once -----------------------------------


async def as_set(unit_for: UnitFor, deps: Deps, handler: Any, payloads: list[Payload]) -> list[Unit[Any]]:
    """`payloads` handed to `handler` as one set (one record per key, as a wave holds), each in
    a unit of its own with a fixed envelope id, so a run one by one can be compared with it."""
    units = [
        unit_for("notification", deps, TOPICS[type(p)], p, event_id=f"ev-{i}", correlation_id=f"c-{i}", time=T)
        for i, p in enumerate(payloads)
    ]
    await handler.handle_many(units, [u.event.payload for u in units])
    assert all(u.emitted == [] for u in units)  # handlers only record; the sender publishes
    return units


async def one_by_one(unit_for: UnitFor, deps: Deps, handler: Any, payloads: list[Payload]) -> None:
    """The same records as `as_set`, each alone (a set of one: the consumer's savepoint path)."""
    for i, p in enumerate(payloads):
        unit = unit_for("notification", deps, TOPICS[type(p)], p, event_id=f"ev-{i}", correlation_id=f"c-{i}", time=T)
        await handler(unit, unit.event.payload)


async def directory_of(handle: Handle, bookings: list[str]) -> None:
    """Two practices (one in German), each booking's patient at the first, the professional."""
    await handle(handlers.configure_practice, practice_configured())
    await handle(handlers.configure_practice, practice_configured("prac-2", locale="de"))
    for b in bookings:
        await handle(handlers.remember_patient, booking_scheduled(b))


def cancellation_set() -> list[Payload]:
    """Cancellations of five bookings mixing the branches: staff with a final fee and turn-away
    pay, the same practice twice, an online one, one in review, one of a booking never seen at a
    practice never configured, one at a German practice whose patient is not known."""
    decision = {
        "allowed": True,
        "classification": "late",
        "charge_card": False,
        "deposit_action": "none",
        "policy_version": "r1.s1",
    }
    return [
        cancelled(
            "staff",
            booking_id="bk-s0",
            request_id="r0",
            classification="late",
            professional_id=PROFESSIONAL,
            decision=decision | {"fee": LATE_FEE, "turnaway_pay": {"amount": "90.00", "currency": "AUD"}},
        ),
        cancelled("patient", "patient_portal", booking_id="bk-s1", request_id="r1"),
        cancelled(
            "staff", booking_id="bk-s2", request_id="r2", decision=decision | {"fee": LATE_FEE, "review_hours": 48}
        ),
        cancelled("professional", booking_id="bk-unknown", request_id="r3", practice_id="prac-unknown"),
        cancelled("system", "system", booking_id="bk-de", request_id="r4", practice_id="prac-2"),
    ]


async def test_a_set_of_cancellations_costs_one_call_of_each_kind_and_tells_each_as_it_would_alone(
    handle: Handle, unit_for: UnitFor, deps: Deps, repo: FakeRepository, renderer: Renderer, clock: Any
) -> None:
    bookings = ["bk-s0", "bk-s1", "bk-s2"]
    await directory_of(handle, bookings)
    repo.calls.clear()
    payloads = cancellation_set()
    await as_set(unit_for, deps, notices.notify_cancellation, payloads)
    # a fixed number of calls for the whole set, whatever its size
    assert repo.calls == Counter(get_patients=1, get_practices=1, get_professionals=1, record_deliveries=1)
    assert len({d["event_id"] for d in repo.deliveries.values()}) == len(payloads)  # every record told
    assert sum(d["template"] == "turnaway_pay_owed" for d in repo.deliveries.values()) == 1

    alone = Deps(settings=deps.settings, renderer=renderer, repository=FakeRepository(), clock=clock)
    await directory_of(lambda h, p: handle_with(unit_for, alone, h, p), bookings)
    await one_by_one(unit_for, alone, notices.notify_cancellation, payloads)
    assert alone.repository.deliveries == repo.deliveries  # the same rows, ids, texts and skips

    repo.calls.clear()
    await as_set(unit_for, deps, notices.notify_cancellation, payloads)  # the set delivered again
    assert len(repo.deliveries) == len(alone.repository.deliveries)  # recorded once
    assert repo.calls["record_deliveries"] == 1


async def handle_with(unit_for: UnitFor, deps: Deps, handler: Any, payload: Payload) -> Unit[Any]:
    unit = unit_for("notification", deps, TOPICS[type(payload)], payload)
    await handler(unit, unit.event.payload)
    return unit


def fee_sets() -> list[tuple[Any, list[Payload]]]:
    """Three waves of fee events over six bookings, each wave a set of one handler, mixing every
    branch: no-shows (for the card, not for it, without a fee, of the professional), charges
    (completing a fee, in review, a second charge, late fees in review, final, never in review),
    payments (of a known charge, of another charge)."""

    def no_show(booking_id: str, **kw: Any) -> BookingNoShowRecorded:
        return no_show_recorded(**kw).model_copy(update={"booking_id": booking_id})

    def charge(booking_id: str, charge_id: str, **kw: Any) -> ChargeCreated:
        return charge_created(charge_id, **kw).model_copy(update={"booking_id": booking_id})

    def late(booking_id: str, status: str, charge_id: str) -> ChargeCreated:
        return late_fee(status, charge_id=charge_id).model_copy(update={"booking_id": booking_id})

    def paid(outcome: Any, booking_id: str, charge_id: str) -> Payload:
        return payment(outcome, charge_id).model_copy(update={"booking_id": booking_id})

    return [
        (
            handlers.note_no_show,
            [
                no_show("bk-f0", charge_card=True),
                no_show("bk-f1", charge_card=False),
                no_show("bk-f2", charge_card=False, fee=False),
                no_show("bk-f3", charge_card=True, party="professional"),
                no_show("bk-f4", charge_card=False),
            ],
        ),
        (handlers.note_charge, [late("bk-l0", "pending_review", "ch-l0"), late("bk-l1", "pending_review", "ch-l1")]),
        (
            handlers.note_charge,
            [
                charge("bk-f0", "ch-f0"),
                charge("bk-f1", "ch-f1"),  # completes a fee not for the card: told now
                charge("bk-f5", "ch-f5").model_copy(update={"status": "pending_review"}),
                late("bk-l0", "due", "ch-l0"),  # final after review: told now
                late("bk-l2", "due", "ch-l2"),  # never in review: the cancellation told it
            ],
        ),
        (
            handlers.note_charge,
            [charge("bk-f4", "ch-f4"), charge("bk-f1", "ch-other")],  # bk-f1's second charge: never told
        ),
        (
            handlers.note_payment,
            [
                paid(PaymentCaptured, "bk-f0", "ch-f0"),  # the card answered: told now
                paid(PaymentFailed, "bk-f4", "ch-f4"),  # told when its charge came: not again
                paid(PaymentFailed, "bk-f9", "ch-f9"),  # not a no-show charge we know
            ],
        ),
    ]


async def test_sets_of_fee_events_cost_a_fixed_number_of_calls_and_tell_each_fee_as_alone(
    handle: Handle, unit_for: UnitFor, deps: Deps, repo: FakeRepository, renderer: Renderer, clock: Any
) -> None:
    bookings = ["bk-f0", "bk-f1", "bk-f4", "bk-l0", "bk-l1", "bk-l2"]
    await directory_of(handle, bookings)
    alone = Deps(settings=deps.settings, renderer=renderer, repository=FakeRepository(), clock=clock)
    await directory_of(lambda h, p: handle_with(unit_for, alone, h, p), bookings)

    fixed = {
        handlers.note_no_show: Counter(merge_no_shows=1, get_patients=1, get_practices=1, record_deliveries=1),
        handlers.note_charge: Counter(
            remember_fees_in_review=1,
            mark_fees_final=1,
            merge_no_show_charges=1,
            get_patients=1,
            get_practices=1,
            record_deliveries=1,
        ),
        handlers.note_payment: Counter(merge_no_show_payments=1, get_patients=1, get_practices=1, record_deliveries=1),
    }
    for wave, (handler, payloads) in enumerate(fee_sets()):
        repo.calls.clear()
        units = [
            unit_for("notification", deps, TOPICS[type(p)], p, event_id=f"ev-{wave}-{i}", time=T)
            for i, p in enumerate(payloads)
        ]
        await handler.handle_many(units, [u.event.payload for u in units])
        # at most these calls, whatever the size of the set (none for what has nothing to tell)
        assert not repo.calls - fixed[handler], (wave, repo.calls)
        for i, p in enumerate(payloads):
            unit = unit_for("notification", alone, TOPICS[type(p)], p, event_id=f"ev-{wave}-{i}", time=T)
            await handler(unit, unit.event.payload)
        assert alone.repository.deliveries == repo.deliveries, wave
        assert alone.repository.no_show_fees == repo.no_show_fees
        assert alone.repository.late_fees_in_review == repo.late_fees_in_review

    told = sorted((d["booking_id"], d["template"], d["channel"]) for d in repo.deliveries.values())
    assert told == [
        ("bk-f0", "no_show_fee_charged", "email"),
        ("bk-f1", "no_show_fee_charged", "email"),
        ("bk-f4", "no_show_fee_charged", "email"),
        ("bk-l0", "late_cancellation_fee", "email"),
    ]
    bodies = {d["booking_id"]: d["body"] for d in repo.deliveries.values()}
    assert bodies["bk-f0"] != bodies["bk-f1"]  # charged to the card, and outstanding on the account


async def test_a_set_of_requests_and_reschedules_is_one_statement_each(
    handle: Handle, unit_for: UnitFor, deps: Deps, repo: FakeRepository
) -> None:
    await directory_of(handle, ["bk-r0", "bk-r1"])
    repo.calls.clear()
    requests = [
        BookingCancellationRequested.new(
            request_id=f"req-r{i}",
            booking_id=f"bk-r{i}",
            requested_at=T - timedelta(hours=2),
            actor={"kind": kind, "id": "someone"},
            channel="patient_portal" if kind == "patient" else "practice",
        )
        for i, kind in enumerate(["patient", "staff", "patient"])
    ]
    await as_set(unit_for, deps, handlers.remember_request, requests)
    moved = [
        BookingRescheduled.new(booking_id=b, starts_at=T + timedelta(days=2), ends_at=T + timedelta(days=2, minutes=30))
        for b in ["bk-r0", "bk-r1", "bk-never"]
    ]
    await as_set(unit_for, deps, handlers.reschedule_booking, moved)
    assert repo.calls == Counter(remember_requests=1, reschedule_many=1)
    assert {r: q["actor_kind"] for r, q in repo.requests.items()} == {
        "req-r0": "patient",
        "req-r1": "staff",
        "req-r2": "patient",
    }
    assert repo.patients["bk-r0"]["starts_at"] == repo.patients["bk-r1"]["starts_at"] == T + timedelta(days=2)
    assert "bk-never" not in repo.patients
