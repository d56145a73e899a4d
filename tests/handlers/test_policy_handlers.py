"""cancellation-policy's handlers against an in-memory repository (no I/O): what the domain
tables (tests/unit/test_policy_rules.py) cannot see — settings stored as numbered versions and
answered with their policy version, an assessment decided by the practice's latest stored
version (or the defaults), and a request decided and answered once however often it arrives."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from cancellation_policy import handlers, repository
from cancellation_policy.handlers import (
    PolicyDeps,
    assess_request,
    configure_practice,
    note_scheduling,
    register_card,
    remove_card,
)
from shared.consumer import Unit
from shared.contracts.booking import BookingSnapshot, CancellationAssessmentRequested
from shared.contracts.common import Actor, Fee
from shared.contracts.upstream import (
    BookingScheduled,
    FeeSettings,
    PatientCardRegistered,
    PatientCardRemoved,
    PracticeConfigured,
    PracticeSettings,
)
from shared.testing import assert_same_functions, unique
from shared.topics import (
    POLICY_DECISIONS,
    POLICY_REQUESTS,
    PRACTICE_EVENTS,
    UPSTREAM_BOOKINGS,
    UPSTREAM_PATIENTS,
    UPSTREAM_PRACTICES,
)

START = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
LATE_FEE = Fee.new(amount="45.00", currency="AUD", code="D9987", code_system="CDT")


class FakePolicyRepository:
    """The functions of cancellation_policy/repository.py the handlers call, over dicts."""

    def __init__(self) -> None:
        self.settings: dict[str, list[dict[str, Any]]] = {}  # practice_id -> versions, oldest first
        self.decisions: dict[str, dict[str, Any]] = {}  # request_id -> row
        self.schedules: dict[str, tuple[str, datetime]] = {}  # booking_id -> (practice_id, scheduled_at)
        self.cards: dict[tuple[str, str], tuple[bool, datetime]] = {}  # (practice, patient) -> (has, at)
        self.calls: Counter[str] = Counter()  # how often each set-based function was called

    async def add_settings_version(
        self,
        conn: Any,
        practice_id: str,
        *,
        settings: dict[str, Any],
        name: str,
        timezone: str,
        locale: str,
        configured_at: datetime,
    ) -> int:
        versions = self.settings.setdefault(practice_id, [])
        # Stored as the jsonb column stores it: what comes back is JSON, not the caller's objects.
        versions.append(
            {
                "version": len(versions) + 1,
                "settings": json.loads(json.dumps(settings)),
                "name": name,
                "timezone": timezone,
                "locale": locale,
                "configured_at": configured_at,
            }
        )
        return len(versions)

    async def record_scheduling(self, conn: Any, *, booking_id: str, practice_id: str, scheduled_at: datetime) -> bool:
        if booking_id in self.schedules:
            return False
        self.schedules[booking_id] = (practice_id, scheduled_at)
        return True

    def _stored(self, version: dict[str, Any] | None) -> tuple[int, str] | None:
        # As Postgres renders the jsonb column: the same text for a version every time.
        return (version["version"], json.dumps(version["settings"], sort_keys=True)) if version else None

    async def settings_for_requests(
        self, conn: Any, requests: Sequence[tuple[str, str]]
    ) -> dict[tuple[str, str], tuple[tuple[int, str] | None, bool, tuple[int, str] | None]]:
        self.calls["settings_for_requests"] += 1
        found = {}
        for practice_id, booking_id in requests:
            versions = self.settings.get(practice_id, [])
            current = self._stored(versions[-1] if versions else None)
            if booking_id not in self.schedules:
                found[(practice_id, booking_id)] = (current, False, None)
                continue
            at = self.schedules[booking_id][1]
            before = [v for v in versions if v["configured_at"] <= at]
            then = max(before, key=lambda v: (v["configured_at"], v["version"])) if before else None
            found[(practice_id, booking_id)] = (current, True, self._stored(then))
        return found

    async def record_card(
        self, conn: Any, *, practice_id: str, patient_id: str, has_card: bool, changed_at: datetime
    ) -> bool:
        known = self.cards.get((practice_id, patient_id))
        if known is not None and known[1] >= changed_at:
            return False
        self.cards[(practice_id, patient_id)] = (has_card, changed_at)
        return True

    async def cards_on_file(self, conn: Any, patients: Sequence[tuple[str, str]]) -> dict[tuple[str, str], bool]:
        self.calls["cards_on_file"] += 1
        return {pair: self.cards[pair][0] for pair in patients if pair in self.cards}

    async def record_decisions(self, conn: Any, decisions: Sequence[tuple[str, str, str, dict[str, Any]]]) -> set[str]:
        self.calls["record_decisions"] += 1
        recorded = set()
        for request_id, booking_id, practice_id, decision in decisions:
            if request_id in self.decisions:
                continue
            self.decisions[request_id] = {"booking_id": booking_id, "practice_id": practice_id, "decision": decision}
            recorded.add(request_id)
        return recorded


Handle = Callable[..., Awaitable[Unit[Any]]]


@pytest.fixture
def handle(unit_for: Callable[..., Unit[Any]]) -> Handle:
    """`await handle(payload, repo, **unit_for options)`: its handler run on a fresh unit (a new
    envelope id each time, as a replay has), which is returned with what it emitted."""

    async def handle(payload: Any, repo: FakePolicyRepository, **kw: Any) -> Unit[Any]:
        handler: Any
        if isinstance(payload, PracticeConfigured):
            handler, topic, subject = configure_practice, UPSTREAM_PRACTICES, payload.practice_id
        elif isinstance(payload, BookingScheduled):
            handler, topic, subject = note_scheduling, UPSTREAM_BOOKINGS, payload.booking_id
        elif isinstance(payload, PatientCardRegistered):
            handler, topic, subject = register_card, UPSTREAM_PATIENTS, payload.patient_id
        elif isinstance(payload, PatientCardRemoved):
            handler, topic, subject = remove_card, UPSTREAM_PATIENTS, payload.patient_id
        else:
            handler, topic, subject = assess_request, POLICY_REQUESTS, payload.booking_id
        deps = PolicyDeps(repository=repo)
        unit = unit_for("cancellation-policy", deps, topic, payload, subject=subject, **kw)
        await handler(unit, payload)
        return unit

    return handle


def configured(practice_id: str, **settings: Any) -> PracticeConfigured:
    return PracticeConfigured.new(
        practice_id=practice_id, name="Harbour Dental", timezone="Australia/Sydney", locale="en-AU", **settings
    )


def late_cancellation(
    practice_id: str, *, request_id: str | None = None, booking_id: str | None = None
) -> CancellationAssessmentRequested:
    """Reception cancelling 5 hours ahead: late under the default 24-hour window."""
    return CancellationAssessmentRequested.new(
        booking_id=booking_id or unique("bk"),
        request_id=request_id or unique("req"),
        practice_id=practice_id,
        kind="cancellation",
        booking=BookingSnapshot.new(
            starts_at=START,
            ends_at=START + timedelta(minutes=30),
            status="scheduled",
            professional_id="pro-1",
            patient_portal_account=True,
            patient_card_on_file=True,
        ),
        requested_at=START - timedelta(hours=5),
        actor=Actor.new(kind="staff", id="staff-1", roles=["reception"]),
        channel="practice",
    )


def test_the_fake_has_the_repositorys_signatures() -> None:
    assert_same_functions(FakePolicyRepository(), repository)


async def test_each_configuration_is_the_next_version_and_is_accepted_with_it(handle: Handle) -> None:
    repo, practice_id = FakePolicyRepository(), unique("practice")
    at = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
    first = await handle(configured(practice_id), repo, time=at)
    second = await handle(configured(practice_id, fees=FeeSettings(late_cancellation=LATE_FEE)), repo)

    answers = [(e.topic, e.envelope["type"], e.key, e.envelope["data"]) for e in first.emitted + second.emitted]
    assert answers == [
        (
            PRACTICE_EVENTS,
            "practice.configuration_accepted",
            practice_id,
            {"practice_id": practice_id, "policy_version": "r1.s1"},
        ),
        (
            PRACTICE_EVENTS,
            "practice.configuration_accepted",
            practice_id,
            {"practice_id": practice_id, "policy_version": "r1.s2"},
        ),
    ]
    versions = repo.settings[practice_id]
    assert [v["version"] for v in versions] == [1, 2]
    assert versions[0]["configured_at"] == at  # the configuration's own time, not when it was handled
    assert (versions[0]["name"], versions[0]["timezone"], versions[0]["locale"]) == (
        "Harbour Dental",
        "Australia/Sydney",
        "en-AU",
    )
    assert versions[0]["settings"]["fees"].get("late_cancellation") is None
    assert versions[1]["settings"]["fees"]["late_cancellation"]["amount"] == "45.00"
    assert "practice_id" not in versions[1]["settings"]  # the settings only, not who the practice is


async def test_an_unconfigured_practice_is_assessed_by_the_defaults_as_version_zero(handle: Handle) -> None:
    repo = FakePolicyRepository()
    request = late_cancellation(unique("practice"))
    unit = await handle(request, repo)

    [decided] = unit.emitted
    assert (decided.topic, decided.envelope["type"], decided.key) == (
        POLICY_DECISIONS,
        "cancellation.assessed",
        request.booking_id,
    )
    data = decided.envelope["data"]
    assert (data["policy_version"], data["classification"], data.get("fee")) == ("r1.s0", "late", None)
    assert repo.decisions[request.request_id]["decision"] == data


async def test_an_assessment_uses_the_practices_latest_stored_version(handle: Handle) -> None:
    repo, practice_id = FakePolicyRepository(), unique("practice")
    for settings in ({}, {"fees": FeeSettings(late_cancellation=LATE_FEE, charge_card_on_file=True)}):
        await handle(configured(practice_id, **settings), repo)

    request = late_cancellation(practice_id)
    unit = await handle(request, repo)

    data = unit.emitted[0].envelope["data"]
    assert data["policy_version"] == "r1.s2"
    assert data["fee"] == {"amount": "45.00", "currency": "AUD", "code": "D9987", "code_system": "CDT"}
    assert data["charge_card"] is True
    assert repo.decisions[request.request_id]["practice_id"] == practice_id


async def test_a_request_is_decided_and_answered_once_even_after_the_settings_changed(handle: Handle) -> None:
    repo, practice_id = FakePolicyRepository(), unique("practice")
    request = late_cancellation(practice_id)
    first = await handle(request, repo)

    await handle(configured(practice_id, fees=FeeSettings(late_cancellation=LATE_FEE)), repo)
    replay = await handle(request, repo)  # the same request under a new envelope id

    assert len(first.emitted) == 1 and replay.emitted == []
    assert list(repo.decisions) == [request.request_id]
    assert repo.decisions[request.request_id]["decision"]["policy_version"] == "r1.s0"  # the first decision stands


def scheduled(practice_id: str, booking_id: str) -> BookingScheduled:
    return BookingScheduled.new(
        booking_id=booking_id,
        practice_id=practice_id,
        starts_at=START,
        ends_at=START + timedelta(minutes=30),
        practitioner_id="dr-lee",
        service_code="D1110",
        patient={"patient_id": "pat-1", "first_name": "Ann", "portal_account": True, "card_on_file": True},
    )


OTHER_FEE = Fee.new(amount="90.00", currency="AUD", code="D9987", code_system="CDT")
T1 = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("apply_to", "scheduled_between", "version", "amount"),
    [
        # frozen: the booking keeps the deal it was made under
        ("new_bookings", True, "r1.s1", "45.00"),
        # a booking scheduled after the change gets the new settings
        ("new_bookings", False, "r1.s2", "90.00"),
        # all_bookings: the new settings apply to every booking, old ones too
        ("all_bookings", True, "r1.s2", "90.00"),
        ("all_bookings", False, "r1.s2", "90.00"),
    ],
)
async def test_a_booking_is_decided_by_the_settings_in_force_when_it_was_scheduled(
    handle: Handle, apply_to: str, scheduled_between: bool, version: str, amount: str
) -> None:
    repo, practice_id, booking_id = FakePolicyRepository(), unique("practice"), unique("bk")
    await handle(configured(practice_id, fees=FeeSettings(late_cancellation=LATE_FEE)), repo, time=T1)
    booked_at = T1 + timedelta(days=1) if scheduled_between else T1 + timedelta(days=3)
    await handle(scheduled(practice_id, booking_id), repo, time=booked_at)
    await handle(
        configured(practice_id, fees=FeeSettings(late_cancellation=OTHER_FEE), policy_changes_apply_to=apply_to),
        repo,
        time=T1 + timedelta(days=2),
    )

    unit = await handle(late_cancellation(practice_id, booking_id=booking_id), repo)

    data = unit.emitted[0].envelope["data"]
    assert (data["policy_version"], data["fee"]["amount"]) == (version, amount)


async def test_a_booking_scheduled_before_the_practice_configured_anything_is_decided_by_the_defaults(
    handle: Handle,
) -> None:
    repo, practice_id, booking_id = FakePolicyRepository(), unique("practice"), unique("bk")
    await handle(scheduled(practice_id, booking_id), repo, time=T1)
    await handle(
        configured(practice_id, fees=FeeSettings(late_cancellation=LATE_FEE)), repo, time=T1 + timedelta(hours=1)
    )

    unit = await handle(late_cancellation(practice_id, booking_id=booking_id), repo)

    data = unit.emitted[0].envelope["data"]
    assert (data["policy_version"], data.get("fee")) == ("r1.s0", None)


async def test_a_booking_never_seen_scheduled_is_decided_by_the_current_settings(handle: Handle) -> None:
    repo, practice_id = FakePolicyRepository(), unique("practice")
    await handle(configured(practice_id, fees=FeeSettings(late_cancellation=LATE_FEE)), repo, time=T1)

    unit = await handle(late_cancellation(practice_id), repo)

    assert unit.emitted[0].envelope["data"]["policy_version"] == "r1.s1"


async def test_scheduling_is_remembered_once_at_its_own_time(handle: Handle) -> None:
    repo, practice_id, booking_id = FakePolicyRepository(), unique("practice"), unique("bk")
    first = await handle(scheduled(practice_id, booking_id), repo, time=T1)
    again = await handle(scheduled(practice_id, booking_id), repo, time=T1 + timedelta(days=5))

    assert repo.schedules[booking_id] == (practice_id, T1)
    assert first.emitted == [] and again.emitted == []


# --- cards on file registered per practice (upstream.patients.v1) win over the booking's flag ----


def card_event(practice_id: str, patient_id: str, registered: bool, at: datetime) -> Any:
    if registered:
        return PatientCardRegistered.new(
            patient_id=patient_id,
            practice_id=practice_id,
            gateway="sandbox",
            customer_ref="cus_test",
            payment_method_ref="pm_test",
            registered_at=at,
        )
    return PatientCardRemoved.new(
        patient_id=patient_id, practice_id=practice_id, payment_method_ref="pm_test", removed_at=at
    )


def late_for(practice_id: str, patient_id: str | None, flag: bool) -> CancellationAssessmentRequested:
    request = late_cancellation(practice_id)
    booking = request.booking.model_copy(update={"patient_id": patient_id, "patient_card_on_file": flag})
    return request.model_copy(update={"booking": booking})


@pytest.mark.parametrize(
    ("flag", "cards", "charged"),
    [
        (False, [], False),  # no card anywhere
        (True, [], True),  # the booking's flag, nothing registered
        (False, [True], True),  # registered at the practice: wins over the flag
        (True, [False], False),  # removed: wins over the flag
        (True, [True, False], False),  # registered, then removed
        (False, [False, True], True),  # removed, then registered again
    ],
)
async def test_a_card_registered_at_the_practice_wins_over_the_bookings_flag(
    handle: Handle, flag: bool, cards: list[bool], charged: bool
) -> None:
    repo, practice_id, patient_id = FakePolicyRepository(), unique("practice"), unique("patient")
    await handle(configured(practice_id, fees=FeeSettings(late_cancellation=LATE_FEE, charge_card_on_file=True)), repo)
    for n, registered in enumerate(cards):
        await handle(card_event(practice_id, patient_id, registered, START - timedelta(days=10 - n)), repo)
    [decided] = (await handle(late_for(practice_id, patient_id, flag), repo)).emitted
    assert decided.envelope["data"]["charge_card"] is charged
    assert decided.envelope["data"]["fee"]["amount"] == "45.00"


async def test_a_card_event_older_than_what_is_known_changes_nothing_and_other_practices_are_apart(
    handle: Handle,
) -> None:
    repo, practice_id, patient_id = FakePolicyRepository(), unique("practice"), unique("patient")
    await handle(configured(practice_id, fees=FeeSettings(late_cancellation=LATE_FEE, charge_card_on_file=True)), repo)
    await handle(card_event(practice_id, patient_id, False, START - timedelta(days=1)), repo)
    await handle(card_event(practice_id, patient_id, True, START - timedelta(days=2)), repo)  # arrives late
    await handle(card_event("another-practice", patient_id, True, START - timedelta(hours=1)), repo)
    [decided] = (await handle(late_for(practice_id, patient_id, True), repo)).emitted
    assert decided.envelope["data"]["charge_card"] is False


async def test_without_charge_card_on_file_a_registered_card_is_not_charged(handle: Handle) -> None:
    repo, practice_id, patient_id = FakePolicyRepository(), unique("practice"), unique("patient")
    await handle(configured(practice_id, fees=FeeSettings(late_cancellation=LATE_FEE, charge_card_on_file=False)), repo)
    await handle(card_event(practice_id, patient_id, True, START - timedelta(days=1)), repo)
    [decided] = (await handle(late_for(practice_id, patient_id, False), repo)).emitted
    assert decided.envelope["data"]["charge_card"] is False


# --- sets: many requests at once -----------------------------------------------------------------


def refused(practice_id: str) -> CancellationAssessmentRequested:
    """A patient without a portal account cancelling online: decided, and not allowed."""
    request = late_cancellation(practice_id)
    booking = request.booking.model_copy(update={"patient_portal_account": False})
    return request.model_copy(update={"booking": booking, "actor": Actor.new(kind="patient", id="pat-9")})


async def a_world(handle: Handle, ids: str) -> tuple[FakePolicyRepository, list[CancellationAssessmentRequested]]:
    """Two practices (A with two settings versions and a card registered, B with none), and
    requests through every branch: frozen settings, current settings, defaults, a registered card
    winning over the booking's flag, a refusal, and a request decided already (a replay). Built
    the same way each time from `ids`, so two worlds can be compared."""
    repo, a, b = FakePolicyRepository(), f"{ids}-practice-a", f"{ids}-practice-b"
    frozen, patient = f"{ids}-bk-frozen", f"{ids}-patient"
    await handle(configured(a, fees=FeeSettings(late_cancellation=LATE_FEE, charge_card_on_file=True)), repo, time=T1)
    await handle(scheduled(a, frozen), repo, time=T1 + timedelta(days=1))
    await handle(
        configured(a, fees=FeeSettings(late_cancellation=OTHER_FEE, charge_card_on_file=True)),
        repo,
        time=T1 + timedelta(days=2),
    )
    await handle(card_event(a, patient, True, START - timedelta(days=3)), repo)
    replay = late_cancellation(a, request_id=f"{ids}-req-replay", booking_id=f"{ids}-bk-replay")
    await handle(replay, repo)
    repo.calls.clear()

    with_card = late_for(a, patient, False).model_copy(update={"booking_id": frozen, "request_id": f"{ids}-req-frozen"})
    requests = [
        with_card,
        late_cancellation(a, request_id=f"{ids}-req-current", booking_id=f"{ids}-bk-current"),
        late_cancellation(b, request_id=f"{ids}-req-b1", booking_id=f"{ids}-bk-b1"),
        refused(a).model_copy(update={"request_id": f"{ids}-req-refused", "booking_id": f"{ids}-bk-refused"}),
        replay,
        late_cancellation(b, request_id=f"{ids}-req-b2", booking_id=f"{ids}-bk-b2"),
    ]
    return repo, requests


def published(unit: Unit[Any]) -> list[tuple[str, str | None, str, str | None, dict[str, Any]]]:
    return [
        (e.topic, e.key, e.envelope["type"], e.envelope.get("correlationid"), e.envelope["data"]) for e in unit.emitted
    ]


@pytest.mark.parametrize("more", [0, 12])
async def test_a_set_of_requests_costs_one_call_of_each_kind_and_each_request_publishes_what_it_would_alone(
    handle: Handle, unit_for: Callable[..., Unit[Any]], more: int
) -> None:
    ids = unique("set")
    repo, requests = await a_world(handle, ids)
    requests += [
        late_cancellation(f"{ids}-practice-{n % 3}", request_id=f"{ids}-req-{n}", booking_id=f"{ids}-bk-{n}")
        for n in range(more)
    ]
    units = [
        unit_for(
            "cancellation-policy",
            PolicyDeps(repository=repo),
            POLICY_REQUESTS,
            r,
            subject=r.booking_id,
            correlation_id=f"c-{n}",
        )
        for n, r in enumerate(requests)
    ]
    await assess_request.handle_many(units, [u.event.payload for u in units])

    # a fixed number of calls for the whole set, whatever its size
    assert repo.calls == Counter(settings_for_requests=1, cards_on_file=1, record_decisions=1)

    alone_repo, _ = await a_world(handle, ids)
    alone = [published(await handle(r, alone_repo, correlation_id=f"c-{n}")) for n, r in enumerate(requests)]
    assert [published(u) for u in units] == alone
    assert repo.decisions == alone_repo.decisions

    # and what that is, branch by branch
    first = [[(key, data["policy_version"], data["allowed"]) for _, key, _, _, data in p] for p in alone[:6]]
    assert first == [
        [(f"{ids}-bk-frozen", "r1.s1", True)],  # frozen when scheduled
        [(f"{ids}-bk-current", "r1.s2", True)],  # never seen scheduled: the current settings
        [(f"{ids}-bk-b1", "r1.s0", True)],  # B configured nothing: the defaults
        [(f"{ids}-bk-refused", "r1.s2", False)],  # refused, and answered so
        [],  # decided before: not answered again
        [(f"{ids}-bk-b2", "r1.s0", True)],
    ]
    frozen = alone[0][0][4]
    assert (frozen["fee"]["amount"], frozen["charge_card"]) == ("45.00", True)  # the registered card wins
    assert alone[1][0][4]["fee"]["amount"] == "90.00"
    assert alone[3][0][4]["rejection_reason"] == "no_portal_account"


async def test_the_same_request_twice_in_one_set_is_decided_and_answered_once(
    unit_for: Callable[..., Unit[Any]],
) -> None:
    """Two envelopes of one request on different keys (so in one wave): the first answers."""
    repo, practice_id = FakePolicyRepository(), unique("practice")
    request = late_cancellation(practice_id)
    twice = [request, request.model_copy(update={"booking_id": unique("bk")})]
    units = [
        unit_for("cancellation-policy", PolicyDeps(repository=repo), POLICY_REQUESTS, r, subject=r.booking_id)
        for r in twice
    ]
    await assess_request.handle_many(units, [u.event.payload for u in units])

    assert [len(u.emitted) for u in units] == [1, 0]
    assert units[0].emitted[0].key == request.booking_id
    assert repo.decisions[request.request_id]["booking_id"] == request.booking_id


async def test_a_practices_settings_are_validated_once_per_version_however_many_requests_they_decide(
    handle: Handle, unit_for: Callable[..., Unit[Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    repo, practice_id = FakePolicyRepository(), unique("practice")
    await handle(configured(practice_id, fees=FeeSettings(late_cancellation=LATE_FEE)), repo, time=T1)
    booked = unique("bk")
    await handle(scheduled(practice_id, booked), repo, time=T1 + timedelta(days=1))
    await handle(
        configured(practice_id, fees=FeeSettings(late_cancellation=OTHER_FEE)), repo, time=T1 + timedelta(days=2)
    )

    validated: list[Any] = []

    class Counted:
        """PracticeSettings as the handlers see it, counting its validations."""

        @staticmethod
        def model_validate(obj: Any) -> PracticeSettings:
            validated.append(obj)
            return PracticeSettings.model_validate(obj)

    monkeypatch.setattr(handlers, "PracticeSettings", Counted)
    handlers.stored_settings.cache_clear()  # another test may have validated the same settings

    async def a_set(requests: list[CancellationAssessmentRequested]) -> list[Unit[Any]]:
        units = [
            unit_for("cancellation-policy", PolicyDeps(repository=repo), POLICY_REQUESTS, r, subject=r.booking_id)
            for r in requests
        ]
        await assess_request.handle_many(units, [u.event.payload for u in units])
        return units

    units = await a_set([late_cancellation(practice_id) for _ in range(10)])
    units += await a_set([late_cancellation(practice_id) for _ in range(10)])
    units += [await handle(late_cancellation(practice_id), repo) for _ in range(5)]
    assert {u.emitted[0].envelope["data"]["policy_version"] for u in units} == {"r1.s2"}
    assert len(validated) == 1  # 25 requests of one version: validated once

    # a booking frozen under version 1 brings that version's validation, once too
    frozen = [await handle(late_cancellation(practice_id, booking_id=booked), repo) for _ in range(3)]
    assert [u.emitted[0].envelope["data"]["fee"]["amount"] for u in frozen] == ["45.00"] * 3
    assert len(validated) == 2
