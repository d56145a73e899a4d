"""The contract models read and write every event of CONTRACT.md, and nothing else.

Round trip of a realistic example of every event type on every topic, tolerant reading,
strict writing, money never a float, and a check that the registries name every event type
the contract document names (parsed from docs/CONTRACT.md, itself checked against the
shared original).
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from shared import topics
from shared.contracts import (
    ALL_EVENT_TYPES,
    TOPIC_EVENTS,
    Actor,
    ContractViolation,
    Decision,
    Fee,
    Money,
    Patient,
    Payload,
    billing,
    booking,
    deadletter,
    models_for,
    new_envelope,
    notification,
    parse_envelope,
    pms_sync,
    policy,
    scoring,
    upstream,
)
from shared.contracts.common import StaffActor

REPO_ROOT = Path(__file__).resolve().parents[2]
from contract_doc import CONTRACT_DOC, documented_types_by_topic  # noqa: E402

SHARED_CONTRACT_DOC = REPO_ROOT.parent / "shared" / "CONTRACT.md"

T0 = datetime(2025, 3, 10, 22, 0, tzinfo=UTC)  # Tuesday 09:00 in Sydney


def uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4()}"


def aud(amount: str) -> Money:
    return Money.new(amount=Decimal(amount), currency="AUD")


def late_fee() -> Fee:
    return Fee.new(amount=Decimal("45.00"), currency="AUD", code="D9986", code_system="CDT")


def a_patient() -> Patient:
    return Patient.new(
        patient_id=uid("pat"),
        first_name="Mia",
        email="mia@example.com",
        phone="+61400000000",
        portal_account=True,
        card_on_file=True,
        locale="en-AU",
    )


def late_decision() -> Decision:
    return Decision.new(
        allowed=True,
        classification="late",
        fee=late_fee(),
        charge_card=True,
        deposit_action="keep",
        policy_version="2025-03-01",
        explanation="Cancelled 20 hours before the appointment, inside the 24-hour late window.",
    )


def examples() -> dict[type[Payload], Payload]:
    """One realistic payload per model; a model added to a registry must get one here."""
    booking_id, request_id, practice_id = uid("bk"), uid("req"), uid("pr")
    professional_id, charge_id, sync_id, hold_id = uid("pro"), uid("ch"), uid("sync"), uid("hold")
    patient_actor = Actor.new(kind="patient", id=uid("pat"))
    staff_actor = Actor.new(kind="staff", id=uid("staff"), roles=["practice_manager"])
    starts, ends = T0 + timedelta(hours=20), T0 + timedelta(hours=21)
    items: list[Payload] = [
        upstream.BookingScheduled.new(
            booking_id=booking_id,
            practice_id=practice_id,
            starts_at=starts,
            ends_at=ends,
            practitioner_id=uid("dr"),
            service_code="011",
            patient=a_patient(),
            professional_id=professional_id,
            series_id=uid("series"),
            deposit=aud("20.00"),
            price=aud("180.00"),
            professional_contact=upstream.ProfessionalContact.new(
                first_name="Noor", email="noor@locums.example", phone="+61400000009", locale="en-AU"
            ),
        ),
        upstream.BookingRescheduled.new(booking_id=booking_id, starts_at=starts, ends_at=ends),
        upstream.UpstreamBookingCompleted.new(booking_id=booking_id, completed_at=ends),
        upstream.BookingCancellationRequested.new(
            request_id=request_id,
            booking_id=booking_id,
            requested_at=T0,
            actor=patient_actor,
            channel="patient_portal",
            reason_code="illness",
            reason_text="Down with the flu, sorry.",
            scope="this_and_future",
            fee_decision="policy",
            chart_note="Patient unwell.",
        ),
        upstream.BookingNoShowReported.new(
            request_id=request_id,
            booking_id=booking_id,
            reported_at=starts + timedelta(minutes=20),
            actor=staff_actor,
            party="patient",
            code="FTA",
            fee_decision="waive",
            chart_note="Called twice, no answer.",
        ),
        upstream.PracticeConfigured.new(
            practice_id=practice_id,
            name="Harbour Dental",
            timezone="Australia/Sydney",
            locale="en-AU",
            contact=upstream.ContactSettings.new(
                email="front@harbour.example", preferred_channel="sms", phone="+61290000000"
            ),
            cancellation=upstream.CancellationSettings.new(
                online_enabled=True,
                patient_cutoff_hours=24,
                late_window_hours=24,
                professional_no_show_minutes=30,
                notify_practice_on_online_cancel=True,
            ),
            fees=upstream.FeeSettings.new(
                late_cancellation=late_fee(),
                no_show=Fee.new(amount=Decimal("60.00"), currency="AUD", code="NOSHOW", code_system="custom"),
                charge_card_on_file=True,
            ),
            deposits=upstream.DepositSettings.new(timely="refund", late="credit_note", no_show="keep"),
            waitlist=upstream.WaitlistSettings.new(enabled=True, offer_minutes=15),
            pms=upstream.PmsSettings.new(integration="praktika"),
        ),
        upstream.WaitlistJoined.new(
            waitlist_id=uid("wl"),
            practice_id=practice_id,
            patient=a_patient(),
            service_code="011",
            practitioner_id=uid("dr"),
            joined_at=T0,
        ),
        upstream.ExcuseSubmitted.new(
            excuse_id=uid("ex"),
            professional_id=professional_id,
            booking_id=booking_id,
            document_ref="s3://excuses/medical-certificate.pdf",
            submitted_at=T0,
        ),
        upstream.ExcuseReviewed.new(excuse_id=uid("ex"), decision="approved", reviewer_id=uid("ops"), reviewed_at=T0),
        upstream.ScoreRecalculationRequested.new(professional_id=professional_id),
        upstream.ChargeAdjustmentRequested.new(
            request_id=request_id,
            charge_id=charge_id,
            actor=StaffActor.new(id=uid("staff"), roles=["billing"]),
            amount=Decimal("30.00"),
            code="D9986",
            code_system="CDT",
        ),
        upstream.PmsSyncAcknowledged.new(sync_id=sync_id, booking_id=booking_id, status="ok", external_ref="PK-1234"),
        booking.BookingCancelled.new(
            booking_id=booking_id,
            request_id=request_id,
            practice_id=practice_id,
            patient_id=uid("pat"),
            professional_id=professional_id,
            practitioner_id=uid("dr"),
            service_code="011",
            starts_at=starts,
            ends_at=ends,
            cancelled_at=T0,
            actor=patient_actor,
            channel="patient_portal",
            status_label="Cancelled online",
            reason_code="illness",
            reason_text="Down with the flu, sorry.",
            classification="late",
            decision=late_decision(),
            series_booking_ids=[uid("bk"), uid("bk")],
            deposit=aud("20.00"),
        ),
        booking.BookingCancellationRejected.new(
            booking_id=booking_id,
            request_id=request_id,
            reason="within_online_cutoff",
            message="Please contact the practice to cancel within 48 hours of your appointment.",
        ),
        booking.BookingNoShowRecorded.new(
            booking_id=booking_id,
            request_id=request_id,
            practice_id=practice_id,
            patient_id=uid("pat"),
            professional_id=professional_id,
            party="professional",
            code="DNA",
            starts_at=starts,
            recorded_at=starts + timedelta(hours=1),
            decision=Decision.new(
                allowed=True,
                classification="no_show",
                charge_card=False,
                deposit_action="none",
                score_delta=-10,
                hold_days=14,
                policy_version="2025-03-01",
            ),
            deposit=aud("20.00"),
        ),
        booking.BookingNoShowRejected.new(
            booking_id=booking_id,
            request_id=request_id,
            reason="appointment_not_started",
            message="A no-show can only be recorded once the appointment has started.",
        ),
        booking.BookingCompleted.new(booking_id=booking_id, completed_at=ends, professional_id=professional_id),
        booking.BookingSlotReleased.new(
            booking_id=booking_id,
            practice_id=practice_id,
            starts_at=starts,
            ends_at=ends,
            practitioner_id=uid("dr"),
            service_code="011",
        ),
        booking.BookingSlotOffered.new(
            offer_id=uid("offer"), booking_id=booking_id, waitlist_id=uid("wl"), expires_at=T0 + timedelta(minutes=30)
        ),
        booking.CancellationAssessmentRequested.new(
            booking_id=booking_id,
            request_id=request_id,
            practice_id=practice_id,
            kind="cancellation",
            booking=booking.BookingSnapshot.new(
                starts_at=starts,
                ends_at=ends,
                status="scheduled",
                practitioner_id=uid("dr"),
                service_code="011",
                professional_id=professional_id,
                series_id=uid("series"),
                patient_portal_account=True,
                patient_card_on_file=True,
                deposit=aud("20.00"),
                price=aud("180.00"),
            ),
            requested_at=T0,
            actor=patient_actor,
            channel="patient_portal",
            reason_code="illness",
            reason_text="Down with the flu, sorry.",
            fee_decision="policy",
        ),
        policy.CancellationAssessed.new(booking_id=booking_id, request_id=request_id, **late_decision().model_dump()),
        policy.PracticeConfigurationAccepted.new(practice_id=practice_id, policy_version="r1.s2"),
        policy.PracticeConfigurationRejected.new(
            practice_id=practice_id,
            reason="invalid_settings",
            message="The practice settings were not applied: cancellation.late_window_hours is 100000: input should"
            " be less than or equal to 720. Send the settings again with this corrected; the previous settings stay in force.",
        ),
        scoring.ScoreChanged.new(
            professional_id=professional_id, booking_id=booking_id, delta=-5, score=85, cause="late_cancelled"
        ),
        scoring.HoldPlaced.new(
            hold_id=hold_id,
            professional_id=professional_id,
            booking_id=booking_id,
            cause="no_show",
            starts_at=T0,
            ends_at=T0 + timedelta(days=14),
        ),
        scoring.HoldLifted.new(hold_id=hold_id, professional_id=professional_id, cause="excused"),
        scoring.AccountSuspended.new(professional_id=professional_id, holds=[hold_id, uid("hold")], suspended_at=T0),
        billing.ChargeCreated.new(
            charge_id=charge_id,
            booking_id=booking_id,
            patient_id=uid("pat"),
            kind="late_cancellation",
            amount=Decimal("45.00"),
            currency="AUD",
            code="D9986",
            code_system="CDT",
        ),
        billing.PaymentCaptured.new(
            charge_id=charge_id, booking_id=booking_id, amount=Decimal("45.00"), currency="AUD"
        ),
        billing.PaymentFailed.new(
            charge_id=charge_id,
            booking_id=booking_id,
            amount=Decimal("45.00"),
            currency="AUD",
            failure_reason="card_declined",
        ),
        billing.DepositRefunded.new(booking_id=booking_id, amount=Decimal("20.00"), currency="AUD"),
        billing.DepositKept.new(booking_id=booking_id, amount=Decimal("20.00"), currency="AUD"),
        billing.CreditNoteIssued.new(
            booking_id=booking_id, amount=Decimal("20.00"), currency="AUD", credit_note_id=uid("cn")
        ),
        billing.ChargeAdjusted.new(
            charge_id=charge_id,
            request_id=request_id,
            before=late_fee(),
            after=Fee.new(amount=Decimal("30.00"), currency="AUD", code="D9986", code_system="CDT"),
        ),
        billing.ChargeAdjustmentRejected.new(
            charge_id=charge_id, request_id=request_id, reason="payment already captured"
        ),
        notification.NotificationSent.new(
            notification_id=uid("n"),
            booking_id=booking_id,
            recipient="patient",
            channel="email",
            template="cancellation_confirmed",
        ),
        notification.NotificationFailed.new(
            notification_id=uid("n"),
            recipient="professional",
            channel="sms",
            template="hold_placed",
            error="invalid number",
        ),
        pms_sync.PmsCancelBooking.new(
            sync_id=sync_id,
            booking_id=booking_id,
            practice_id=practice_id,
            cancelled_at=T0,
            actor=patient_actor,
            classification="late",
            reason_code="illness",
            reason_text="Down with the flu, sorry.",
            status_label="Cancelled online",
            fee=late_fee(),
            chart_note="Patient unwell.",
        ),
        pms_sync.PmsRecordNoShow.new(
            sync_id=sync_id,
            booking_id=booking_id,
            practice_id=practice_id,
            code="FTA",
            recorded_at=starts + timedelta(minutes=20),
            actor=staff_actor,
            fee=late_fee(),
            chart_note="Called twice, no answer.",
        ),
        # second release
        upstream.ChargeReviewDecided.new(
            request_id=request_id,
            charge_id=charge_id,
            actor=StaffActor.new(id=uid("staff"), roles=["biller"]),
            decision="edit",
            amount=Decimal("30.00"),
            note="Reduced: first late cancellation this year.",
        ),
        upstream.PatientCardRegistered.new(
            patient_id=uid("pat"),
            practice_id=practice_id,
            gateway="stripe",
            customer_ref="cus_Q1w2e3",
            payment_method_ref="pm_1Q2w3e4r",
            registered_at=T0,
            brand="visa",
            last4="4242",
        ),
        upstream.PatientCardRemoved.new(
            patient_id=uid("pat"), practice_id=practice_id, payment_method_ref="pm_1Q2w3e4r", removed_at=T0
        ),
        # Second release, issue 17: fee tiers, standing, offices, reinstatement, sweep, waitlist.
        upstream.BookingArrived.new(booking_id=booking_id, arrived_at=T0),
        upstream.WaitlistOfferAccepted.new(
            offer_id=uid("offer"), waitlist_id=uid("wl"), new_booking_id=uid("bk"), accepted_at=T0
        ),
        upstream.ProfessionalReinstated.new(
            professional_id=professional_id, reviewer_id=uid("ops"), reinstated_at=T0, note="Appeal upheld."
        ),
        booking.BookingNoShowSuspected.new(
            booking_id=booking_id, practice_id=practice_id, starts_at=starts, grace_minutes=15
        ),
        booking.BookingSlotFilled.new(
            offer_id=uid("offer"), booking_id=booking_id, new_booking_id=uid("bk"), waitlist_id=uid("wl")
        ),
        scoring.PatientStandingChanged.new(
            patient_id=uid("pat"),
            practice_id=practice_id,
            standing="deposit_required",
            previous="good",
            count=2,
            window_days=365,
            reason="Two no-shows or late cancellations in the last 365 days (the first forgiven).",
        ),
        scoring.OfficeScoreChanged.new(
            practice_id=practice_id, booking_id=booking_id, delta=-50, score=50, cause="late_cancelled_professional"
        ),
        scoring.AccountReinstated.new(professional_id=professional_id, reinstated_at=T0),
        billing.TurnawayPayOwed.new(
            booking_id=booking_id,
            practice_id=practice_id,
            professional_id=professional_id,
            amount=Decimal("90.00"),
            currency="AUD",
        ),
        billing.ChargeWaived.new(charge_id=charge_id, booking_id=booking_id, request_id=request_id),
        billing.ChargeReviewRejected.new(charge_id=charge_id, request_id=request_id, reason="not_pending"),
        billing.PaymentRefunded.new(
            charge_id=charge_id,
            booking_id=booking_id,
            refund_id=uid("rf"),
            amount=Decimal("15.00"),
            currency="AUD",
            reason="adjustment",
        ),
        pms_sync.PmsUpdateFee.new(
            sync_id=sync_id, booking_id=booking_id, practice_id=practice_id, charge_id=charge_id, fee=late_fee()
        ),
        pms_sync.PmsSyncCompleted.new(sync_id=sync_id, booking_id=booking_id, integration="praktika", attempts=1),
        pms_sync.PmsSyncFailed.new(
            sync_id=sync_id, booking_id=booking_id, integration="core_practice", attempts=5, error="HTTP 503 from PMS"
        ),
        pms_sync.PmsManualUpdateRequired.new(
            booking_id=booking_id,
            practice_id=practice_id,
            integration="manual",
            action="cancel_booking",
            message="Mark the appointment on 11 March at 19:00 as Cancelled online in your PMS.",
        ),
        deadletter.MessageDeadLettered.of(
            service="booking",
            topic=topics.UPSTREAM_BOOKINGS,
            partition=3,
            offset=1042,
            key=booking_id.encode(),
            value=b'{"specversion": "1.0", "type": "booking.scheduled"}',
            error="invalid CloudEvents envelope: id: Field required",
            at=T0,
        ),
    ]
    by_model = {type(item): item for item in items}
    assert len(by_model) == len(items), "two examples of one model"
    return by_model


EXAMPLES = examples()
TOPIC_TYPE_PAIRS = [(topic, event_type) for topic, registry in TOPIC_EVENTS.items() for event_type in registry]


def wire(payload: Payload, **envelope_fields: Any) -> bytes:
    envelope = new_envelope(
        payload, source="test/contracts", subject=uid("subject"), correlation_id=uid("corr"), time=T0
    )
    envelope.update(envelope_fields)
    return json.dumps(envelope).encode()


def floats_in(value: Any) -> list[Any]:
    if isinstance(value, float):
        return [value]
    if isinstance(value, dict):
        return [f for v in value.values() for f in floats_in(v)]
    if isinstance(value, list):
        return [f for v in value for f in floats_in(v)]
    return []


# --- round trip ------------------------------------------------------------------------------


@pytest.mark.parametrize(("topic", "event_type"), TOPIC_TYPE_PAIRS)
def test_every_event_type_round_trips_through_the_wire(topic: str, event_type: str) -> None:
    model = models_for(topic)[event_type]
    assert model in EXAMPLES, f"add a realistic example of {model.__name__} to examples()"
    original = EXAMPLES[model]
    raw = wire(original)

    event = parse_envelope(raw, models_for(topic))

    assert event.type == event_type
    assert type(event.payload) is model
    assert event.payload == original
    assert event.payload.to_json_dict() == json.loads(raw)["data"]
    assert floats_in(json.loads(raw)) == [], "no float may appear on the wire"


def test_money_travels_as_a_decimal_string() -> None:
    data = json.loads(wire(EXAMPLES[billing.ChargeCreated]))["data"]
    assert data["amount"] == "45.00" and data["currency"] == "AUD"
    data = json.loads(wire(EXAMPLES[booking.BookingCancelled]))["data"]
    assert data["deposit"] == {"amount": "20.00", "currency": "AUD"}
    assert data["decision"]["fee"] == {"amount": "45.00", "currency": "AUD", "code": "D9986", "code_system": "CDT"}


def test_times_are_written_in_utc_and_read_into_utc() -> None:
    sydney = timezone(timedelta(hours=11))
    completed = booking.BookingCompleted.new(
        booking_id=uid("bk"), completed_at=datetime(2025, 3, 11, 9, 0, tzinfo=sydney)
    )
    assert completed.completed_at == T0 and completed.completed_at.utcoffset() == timedelta(0)
    assert completed.to_json_dict()["completed_at"] == "2025-03-10T22:00:00Z"


def test_booking_completed_means_different_models_on_different_topics() -> None:
    upstream_model = models_for(topics.UPSTREAM_BOOKINGS)["booking.completed"]
    outbound_model = models_for(topics.BOOKING_EVENTS)["booking.completed"]
    assert upstream_model is upstream.UpstreamBookingCompleted
    assert outbound_model is booking.BookingCompleted


# --- tolerant reader, strict writer ----------------------------------------------------------


def test_reader_ignores_fields_it_does_not_know() -> None:
    envelope = json.loads(wire(EXAMPLES[upstream.BookingScheduled]))
    envelope["data"]["added_in_a_later_minor_version"] = {"anything": 1}
    envelope["data"]["patient"]["preferred_pronoun"] = "she"
    envelope["an_extension_attribute"] = "x"

    event = parse_envelope(json.dumps(envelope).encode(), models_for(topics.UPSTREAM_BOOKINGS))

    assert event.payload == EXAMPLES[upstream.BookingScheduled]


def test_professional_contact_is_an_optional_addition_to_booking_scheduled() -> None:
    # Producers that never send it still parse (optional within v1); every part of it is optional.
    envelope = json.loads(wire(EXAMPLES[upstream.BookingScheduled]))
    assert envelope["data"]["professional_contact"]["email"] == "noor@locums.example"
    del envelope["data"]["professional_contact"]
    event = parse_envelope(json.dumps(envelope).encode(), models_for(topics.UPSTREAM_BOOKINGS))
    assert event.payload.professional_contact is None
    envelope["data"]["professional_contact"] = {"email": "sam@locums.example"}
    event = parse_envelope(json.dumps(envelope).encode(), models_for(topics.UPSTREAM_BOOKINGS))
    assert event.payload.professional_contact == upstream.ProfessionalContact(email="sam@locums.example")
    assert event.payload.professional_contact.first_name is None


def test_writer_refuses_a_field_the_contract_does_not_name() -> None:
    with pytest.raises(TypeError, match="bogus"):
        booking.BookingCompleted.new(booking_id=uid("bk"), completed_at=T0, bogus=1)
    with pytest.raises(TypeError, match="bogus"):
        upstream.BookingCancellationRequested.new(bogus=1)


def test_models_are_frozen() -> None:
    completed = booking.BookingCompleted.new(booking_id=uid("bk"), completed_at=T0)
    with pytest.raises(Exception):
        completed.booking_id = "other"  # type: ignore[misc]


# --- money is never a float ------------------------------------------------------------------


@pytest.mark.parametrize(
    "build",
    [
        lambda: Money(amount=45.0, currency="AUD"),
        lambda: Fee(amount=45.0, currency="AUD", code="D9986", code_system="CDT"),
        lambda: billing.ChargeCreated(
            charge_id="c",
            booking_id="b",
            patient_id="p",
            kind="no_show",
            amount=45.0,
            currency="AUD",
            code="X",
            code_system="custom",
        ),
        lambda: billing.DepositKept(booking_id="b", amount=20.0, currency="AUD"),
        lambda: upstream.ChargeAdjustmentRequested(request_id="r", charge_id="c", actor={"id": "s"}, amount=30.0),
    ],
    ids=["Money", "Fee", "charge.created", "deposit.kept", "charge.adjustment_requested"],
)
def test_float_money_is_rejected(build: Any) -> None:
    with pytest.raises(ValueError, match="never floats"):
        build()


def test_float_money_on_the_wire_is_a_contract_violation() -> None:
    envelope = json.loads(wire(EXAMPLES[billing.PaymentCaptured]))
    envelope["data"]["amount"] = 45.0
    with pytest.raises(ContractViolation, match="never floats"):
        parse_envelope(json.dumps(envelope).encode(), models_for(topics.BILLING_EVENTS))


def test_currency_must_be_an_iso_code() -> None:
    with pytest.raises(ValueError, match="ISO 4217"):
        billing.DepositRefunded(booking_id="b", amount="20.00", currency="dollars")
    assert billing.DepositRefunded(booking_id="b", amount="20.00", currency="aud").currency == "AUD"


# --- violations ------------------------------------------------------------------------------


def test_missing_required_field_is_a_contract_violation() -> None:
    envelope = json.loads(wire(EXAMPLES[upstream.BookingCancellationRequested]))
    del envelope["data"]["requested_at"]
    with pytest.raises(ContractViolation, match="requested_at"):
        parse_envelope(json.dumps(envelope).encode(), models_for(topics.UPSTREAM_BOOKINGS))


def test_unknown_event_type_is_a_contract_violation() -> None:
    raw = wire(EXAMPLES[booking.BookingCompleted], type="booking.teleported")
    with pytest.raises(ContractViolation, match="unknown event type"):
        parse_envelope(raw, models_for(topics.BOOKING_EVENTS))


def test_event_type_of_another_topic_is_a_contract_violation() -> None:
    raw = wire(EXAMPLES[booking.BookingCancelled])
    with pytest.raises(ContractViolation, match="unknown event type"):
        parse_envelope(raw, models_for(topics.UPSTREAM_BOOKINGS))


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("channel", "carrier_pigeon"),
        ("scope", "all"),
        ("fee_decision", "double"),
        ("requested_at", "2025-03-10T22:00:00"),
    ],
    ids=["unknown channel", "unknown scope", "unknown fee decision", "naive time"],
)
def test_values_outside_the_contract_are_violations(field: str, value: Any) -> None:
    envelope = json.loads(wire(EXAMPLES[upstream.BookingCancellationRequested]))
    envelope["data"][field] = value
    with pytest.raises(ContractViolation, match=field):
        parse_envelope(json.dumps(envelope).encode(), models_for(topics.UPSTREAM_BOOKINGS))


def test_empty_id_is_a_violation() -> None:
    with pytest.raises(ValueError):
        booking.BookingCompleted(booking_id="", completed_at=T0)


# --- contract defaults and rules left to the services ----------------------------------------


def test_cancellation_request_defaults_scope_and_fee_decision() -> None:
    minimal = {
        "request_id": uid("req"),
        "booking_id": uid("bk"),
        "requested_at": "2025-03-10T22:00:00Z",
        "actor": {"kind": "patient", "id": uid("pat")},
        "channel": "patient_portal",
    }
    request = upstream.BookingCancellationRequested.model_validate(minimal)
    assert (request.scope, request.fee_decision, request.actor.roles) == ("this", "policy", [])

    explicit_nulls = upstream.BookingCancellationRequested.model_validate(
        minimal | {"scope": None, "fee_decision": None}
    )
    assert (explicit_nulls.scope, explicit_nulls.fee_decision) == ("this", "policy")


def test_overlong_reason_text_parses_so_booking_can_reject_it_as_invalid_request() -> None:
    request = EXAMPLES[upstream.BookingCancellationRequested].model_copy(update={"reason_text": "x" * 1000})
    event = parse_envelope(wire(request), models_for(topics.UPSTREAM_BOOKINGS))
    assert len(event.payload.reason_text) == 1000  # type: ignore[attr-defined]
    assert upstream.REASON_TEXT_MAX_CHARS == 255


def test_practice_configured_fills_in_the_contract_defaults() -> None:
    practice_id = uid("pr")
    configured = upstream.PracticeConfigured.model_validate(
        {"practice_id": practice_id, "name": "Harbour Dental", "timezone": "Australia/Sydney", "locale": "en-AU"}
    )
    settings = configured.settings

    assert settings == upstream.PracticeSettings()
    assert settings.cancellation.online_enabled is True
    assert settings.cancellation.patient_cutoff_hours == 48
    assert settings.cancellation.late_window_hours == 24
    assert settings.cancellation.professional_no_show_minutes == 60
    assert settings.cancellation.notify_practice_on_online_cancel is False
    assert (settings.fees.late_cancellation, settings.fees.no_show, settings.fees.charge_card_on_file) == (
        None,
        None,
        False,
    )
    assert (settings.deposits.timely, settings.deposits.late, settings.deposits.no_show) == ("refund", "keep", "keep")
    assert (settings.waitlist.enabled, settings.waitlist.offer_minutes) == (False, 30)
    assert settings.pms.integration == "none"
    assert upstream.PracticeConfigured.defaults(practice_id).settings == settings


def test_partly_given_settings_keep_the_defaults_of_the_rest() -> None:
    configured = upstream.PracticeConfigured.model_validate(
        {
            "practice_id": uid("pr"),
            "name": "Harbour Dental",
            "timezone": "Australia/Sydney",
            "locale": "en-AU",
            "cancellation": {"patient_cutoff_hours": 24},
            "deposits": {"late": "credit_note"},
        }
    )
    assert configured.cancellation.patient_cutoff_hours == 24
    assert configured.cancellation.late_window_hours == 24
    assert (configured.deposits.timely, configured.deposits.late) == ("refund", "credit_note")


def test_assessment_request_needs_the_fields_of_its_kind() -> None:
    request = EXAMPLES[booking.CancellationAssessmentRequested]
    fields = request.model_dump()
    with pytest.raises(ValueError, match="channel"):
        booking.CancellationAssessmentRequested.model_validate(fields | {"channel": None})
    with pytest.raises(ValueError, match="party and code"):
        booking.CancellationAssessmentRequested.model_validate(fields | {"kind": "no_show"})
    no_show = booking.CancellationAssessmentRequested.model_validate(
        fields | {"kind": "no_show", "channel": None, "party": "patient", "code": "DNA"}
    )
    assert no_show.kind == "no_show"


def test_assessment_carries_the_decision_booking_embeds() -> None:
    assessed = EXAMPLES[policy.CancellationAssessed]
    assert isinstance(assessed, policy.CancellationAssessed)
    assert assessed.decision() == late_decision()


def test_dead_letter_record_keeps_the_original_bytes() -> None:
    garbage = b"\xff\xfe not json"
    record = deadletter.MessageDeadLettered.of(
        service="billing",
        topic=topics.BILLING_COMMANDS,
        partition=0,
        offset=7,
        key=None,
        value=garbage,
        error="not JSON",
        at=T0,
    )
    parsed = parse_envelope(wire(record), models_for(topics.dead_letter_topic("billing"))).payload
    assert isinstance(parsed, deadletter.MessageDeadLettered)
    assert parsed.original_value() == garbage
    assert parsed.original_value_text is None and parsed.original_key is None

    tombstone = deadletter.MessageDeadLettered.of(
        service="billing",
        topic=topics.BILLING_COMMANDS,
        partition=0,
        offset=8,
        key=b"k",
        value=None,
        error="empty",
        at=T0,
    )
    assert tombstone.original_value() is None


# --- registries ------------------------------------------------------------------------------


def test_every_contract_topic_has_a_registry_and_keys_match_models() -> None:
    assert set(TOPIC_EVENTS) == set(topics.ALL_TOPICS)
    for topic, registry in TOPIC_EVENTS.items():
        assert registry, topic
        for event_type, model in registry.items():
            assert model.event_type == event_type, (topic, model.__name__)
    for service in topics.SERVICES:
        assert set(models_for(topics.dead_letter_topic(service))) == {"message.dead_lettered"}
    for topic in topics.PMS_INTEGRATION_TOPICS.values():
        assert set(models_for(topic)) == {"pms.cancel_booking", "pms.record_no_show", "pms.update_fee"}


def test_models_for_an_unknown_topic_says_so() -> None:
    with pytest.raises(KeyError, match="not a contract topic"):
        models_for("booking.events.v2")


# --- the registries agree with the contract document -----------------------------------------


def test_docs_copy_of_the_contract_is_the_shared_one() -> None:
    assert CONTRACT_DOC.is_file()
    if SHARED_CONTRACT_DOC.is_file():
        assert CONTRACT_DOC.read_bytes() == SHARED_CONTRACT_DOC.read_bytes(), (
            "docs/CONTRACT.md differs from ../shared/CONTRACT.md: copy the shared one over"
        )


def test_every_documented_event_type_has_a_model_on_its_topic() -> None:
    by_topic = documented_types_by_topic()
    documented = set().union(*by_topic.values())
    # CONTRACT.md v1 names 38 distinct event types (booking.completed under two topics): if the
    # extraction finds fewer, it is broken, and this test must not pass by finding nothing.
    assert len(documented) >= 38, sorted(documented)
    assert sum(len(types) for types in by_topic.values()) >= 39
    assert {"payment.failed", "credit_note.issued", "charge.adjustment_rejected", "pms.sync_failed"} <= documented

    assert documented <= ALL_EVENT_TYPES, f"no model for {sorted(documented - ALL_EVENT_TYPES)}"
    for heading, types in by_topic.items():
        heading_topics = (
            list(topics.PMS_INTEGRATION_TOPICS.values()) if heading == "pms-sync.<integration>.v1" else [heading]
        )
        for topic in heading_topics:
            missing = types - set(models_for(topic))
            assert not missing, f"{topic} has no model for {sorted(missing)}"


# Events of the contract's second release that have a model (contract_doc reads the first release's lists).
SECOND_RELEASE_TYPES = {"practice.configuration_accepted", "practice.configuration_rejected"}
# Second-release types of issue 16 (fees after the fact, review, cards on file).
SECOND_RELEASE_FEE_TYPES = {
    "charge.review_decided",
    "charge.waived",
    "charge.review_rejected",
    "payment.refunded",
    "patient.card_registered",
    "patient.card_removed",
    "pms.update_fee",
}
# Second-release types of issue 17 (fairer policies).
SECOND_RELEASE_POLICY_TYPES = {
    "booking.arrived",
    "waitlist.offer_accepted",
    "professional.reinstated",
    "booking.no_show_suspected",
    "booking.slot_filled",
    "patient.standing_changed",
    "office.score_changed",
    "account.reinstated",
    "turnaway_pay.owed",
}


def test_only_internal_and_second_release_event_types_are_missing_from_the_first_release_lists() -> None:
    documented = set().union(*documented_types_by_topic().values())
    internal = {"cancellation.assessment_requested", "message.dead_lettered"}
    second = SECOND_RELEASE_TYPES | SECOND_RELEASE_FEE_TYPES | SECOND_RELEASE_POLICY_TYPES
    assert ALL_EVENT_TYPES - documented == internal | second
    assert len(ALL_EVENT_TYPES) == 58
    text = CONTRACT_DOC.read_text(encoding="utf-8")
    assert all(f"`{event_type}`" in text for event_type in second)
    assert "`practice.events.v1`" in text and topics.PRACTICE_EVENTS == "practice.events.v1"
    assert set(models_for(topics.PRACTICE_EVENTS)) == SECOND_RELEASE_TYPES


def test_nul_characters_are_a_contract_violation_and_dead_letters_stay_storable() -> None:
    from shared.contracts.deadletter import MessageDeadLettered

    envelope = json.loads(wire(EXAMPLES[upstream.BookingCancellationRequested]))
    envelope["data"]["reason_text"] = "flu\u0000"
    raw = json.dumps(envelope).encode()
    with pytest.raises(ContractViolation, match="NUL"):
        parse_envelope(raw, models_for(topics.UPSTREAM_BOOKINGS))
    record = MessageDeadLettered.of(
        service="booking",
        topic=topics.UPSTREAM_BOOKINGS,
        partition=0,
        offset=1,
        key=b"k\x00",
        value=raw.replace(b"\\u0000", b"\x00"),
        error="bad \x00",
        at=datetime.now(UTC),
    )
    text = json.dumps(record.to_json_dict())
    assert "\\u0000" not in text  # jsonb can store it
    assert record.original_value() == raw.replace(b"\\u0000", b"\x00")  # the exact bytes survive
