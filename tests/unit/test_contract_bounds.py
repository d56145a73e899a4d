"""Every field of the contract has bounds (CONTRACT.md "Rules every consumer keeps"): each limit
is tried at the limit and just past it, both ways, on the wire form a producer sends; and what is
refused is a validation error with a reason that never quotes the value, whatever the value."""

from __future__ import annotations

import copy
import json
import time
import uuid
from decimal import Decimal
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from shared import topics
from shared.contracts import ContractViolation, models_for, parse_envelope
from shared.contracts.base import (
    ANY_CURRENCY_MAX,
    CURRENCIES,
    DEFAULT_MAX_MAJOR_UNITS,
    Money,
    max_amount,
    money_problem,
)
from shared.contracts.billing import ChargeAdjustmentRejected, ChargeCreated, DepositKept, PaymentCaptured
from shared.contracts.booking import BookingCancellationRejected, BookingCancelled
from shared.contracts.common import Actor, Decision, Fee, Patient, valid_id
from shared.contracts.notification import NotificationFailed
from shared.contracts.pms_sync import PmsSyncCompleted
from shared.contracts.policy import PracticeConfigurationRejected
from shared.contracts.scoring import AccountSuspended, ScoreChanged
from shared.contracts.upstream import (
    BookingCancellationRequested,
    BookingScheduled,
    ChargeAdjustmentRequested,
    ExcuseSubmitted,
    PmsSyncAcknowledged,
    PracticeConfigured,
)
from shared.testing import envelope

# --- valid wire forms, one per model under test -----------------------------------------------------

SCHEDULED: dict[str, Any] = {
    "booking_id": "bk-1",
    "practice_id": "pr-1",
    "starts_at": "2026-12-02T09:00:00Z",
    "ends_at": "2026-12-02T09:30:00Z",
    "practitioner_id": "dr-1",
    "service_code": "D1110",
    "patient": {
        "patient_id": "pat-1",
        "first_name": "Ana",
        "email": "ana@example.com",
        "phone": "+61400000000",
        "portal_account": True,
        "card_on_file": False,
        "locale": "en-AU",
    },
    "deposit": {"amount": "20.00", "currency": "AUD"},
    "price": {"amount": "180.00", "currency": "AUD"},
}
CANCELLATION: dict[str, Any] = {
    "request_id": "req-1",
    "booking_id": "bk-1",
    "requested_at": "2026-12-01T09:00:00Z",
    "actor": {"kind": "staff", "id": "staff-1", "roles": ["reception"]},
    "channel": "practice",
    "reason_code": "illness",
    "reason_text": "Flu.",
    "chart_note": "Called in.",
}
CONFIGURED: dict[str, Any] = {
    "practice_id": "pr-1",
    "name": "Harbour Dental",
    "timezone": "Australia/Sydney",
    "locale": "en-AU",
    "contact": {"email": "front@harbour.example", "phone": "+61290000000", "preferred_channel": "email"},
    "cancellation": {"patient_cutoff_hours": 48, "late_window_hours": 24, "professional_no_show_minutes": 60},
    "fees": {"late_cancellation": {"amount": "45.00", "currency": "EUR", "code": "D9986", "code_system": "CDT"}},
    "waitlist": {"enabled": True, "offer_minutes": 30},
}
ADJUSTMENT: dict[str, Any] = {
    "request_id": "req-1",
    "charge_id": str(uuid.uuid4()),
    "actor": {"id": "staff-1", "roles": ["owner"]},
    "amount": "30.00",
}
CHARGE: dict[str, Any] = {
    "charge_id": "ch-1",
    "booking_id": "bk-1",
    "patient_id": "pat-1",
    "kind": "no_show",
    "amount": "45.00",
    "currency": "AUD",
    "code": "D9986",
    "code_system": "CDT",
}
DECISION: dict[str, Any] = {
    "allowed": True,
    "classification": "late",
    "charge_card": False,
    "deposit_action": "none",
    "policy_version": "r1.s1",
    "score_delta": -50,
    "hold_days": 7,
    "explanation": "Late.",
}
CANCELLED: dict[str, Any] = {
    "booking_id": "bk-1",
    "request_id": "req-1",
    "practice_id": "pr-1",
    "patient_id": "pat-1",
    "practitioner_id": "dr-1",
    "service_code": "D1110",
    "starts_at": "2026-12-02T09:00:00Z",
    "ends_at": "2026-12-02T09:30:00Z",
    "cancelled_at": "2026-12-01T09:00:00Z",
    "actor": CANCELLATION["actor"],
    "channel": "practice",
    "status_label": "Cancelled",
    "classification": "late",
    "decision": DECISION,
    "series_booking_ids": ["bk-2"],
}

BASES: dict[type[BaseModel], dict[str, Any]] = {
    BookingScheduled: SCHEDULED,
    BookingCancellationRequested: CANCELLATION,
    PracticeConfigured: CONFIGURED,
    ChargeAdjustmentRequested: ADJUSTMENT,
    ChargeCreated: CHARGE,
    Decision: DECISION,
    BookingCancelled: CANCELLED,
    ExcuseSubmitted: {
        "excuse_id": "ex-1",
        "professional_id": "pro-1",
        "booking_id": "bk-1",
        "document_ref": "s3://excuses/1.pdf",
        "submitted_at": "2026-12-01T09:00:00Z",
    },
    PmsSyncAcknowledged: {
        "sync_id": "s-1",
        "booking_id": "bk-1",
        "status": "error",
        "error": "503",
        "external_ref": "PK-1",
    },
    NotificationFailed: {"notification_id": "n-1", "recipient": "patient", "channel": "sms", "template": "cancelled"},
    BookingCancellationRejected: {
        "booking_id": "bk-1",
        "request_id": "req-1",
        "reason": "not_allowed",
        "message": "No.",
    },
    ScoreChanged: {"professional_id": "pro-1", "delta": -5, "score": 95, "cause": "late_cancelled"},
    AccountSuspended: {"professional_id": "pro-1", "holds": ["h-1"], "suspended_at": "2026-12-01T09:00:00Z"},
    PmsSyncCompleted: {"sync_id": "s-1", "booking_id": "bk-1", "integration": "praktika", "attempts": 1},
    ChargeAdjustmentRejected: {"charge_id": "ch-1", "request_id": "req-1", "reason": "invalid_request"},
}


def with_value(data: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    changed = copy.deepcopy(data)
    *parents, last = path.split(".")
    here: Any = changed
    for part in parents:
        here = here[int(part)] if isinstance(here, list) else here.setdefault(part, {})
    here[last] = value
    return changed


def accepts(model: type[BaseModel], path: str, value: Any) -> bool:
    try:
        model.model_validate(with_value(BASES[model], path, value))
    except ValidationError:
        return False
    return True


@pytest.mark.parametrize("model", list(BASES))
def test_every_base_example_is_valid(model: type[BaseModel]) -> None:
    model.model_validate(BASES[model])


def case(model: type[BaseModel], path: str, value: Any, ok: bool, label: str) -> Any:
    return pytest.param(model, path, value, ok, id=f"{model.__name__}.{path}: {label}")


# --- ids --------------------------------------------------------------------------------------------

ID_CASES = [
    case(BookingScheduled, "booking_id", "b" * 128, True, "128 characters"),
    case(BookingScheduled, "booking_id", "b" * 129, False, "129 characters"),
    case(BookingScheduled, "booking_id", "", False, "empty"),
    case(BookingScheduled, "booking_id", str(uuid.uuid4()), True, "a uuid"),
    case(BookingScheduled, "booking_id", "load-1a2b-000001-abcdef", True, "a load-test id"),
    case(BookingScheduled, "booking_id", "Aa0._:@/-", True, "every allowed sign"),
    case(BookingScheduled, "booking_id", "bk 1", False, "a space"),
    case(BookingScheduled, "booking_id", "bk-1\n", False, "a trailing newline"),
    case(BookingScheduled, "booking_id", "bk\t1", False, "a tab"),
    case(BookingScheduled, "booking_id", "bk-é", False, "a letter outside ASCII"),
    case(BookingScheduled, "booking_id", "bk,1", False, "a comma"),
    case(BookingScheduled, "booking_id", 17, False, "a number"),
    case(BookingScheduled, "patient.patient_id", "p" * 129, False, "nested, 129 characters"),
    case(BookingCancellationRequested, "actor.id", "s" * 128, True, "actor id of 128"),
    case(BookingCancellationRequested, "actor.id", "s" * 129, False, "actor id of 129"),
]


@pytest.mark.parametrize(("model", "path", "value", "ok"), ID_CASES)
def test_ids(model: type[BaseModel], path: str, value: Any, ok: bool) -> None:
    assert accepts(model, path, value) is ok


def test_valid_id_answers_without_raising() -> None:
    assert valid_id("pr-1") == "pr-1"
    assert [valid_id(v) for v in ("", "a b", "x" * 129, None, 5, ["pr-1"])] == [None] * 6


# --- texts and lists ---------------------------------------------------------------------------------

TEXT_CASES = [
    case(PracticeConfigured, "name", "n" * 200, True, "name of 200"),
    case(PracticeConfigured, "name", "n" * 201, False, "name of 201"),
    case(PracticeConfigured, "name", "Harbour\nDental", False, "name with a line break"),
    case(BookingScheduled, "patient.first_name", "a" * 200, True, "first name of 200"),
    case(BookingScheduled, "patient.first_name", "a" * 201, False, "first name of 201"),
    case(BookingScheduled, "patient.first_name", "Ana\u0007", False, "first name with a bell"),
    case(BookingScheduled, "service_code", "c" * 32, True, "code of 32"),
    case(BookingScheduled, "service_code", "c" * 33, False, "code of 33"),
    case(BookingScheduled, "service_code", "", False, "empty code"),
    case(BookingCancellationRequested, "reason_code", "r" * 64, True, "reason code of 64"),
    case(BookingCancellationRequested, "reason_code", "r" * 65, False, "reason code of 65"),
    # Over 255 parses (booking answers invalid_request); the hard cap is 4000.
    case(BookingCancellationRequested, "reason_text", "t" * 4000, True, "reason text of 4000"),
    case(BookingCancellationRequested, "reason_text", "t" * 4001, False, "reason text of 4001"),
    case(BookingCancellationRequested, "reason_text", "line one\nline two\ttab", True, "reason text with lines"),
    case(BookingCancellationRequested, "reason_text", "flu\u001b[31m", False, "reason text with an escape"),
    case(BookingCancellationRequested, "reason_text", "flu\u0085", False, "reason text with a C1 control"),
    case(BookingCancellationRequested, "reason_text", "flu\ud800", False, "reason text with a lone surrogate"),
    case(BookingCancellationRequested, "chart_note", "n" * 4000, True, "chart note of 4000"),
    case(BookingCancellationRequested, "chart_note", "n" * 4001, False, "chart note of 4001"),
    case(ExcuseSubmitted, "document_ref", "d" * 500, True, "document ref of 500"),
    case(ExcuseSubmitted, "document_ref", "d" * 501, False, "document ref of 501"),
    case(PmsSyncAcknowledged, "external_ref", "e" * 500, True, "external ref of 500"),
    case(PmsSyncAcknowledged, "external_ref", "e" * 501, False, "external ref of 501"),
    # Error texts quote other systems verbatim: any character but NUL and lone surrogates.
    case(PmsSyncAcknowledged, "error", "e" * 2000, True, "error of 2000"),
    case(PmsSyncAcknowledged, "error", "e" * 2001, False, "error of 2001"),
    case(PmsSyncAcknowledged, "error", "550 denied\r\n\u001b", True, "error with control characters"),
    case(PmsSyncAcknowledged, "error", "bad \ud800", False, "error with a lone surrogate"),
    case(NotificationFailed, "error", "e" * 2001, False, "notification error of 2001"),
    case(NotificationFailed, "template", "t" * 64, True, "template of 64"),
    case(NotificationFailed, "template", "t" * 65, False, "template of 65"),
    case(BookingCancellationRejected, "message", "m" * 2000, True, "message of 2000"),
    case(BookingCancellationRejected, "message", "m" * 2001, False, "message of 2001"),
    case(BookingCancellationRejected, "message", "", False, "empty message"),
    case(Decision, "explanation", "x" * 2000, True, "explanation of 2000"),
    case(Decision, "explanation", "x" * 2001, False, "explanation of 2001"),
    case(Decision, "policy_version", "v" * 64, True, "policy version of 64"),
    case(Decision, "policy_version", "v" * 65, False, "policy version of 65"),
    case(ChargeAdjustmentRejected, "reason", "r" * 64, True, "rejection reason of 64"),
    case(ChargeAdjustmentRejected, "reason", "r" * 65, False, "rejection reason of 65"),
    case(BookingCancellationRequested, "actor.roles", ["r"] * 20, True, "20 roles"),
    case(BookingCancellationRequested, "actor.roles", ["r"] * 21, False, "21 roles"),
    case(BookingCancellationRequested, "actor.roles", ["r" * 64], True, "a role of 64"),
    case(BookingCancellationRequested, "actor.roles", ["r" * 65], False, "a role of 65"),
    case(BookingCancellationRequested, "actor.roles", ["front\ndesk"], False, "a role with a line break"),
    case(ChargeAdjustmentRequested, "actor.roles", ["owner"] * 21, False, "21 staff roles"),
    case(BookingCancelled, "series_booking_ids", [f"bk-{i}" for i in range(1000)], True, "1000 series ids"),
    case(BookingCancelled, "series_booking_ids", [f"bk-{i}" for i in range(1001)], False, "1001 series ids"),
    case(BookingCancelled, "series_booking_ids", ["bk 2"], False, "a series id with a space"),
    case(AccountSuspended, "holds", [f"h-{i}" for i in range(1000)], True, "1000 holds"),
    case(AccountSuspended, "holds", [f"h-{i}" for i in range(1001)], False, "1001 holds"),
]


@pytest.mark.parametrize(("model", "path", "value", "ok"), TEXT_CASES)
def test_texts_and_lists(model: type[BaseModel], path: str, value: Any, ok: bool) -> None:
    assert accepts(model, path, value) is ok


# --- contacts ----------------------------------------------------------------------------------------

LONGEST_EMAIL = f"{'a' * 64}@{'b' * 63}.{'c' * 63}.{'d' * 57}.com"
TOO_LONG_EMAIL = f"{'a' * 64}@{'b' * 63}.{'c' * 63}.{'d' * 58}.com"
LONGEST_LOCALE = "en-abcdefgh-abcdefgh-abcdefgh-abcde"
assert (len(LONGEST_EMAIL), len(TOO_LONG_EMAIL), len(LONGEST_LOCALE)) == (254, 255, 35)
CONTACT_CASES = [
    case(BookingScheduled, "patient.email", "mia@example.com", True, "an address"),
    case(BookingScheduled, "patient.email", "mia.o'neil+tag@mail.example.co.uk", True, "dots, plus and apostrophe"),
    case(BookingScheduled, "patient.email", LONGEST_EMAIL, True, "254 characters"),
    case(BookingScheduled, "patient.email", TOO_LONG_EMAIL, False, "255 characters"),
    case(BookingScheduled, "patient.email", f"{'a' * 65}@example.com", False, "a local part of 65"),
    case(BookingScheduled, "patient.email", "a@example.com,b@example.com", False, "two, with a comma"),
    case(BookingScheduled, "patient.email", "a@example.com;b@example.com", False, "two, with a semicolon"),
    case(BookingScheduled, "patient.email", "a@example.com b@example.com", False, "two, with a space"),
    case(BookingScheduled, "patient.email", "a@example.com\nBcc: b@example.com", False, "a header injection"),
    case(BookingScheduled, "patient.email", "a@b@example.com", False, "two @"),
    case(BookingScheduled, "patient.email", "ana.example.com", False, "no @"),
    case(BookingScheduled, "patient.email", "ana@localhost", False, "no domain"),
    case(BookingScheduled, "patient.email", "Ana <ana@example.com>", False, "a display name"),
    case(PracticeConfigured, "contact.email", "front@harbour.example, owner@harbour.example", False, "practice: two"),
    case(BookingScheduled, "patient.phone", "+61400000000", True, "E.164"),
    case(BookingScheduled, "patient.phone", "+1234567", True, "7 digits"),
    case(BookingScheduled, "patient.phone", "+123456", False, "6 digits"),
    case(BookingScheduled, "patient.phone", "+123456789012345", True, "15 digits"),
    case(BookingScheduled, "patient.phone", "+1234567890123456", False, "16 digits"),
    case(BookingScheduled, "patient.phone", "+61 400 000 000", False, "spaces"),
    case(BookingScheduled, "patient.phone", "0400000000", False, "no country code"),
    case(BookingScheduled, "patient.phone", "+0400000000", False, "a country code of 0"),
    case(BookingScheduled, "patient.phone", "+61400000000,+61400000001", False, "two numbers"),
    case(BookingScheduled, "patient.phone", "+61400000000\n", False, "a trailing newline"),
    case(BookingScheduled, "patient.phone", "+\uff16\uff11400000000", False, "full-width digits"),
    case(PracticeConfigured, "contact.phone", "+61 2 9000 0000", False, "practice: spaces"),
]


@pytest.mark.parametrize(("model", "path", "value", "ok"), CONTACT_CASES)
def test_one_email_address_and_one_e164_phone_per_field(
    model: type[BaseModel], path: str, value: Any, ok: bool
) -> None:
    assert accepts(model, path, value) is ok


@pytest.mark.parametrize("blank", ["", "   ", None])
def test_a_blank_contact_means_none_was_given(blank: str | None) -> None:
    patient = BookingScheduled.model_validate(
        with_value(with_value(SCHEDULED, "patient.email", blank), "patient.phone", blank)
    ).patient
    assert (patient.email, patient.phone) == (None, None)


# --- places and languages ----------------------------------------------------------------------------

PLACE_CASES = [
    case(PracticeConfigured, "timezone", "Australia/Sydney", True, "a zone"),
    case(PracticeConfigured, "timezone", "UTC", True, "UTC"),
    case(PracticeConfigured, "timezone", "America/Argentina/Buenos_Aires", True, "three parts"),
    case(PracticeConfigured, "timezone", "Etc/GMT+5", True, "a fixed offset zone"),
    case(PracticeConfigured, "timezone", "Mars/Olympus_Mons", False, "not a zone"),
    case(PracticeConfigured, "timezone", "", False, "empty"),
    case(PracticeConfigured, "timezone", "../../../etc/passwd", False, "a path"),
    case(PracticeConfigured, "timezone", "/usr/share/zoneinfo/UTC", False, "an absolute path"),
    case(PracticeConfigured, "timezone", "Australia/Sydney\n", False, "a trailing newline"),
    case(PracticeConfigured, "timezone", "Australia", False, "a folder of zones"),
    case(PracticeConfigured, "timezone", "A" * 65, False, "65 characters"),
    case(PracticeConfigured, "locale", "en", True, "a language"),
    case(PracticeConfigured, "locale", "en-AU", True, "language and region"),
    case(PracticeConfigured, "locale", "de_AT", True, "with an underscore"),
    case(PracticeConfigured, "locale", "zh-Hant-TW", True, "with a script"),
    case(PracticeConfigured, "locale", LONGEST_LOCALE, True, "35 characters"),
    case(PracticeConfigured, "locale", LONGEST_LOCALE + "f", False, "36 characters"),
    case(PracticeConfigured, "locale", "e", False, "one letter"),
    case(PracticeConfigured, "locale", "en AU", False, "a space"),
    case(PracticeConfigured, "locale", "en-", False, "an empty subtag"),
    case(PracticeConfigured, "locale", "english!", False, "not a tag"),
    case(BookingScheduled, "patient.locale", "x" * 200, False, "patient locale of 200"),
]


@pytest.mark.parametrize(("model", "path", "value", "ok"), PLACE_CASES)
def test_timezones_and_locales(model: type[BaseModel], path: str, value: Any, ok: bool) -> None:
    assert accepts(model, path, value) is ok


# --- times -------------------------------------------------------------------------------------------

TIME_CASES = [
    case(BookingScheduled, "starts_at", "2000-01-01T00:00:00Z", True, "the earliest"),
    case(BookingScheduled, "starts_at", "1999-12-31T23:59:59Z", False, "just before the earliest"),
    case(BookingScheduled, "starts_at", "2000-01-01T00:30:00+01:00", False, "before the earliest in UTC"),
    case(BookingScheduled, "starts_at", "2099-12-31T23:59:59Z", True, "just before the latest"),
    case(BookingScheduled, "starts_at", "2100-01-01T00:00:00Z", False, "the latest (exclusive)"),
    case(BookingScheduled, "starts_at", "2099-12-31T23:30:00-01:00", False, "after the latest in UTC"),
    case(BookingScheduled, "starts_at", "9999-12-31T23:59:59-23:59", False, "overflows when made UTC"),
    case(BookingScheduled, "starts_at", "0001-01-01T00:00:00+23:59", False, "underflows when made UTC"),
    case(BookingScheduled, "starts_at", "2026-12-02T09:00:00", False, "naive"),
    case(BookingCancellationRequested, "requested_at", "9999-12-31T23:59:59-23:59", False, "a request's time"),
]


@pytest.mark.parametrize(("model", "path", "value", "ok"), TIME_CASES)
def test_times_lie_in_a_sane_range(model: type[BaseModel], path: str, value: Any, ok: bool) -> None:
    assert accepts(model, path, value) is ok  # never an OverflowError


def test_an_overflowing_time_on_the_wire_is_a_contract_violation() -> None:
    raw = json.dumps(
        envelope("booking.scheduled", "bk-1", with_value(SCHEDULED, "ends_at", "9999-12-31T23:59:59-23:59"))
    )
    with pytest.raises(ContractViolation, match="ends_at"):
        parse_envelope(raw.encode(), models_for(topics.UPSTREAM_BOOKINGS))


# --- whole numbers -------------------------------------------------------------------------------------

INT_CASES = [
    *(
        c
        for field, low, high in [
            ("patient_cutoff_hours", 0, 720),
            ("late_window_hours", 0, 720),
            ("professional_no_show_minutes", 0, 1440),
        ]
        for c in (
            case(PracticeConfigured, f"cancellation.{field}", low, True, f"{low}"),
            case(PracticeConfigured, f"cancellation.{field}", low - 1, False, f"{low - 1}"),
            case(PracticeConfigured, f"cancellation.{field}", high, True, f"{high}"),
            case(PracticeConfigured, f"cancellation.{field}", high + 1, False, f"{high + 1}"),
        )
    ),
    case(PracticeConfigured, "waitlist.offer_minutes", 1, True, "1"),
    case(PracticeConfigured, "waitlist.offer_minutes", 0, False, "0"),
    case(PracticeConfigured, "waitlist.offer_minutes", 1440, True, "1440"),
    case(PracticeConfigured, "waitlist.offer_minutes", 1441, False, "1441"),
    case(PracticeConfigured, "cancellation.late_window_hours", 10**30, False, "10**30"),
    case(PracticeConfigured, "cancellation.late_window_hours", 100_000, False, "100000"),
    case(Decision, "score_delta", -1000, True, "-1000"),
    case(Decision, "score_delta", -1001, False, "-1001"),
    case(Decision, "score_delta", 1000, True, "1000"),
    case(Decision, "score_delta", 1001, False, "1001"),
    case(Decision, "hold_days", 0, True, "0"),
    case(Decision, "hold_days", -1, False, "-1"),
    case(Decision, "hold_days", 365, True, "365"),
    case(Decision, "hold_days", 366, False, "366"),
    case(ScoreChanged, "delta", -1_000_000, True, "-10**6"),
    case(ScoreChanged, "delta", -1_000_001, False, "-10**6 - 1"),
    case(ScoreChanged, "score", 1_000_000, True, "10**6"),
    case(ScoreChanged, "score", 1_000_001, False, "10**6 + 1"),
    case(ScoreChanged, "score", 10**400, False, "400 digits"),
    case(PmsSyncCompleted, "attempts", 1, True, "1"),
    case(PmsSyncCompleted, "attempts", 0, False, "0"),
    case(PmsSyncCompleted, "attempts", 10_000, True, "10000"),
    case(PmsSyncCompleted, "attempts", 10_001, False, "10001"),
]


@pytest.mark.parametrize(("model", "path", "value", "ok"), INT_CASES)
def test_whole_numbers(model: type[BaseModel], path: str, value: Any, ok: bool) -> None:
    assert accepts(model, path, value) is ok


# --- money ---------------------------------------------------------------------------------------------

MONEY_CASES = [
    ("45.00", "AUD", True, "an ordinary fee"),
    ("0.01", "AUD", True, "the least"),
    ("0", "AUD", False, "zero"),
    ("0.00", "AUD", False, "zero with decimals"),
    ("-5.00", "AUD", False, "negative"),
    ("100000.00", "EUR", True, "the EUR maximum"),
    ("100000.01", "EUR", False, "just over the EUR maximum"),
    ("1E+5", "EUR", True, "the EUR maximum with an exponent"),
    ("1E+1000000", "EUR", False, "an exponent of a million"),
    ("1E-1000000", "EUR", False, "a negative exponent of a million"),
    ("45.5", "EUR", True, "one decimal place"),
    ("45.001", "EUR", False, "three decimal places in EUR"),
    ("45.000", "EUR", True, "trailing zeros are no decimal places"),
    ("10000000", "JPY", True, "the JPY maximum"),
    ("10000001", "JPY", False, "just over the JPY maximum"),
    ("4500.0", "JPY", True, "JPY with a trailing zero"),
    ("4500.5", "JPY", False, "JPY has no decimal places"),
    ("1.234", "KWD", True, "KWD has three decimal places"),
    ("1.2345", "KWD", False, "KWD with four"),
    ("100000.000", "KWD", True, "the KWD maximum"),
    ("1000000000", "IDR", True, "the IDR maximum"),
    ("1000000001", "IDR", False, "just over the IDR maximum"),
    ("1000000000", "KRW", True, "the KRW maximum"),
    ("45.00", "ABC", False, "not an ISO 4217 code"),
    ("45.00", "XYZ", False, "not an ISO 4217 code either"),
    ("45.00", "XAU", False, "gold is not money a practice charges"),
    ("45.00", "XTS", False, "the testing code"),
    ("45.00", "EURO", False, "four letters"),
    ("45.00", "", False, "no currency"),
    (45.0, "AUD", False, "a float"),
    (True, "AUD", False, "a boolean"),
    (45, "AUD", True, "an integer"),
    (10**400, "AUD", False, "an integer of 400 digits"),
    ("NaN", "AUD", False, "NaN"),
    ("Infinity", "AUD", False, "infinity"),
    (" 45.00", "AUD", False, "leading whitespace"),
    ("4_5.00", "AUD", False, "an underscore"),
    ("45,00", "AUD", False, "a decimal comma"),
    ("\u0664\u0665", "AUD", False, "digits outside ASCII"),
    ("1" * 41, "AUD", False, "41 characters"),
    ("0." + "0" * 37 + "1", "AUD", False, "40 characters, a tiny amount"),
]


@pytest.mark.parametrize(("amount", "currency", "ok"), [m[:3] for m in MONEY_CASES], ids=[m[3] for m in MONEY_CASES])
@pytest.mark.parametrize(
    ("model", "prefix"),
    [
        (BookingScheduled, "deposit."),
        (BookingScheduled, "price."),
        (PracticeConfigured, "fees.late_cancellation."),
        (ChargeCreated, ""),
    ],
    ids=["deposit", "price", "fee", "flat amount"],
)
def test_money(model: type[BaseModel], prefix: str, amount: Any, currency: str, ok: bool) -> None:
    data = with_value(with_value(BASES[model], f"{prefix}amount", amount), f"{prefix}currency", currency)
    try:
        model.model_validate(data)
    except ValidationError:
        assert not ok
    else:
        assert ok


@pytest.mark.parametrize("model", [PaymentCaptured, DepositKept])
def test_every_flat_amount_is_checked_against_its_currency(model: type[BaseModel]) -> None:
    fields = {"charge_id": "ch-1", "booking_id": "bk-1", "currency": "EUR"}
    model.model_validate(fields | {"amount": "100000.00"})
    with pytest.raises(ValidationError, match="more than the most a EUR amount may be"):
        model.model_validate(fields | {"amount": "100000.01"})


def test_one_money_rule_for_every_shape() -> None:
    assert (max_amount("EUR"), max_amount("JPY"), max_amount("KWD")) == (
        Decimal("100000.00"),
        Decimal("10000000"),
        Decimal("100000.000"),
    )
    assert max_amount("AUD") == DEFAULT_MAX_MAJOR_UNITS and {"AUD", "EUR", "JPY", "KWD", "CLF"} <= CURRENCIES
    assert money_problem(Decimal("45.00"), "EUR") is None
    problem = "has more decimal places than JPY has (0)"
    assert money_problem(Decimal("1.5"), "JPY") == problem
    for build in (
        lambda: Money(amount="1.5", currency="JPY"),
        lambda: Fee(amount="1.5", currency="JPY", code="X", code_system="custom"),
        lambda: ChargeCreated.model_validate(CHARGE | {"amount": "1.5", "currency": "JPY"}),
    ):
        with pytest.raises(ValidationError, match=problem.replace("(", r"\(").replace(")", r"\)")):
            build()
    assert Money(amount="45.00", currency="aud").currency == "AUD"


def test_an_adjustment_amount_is_bounded_by_the_most_any_currency_allows() -> None:
    assert accepts(ChargeAdjustmentRequested, "amount", str(ANY_CURRENCY_MAX))
    assert not accepts(ChargeAdjustmentRequested, "amount", str(ANY_CURRENCY_MAX + 1))
    assert accepts(ChargeAdjustmentRequested, "amount", "0.0001")  # CLF and UYW have four places
    assert not accepts(ChargeAdjustmentRequested, "amount", "0.00001")
    assert not accepts(ChargeAdjustmentRequested, "amount", "0")
    assert not accepts(ChargeAdjustmentRequested, "amount", "1E+1000000")


@pytest.mark.parametrize("amount", ["1E+1000000", "1E-1000000", "9" * 40, 10**4000])
def test_a_huge_exponent_is_refused_cheaply_and_never_quoted(amount: Any) -> None:
    started = time.perf_counter()
    for _ in range(100):
        with pytest.raises(ValidationError) as caught:
            Money.model_validate({"amount": amount, "currency": "EUR"})
    assert time.perf_counter() - started < 1.0  # a hundred refusals: far less than formatting one
    assert all(str(amount)[:20] not in e["msg"] for e in caught.value.errors())


def test_money_on_the_wire_is_a_contract_violation_with_a_reason() -> None:
    data = with_value(SCHEDULED, "deposit.amount", "1E+1000000")
    raw = json.dumps(envelope("booking.scheduled", "bk-1", data)).encode()
    with pytest.raises(ContractViolation, match=r"deposit: .*more than the most a AUD amount may be") as caught:
        parse_envelope(raw, models_for(topics.UPSTREAM_BOOKINGS))
    assert "1E+1000000" not in str(caught.value)


# --- the answers to settings and commands that break the bounds -----------------------------------------

from billing.app import reject_unreadable_adjustment  # noqa: E402
from cancellation_policy.configuration import QUOTE_MAX_CHARS, reject_invalid_settings  # noqa: E402


def rejection(data: dict[str, Any], subject: str | None = None) -> PracticeConfigurationRejected:
    [(topic, payload, key)] = reject_invalid_settings(data, "practice.configured payload breaks the contract", subject)
    assert topic == topics.PRACTICE_EVENTS and isinstance(payload, PracticeConfigurationRejected)
    assert key == payload.practice_id and payload.reason == "invalid_settings"
    return payload


def test_out_of_bounds_settings_are_answered_with_what_to_correct() -> None:
    data = with_value(
        with_value(CONFIGURED, "fees.late_cancellation.amount", "1E+1000000"), "cancellation.late_window_hours", 100_000
    )
    message = rejection(data).message
    assert (
        "fees.late_cancellation: the amount 1E+1000000 is more than the most a EUR amount may be (100000.00)" in message
    )
    assert "cancellation.late_window_hours is 100000: input should be less than or equal to 720" in message
    assert "Send the settings again" in message and "previous settings stay in force" in message


def test_a_rejection_quotes_briefly_and_never_a_contact() -> None:
    data = with_value(
        with_value(CONFIGURED, "name", "N\n" + "n" * 100_000), "contact.email", "a@x.example, b@x.example"
    )
    data = with_value(data, "fees.late_cancellation.currency", "XYZ")
    message = rejection(data).message
    assert len(message) < 1000 and "n" * (QUOTE_MAX_CHARS + 1) not in message and "…" in message
    assert "contact.email: must be one email address" in message and "x.example" not in message
    assert "fees.late_cancellation.currency is 'XYZ'" in message


def test_a_rejection_names_more_problems_than_it_shows() -> None:
    data = {"practice_id": "pr-1", "name": 5, "timezone": "Mars/Base", "locale": "!", "waitlist": {"offer_minutes": 0}}
    assert "and 1 more" in rejection(data).message


@pytest.mark.parametrize(
    ("practice_id", "subject", "answered_to"),
    [
        ("pr-1", None, "pr-1"),
        ("pr 1", "pr-1", "pr-1"),
        (None, "pr-2", "pr-2"),
        ("x" * 129, None, None),
        (None, "a b", None),
    ],
)
def test_a_rejection_needs_a_valid_practice_id(practice_id: Any, subject: str | None, answered_to: str | None) -> None:
    data = with_value(CONFIGURED, "timezone", "Nowhere") | {"practice_id": practice_id}
    answers = reject_invalid_settings(data, "broken", subject)
    assert [key for _, _, key in answers] == ([answered_to] if answered_to else [])


@pytest.mark.parametrize(
    "data", [{}, {"practice_id": "pr-1", "fees": "nope"}, {"practice_id": "pr-1", "name": {"x": [1] * 10}}]
)
def test_answering_never_raises(data: dict[str, Any]) -> None:
    reject_invalid_settings(data, "broken", None)


@pytest.mark.parametrize(
    ("changes", "answered"),
    [
        ({"amount": "1E+1000000"}, True),
        ({"amount": "0"}, True),
        ({"amount": 30.0}, True),
        ({"actor": {"id": "s", "roles": ["owner"] * 21}}, True),
        ({"charge_id": "no such charge"}, False),
        ({"request_id": "r" * 129}, False),
    ],
)
def test_an_out_of_bounds_adjustment_is_rejected_as_invalid_request(changes: dict[str, Any], answered: bool) -> None:
    data = ADJUSTMENT | changes
    with pytest.raises(ValidationError):
        ChargeAdjustmentRequested.model_validate(data)
    answers = reject_unreadable_adjustment(data, "charge.adjustment_requested payload breaks the contract", "ch-1")
    if not answered:
        assert answers == []
        return
    [(topic, payload, key)] = answers
    assert (topic, key) == (topics.BILLING_EVENTS, data["charge_id"])
    assert payload == ChargeAdjustmentRejected(
        charge_id=data["charge_id"], request_id="req-1", reason="invalid_request"
    )


def test_staff_and_patients_in_the_examples_keep_their_shapes() -> None:
    actor = Actor.model_validate({"kind": "system", "id": "service/booking"})
    patient = Patient.model_validate(SCHEDULED["patient"])
    assert (actor.id, patient.phone, patient.locale) == ("service/booking", "+61400000000", "en-AU")
