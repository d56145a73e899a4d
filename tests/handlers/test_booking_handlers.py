"""booking's handlers against a fake of their repository: what happens to a booking that is
unknown or closed, what is asked of the policy and what is refused before it, a request id used
twice, a claimed time that is not believed, a decision applied (the cancelled booking, its label,
its series, its freed slot offered or released; a no-show), a decision with nothing to decide,
a suspended professional's bookings, and the answer to a request that cannot be read. No
database, no broker, milliseconds each.

The checks and labels themselves are tables in tests/unit/test_booking_domain.py; the SQL, the
policy's real answers and the broker are tests/integration/test_booking_flows.py.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from booking import domain, handlers, repository
from booking.handlers import BookingDeps
from shared.consumer import Unit
from shared.contracts.base import Payload
from shared.contracts.envelope import ContractViolation, new_envelope, parse_envelope
from shared.contracts.policy import CancellationAssessed
from shared.contracts.registry import models_for
from shared.contracts.scoring import AccountSuspended
from shared.contracts.upstream import (
    BookingCancellationRequested,
    BookingNoShowReported,
    BookingRescheduled,
    BookingScheduled,
    PracticeConfigured,
    UpstreamBookingCompleted,
    WaitlistJoined,
)
from shared.testing import assert_same_functions
from shared.topics import (
    BOOKING_EVENTS,
    POLICY_DECISIONS,
    POLICY_REQUESTS,
    SCORING_EVENTS,
    UPSTREAM_BOOKINGS,
    UPSTREAM_PRACTICES,
)

T = datetime(2031, 3, 10, 22, 0, tzinfo=UTC)  # the appointment
NOW = T - timedelta(days=3)  # when requests are made, unless a test says otherwise
PRACTICE = "prac-1"
BOOKING = "bk-1"
REQUEST = "req-1"
PROFESSIONAL = "pro-1"
PATIENT = {"kind": "patient", "id": "pat-1", "roles": []}
STAFF = {"kind": "staff", "id": "staff-7", "roles": ["reception"]}
NURSE = {"kind": "staff", "id": "nurse-3", "roles": ["clinician"]}

TOPICS = {
    BookingScheduled: UPSTREAM_BOOKINGS,
    BookingRescheduled: UPSTREAM_BOOKINGS,
    UpstreamBookingCompleted: UPSTREAM_BOOKINGS,
    BookingCancellationRequested: UPSTREAM_BOOKINGS,
    BookingNoShowReported: UPSTREAM_BOOKINGS,
    CancellationAssessed: POLICY_DECISIONS,
    PracticeConfigured: UPSTREAM_PRACTICES,
    WaitlistJoined: UPSTREAM_PRACTICES,
    AccountSuspended: SCORING_EVENTS,
}


# --- the fake ----------------------------------------------------------------------------------------

BOOKING_COLUMNS = [c.strip() for c in repository.BOOKING_COLUMNS.split(",")]


class FakeRepository:
    """The functions of booking/repository.py the handlers call, with the same names, arguments
    and results, over dicts; the connection argument is ignored. Closing touches only scheduled
    bookings, as the SQL's `AND status = 'scheduled'` does; a pending request comes back with its
    request as JSON text (`request::text`); lists come back in the SQL's order."""

    def __init__(self) -> None:
        self.bookings: dict[str, dict[str, Any]] = {}
        self.pending: dict[str, dict[str, Any]] = {}
        self.trail: list[dict[str, Any]] = []
        self.practices: dict[str, dict[str, Any]] = {}
        self.waitlist: dict[str, dict[str, Any]] = {}
        self.offers: dict[str, dict[str, Any]] = {}
        self.suspensions: dict[str, dict[str, Any]] = {}
        self.calls: Counter[str] = Counter()  # how often each set-based function was called

    def _row(self, booking_id: str) -> dict[str, Any]:
        return {c: self.bookings[booking_id][c] for c in BOOKING_COLUMNS}

    async def insert_booking(self, conn: Any, b: dict[str, Any]) -> bool:
        if b["booking_id"] in self.bookings:
            return False
        self.bookings[b["booking_id"]] = dict(b) | {
            "status": "scheduled",
            "status_label": None,
            "classification": None,
            "closed_at": None,
            "slot_released_at": None,
        }
        return True

    async def lock_booking(self, conn: Any, booking_id: str) -> dict[str, Any] | None:
        return self._row(booking_id) if booking_id in self.bookings else None

    async def get_booking(self, conn: Any, booking_id: str) -> dict[str, Any] | None:
        return self._row(booking_id) if booking_id in self.bookings else None

    async def lock_later_in_series(self, conn: Any, series_id: str, after: datetime) -> list[dict[str, Any]]:
        later = [
            b
            for b in self.bookings.values()
            if b["series_id"] == series_id and b["starts_at"] > after and b["status"] == "scheduled"
        ]
        return [self._row(b["booking_id"]) for b in sorted(later, key=lambda b: b["starts_at"])]

    async def reschedule(self, conn: Any, booking_id: str, starts_at: datetime, ends_at: datetime) -> None:
        self.bookings[booking_id] |= {"starts_at": starts_at, "ends_at": ends_at}

    async def close_booking(
        self,
        conn: Any,
        booking_ids: list[str],
        *,
        status: str,
        closed_at: datetime,
        status_label: str | None = None,
        classification: str | None = None,
    ) -> None:
        for booking_id in booking_ids:
            booking = self.bookings.get(booking_id)
            if booking is not None and booking["status"] == "scheduled":
                booking |= {
                    "status": status,
                    "status_label": status_label,
                    "classification": classification,
                    "closed_at": closed_at,
                }

    async def lock_bookings(self, conn: Any, booking_ids: list[str]) -> dict[str, dict[str, Any]]:
        self.calls["lock_bookings"] += 1
        return {b: self._row(b) for b in sorted(booking_ids) if b in self.bookings}

    async def get_bookings(self, conn: Any, booking_ids: list[str]) -> dict[str, dict[str, Any]]:
        self.calls["get_bookings"] += 1
        return {b: self._row(b) for b in booking_ids if b in self.bookings}

    async def close_bookings(self, conn: Any, closes: list[dict[str, Any]]) -> None:
        self.calls["close_bookings"] += 1
        for c in closes:
            await self.close_booking(
                conn,
                [c["booking_id"]],
                status=c["status"],
                closed_at=c["closed_at"],
                status_label=c.get("status_label"),
                classification=c.get("classification"),
            )

    async def add_pending_requests(
        self, conn: Any, requests: list[tuple[str, str, str, dict[str, Any]]]
    ) -> dict[str, str | None]:
        self.calls["add_pending_requests"] += 1
        used: dict[str, str | None] = {}
        for request_id, booking_id, kind, request in requests:
            if request_id in self.pending:
                used[request_id] = str(self.pending[request_id]["booking_id"])
                continue
            self.pending[request_id] = {
                "request_id": request_id,
                "booking_id": booking_id,
                "kind": kind,
                "request": json.dumps(request),
                "decided": False,
            }
            used[request_id] = None
        return used

    async def take_pending_requests(self, conn: Any, request_ids: list[str]) -> dict[str, dict[str, Any]]:
        self.calls["take_pending_requests"] += 1
        taken = {}
        for request_id in request_ids:
            pending = self.pending.get(request_id)
            if pending is None or pending["decided"]:
                continue
            pending["decided"] = True
            taken[request_id] = {k: pending[k] for k in ("request_id", "booking_id", "kind", "request")}
        return taken

    async def audit_many(self, conn: Any, entries: list[dict[str, Any]]) -> None:
        self.calls["audit_many"] += 1
        for e in entries:
            await self.audit(conn, **e)

    async def practices_of(self, conn: Any, practice_ids: list[str]) -> dict[str, dict[str, Any]]:
        self.calls["practices_of"] += 1
        return {p: dict(self.practices[p]) for p in practice_ids if p in self.practices}

    async def mark_released_many(self, conn: Any, releases: list[tuple[str, datetime]]) -> set[str]:
        self.calls["mark_released_many"] += 1
        released = set()
        for booking_id, at in releases:
            booking = self.bookings[booking_id]
            if booking["slot_released_at"] is None:
                booking["slot_released_at"] = at
                released.add(booking_id)
        return released

    async def audit(
        self,
        conn: Any,
        booking_id: str,
        *,
        at: datetime,
        action: str,
        actor: dict[str, Any] | None = None,
        channel: str | None = None,
        request_id: str | None = None,
        reason: str | None = None,
        policy_version: str | None = None,
        detail: dict[str, Any] | None = None,
    ) -> None:
        json.dumps([actor, detail])  # what the SQL stores as jsonb must be JSON
        self.trail.append(
            {
                "booking_id": booking_id,
                "at": at,
                "action": action,
                "actor": actor,
                "channel": channel,
                "request_id": request_id,
                "reason": reason,
                "policy_version": policy_version,
                "detail": detail or {},
            }
        )

    async def upsert_practice(self, conn: Any, practice_id: str, waitlist_enabled: bool, offer_minutes: int) -> None:
        self.practices[practice_id] = {
            "practice_id": practice_id,
            "waitlist_enabled": waitlist_enabled,
            "offer_minutes": offer_minutes,
        }

    async def join_waitlist(self, conn: Any, w: dict[str, Any]) -> None:
        self.waitlist.setdefault(w["waitlist_id"], dict(w) | {"status": "waiting"})

    async def lock_waiting(self, conn: Any, practice_id: str, booking_id: str) -> list[dict[str, Any]]:
        offered = {o["waitlist_id"] for o in self.offers.values() if o["booking_id"] == booking_id}
        waiting = [
            w
            for w in self.waitlist.values()
            if w["practice_id"] == practice_id and w["status"] == "waiting" and w["waitlist_id"] not in offered
        ]
        return [
            {k: w[k] for k in ("waitlist_id", "service_code", "practitioner_id", "joined_at")}
            for w in sorted(waiting, key=lambda w: (w["joined_at"], w["waitlist_id"]))[:500]
        ]

    async def add_offer(
        self, conn: Any, offer_id: str, booking_id: str, waitlist_id: str, offered_at: datetime, expires_at: datetime
    ) -> None:
        self.offers[offer_id] = {
            "offer_id": offer_id,
            "booking_id": booking_id,
            "waitlist_id": waitlist_id,
            "offered_at": offered_at,
            "expires_at": expires_at,
            "status": "open",
        }
        self.waitlist[waitlist_id]["status"] = "offered"

    async def accept_offer_for(self, conn: Any, patient_id: str, practice_id: str, starts_at: datetime) -> str | None:
        for offer in self.offers.values():
            slot, entry = self.bookings[offer["booking_id"]], self.waitlist[offer["waitlist_id"]]
            if (offer["status"], entry["patient_id"], slot["practice_id"], slot["starts_at"]) == (
                "open",
                patient_id,
                practice_id,
                starts_at,
            ):
                offer["status"], entry["status"] = "accepted", "booked"
                return str(offer["offer_id"])
        return None

    async def future_bookings_of(self, conn: Any, professional_id: str, after: datetime) -> list[dict[str, Any]]:
        future = [
            b
            for b in self.bookings.values()
            if b["professional_id"] == professional_id and b["status"] == "scheduled" and b["starts_at"] > after
        ]
        return [self._row(b["booking_id"]) for b in sorted(future, key=lambda b: b["starts_at"])]

    async def record_suspension(self, conn: Any, professional_id: str, suspended_at: datetime, cause: str) -> None:
        self.suspensions.setdefault(professional_id, {"suspended_at": suspended_at, "cause_event_id": cause})

    async def suspension_of(self, conn: Any, professional_id: str) -> dict[str, Any] | None:
        known = self.suspensions.get(professional_id)
        return dict(known) if known else None


def actions(repo: FakeRepository, booking_id: str = BOOKING) -> list[str]:
    """The booking's audit trail, by action."""
    return [entry["action"] for entry in repo.trail if entry["booking_id"] == booking_id]


def entry(repo: FakeRepository, action: str, booking_id: str = BOOKING) -> dict[str, Any]:
    """The booking's one audit entry for `action`."""
    [found] = [e for e in repo.trail if e["booking_id"] == booking_id and e["action"] == action]
    return found


def test_the_fake_takes_what_repository_py_takes() -> None:
    assert_same_functions(FakeRepository(), repository)


@pytest.fixture
def repo() -> FakeRepository:
    return FakeRepository()


Published = list[tuple[str, str, str, dict[str, Any]]]
Handle = Callable[..., Awaitable[Published]]


@pytest.fixture
def handle(unit_for: Callable[..., Unit[Any]], repo: FakeRepository) -> Handle:
    """`await handle(handler, payload, **envelope)`: the payload parsed as the consumer would, on
    its topic, handed to `handler` in a unit of its own (its record written when the envelope
    says, unless `record_time=` says otherwise); returns what it published, as
    (topic, key, type, data)."""

    async def handle(handler: Callable[..., Awaitable[None]], payload: Payload, **envelope: Any) -> Published:
        envelope.setdefault("time", NOW)
        unit = unit_for("booking", BookingDeps(repository=repo), TOPICS[type(payload)], payload, **envelope)
        await handler(unit, unit.event.payload)
        for event in unit.emitted:  # every event carries the causing event's correlation id
            assert event.envelope.get("correlationid") == unit.event.correlation_id
        return [(e.topic, e.key, e.envelope["type"], e.envelope["data"]) for e in unit.emitted]

    return handle


# --- the events --------------------------------------------------------------------------------------


def scheduled(booking_id: str = BOOKING, **overrides: Any) -> BookingScheduled:
    fields: dict[str, Any] = {
        "booking_id": booking_id,
        "practice_id": PRACTICE,
        "starts_at": T,
        "ends_at": T + timedelta(minutes=30),
        "practitioner_id": "dr-lee",
        "service_code": "D1110",
        "patient": {"patient_id": "pat-1", "first_name": "Ada", "portal_account": True, "card_on_file": True},
        "deposit": {"amount": "20.00", "currency": "AUD"},
    }
    return BookingScheduled.new(**(fields | overrides))


def requested(
    booking_id: str = BOOKING, request_id: str = REQUEST, *, at: datetime = NOW, **overrides: Any
) -> BookingCancellationRequested:
    fields: dict[str, Any] = {
        "request_id": request_id,
        "booking_id": booking_id,
        "requested_at": at,
        "actor": PATIENT,
        "channel": "patient_portal",
        "reason_code": "illness",
    }
    return BookingCancellationRequested.new(**(fields | overrides))


def reported(at: datetime = T + timedelta(minutes=20)) -> BookingNoShowReported:
    return BookingNoShowReported.new(
        request_id="req-ns", booking_id=BOOKING, reported_at=at, actor=NURSE, party="patient", code="DNA"
    )


def assessed(request_id: str = REQUEST, booking_id: str = BOOKING, **overrides: Any) -> CancellationAssessed:
    fields: dict[str, Any] = {
        "booking_id": booking_id,
        "request_id": request_id,
        "allowed": True,
        "classification": "timely",
        "charge_card": False,
        "deposit_action": "refund",
        "policy_version": "r1.s1",
    }
    return CancellationAssessed.new(**(fields | overrides))


def configured(*, waitlist: bool, offer_minutes: int = 30) -> PracticeConfigured:
    return PracticeConfigured.new(
        practice_id=PRACTICE,
        name="Harbour Dental",
        timezone="Australia/Sydney",
        locale="en",
        waitlist={"enabled": waitlist, "offer_minutes": offer_minutes},
    )


def joined(waitlist_id: str, joined_at: datetime, patient_id: str = "pat-9", **wants: Any) -> WaitlistJoined:
    return WaitlistJoined.new(
        waitlist_id=waitlist_id,
        practice_id=PRACTICE,
        joined_at=joined_at,
        patient={"patient_id": patient_id, "first_name": "Bo", "portal_account": True, "card_on_file": False},
        **wants,
    )


def suspended(at: datetime = NOW) -> AccountSuspended:
    return AccountSuspended.new(professional_id=PROFESSIONAL, holds=["hold-1", "hold-2"], suspended_at=at)


async def cancelled(
    handle: Handle, repo: FakeRepository, request: BookingCancellationRequested | None = None
) -> Published:
    """The booking scheduled, cancellation requested, the policy's yes applied; what that published."""
    if BOOKING not in repo.bookings:
        await handle(handlers.schedule_booking, scheduled())
    request = request or requested()
    await handle(handlers.request_cancellation, request)
    return await handle(handlers.apply_decision, assessed(request.request_id, request.booking_id))


# --- bookings unknown or closed ----------------------------------------------------------------------


async def test_a_booking_is_stored_and_audited_once_however_often_it_is_scheduled(
    handle: Handle, repo: FakeRepository
) -> None:
    assert await handle(handlers.schedule_booking, scheduled(), time=NOW - timedelta(days=9)) == []
    stored = dict(repo.bookings[BOOKING])
    assert (stored["status"], stored["deposit_amount"], stored["deposit_currency"]) == (
        "scheduled",
        Decimal("20.00"),
        "AUD",
    )
    assert entry(repo, "scheduled")["at"] == NOW - timedelta(days=9)  # the envelope's time

    assert await handle(handlers.schedule_booking, scheduled(starts_at=T + timedelta(hours=1))) == []  # a replay
    assert repo.bookings[BOOKING] == stored
    assert actions(repo) == ["scheduled"]


async def test_a_rescheduled_booking_moves_and_the_trail_says_from_where(handle: Handle, repo: FakeRepository) -> None:
    await handle(handlers.schedule_booking, scheduled())
    later = T + timedelta(days=1)
    assert (
        await handle(
            handlers.reschedule_booking,
            BookingRescheduled.new(booking_id=BOOKING, starts_at=later, ends_at=later + timedelta(minutes=30)),
        )
        == []
    )

    assert (repo.bookings[BOOKING]["starts_at"], repo.bookings[BOOKING]["ends_at"]) == (
        later,
        later + timedelta(minutes=30),
    )
    assert entry(repo, "rescheduled")["detail"] == {"from": T.isoformat(), "to": later.isoformat()}


@pytest.mark.parametrize("closed", [False, True])
async def test_a_reschedule_of_an_unknown_or_closed_booking_is_refused_and_changes_nothing(
    handle: Handle, repo: FakeRepository, closed: bool
) -> None:
    """Refused with an error that will recur: the consumer dead-letters that record alone."""
    if closed:
        await cancelled(handle, repo)
    before = (dict(repo.bookings.get(BOOKING, {})), list(repo.trail))
    move = BookingRescheduled.new(
        booking_id=BOOKING, starts_at=T + timedelta(days=1), ends_at=T + timedelta(days=1, minutes=30)
    )

    with pytest.raises(LookupError, match="cannot be rescheduled"):
        await handle(handlers.reschedule_booking, move)
    assert (dict(repo.bookings.get(BOOKING, {})), repo.trail) == before


async def test_a_completed_booking_is_closed_and_published_with_its_professional(
    handle: Handle, repo: FakeRepository
) -> None:
    await handle(handlers.schedule_booking, scheduled(professional_id=PROFESSIONAL))
    done = T + timedelta(minutes=35)
    [(topic, key, type_, data)] = await handle(
        handlers.complete_booking, UpstreamBookingCompleted.new(booking_id=BOOKING, completed_at=done)
    )

    assert (topic, key, type_) == (BOOKING_EVENTS, BOOKING, "booking.completed")
    assert data == {"booking_id": BOOKING, "completed_at": "2031-03-10T22:35:00Z", "professional_id": PROFESSIONAL}
    assert (repo.bookings[BOOKING]["status"], repo.bookings[BOOKING]["closed_at"]) == ("completed", done)
    assert entry(repo, "completed")["at"] == done


async def test_a_completion_of_a_closed_booking_is_only_audited(handle: Handle, repo: FakeRepository) -> None:
    await cancelled(handle, repo)
    completion = UpstreamBookingCompleted.new(booking_id=BOOKING, completed_at=T + timedelta(minutes=35))

    assert await handle(handlers.complete_booking, completion) == []
    assert repo.bookings[BOOKING]["status"] == "cancelled"
    assert entry(repo, "completion_ignored")["detail"] == {"status": "cancelled"}


async def test_a_completion_of_an_unknown_booking_is_refused(handle: Handle, repo: FakeRepository) -> None:
    with pytest.raises(LookupError, match="cannot be completed"):
        await handle(handlers.complete_booking, UpstreamBookingCompleted.new(booking_id=BOOKING, completed_at=T))
    assert repo.trail == []


# --- requests: asked of the policy, or refused before it ---------------------------------------------


async def test_a_request_for_a_scheduled_booking_goes_to_the_policy_with_the_booking_as_it_is(
    handle: Handle, repo: FakeRepository
) -> None:
    await handle(handlers.schedule_booking, scheduled(professional_id=PROFESSIONAL, series_id="ser-1"))
    [(topic, key, type_, data)] = await handle(
        handlers.request_cancellation, requested(reason_text="Fever", scope="this_and_future"), correlation_id="corr-1"
    )

    assert (topic, key, type_) == (POLICY_REQUESTS, BOOKING, "cancellation.assessment_requested")
    assert {
        k: data[k] for k in ("request_id", "practice_id", "kind", "requested_at", "channel", "reason_text", "scope")
    } == {
        "request_id": REQUEST,
        "practice_id": PRACTICE,
        "kind": "cancellation",
        "requested_at": "2031-03-07T22:00:00Z",
        "channel": "patient_portal",
        "reason_text": "Fever",
        "scope": "this_and_future",
    }
    assert "claimed_at" not in data  # believed: nothing to correct
    assert data["booking"]["status"] == "scheduled" and data["booking"]["series_id"] == "ser-1"
    assert data["booking"]["deposit"] == {"amount": "20.00", "currency": "AUD"}
    assert repo.pending[REQUEST]["kind"] == "cancellation"
    assert entry(repo, "cancellation_requested")["detail"] == {"scope": "this_and_future", "fee_decision": "policy"}


async def test_the_deposit_decision_goes_to_the_policy_which_decides_who_may_make_it(
    handle: Handle, repo: FakeRepository
) -> None:
    await handle(handlers.schedule_booking, scheduled())
    [(_, _, _, data)] = await handle(handlers.request_cancellation, requested(deposit_decision="credit_note"))
    assert data["deposit_decision"] == "credit_note"


@pytest.mark.parametrize(
    ("state", "reason"),
    [(None, "not_found"), ("cancelled", "already_cancelled"), ("completed", "already_completed")],
)
async def test_a_request_for_an_unknown_or_closed_booking_is_rejected_without_asking_the_policy(
    handle: Handle, repo: FakeRepository, state: str | None, reason: str
) -> None:
    if state == "cancelled":
        await cancelled(handle, repo, requested(request_id="req-0"))
    elif state == "completed":
        await handle(handlers.schedule_booking, scheduled())
        await handle(handlers.complete_booking, UpstreamBookingCompleted.new(booking_id=BOOKING, completed_at=T))
    pending = dict(repo.pending)

    [(topic, key, type_, data)] = await handle(handlers.request_cancellation, requested())

    assert (topic, key, type_) == (BOOKING_EVENTS, BOOKING, "booking.cancellation_rejected")
    assert (data["request_id"], data["reason"]) == (REQUEST, reason)
    assert repo.pending == pending
    rejected = entry(repo, "cancellation_rejected")
    assert (rejected["request_id"], rejected["reason"], rejected["at"]) == (REQUEST, reason, NOW)
    assert actions(repo)[-2:] == ["cancellation_requested", "cancellation_rejected"]


async def test_a_request_id_used_for_another_booking_is_rejected_as_invalid(
    handle: Handle, repo: FakeRepository
) -> None:
    await handle(handlers.schedule_booking, scheduled())
    await handle(handlers.schedule_booking, scheduled("bk-2"))
    await handle(handlers.request_cancellation, requested())

    [(topic, key, type_, data)] = await handle(handlers.request_cancellation, requested("bk-2"))

    assert (topic, key, type_) == (BOOKING_EVENTS, "bk-2", "booking.cancellation_rejected")
    assert (data["reason"], data["message"]) == ("invalid_request", domain.REJECTION_MESSAGES["request_id_reused"])
    assert repo.pending[REQUEST]["booking_id"] == BOOKING and not repo.pending[REQUEST]["decided"]
    assert repo.bookings["bk-2"]["status"] == "scheduled"


async def test_the_same_request_resubmitted_is_with_the_policy_already(handle: Handle, repo: FakeRepository) -> None:
    await handle(handlers.schedule_booking, scheduled())
    await handle(handlers.request_cancellation, requested())
    pending = dict(repo.pending[REQUEST])

    assert await handle(handlers.request_cancellation, requested()) == []  # a new envelope, the same request
    assert repo.pending == {REQUEST: pending}


@pytest.mark.parametrize(
    ("handler", "payload", "action", "claimed_field"),
    [
        (
            handlers.request_cancellation,
            requested(at=NOW - timedelta(hours=6)),
            "cancellation_requested",
            "requested_at",
        ),
        (handlers.report_no_show, reported(at=NOW - timedelta(hours=6)), "no_show_reported", "reported_at"),
    ],
)
async def test_a_claimed_time_outside_the_trust_window_is_decided_at_the_records_time(
    handle: Handle, repo: FakeRepository, handler: Any, payload: Payload, action: str, claimed_field: str
) -> None:
    await handle(handlers.schedule_booking, scheduled())
    claimed = NOW - timedelta(hours=6)
    [(topic, _, _, data)] = await handle(handler, payload, record_time=NOW)

    assert topic == POLICY_REQUESTS
    assert (data["requested_at"], data["claimed_at"]) == ("2031-03-07T22:00:00Z", "2031-03-07T16:00:00Z")
    audited = entry(repo, action)
    assert audited["at"] == NOW
    assert (audited["detail"]["claimed_at"], audited["detail"]["decided_at"]) == (claimed.isoformat(), "record_time")
    # What the decision is applied by later is the corrected request, not the claim.
    assert json.loads(repo.pending[payload.request_id]["request"])[claimed_field] == "2031-03-07T22:00:00Z"


async def test_a_claimed_time_inside_the_trust_window_is_believed(handle: Handle, repo: FakeRepository) -> None:
    await handle(handlers.schedule_booking, scheduled())
    claimed = NOW - timedelta(minutes=9)  # waited a while in upstream's outbox
    [(_, _, _, data)] = await handle(handlers.request_cancellation, requested(at=claimed), record_time=NOW)

    assert data["requested_at"] == "2031-03-07T21:51:00Z" and "claimed_at" not in data
    assert entry(repo, "cancellation_requested")["detail"] == {"scope": "this", "fee_decision": "policy"}


async def test_the_trust_window_comes_from_the_deps(
    handle: Handle, unit_for: Callable[..., Unit[Any]], repo: FakeRepository
) -> None:
    await handle(handlers.schedule_booking, scheduled())
    strict = BookingDeps(time_trust=domain.TimeTrust(before=timedelta(minutes=1)), repository=repo)
    unit = unit_for("booking", strict, UPSTREAM_BOOKINGS, requested(at=NOW - timedelta(minutes=9)), record_time=NOW)
    await handlers.request_cancellation(unit, unit.event.payload)

    assert unit.emitted[0].envelope["data"]["requested_at"] == "2031-03-07T22:00:00Z"


# --- decisions applied -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("actor", "channel", "label"),
    [(PATIENT, "patient_portal", "Cancelled online"), (STAFF, "practice", "Cancelled")],
)
async def test_an_allowed_cancellation_closes_the_booking_and_publishes_it_with_its_label(
    handle: Handle, repo: FakeRepository, actor: dict[str, Any], channel: str, label: str
) -> None:
    published = await cancelled(handle, repo, requested(actor=actor, channel=channel))

    (topic, key, type_, data) = published[0]
    assert (topic, key, type_) == (BOOKING_EVENTS, BOOKING, "booking.cancelled")
    assert (data["status_label"], data["classification"], data["cancelled_at"]) == (
        label,
        "timely",
        "2031-03-07T22:00:00Z",
    )
    assert (data["decision"]["deposit_action"], data["deposit"]) == ("refund", {"amount": "20.00", "currency": "AUD"})
    assert data["series_booking_ids"] == []
    booking = repo.bookings[BOOKING]
    assert (booking["status"], booking["status_label"], booking["classification"], booking["closed_at"]) == (
        "cancelled",
        label,
        "timely",
        NOW,
    )
    assert entry(repo, "cancelled")["policy_version"] == "r1.s1"
    assert repo.pending[REQUEST]["decided"]


async def test_a_freed_slot_is_released_when_the_practice_keeps_no_waitlist(
    handle: Handle, repo: FakeRepository
) -> None:
    await handle(handlers.configure_practice, configured(waitlist=False))
    await handle(handlers.join_waitlist, joined("wl-1", NOW - timedelta(days=5)))
    published = await cancelled(handle, repo)

    assert [type_ for _, _, type_, _ in published] == ["booking.cancelled", "booking.slot_released"]
    released = published[1][3]
    assert released == {
        "booking_id": BOOKING,
        "practice_id": PRACTICE,
        "starts_at": "2031-03-10T22:00:00Z",
        "ends_at": "2031-03-10T22:30:00Z",
        "practitioner_id": "dr-lee",
        "service_code": "D1110",
    }
    assert repo.bookings[BOOKING]["slot_released_at"] == NOW
    assert repo.offers == {} and actions(repo)[-1] == "slot_released"


async def test_a_freed_slot_is_offered_to_the_longest_waiting_match(handle: Handle, repo: FakeRepository) -> None:
    await handle(handlers.configure_practice, configured(waitlist=True, offer_minutes=45))
    await handle(handlers.join_waitlist, joined("wl-other-service", NOW - timedelta(days=9), service_code="D0120"))
    await handle(handlers.join_waitlist, joined("wl-other-doctor", NOW - timedelta(days=8), practitioner_id="dr-kim"))
    await handle(handlers.join_waitlist, joined("wl-first", NOW - timedelta(days=7), service_code="D1110"))
    await handle(handlers.join_waitlist, joined("wl-second", NOW - timedelta(days=6)))

    published = await cancelled(handle, repo)

    [(topic, key, type_, offer)] = [p for p in published if p[2] != "booking.cancelled"]
    assert (topic, key, type_) == (BOOKING_EVENTS, BOOKING, "booking.slot_offered")
    assert (offer["waitlist_id"], offer["expires_at"]) == ("wl-first", "2031-03-07T22:45:00Z")
    assert offer["offer_id"] == handlers.derived_id("offer", BOOKING, "wl-first")
    assert {w: e["status"] for w, e in repo.waitlist.items()} == {
        "wl-other-service": "waiting",
        "wl-other-doctor": "waiting",
        "wl-first": "offered",
        "wl-second": "waiting",
    }
    assert repo.bookings[BOOKING]["slot_released_at"] is None
    assert entry(repo, "slot_offered")["detail"]["waitlist_id"] == "wl-first"


async def test_a_freed_slot_nobody_on_the_waitlist_matches_is_released(handle: Handle, repo: FakeRepository) -> None:
    await handle(handlers.configure_practice, configured(waitlist=True))
    await handle(handlers.join_waitlist, joined("wl-other-service", NOW - timedelta(days=9), service_code="D0120"))
    published = await cancelled(handle, repo)

    assert [type_ for _, _, type_, _ in published] == ["booking.cancelled", "booking.slot_released"]
    assert repo.waitlist["wl-other-service"]["status"] == "waiting"


async def test_a_booking_that_takes_an_offered_slot_closes_the_offer(handle: Handle, repo: FakeRepository) -> None:
    await handle(handlers.configure_practice, configured(waitlist=True))
    await handle(handlers.join_waitlist, joined("wl-1", NOW - timedelta(days=7), patient_id="pat-9"))
    await cancelled(handle, repo)
    [offer_id] = repo.offers

    patient = {"patient_id": "pat-9", "first_name": "Bo", "portal_account": True, "card_on_file": False}
    assert await handle(handlers.schedule_booking, scheduled("bk-new", patient=patient)) == []

    assert (repo.offers[offer_id]["status"], repo.waitlist["wl-1"]["status"]) == ("accepted", "booked")
    assert entry(repo, "waitlist_offer_taken", "bk-new")["detail"] == {"offer_id": offer_id}


async def test_this_and_future_cancels_the_later_scheduled_occurrences_of_the_series(
    handle: Handle, repo: FakeRepository
) -> None:
    week = timedelta(days=7)
    occurrences = {"bk-0": T - week, BOOKING: T, "bk-2": T + week, "bk-3": T + 2 * week, "bk-4": T + 3 * week}
    for booking_id, starts_at in occurrences.items():
        await handle(
            handlers.schedule_booking,
            scheduled(booking_id, series_id="ser-1", starts_at=starts_at, ends_at=starts_at + timedelta(minutes=30)),
        )
    await cancelled(handle, repo, requested("bk-3", "req-3", actor=STAFF, channel="practice"))  # already cancelled

    published = await cancelled(handle, repo, requested(scope="this_and_future"))

    (_, _, type_, data) = published[0]
    assert type_ == "booking.cancelled" and data["series_booking_ids"] == ["bk-2", "bk-4"]
    assert {b: repo.bookings[b]["status"] for b in occurrences} == {
        "bk-0": "scheduled",
        BOOKING: "cancelled",
        "bk-2": "cancelled",
        "bk-3": "cancelled",
        "bk-4": "cancelled",
    }
    assert repo.bookings["bk-3"]["status_label"] == "Cancelled"  # its own cancellation, untouched
    assert [(key, type_) for _, key, type_, _ in published[1:]] == [
        (BOOKING, "booking.slot_released"),
        ("bk-2", "booking.slot_released"),
        ("bk-4", "booking.slot_released"),
    ]
    assert entry(repo, "cancelled", "bk-4")["detail"]["series_of"] == BOOKING


async def test_this_only_leaves_the_rest_of_the_series(handle: Handle, repo: FakeRepository) -> None:
    await handle(handlers.schedule_booking, scheduled(series_id="ser-1"))
    await handle(
        handlers.schedule_booking,
        scheduled(
            "bk-2", series_id="ser-1", starts_at=T + timedelta(days=7), ends_at=T + timedelta(days=7, minutes=30)
        ),
    )
    published = await cancelled(handle, repo)

    assert published[0][3]["series_booking_ids"] == [] and repo.bookings["bk-2"]["status"] == "scheduled"


async def test_a_no_show_goes_to_the_policy_and_is_recorded_without_freeing_the_slot(
    handle: Handle, repo: FakeRepository
) -> None:
    await handle(handlers.configure_practice, configured(waitlist=True))
    await handle(handlers.join_waitlist, joined("wl-1", NOW - timedelta(days=7)))
    await handle(handlers.schedule_booking, scheduled())
    [(topic, _, _, asked)] = await handle(handlers.report_no_show, reported(), time=T + timedelta(minutes=20))
    assert (topic, asked["kind"], asked["party"], asked["code"]) == (POLICY_REQUESTS, "no_show", "patient", "DNA")

    [(topic, key, type_, data)] = await handle(
        handlers.apply_decision, assessed("req-ns", classification="no_show", deposit_action="keep")
    )

    assert (topic, key, type_) == (BOOKING_EVENTS, BOOKING, "booking.no_show_recorded")
    assert (data["party"], data["code"], data["recorded_at"]) == ("patient", "DNA", "2031-03-10T22:20:00Z")
    assert (data["decision"]["deposit_action"], data["deposit"]["amount"]) == ("keep", "20.00")
    assert (repo.bookings[BOOKING]["status"], repo.bookings[BOOKING]["classification"]) == ("no_show", "no_show")
    assert entry(repo, "no_show_recorded")["actor"] == NURSE
    assert repo.offers == {} and repo.bookings[BOOKING]["slot_released_at"] is None


async def test_a_decision_that_does_not_allow_is_passed_on_as_the_rejection(
    handle: Handle, repo: FakeRepository
) -> None:
    await handle(handlers.schedule_booking, scheduled())
    await handle(handlers.request_cancellation, requested())
    no = assessed(allowed=False, rejection_reason="within_online_cutoff", explanation="Please call the practice.")

    [(topic, key, type_, data)] = await handle(handlers.apply_decision, no)

    assert (topic, key, type_) == (BOOKING_EVENTS, BOOKING, "booking.cancellation_rejected")
    assert (data["reason"], data["message"]) == ("within_online_cutoff", "Please call the practice.")
    assert repo.bookings[BOOKING]["status"] == "scheduled"
    assert actions(repo)[-2:] == ["cancellation_assessed", "cancellation_rejected"]


async def test_a_decision_for_a_booking_closed_while_the_policy_decided_is_rejected(
    handle: Handle, repo: FakeRepository
) -> None:
    await handle(handlers.schedule_booking, scheduled())
    await handle(handlers.request_cancellation, requested())
    await handle(handlers.complete_booking, UpstreamBookingCompleted.new(booking_id=BOOKING, completed_at=T))

    [(_, _, type_, data)] = await handle(handlers.apply_decision, assessed())

    assert (type_, data["reason"]) == ("booking.cancellation_rejected", "already_completed")
    assert repo.bookings[BOOKING]["status"] == "completed"


async def test_a_decision_with_no_pending_request_is_refused(handle: Handle, repo: FakeRepository) -> None:
    """Never asked, or decided already: an error that will recur, dead-lettered by the consumer."""
    await handle(handlers.schedule_booking, scheduled())
    with pytest.raises(LookupError, match="no pending request"):
        await handle(handlers.apply_decision, assessed())

    await cancelled(handle, repo)
    trail = list(repo.trail)
    with pytest.raises(LookupError, match="no pending request"):
        await handle(handlers.apply_decision, assessed())  # the same decision again
    assert repo.trail == trail


# --- suspension --------------------------------------------------------------------------------------


async def test_a_suspension_sends_the_professionals_future_bookings_to_the_policy_as_the_system(
    handle: Handle, repo: FakeRepository
) -> None:
    at = NOW
    for booking_id, starts_at, professional in [
        ("bk-past", at - timedelta(hours=1), PROFESSIONAL),
        (BOOKING, T, PROFESSIONAL),
        ("bk-2", T + timedelta(days=1), PROFESSIONAL),
        ("bk-other", T, "pro-2"),
    ]:
        await handle(
            handlers.schedule_booking,
            scheduled(
                booking_id, professional_id=professional, starts_at=starts_at, ends_at=starts_at + timedelta(minutes=30)
            ),
        )

    published = await handle(handlers.cancel_for_suspension, suspended(at), event_id="susp-1")

    assert [(topic, key) for topic, key, _, _ in published] == [(POLICY_REQUESTS, BOOKING), (POLICY_REQUESTS, "bk-2")]
    for _, key, _, data in published:
        assert data["request_id"] == handlers.derived_id("suspension", "susp-1", key)
        assert (data["actor"]["kind"], data["channel"], data["reason_code"]) == (
            "system",
            "system",
            "professional_suspended",
        )
        assert data["requested_at"] == "2031-03-07T22:00:00Z"
    assert repo.suspensions[PROFESSIONAL] == {"suspended_at": at, "cause_event_id": "susp-1"}
    assert actions(repo, "bk-past") == actions(repo, "bk-other") == ["scheduled"]

    request_id = published[0][3]["request_id"]
    [(_, _, type_, data), *_] = await handle(
        handlers.apply_decision, assessed(request_id, deposit_action="refund", explanation="No penalty: suspended.")
    )
    assert (type_, data["status_label"], data["channel"], data["actor"]["kind"]) == (
        "booking.cancelled",
        "Cancelled",
        "system",
        "system",
    )


async def test_a_booking_arriving_after_the_suspension_is_sent_to_the_policy_as_it_arrives(
    handle: Handle, repo: FakeRepository
) -> None:
    await handle(handlers.cancel_for_suspension, suspended(NOW), event_id="susp-1")

    [(topic, key, type_, data)] = await handle(handlers.schedule_booking, scheduled(professional_id=PROFESSIONAL))

    assert (topic, key, type_) == (POLICY_REQUESTS, BOOKING, "cancellation.assessment_requested")
    assert data["request_id"] == handlers.derived_id("suspension", "susp-1", BOOKING)
    assert (data["reason_code"], data["requested_at"]) == ("professional_suspended", "2031-03-07T22:00:00Z")
    assert actions(repo) == ["scheduled", "cancellation_requested"]

    # One that started before the suspension is left alone (it is the past).
    before = NOW - timedelta(hours=2)
    early = scheduled(
        "bk-early", professional_id=PROFESSIONAL, starts_at=before, ends_at=before + timedelta(minutes=30)
    )
    assert await handle(handlers.schedule_booking, early) == []


# --- requests that cannot be read --------------------------------------------------------------------


def _violation(data: dict[str, Any], type_: str = "booking.cancellation_requested") -> ContractViolation:
    """What the consumer catches for `data` on upstream.bookings.v1."""
    wire = new_envelope(requested(), source="upstream/test", subject=BOOKING, correlation_id=None)
    wire |= {"type": type_, "data": data}
    with pytest.raises(ContractViolation) as caught:
        parse_envelope(json.dumps(wire).encode(), models_for(UPSTREAM_BOOKINGS))
    assert caught.value.envelope is not None
    return caught.value


@pytest.mark.parametrize(
    ("kind", "type_", "event"),
    [
        ("cancellation", "booking.cancellation_requested", "booking.cancellation_rejected"),
        ("no_show", "booking.no_show_reported", "booking.no_show_rejected"),
    ],
)
async def test_an_unreadable_request_naming_its_booking_and_request_is_answered_invalid_request(
    kind: str, type_: str, event: str
) -> None:
    data = {"request_id": REQUEST, "booking_id": BOOKING, "actor": PATIENT, "channel": "fax", "secret": "hunter2"}
    violation = _violation(data, type_)
    assert violation.envelope is not None

    [(topic, payload, subject)] = handlers.reject_unreadable(kind)(violation.envelope.data, str(violation), BOOKING)

    assert (topic, subject, payload.event_type) == (BOOKING_EVENTS, BOOKING, event)
    assert (payload.booking_id, payload.request_id, payload.reason) == (BOOKING, REQUEST, "invalid_request")
    assert payload.message.startswith("The request could not be read (")
    assert payload.message.endswith("please correct it and send it again.")
    assert "fax" not in payload.message and "hunter2" not in payload.message  # never quotes what was sent


@pytest.mark.parametrize(
    "data",
    [
        {"booking_id": BOOKING},
        {"request_id": REQUEST},
        {"request_id": "", "booking_id": BOOKING},
        {"request_id": REQUEST, "booking_id": ["bk-1"]},
        {"request_id": {"$gt": ""}, "booking_id": BOOKING},
    ],
)
def test_an_unreadable_request_without_a_booking_and_request_to_name_gets_no_answer(data: dict[str, Any]) -> None:
    violation = _violation(data)
    assert violation.envelope is not None
    assert handlers.reject_unreadable("cancellation")(violation.envelope.data, str(violation), BOOKING) == []


# --- sets: many records of one type at once ----------------------------------------------------------


async def test_a_set_of_requests_and_decisions_costs_one_call_of_each_kind_and_each_record_publishes_its_own(
    unit_for: Callable[..., Unit[Any]], repo: FakeRepository
) -> None:
    bookings = [f"bk-set-{i}" for i in range(5)]

    async def as_set(handler: Any, payloads: list[Payload]) -> list[Unit[Any]]:
        units = [
            unit_for("booking", BookingDeps(repository=repo), TOPICS[type(p)], p, time=NOW, correlation_id=f"c-{i}")
            for i, p in enumerate(payloads)
        ]
        await handler.handle_many(units, [u.event.payload for u in units])
        return units

    for b in bookings:
        await repo.insert_booking(None, {"booking_id": b, **{k: v for k, v in _booking_fields().items()}})
    # one of them closed already: its request is rejected, the others go to the policy
    repo.bookings[bookings[2]]["status"] = "completed"
    units = await as_set(handlers.request_cancellation, [requested(b, f"req-{b}") for b in bookings])
    assert [[e.envelope["type"] for e in u.emitted] for u in units] == [
        ["cancellation.assessment_requested"],
        ["cancellation.assessment_requested"],
        ["booking.cancellation_rejected"],
        ["cancellation.assessment_requested"],
        ["cancellation.assessment_requested"],
    ]
    assert (repo.calls["lock_bookings"], repo.calls["add_pending_requests"], repo.calls["audit_many"]) == (1, 1, 1)

    repo.calls.clear()
    open_ = [b for b in bookings if b != bookings[2]]
    units = await as_set(handlers.apply_decision, [assessed(f"req-{b}", b) for b in open_])
    for b, unit in zip(open_, units, strict=True):
        assert [(e.key, e.envelope["type"]) for e in unit.emitted] == [
            (b, "booking.cancelled"),
            (b, "booking.slot_released"),
        ]
        assert {e.envelope.get("correlationid") for e in unit.emitted} == {unit.event.correlation_id}
        assert repo.bookings[b]["status"] == "cancelled"
        assert actions(repo, b) == ["cancellation_requested", "cancellation_assessed", "cancelled", "slot_released"]
    # a fixed number of calls for the whole set, whatever its size: the decisions' trail, then the slots'
    assert repo.calls == Counter(
        take_pending_requests=1,
        lock_bookings=1,
        close_bookings=1,
        audit_many=2,
        get_bookings=1,
        practices_of=1,
        mark_released_many=1,
    )


async def test_a_decision_without_its_pending_request_fails_the_whole_set(
    unit_for: Callable[..., Unit[Any]], repo: FakeRepository
) -> None:
    """The recipe then runs the set's records one by one, so only that one is dead-lettered."""
    await repo.insert_booking(None, {"booking_id": BOOKING, **_booking_fields()})
    await repo.add_pending_requests(None, [(REQUEST, BOOKING, "cancellation", requested().to_json_dict())])
    payloads = [assessed(REQUEST, BOOKING), assessed("req-unknown", "bk-unknown")]
    units = [unit_for("booking", BookingDeps(repository=repo), POLICY_DECISIONS, p, time=NOW) for p in payloads]
    with pytest.raises(LookupError):
        await handlers.apply_decision.handle_many(units, [u.event.payload for u in units])
    assert repo.bookings[BOOKING]["status"] == "scheduled"


def _booking_fields() -> dict[str, Any]:
    fields = dict(scheduled().to_json_dict())
    patient = fields.pop("patient")
    return {
        "practice_id": fields["practice_id"],
        "practitioner_id": fields["practitioner_id"],
        "service_code": fields["service_code"],
        "starts_at": T,
        "ends_at": T + timedelta(minutes=30),
        "patient_id": patient["patient_id"],
        "patient_portal_account": patient.get("portal_account", False),
        "patient_card_on_file": patient.get("card_on_file", False),
        "professional_id": None,
        "series_id": None,
        "deposit_amount": None,
        "deposit_currency": None,
        "price_amount": None,
        "price_currency": None,
    }
