"""cancellation-policy as a real process on the real broker and database: every practice.configured
is answered on practice.events.v1 — accepted with its policy version, or, when it breaks the
contract's bounds, rejected with a message a person can act on while the previous settings stay
in force (and the message is dead-lettered, as every violation is)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from cancellation_policy import repository
from shared.testing import (
    EventWatcher,
    Publisher,
    ScratchSchemas,
    Seen,
    ServiceProcess,
    dev_token,
    iso,
    unique,
    wait_for_row,
)
from shared.topics import (
    POLICY_DECISIONS,
    POLICY_REQUESTS,
    PRACTICE_EVENTS,
    UPSTREAM_BOOKINGS,
    UPSTREAM_PRACTICES,
    dead_letter_topic,
)

DLQ = dead_letter_topic("cancellation-policy")
WATCHED = [PRACTICE_EVENTS, POLICY_DECISIONS, DLQ]


@pytest.fixture(scope="module")
def policy(infra, tmp_path_factory):
    proc = ServiceProcess(
        "cancellation-policy", infra.bootstrap, infra.admin_dsn, tmp_path_factory.mktemp("policy-logs")
    ).start()
    yield proc
    proc.stop()


def settings(practice_id: str, **overrides: Any) -> dict[str, Any]:
    return {
        "practice_id": practice_id,
        "name": "Harbour Dental",
        "timezone": "Europe/Berlin",
        "locale": "de-DE",
        "contact": {"email": "empfang@harbour.example", "phone": "+493012345678", "preferred_channel": "email"},
        "cancellation": {"patient_cutoff_hours": 24, "late_window_hours": 2, "professional_no_show_minutes": 30},
        "fees": {"late_cancellation": {"amount": "45.00", "currency": "EUR", "code": "LATE", "code_system": "custom"}},
        **overrides,
    }


def answer_for(practice_id: str, event_type: str):
    return lambda s: s.topic == PRACTICE_EVENTS and s.type == event_type and s.data.get("practice_id") == practice_id


async def configure(
    publisher: Publisher, watcher: EventWatcher, practice_id: str, data: dict[str, Any], answer: str
) -> Seen:
    """Publish `data` and return the answer it gets (the next one of type `answer` for the practice)."""
    before = len(watcher.matching(answer_for(practice_id, answer)))
    await publisher.event(UPSTREAM_PRACTICES, "practice.configured", practice_id, data, source="upstream/admin")
    return (await watcher.wait_for(answer_for(practice_id, answer), count=before + 1))[before]


async def staff_cancellation_decided(
    publisher: Publisher, watcher: EventWatcher, practice_id: str, lead: timedelta
) -> Seen:
    """Ask the policy directly (as booking does) to decide a staff cancellation `lead` ahead."""
    booking_id, request_id, now = unique("booking"), unique("request"), datetime.now(UTC)
    await publisher.event(
        POLICY_REQUESTS,
        "cancellation.assessment_requested",
        booking_id,
        {
            "booking_id": booking_id,
            "request_id": request_id,
            "practice_id": practice_id,
            "kind": "cancellation",
            "booking": {
                "starts_at": iso(now + lead),
                "ends_at": iso(now + lead + timedelta(minutes=30)),
                "status": "scheduled",
                "patient_portal_account": True,
                "patient_card_on_file": False,
            },
            "requested_at": iso(now),
            "actor": {"kind": "staff", "id": "staff-1", "roles": ["reception"]},
            "channel": "practice",
        },
        source="service/booking",
    )
    [decision] = await watcher.wait_for(
        lambda s: s.topic == POLICY_DECISIONS and s.data.get("request_id") == request_id
    )
    return decision


async def test_settings_are_accepted_and_out_of_bounds_ones_rejected_while_the_previous_stay(policy, infra, publisher):
    practice_id = unique("practice")
    async with EventWatcher(infra.bootstrap, WATCHED) as w:
        accepted = await configure(publisher, w, practice_id, settings(practice_id), "practice.configuration_accepted")
        assert accepted.data == {"practice_id": practice_id, "policy_version": "r1.s1"}
        assert accepted.key == practice_id

        hostile = settings(
            practice_id,
            cancellation={"late_window_hours": 100_000},
            fees={
                "late_cancellation": {
                    "amount": "1E+1000000",
                    "currency": "EUR",
                    "code": "LATE",
                    "code_system": "custom",
                },
                "no_show": {"amount": "60.00", "currency": "XYZ", "code": "NOSHOW", "code_system": "custom"},
            },
        )
        rejected = await configure(publisher, w, practice_id, hostile, "practice.configuration_rejected")
        [dead_letter] = await w.wait_for(lambda s: s.topic == DLQ and s.key == practice_id)

        # The previous settings still decide: a 2-hour late window makes 5 hours ahead timely
        # (the 100 000-hour window sent would have made it late).
        decision = await staff_cancellation_decided(publisher, w, practice_id, timedelta(hours=5))

        again = await configure(
            publisher,
            w,
            practice_id,
            settings(practice_id, name="Harbour Dental Berlin"),
            "practice.configuration_accepted",
        )
        await w.settle(1.0)
        answers = w.matching(lambda s: s.topic == PRACTICE_EVENTS and s.key == practice_id)

    assert rejected.key == practice_id and rejected.data["reason"] == "invalid_settings"
    message = rejected.data["message"]
    assert "cancellation.late_window_hours is 100000: input should be less than or equal to 720" in message
    assert (
        "fees.late_cancellation: the amount 1E+1000000 is more than the most a EUR amount may be (100000.00)" in message
    )
    assert "fees.no_show.currency is 'XYZ'" in message and "ISO 4217" in message
    assert "previous settings stay in force" in message and len(message) < 1000
    assert (
        dead_letter.data["original_topic"] == UPSTREAM_PRACTICES and "practice.configured" in dead_letter.data["error"]
    )

    assert decision.data["policy_version"] == "r1.s1" and decision.data["classification"] == "timely"
    body = policy.get_json(f"/practices/{practice_id}/policy")
    versions = body["versions"]
    assert body["policy_version"] == "r1.s2"
    assert [v["policy_version"] for v in versions] == ["r1.s1", "r1.s2"]  # the rejected settings never stored
    assert versions[0]["settings"]["cancellation"]["late_window_hours"] == 2
    assert again.data == {"practice_id": practice_id, "policy_version": "r1.s2"}
    assert [a.type for a in answers] == [
        "practice.configuration_accepted",
        "practice.configuration_rejected",
        "practice.configuration_accepted",
    ]


async def test_settings_without_a_readable_practice_id_are_dead_lettered_only(policy, infra, publisher):
    subject = f"no practice {unique('id')}"  # neither the payload's id nor the subject is a valid id
    data = settings("not a practice id", timezone="Mars/Olympus_Mons")
    async with EventWatcher(infra.bootstrap, WATCHED) as w:
        await publisher.event(UPSTREAM_PRACTICES, "practice.configured", subject, data, source="upstream/admin")
        [dead_letter] = await w.wait_for(lambda s: s.topic == DLQ and s.key == subject)
        # A healthy configuration behind it is still answered: the bad one stopped nothing.
        after = unique("practice")
        await configure(publisher, w, after, settings(after), "practice.configuration_accepted")
        answers = w.matching(
            lambda s: s.topic == PRACTICE_EVENTS and s.data.get("practice_id") in (subject, "not a practice id")
        )
    assert "practice_id" in dead_letter.data["error"] and "timezone" in dead_letter.data["error"]
    assert answers == []


async def test_the_read_api_shows_a_practice_only_its_own_settings_and_decisions(policy, infra, publisher):
    practice_id, other = unique("practice"), unique("practice")
    async with EventWatcher(infra.bootstrap, WATCHED) as w:
        await configure(publisher, w, practice_id, settings(practice_id), "practice.configuration_accepted")
        decided = await staff_cancellation_decided(publisher, w, practice_id, timedelta(hours=5))
    booking_id = decided.data["booking_id"]
    mine = dev_token(practice_ids=[practice_id], roles=["receptionist"])
    theirs = dev_token(practice_ids=[other], roles=["owner"])
    ops = dev_token(roles=["ops"])

    for path in (f"/practices/{practice_id}/policy", f"/bookings/{booking_id}/decisions"):
        assert policy.get_status(path, None) == 401
        assert policy.get_status(path, "not-a-token") == 401
        assert policy.get_status(path, theirs) == 404  # another practice's: as if it did not exist
        assert policy.get_status(path, mine) == 200
        assert policy.get_status(path, ops) == 200
        assert policy.get_status(f"{path}?page_size=501", mine) == 422

    body = policy.get_json(f"/practices/{practice_id}/policy", mine)
    assert body["policy_version"] == "r1.s1" and [v["version"] for v in body["versions"]] == [1]
    assert body["versions"][0]["settings"]["fees"]["late_cancellation"]["currency"] == "EUR"
    [decision] = policy.get_json(f"/bookings/{booking_id}/decisions", mine)["items"]
    assert decision["request_id"] == decided.data["request_id"] and decision["practice_id"] == practice_id
    assert decision["policy_version"] == "r1.s1" and decision["explanation"]
    assert decision["decision"]["classification"] == decision["classification"] == "timely"

    # unknown ids answer 404, malformed ones 422
    assert policy.get_status(f"/practices/{unique('practice')}/policy", ops) == 404
    assert policy.get_status(f"/bookings/{unique('booking')}/decisions", ops) == 404
    assert policy.get_status(f"/practices/{'p' * 200}/policy", ops) == 422


async def test_a_booking_is_decided_by_its_frozen_settings_and_tier_once_each(policy, infra, publisher):
    """Second release: tiers named in the decision, the settings frozen when the booking was
    scheduled (and all_bookings applying new ones), each answer produced exactly once."""
    practice_id, frozen_booking, applied_booking = unique("practice"), unique("booking"), unique("booking")
    now = datetime.now(UTC)
    tiers = {
        "late_cancellation": {"amount": "45.00", "currency": "EUR", "code": "LATE", "code_system": "custom"},
        "late_cancellation_tiers": [
            {"notice_under_hours": 24, "percent": "50"},
            {"notice_under_hours": 6, "amount": "150.00"},
        ],
    }
    cancellation = {"patient_cutoff_hours": 24, "late_window_hours": 24, "professional_no_show_minutes": 30}

    async def schedule(booking_id: str) -> None:
        await publisher.event(
            UPSTREAM_BOOKINGS,
            "booking.scheduled",
            booking_id,
            {
                "booking_id": booking_id,
                "practice_id": practice_id,
                "starts_at": iso(now + timedelta(hours=10)),
                "ends_at": iso(now + timedelta(hours=11)),
                "practitioner_id": "dr-lee",
                "service_code": "D1110",
                "patient": {
                    "patient_id": unique("pat"),
                    "first_name": "Ann",
                    "portal_account": True,
                    "card_on_file": True,
                },
                "price": {"amount": "180.00", "currency": "EUR"},
            },
        )
        # Topics are consumed in no fixed order: wait until the policy has noted the scheduling
        # (a booking it never saw scheduled is decided by the current settings).
        await wait_for_row(
            infra.admin_dsn, "SELECT 1 FROM cancellation_policy.booking_schedules WHERE booking_id = $1", booking_id
        )

    async def decided(booking_id: str) -> Seen:
        request_id = unique("request")
        await publisher.event(
            POLICY_REQUESTS,
            "cancellation.assessment_requested",
            booking_id,
            {
                "booking_id": booking_id,
                "request_id": request_id,
                "practice_id": practice_id,
                "kind": "cancellation",
                "booking": {
                    "starts_at": iso(now + timedelta(hours=10)),
                    "ends_at": iso(now + timedelta(hours=11)),
                    "status": "scheduled",
                    "patient_portal_account": True,
                    "patient_card_on_file": False,
                    "price": {"amount": "180.00", "currency": "EUR"},
                },
                "requested_at": iso(now),
                "actor": {"kind": "staff", "id": "staff-1", "roles": ["reception"]},
                "channel": "practice",
            },
            source="service/booking",
        )
        [decision] = await w.wait_for(lambda s: s.topic == POLICY_DECISIONS and s.data.get("request_id") == request_id)
        return decision

    async with EventWatcher(infra.bootstrap, WATCHED) as w:
        first = settings(practice_id, cancellation=cancellation, fees=tiers)
        await configure(publisher, w, practice_id, first, "practice.configuration_accepted")
        await schedule(frozen_booking)  # the events' own times decide, not their order of arrival
        flat = settings(practice_id, cancellation=cancellation)
        await configure(publisher, w, practice_id, flat, "practice.configuration_accepted")
        frozen = await decided(frozen_booking)
        await schedule(applied_booking)
        applied = await decided(applied_booking)
        everyone = settings(practice_id, cancellation=cancellation, policy_changes_apply_to="all_bookings")
        await configure(publisher, w, practice_id, everyone, "practice.configuration_accepted")
        after_all = await decided(frozen_booking)
        await w.settle(1.0)
        decisions = w.matching(
            lambda s: s.topic == POLICY_DECISIONS and s.data.get("booking_id") in (frozen_booking, applied_booking)
        )
        accepted = w.matching(answer_for(practice_id, "practice.configuration_accepted"))

    assert frozen.data["policy_version"] == "r1.s1"
    assert frozen.data["fee"] == {"amount": "90.00", "currency": "EUR", "code": "LATE", "code_system": "custom"}
    assert frozen.data["tier"] == {"notice_under_hours": 24, "percent": "50"}
    assert "tier under 24 h" in frozen.data["explanation"]
    flat_fee = {"amount": "45.00", "currency": "EUR", "code": "LATE", "code_system": "custom"}
    assert applied.data["policy_version"] == "r1.s2" and applied.data["fee"] == flat_fee  # no tiers: the flat fee
    assert "tier" not in applied.data
    assert after_all.data["policy_version"] == "r1.s3" and after_all.data["fee"] == flat_fee
    assert "tier" not in after_all.data
    assert len(decisions) == 3 and len({d.value["id"] for d in decisions}) == 3
    assert [a.data["policy_version"] for a in accepted] == ["r1.s1", "r1.s2", "r1.s3"]

    # Reports: fees by tier (the 24 h tier once, the flat fee twice) for the practice's own token.
    period = f"from={iso(now - timedelta(hours=1))}&to={iso(now + timedelta(hours=1))}"
    token = dev_token(practice_ids=[practice_id], roles=["manager"])
    report = policy.get_json(f"/reports/fees-by-tier?{period}", token)["rows"]
    assert [(r["notice_under_hours"], r["fees"], r["total"], r["currency"]) for r in report] == [
        (24, 1, "90.00", "EUR"),
        (None, 2, "90.00", "EUR"),
    ]
    assert all(r["practice_id"] == practice_id and r["classification"] == "late" for r in report)


async def test_staff_cancelling_a_booked_professional_late_owe_turnaway_pay_reported_per_practice(
    policy, infra, publisher
):
    practice_id, now = unique("practice"), datetime.now(UTC)
    async with EventWatcher(infra.bootstrap, WATCHED) as w:
        await configure(
            publisher,
            w,
            practice_id,
            settings(practice_id, turnaway={"office_late_window_hours": 24, "percent_of_shift": 50}),
            "practice.configuration_accepted",
        )
        decisions = []
        for lead in (timedelta(hours=10), timedelta(hours=30)):
            booking_id, request_id = unique("booking"), unique("request")
            await publisher.event(
                POLICY_REQUESTS,
                "cancellation.assessment_requested",
                booking_id,
                {
                    "booking_id": booking_id,
                    "request_id": request_id,
                    "practice_id": practice_id,
                    "kind": "cancellation",
                    "booking": {
                        "starts_at": iso(now + lead),
                        "ends_at": iso(now + lead + timedelta(hours=8)),
                        "status": "scheduled",
                        "professional_id": "pro-1",
                        "patient_portal_account": True,
                        "patient_card_on_file": False,
                        "price": {"amount": "180.00", "currency": "EUR"},
                    },
                    "requested_at": iso(now),
                    "actor": {"kind": "staff", "id": "staff-1", "roles": ["manager"]},
                    "channel": "practice",
                },
                source="service/booking",
            )
            [decided] = await w.wait_for(
                lambda s, r=request_id: s.topic == POLICY_DECISIONS and s.data.get("request_id") == r
            )
            decisions.append(decided.data)

    late, timely = decisions
    assert (late["office_score_delta"], late["office_cause"], late["turnaway_pay"]) == (
        -50,
        "late_cancelled_professional",
        {"amount": "90.00", "currency": "EUR"},
    )
    assert (timely["office_score_delta"], timely["office_cause"], timely.get("turnaway_pay")) == (
        -10,
        "cancelled_professional",
        None,
    )
    assert late.get("score_delta") is None  # the professional's own score is untouched
    period = f"from={iso(now - timedelta(hours=1))}&to={iso(now + timedelta(hours=1))}"
    rows = policy.get_json(f"/reports/turnaway-pay?{period}&practice_id={practice_id}")["rows"]
    assert [
        (r["currency"], r["owed"], r["total"], r["timely_cancellations"], r["late_cancellations"]) for r in rows
    ] == [
        (None, 0, None, 1, 0),
        ("EUR", 1, "90.00", 0, 1),
    ]


# --- the set-based statements, on a schema of their own ----------------------------------------------

MIGRATIONS = Path(__file__).resolve().parents[2] / "services" / "cancellation-policy" / "migrations"


@pytest.fixture
async def scratch_pool(infra: Any) -> AsyncIterator[asyncpg.Pool]:
    """The cancellation-policy migrations in a schema of their own: the statements run against
    the real tables, apart from any running cancellation-policy process."""
    async with ScratchSchemas(infra.admin_dsn, "policy_sets", MIGRATIONS, max_size=10) as scratch:
        yield await scratch.new()


async def test_one_statement_loads_each_requests_settings_cards_and_records_its_decision(scratch_pool):
    a, b, t1 = unique("practice"), unique("practice"), datetime(2026, 6, 1, 12, tzinfo=UTC)
    frozen, late, unscheduled, before_any = unique("bk"), unique("bk"), unique("bk"), unique("bk")
    async with scratch_pool.acquire() as conn, conn.transaction():
        await repository.record_scheduling(conn, booking_id=before_any, practice_id=a, scheduled_at=t1)
        for n, fee in enumerate(["45.00", "90.00"]):
            await repository.add_settings_version(
                conn,
                a,
                settings={"fees": {"late_cancellation": {"amount": fee}}},
                name="Harbour Dental",
                timezone="UTC",
                locale="en",
                configured_at=t1 + timedelta(days=1 + 2 * n),
            )
        await repository.record_scheduling(conn, booking_id=frozen, practice_id=a, scheduled_at=t1 + timedelta(days=2))
        await repository.record_scheduling(conn, booking_id=late, practice_id=a, scheduled_at=t1 + timedelta(days=4))
        for patient, has_card in (("pat-1", True), ("pat-2", False)):
            await repository.record_card(conn, practice_id=a, patient_id=patient, has_card=has_card, changed_at=t1)

        found = await repository.settings_for_requests(
            conn, [(a, frozen), (a, late), (a, unscheduled), (a, before_any), (b, unscheduled), (a, frozen)]
        )
        cards = await repository.cards_on_file(conn, [(a, "pat-1"), (a, "pat-2"), (a, "pat-3"), (b, "pat-1")])

        def fee(stored: tuple[int, str] | None) -> tuple[int, str] | None:
            return (stored[0], json.loads(stored[1])["fees"]["late_cancellation"]["amount"]) if stored else None

        assert {key: (fee(now), known, fee(then)) for key, (now, known, then) in found.items()} == {
            (a, frozen): ((2, "90.00"), True, (1, "45.00")),  # frozen under version 1
            (a, late): ((2, "90.00"), True, (2, "90.00")),
            (a, unscheduled): ((2, "90.00"), False, None),
            (a, before_any): ((2, "90.00"), True, None),  # scheduled before any settings: the defaults
            (b, unscheduled): (None, False, None),  # b configured nothing
        }
        assert cards == {(a, "pat-1"): True, (a, "pat-2"): False}  # never spoken of: absent

        def decision(version: str) -> dict[str, Any]:
            return {"policy_version": version, "allowed": True, "classification": "late", "explanation": "Late."}

        done = unique("req")
        assert await repository.record_decisions(conn, [(done, frozen, a, decision("r1.s1"))]) == {done}
        fresh, twice = unique("req"), unique("req")
        recorded = await repository.record_decisions(
            conn,
            [
                (twice, late, a, decision("r1.s2")),
                (done, frozen, a, decision("r1.s9")),  # decided already: stays as it was
                (fresh, unscheduled, b, decision("r1.s0")),
                (twice, frozen, a, decision("r1.s8")),  # the same request again: the first decision stands
            ],
        )
        assert recorded == {twice, fresh}
        rows = await conn.fetch(
            "SELECT request_id, booking_id, practice_id, policy_version, allowed, classification, explanation,"
            " decision->>'policy_version' AS stored FROM decisions ORDER BY request_id"
        )
        assert sorted(tuple(r.values()) for r in rows) == sorted(
            [
                (done, frozen, a, "r1.s1", True, "late", "Late.", "r1.s1"),
                (twice, late, a, "r1.s2", True, "late", "Late.", "r1.s2"),
                (fresh, unscheduled, b, "r1.s0", True, "late", "Late.", "r1.s0"),
            ]
        )
        assert await repository.record_decisions(conn, []) == set()
