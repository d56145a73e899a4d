"""The notification rules, by table: who hears on which channel for each event, how times and
money read in each locale and timezone, what the templates say, and when a failed send is
tried again. No infrastructure.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from email import message_from_bytes
from email.header import decode_header, make_header
from pathlib import Path

import pytest

from notification import domain
from notification.delivery import SMS_NOT_CONFIGURED, DeliveryError, EmailChannel, SmsChannel
from notification.rendering import TEMPLATES, Renderer
from notification.settings import NotificationSettings

ADA = domain.PatientContact(first_name="Ada", email="ada@example.com", phone="+61 400 000 001", locale="en")
EMAIL_ONLY = domain.PatientContact(first_name="Bo", email="bo@example.com", phone=None, locale=None)
PHONE_ONLY = domain.PatientContact(first_name="Cy", email=None, phone="+61 400 000 003", locale="de")
BLANK = domain.PatientContact(first_name="Di", email="  ", phone="", locale=None)

PRACTICE = domain.PracticeContact(
    practice_id="p1",
    name="Harbour Dental",
    timezone="Australia/Sydney",
    locale="en",
    email="desk@harbour.example",
    phone="+61 2 9000 0000",
    preferred_channel="email",
)
ASKED = domain.PracticeContact(**{**PRACTICE.__dict__, "notify_practice_on_online_cancel": True})
PREFERS_SMS = domain.PracticeContact(**{**PRACTICE.__dict__, "preferred_channel": "sms"})
SMS_PREFERRED_BUT_NO_PHONE = domain.PracticeContact(**{**PRACTICE.__dict__, "preferred_channel": "sms", "phone": None})
ASKED_NO_EMAIL = domain.PracticeContact(**{**ASKED.__dict__, "email": None})
UNKNOWN = domain.PracticeContact.unknown("p9")
NO_CONTACTS = domain.PracticeContact(practice_id="p8", name="Quiet Clinic", timezone="Australia/Sydney")

NOOR = domain.ProfessionalContact(first_name="Noor", email="noor@locums.example", phone="+61 400 000 009", locale=None)
NOOR_GERMAN = domain.ProfessionalContact(first_name="Noor", email="noor@locums.example", locale="de-AT")
NOOR_NO_EMAIL = domain.ProfessionalContact(first_name="Noor", email=None, phone="+61 400 000 009")


def plan(messages: list[domain.Message]) -> list[tuple[str, str, str]]:
    """(recipient, channel, "sent" or the skip reason) for each planned message."""
    return [(m.recipient, m.channel, m.skip_reason or "send") for m in messages]


# --- who hears, on which channel -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("actor", "patient", "practice", "expected"),
    [
        # cancelled by staff: the patient, email and SMS where they have them
        ("staff", ADA, PRACTICE, [("patient", "email", "send"), ("patient", "sms", "send")]),
        (
            "staff",
            EMAIL_ONLY,
            PRACTICE,
            [("patient", "email", "send"), ("patient", "sms", "the patient has no mobile number on file")],
        ),
        (
            "staff",
            PHONE_ONLY,
            PRACTICE,
            [("patient", "email", "the patient has no email address on file"), ("patient", "sms", "send")],
        ),
        (
            "staff",
            BLANK,
            PRACTICE,
            [
                ("patient", "email", "the patient has no email address on file"),
                ("patient", "sms", "the patient has no mobile number on file"),
            ],
        ),
        (
            "staff",
            None,
            PRACTICE,
            [
                ("patient", "email", "no contact details are known for this booking's patient"),
                ("patient", "sms", "no contact details are known for this booking's patient"),
            ],
        ),
        # cancelled online by the patient: the patient; the practice by email only when it asked
        ("patient", ADA, PRACTICE, [("patient", "email", "send"), ("patient", "sms", "send")]),
        (
            "patient",
            ADA,
            ASKED,
            [("patient", "email", "send"), ("patient", "sms", "send"), ("practice", "email", "send")],
        ),
        (
            "patient",
            EMAIL_ONLY,
            ASKED_NO_EMAIL,
            [
                ("patient", "email", "send"),
                ("patient", "sms", "the patient has no mobile number on file"),
                ("practice", "email", "the practice has no email address on file"),
            ],
        ),
        # cancelled by a professional or the system: the office, through its preferred channel
        ("professional", ADA, PRACTICE, [("practice", "email", "send")]),
        ("professional", ADA, ASKED, [("practice", "email", "send")]),
        ("system", None, PREFERS_SMS, [("practice", "sms", "send")]),
        ("system", ADA, SMS_PREFERRED_BUT_NO_PHONE, [("practice", "email", "send")]),
        (
            "professional",
            ADA,
            UNKNOWN,
            [("practice", "email", "the practice has no email address or phone number on file")],
        ),
    ],
)
def test_who_hears_about_a_cancellation(actor, patient, practice, expected) -> None:
    assert plan(domain.plan_cancellation(actor, patient, practice)) == expected


@pytest.mark.parametrize(
    ("reason", "requester", "patient", "expected"),
    [
        # the request was seen: the patient hears exactly when the patient asked
        ("within_online_cutoff", "patient", ADA, [("patient", "email", "send"), ("patient", "sms", "send")]),
        (
            "appointment_started",
            "patient",
            EMAIL_ONLY,
            [("patient", "email", "send"), ("patient", "sms", "the patient has no mobile number on file")],
        ),
        ("appointment_started", "staff", ADA, []),
        ("within_online_cutoff", "staff", ADA, []),
        ("not_allowed", "professional", ADA, []),
        # the request was not seen: only a patient-portal reason says the patient asked
        ("within_online_cutoff", None, ADA, [("patient", "email", "send"), ("patient", "sms", "send")]),
        (
            "online_cancellation_disabled",
            None,
            EMAIL_ONLY,
            [("patient", "email", "send"), ("patient", "sms", "the patient has no mobile number on file")],
        ),
        (
            "no_portal_account",
            None,
            PHONE_ONLY,
            [("patient", "email", "the patient has no email address on file"), ("patient", "sms", "send")],
        ),
        ("appointment_started", None, ADA, []),
        ("already_cancelled", None, ADA, []),
    ],
)
def test_who_hears_about_a_rejection(reason, requester, patient, expected) -> None:
    assert plan(domain.plan_rejection(reason, requester, patient, PRACTICE)) == expected


# no-show recorded, fee charged; a refund; a late-cancellation fee final after review → the patient, by email only
@pytest.mark.parametrize(
    ("patient", "expected"),
    [
        (ADA, [("patient", "email", "send")]),
        (PHONE_ONLY, [("patient", "email", "the patient has no email address on file")]),
        (BLANK, [("patient", "email", "the patient has no email address on file")]),
        (None, [("patient", "email", "no contact details are known for this booking's patient")]),
    ],
)
@pytest.mark.parametrize(
    ("planner", "template"),
    [
        (domain.plan_no_show_fee, "no_show_fee_charged"),
        (domain.plan_refund, "fee_refunded"),
        (domain.plan_late_fee, "late_cancellation_fee"),  # a late-cancellation fee final after review
    ],
)
def test_who_hears_about_a_fee(patient, expected, planner, template) -> None:
    messages = planner(patient, PRACTICE)
    assert plan(messages) == expected
    assert {m.template for m in messages} == {template}


@pytest.mark.parametrize(
    ("fee", "expected"),
    [
        # nothing charged yet (the no-show alone, or a waived fee that billing never raises)
        (domain.NoShowFee(), None),
        (domain.NoShowFee(charge_card=False), None),
        (domain.NoShowFee(charge_card=True), None),
        # not for the card: outstanding at once
        (domain.NoShowFee(charge_id="ch-1", charge_card=False), "outstanding"),
        # for the card: the gateway's answer first
        (domain.NoShowFee(charge_id="ch-1", charge_card=True), None),
        (domain.NoShowFee(charge_id="ch-1", charge_card=True, payment="captured"), "charged_to_card"),
        (domain.NoShowFee(charge_id="ch-1", charge_card=True, payment="failed"), "card_failed"),
        # the charge seen, the no-show not yet: wait, unless the card already answered
        (domain.NoShowFee(charge_id="ch-1"), None),
        (domain.NoShowFee(charge_id="ch-1", payment="captured"), "charged_to_card"),
        (domain.NoShowFee(charge_id="ch-1", payment="failed"), "card_failed"),
    ],
)
def test_a_no_show_fee_is_told_once_it_is_settled(fee, expected) -> None:
    assert domain.no_show_fee_settlement(fee) == expected


# slot offered → the waitlisted patient, SMS and email, while the offer stands
@pytest.mark.parametrize(
    ("waitlisted", "expected"),
    [
        (ADA, [("waitlist", "email", "send"), ("waitlist", "sms", "send")]),
        (EMAIL_ONLY, [("waitlist", "email", "send"), ("waitlist", "sms", "the patient has no mobile number on file")]),
        (PHONE_ONLY, [("waitlist", "email", "the patient has no email address on file"), ("waitlist", "sms", "send")]),
        (
            None,
            [
                ("waitlist", "email", "no contact details are known for this waitlist entry"),
                ("waitlist", "sms", "no contact details are known for this waitlist entry"),
            ],
        ),
    ],
)
def test_who_hears_about_a_slot_offer(waitlisted, expected) -> None:
    messages = domain.plan_slot_offer(waitlisted, PRACTICE, expires_at=T + timedelta(minutes=30), now=T)
    assert plan(messages) == expected
    assert {m.template for m in messages} == {"slot_offered"}


def test_an_offer_that_expired_before_it_could_be_sent_is_skipped_not_sent() -> None:
    expires = T + timedelta(minutes=30)
    assert plan(domain.plan_slot_offer(ADA, PRACTICE, expires_at=expires, now=expires)) == [
        ("waitlist", "email", "the offer expired before it could be sent"),
        ("waitlist", "sms", "the offer expired before it could be sent"),
    ]
    assert all(m.address is None for m in domain.plan_slot_offer(ADA, PRACTICE, expires_at=expires, now=expires))


# hold placed, account suspended → the professional, by email
@pytest.mark.parametrize("template", [domain.HOLD_TEMPLATE, domain.SUSPENSION_TEMPLATE])
@pytest.mark.parametrize(
    ("professional", "expected"),
    [
        (NOOR, [("professional", "email", "send")]),
        (NOOR_NO_EMAIL, [("professional", "email", "no email address is known for this professional")]),
        (None, [("professional", "email", "no contact details are known for this professional")]),
    ],
)
def test_who_hears_about_a_hold_or_a_suspension(template, professional, expected) -> None:
    messages = domain.plan_professional_notice(template, professional, PRACTICE)
    assert plan(messages) == expected
    assert {m.template for m in messages} == {template}


def test_a_professional_is_written_to_in_their_locale_else_the_practices() -> None:
    german_practice = domain.PracticeContact(**{**PRACTICE.__dict__, "locale": "de"})
    assert domain.plan_professional_notice(domain.HOLD_TEMPLATE, NOOR_GERMAN, PRACTICE)[0].locale == "de"
    assert domain.plan_professional_notice(domain.HOLD_TEMPLATE, NOOR, german_practice)[0].locale == "de"
    assert domain.plan_professional_notice(domain.HOLD_TEMPLATE, NOOR, PRACTICE)[0].locale == "en"


# PMS manual update required → the practice, through its preferred channel
@pytest.mark.parametrize(
    ("practice", "expected"),
    [
        (PRACTICE, [("practice", "email", "send")]),
        (PREFERS_SMS, [("practice", "sms", "send")]),
        (SMS_PREFERRED_BUT_NO_PHONE, [("practice", "email", "send")]),
        (NO_CONTACTS, [("practice", "email", "the practice has no email address or phone number on file")]),
    ],
)
def test_who_hears_that_the_pms_needs_a_manual_update(practice, expected) -> None:
    messages = domain.plan_manual_update(practice)
    assert plan(messages) == expected
    assert {m.template for m in messages} == {"pms_manual_update_required"}


@pytest.mark.parametrize(
    ("actor", "reason_code", "expected"),
    [
        ("system", "professional_suspended", True),
        ("system", None, False),
        ("system", "practice_closed", False),
        ("professional", "professional_suspended", False),
    ],
)
def test_a_system_cancellation_says_when_a_suspension_caused_it(actor, reason_code, expected) -> None:
    assert domain.caused_by_suspension(actor, reason_code) is expected


def test_templates_are_named_for_the_event_and_who_cancelled() -> None:
    assert {m.template for m in domain.plan_cancellation("staff", ADA, PRACTICE)} == {"booking_cancelled_by_staff"}
    assert {m.template for m in domain.plan_cancellation("patient", ADA, ASKED)} == {"booking_cancelled_online"}
    assert {m.template for m in domain.plan_cancellation("professional", ADA, PRACTICE)} == {
        "booking_cancelled_by_professional"
    }
    assert {m.template for m in domain.plan_cancellation("system", ADA, PRACTICE)} == {"booking_cancelled_by_system"}
    assert {m.template for m in domain.plan_rejection("no_portal_account", None, ADA, PRACTICE)} == {
        "booking_cancellation_rejected"
    }


def test_a_message_has_one_id_per_event_recipient_and_channel() -> None:
    a = domain.notification_id("evt-1", "patient", "email")
    assert a == domain.notification_id("evt-1", "patient", "email")  # a redelivery records the same message
    assert (
        len(
            {
                a,
                domain.notification_id("evt-1", "patient", "sms"),
                domain.notification_id("evt-1", "practice", "email"),
                domain.notification_id("evt-2", "patient", "email"),
            }
        )
        == 4
    )
    assert a.version == 5


@pytest.mark.parametrize(
    ("candidates", "expected"),
    [
        (("en",), "en"),
        (("de",), "de"),
        (("de-AT",), "de"),
        (("de_CH",), "de"),
        (("DE",), "de"),
        (("fr-FR", "de"), "de"),  # the patient's locale is not one we write: the practice's
        ((None, "de"), "de"),
        (("fr", None), "en"),
        ((), "en"),
    ],
)
def test_locale(candidates, expected) -> None:
    assert domain.resolve_locale(*candidates) == expected


def test_patient_messages_use_the_patients_locale_else_the_practices() -> None:
    german_practice = domain.PracticeContact(**{**PRACTICE.__dict__, "locale": "de-DE"})
    assert {m.locale for m in domain.plan_cancellation("staff", PHONE_ONLY, PRACTICE)} == {"de"}
    assert {m.locale for m in domain.plan_cancellation("staff", EMAIL_ONLY, german_practice)} == {"de"}
    assert {m.locale for m in domain.plan_cancellation("professional", PHONE_ONLY, PRACTICE)} == {"en"}  # the office's


# --- times and money, in the practice's timezone and the reader's locale ---------------------------
# Babel (CLDR) writes them. CLDR puts a narrow no-break space before AM/PM and a no-break space
# between an amount and a trailing currency sign; a subject or an SMS folds both into a space.

NNBSP = "\u202f"
NBSP = "\xa0"
T = datetime(2031, 3, 10, 22, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("timezone", "locale", "expected"),
    [
        ("Australia/Sydney", "en", f"Tuesday, March 11, 2031, 9:00{NNBSP}AM AEDT"),
        ("Australia/Sydney", "de", "Dienstag, 11. März 2031, 09:00 AEDT"),
        ("Australia/Sydney", "en-AU", f"Tuesday, 11 March 2031, 9:00{NNBSP}am AEDT"),  # the tag's region
        ("Australia/Sydney", "de-AT", "Dienstag, 11. März 2031, 09:00 AEDT"),
        ("Australia/Sydney", "fr", f"Tuesday, March 11, 2031, 9:00{NNBSP}AM AEDT"),  # not written: English
        ("Europe/Berlin", "de", "Montag, 10. März 2031, 23:00 CET"),
        ("America/New_York", "en", f"Monday, March 10, 2031, 6:00{NNBSP}PM EDT"),
        ("UTC", "en", f"Monday, March 10, 2031, 10:00{NNBSP}PM UTC"),
        (None, "en", f"Monday, March 10, 2031, 10:00{NNBSP}PM UTC"),  # unknown timezone: UTC
        ("Mars/Olympus_Mons", "en", f"Monday, March 10, 2031, 10:00{NNBSP}PM UTC"),  # invalid: UTC, not a crash
        ("Asia/Kolkata", "en", f"Tuesday, March 11, 2031, 3:30{NNBSP}AM IST"),
    ],
)
def test_times_are_shown_in_the_practices_timezone(timezone, locale, expected) -> None:
    assert domain.format_when(T, timezone, locale) == expected


@pytest.mark.parametrize(
    ("at", "timezone", "locale", "expected"),
    [
        # Berlin springs forward at 01:00 UTC on 30 March 2031: 02:00 CET becomes 03:00 CEST
        (datetime(2031, 3, 30, 0, 30, tzinfo=UTC), "Europe/Berlin", "de", "Sonntag, 30. März 2031, 01:30 CET"),
        (datetime(2031, 3, 30, 1, 30, tzinfo=UTC), "Europe/Berlin", "de", "Sonntag, 30. März 2031, 03:30 CEST"),
        (datetime(2031, 3, 30, 0, 30, tzinfo=UTC), "Europe/Berlin", "en", f"Sunday, March 30, 2031, 1:30{NNBSP}AM CET"),
        (
            datetime(2031, 3, 30, 1, 30, tzinfo=UTC),
            "Europe/Berlin",
            "en",
            f"Sunday, March 30, 2031, 3:30{NNBSP}AM CEST",
        ),
        # New York springs forward at 07:00 UTC on 9 March 2031
        (
            datetime(2031, 3, 9, 6, 30, tzinfo=UTC),
            "America/New_York",
            "en",
            f"Sunday, March 9, 2031, 1:30{NNBSP}AM EST",
        ),
        (
            datetime(2031, 3, 9, 7, 30, tzinfo=UTC),
            "America/New_York",
            "en",
            f"Sunday, March 9, 2031, 3:30{NNBSP}AM EDT",
        ),
        # Sydney falls back at 16:00 UTC on 5 April 2031: 02:30 happens twice, the zone tells which
        (
            datetime(2031, 4, 5, 15, 30, tzinfo=UTC),
            "Australia/Sydney",
            "en",
            f"Sunday, April 6, 2031, 2:30{NNBSP}AM AEDT",
        ),
        (
            datetime(2031, 4, 5, 16, 30, tzinfo=UTC),
            "Australia/Sydney",
            "en",
            f"Sunday, April 6, 2031, 2:30{NNBSP}AM AEST",
        ),
        (datetime(2031, 4, 5, 15, 30, tzinfo=UTC), "Australia/Sydney", "de", "Sonntag, 6. April 2031, 02:30 AEDT"),
        (datetime(2031, 4, 5, 16, 30, tzinfo=UTC), "Australia/Sydney", "de", "Sonntag, 6. April 2031, 02:30 AEST"),
    ],
)
def test_times_across_a_daylight_saving_change(at, timezone, locale, expected) -> None:
    assert domain.format_when(at, timezone, locale) == expected


def test_noon_and_midnight_read_as_people_say_them() -> None:
    assert domain.format_when(datetime(2031, 3, 10, 0, 5, tzinfo=UTC), "UTC", "en").endswith(f"12:05{NNBSP}AM UTC")
    assert domain.format_when(datetime(2031, 3, 10, 12, 0, tzinfo=UTC), "UTC", "en").endswith(f"12:00{NNBSP}PM UTC")
    assert domain.format_when(datetime(2031, 3, 10, 0, 5, tzinfo=UTC), "UTC", "de").endswith("00:05 UTC")


@pytest.mark.parametrize(
    ("amount", "currency", "locale", "expected"),
    [
        ("45.00", "AUD", "en", "A$45.00"),
        ("45", "AUD", "de", f"45,00{NBSP}AU$"),
        ("1250.5", "AUD", "en", "A$1,250.50"),
        ("1250.5", "AUD", "de", f"1.250,50{NBSP}AU$"),
        ("1250.5", "AUD", "en-AU", "$1,250.50"),  # at home the dollar needs no prefix
        # the currency's own decimals: JPY none, KWD three
        ("3000", "JPY", "en", "¥3,000"),
        ("3000", "JPY", "de", f"3.000{NBSP}¥"),
        ("1.25", "KWD", "en", "KWD1.250"),
        ("1.25", "KWD", "de", f"1,250{NBSP}KWD"),
        ("0.5", "BHD", "en", "BHD0.500"),
        ("3000", "HUF", "de", f"3.000{NBSP}HUF"),  # as the contract counts HUF: no decimals
        # the locale's own way
        ("45", "EUR", "de", f"45,00{NBSP}€"),
        ("45", "EUR", "en", "€45.00"),
        ("45.5", "EUR", "de-AT", f"€{NBSP}45,50"),
    ],
)
def test_money(amount, currency, locale, expected) -> None:
    assert domain.format_money(Decimal(amount), currency, locale) == expected


@pytest.mark.parametrize(
    ("language", "tags", "expected"),
    [
        ("en", ("en-AU", "de-DE"), "en_AU"),  # the recipient's tag first
        ("en", (None, "en-AU"), "en_AU"),  # else the practice's
        ("en", ("de-AT", "en-GB"), "en_GB"),  # a tag in another language is not the message's
        ("de", ("de_CH",), "de_CH"),
        ("de", ("en-AU",), "de"),
        ("en", ("not a tag", "xx"), "en"),
        ("en", (), "en"),
    ],
)
def test_the_formatting_locale_is_the_most_specific_tag_in_the_messages_language(language, tags, expected) -> None:
    assert str(domain.formatting_locale(language, *tags)) == expected


def test_rebook_link() -> None:
    assert (
        domain.rebook_url("https://portal.example/", "prac 1", "bk/2")
        == "https://portal.example/practices/prac%201/rebook?booking_id=bk%2F2"
    )


# --- the words: every planned message has a template in every locale, and it reads right ----------

ALL_PLANS = [
    *domain.plan_cancellation("staff", ADA, PRACTICE),
    *domain.plan_cancellation("patient", ADA, ASKED),
    *domain.plan_cancellation("professional", ADA, PREFERS_SMS),
    *domain.plan_cancellation("professional", ADA, PRACTICE),
    *domain.plan_cancellation("system", ADA, PREFERS_SMS),
    *domain.plan_cancellation("system", ADA, PRACTICE),
    *domain.plan_rejection("within_online_cutoff", None, ADA, PRACTICE),
    *domain.plan_no_show_fee(ADA, PRACTICE),
    *domain.plan_refund(ADA, PRACTICE),
    *domain.plan_late_fee(ADA, PRACTICE),
    *domain.plan_slot_offer(ADA, PRACTICE, expires_at=T + timedelta(minutes=30), now=T - timedelta(hours=1)),
    *domain.plan_professional_notice(domain.HOLD_TEMPLATE, NOOR, PRACTICE),
    *domain.plan_professional_notice(domain.SUSPENSION_TEMPLATE, NOOR, PRACTICE),
    *domain.plan_manual_update(PRACTICE),
    *domain.plan_manual_update(PREFERS_SMS),
    # second release (issue 17)
    *domain.plan_practice_notice(domain.STANDING_TEMPLATE, PRACTICE),
    *domain.plan_practice_notice(domain.STANDING_TEMPLATE, PREFERS_SMS),
    *domain.plan_practice_notice(domain.NO_SHOW_SUSPECTED_TEMPLATE, PRACTICE),
    *domain.plan_practice_notice(domain.NO_SHOW_SUSPECTED_TEMPLATE, PREFERS_SMS),
    *domain.plan_professional_notice(domain.TURNAWAY_TEMPLATE, NOOR, PRACTICE),
    *domain.plan_professional_notice(domain.REINSTATEMENT_TEMPLATE, NOOR, PRACTICE),
]


@pytest.mark.parametrize("locale", domain.SUPPORTED_LOCALES)
@pytest.mark.parametrize("message", ALL_PLANS, ids=lambda m: f"{m.template}/{m.recipient}.{m.channel}")
def test_every_message_has_a_template_in_every_locale(message: domain.Message, locale: str) -> None:
    renderer = Renderer()
    path = TEMPLATES / renderer.path(message.template, message.recipient, message.channel, locale)
    assert path.is_file(), f"missing template {path.relative_to(TEMPLATES)}"
    localised = domain.Message(**{**message.__dict__, "locale": locale})
    rendered = renderer.render(message.template, message.recipient, message.channel, locale, _context(localised))
    assert rendered.body.strip()
    assert "None" not in rendered.body
    if message.channel == "email":
        assert rendered.subject and "\n" not in rendered.subject
    else:
        assert rendered.subject is None and "\n" not in rendered.body


def _context(message: domain.Message, **facts: object) -> dict[str, object]:
    defaults: dict[str, object] = {
        "booking_id": "bk-1",
        "service_code": "D1110",
        "practitioner_id": "dr-lee",
        "classification": "late",
        "rebook_url": "https://portal.example/practices/p1/rebook?booking_id=bk-1",
        "reason": "within_online_cutoff",
        "message": "Please contact the practice to cancel within 48 hours of your appointment.",
        # the rows told from billing, booking's waitlist, scoring and pms-sync
        "fee_code": "D9986",
        "fee_code_system": "CDT",
        "settlement": "outstanding",
        "expires": T - timedelta(minutes=30),
        "offer_url": "https://portal.example/practices/p1/offers/of-1",
        "professional_id": "pro-1",
        "professional_first_name": "Noor",
        "hold_starts": T,
        "hold_ends": T + timedelta(days=7),
        "hold_cause": "late_cancellation",
        "suspended": T,
        "hold_count": 3,
        "pms_action": "cancel_booking",
        "pms_integration": "manual",
        "pms_message": "Manual update required: cancel this booking in your PMS too",
        "patient_id": "pat-77",
        "standing": "deposit_required",
        "previous_standing": "good",
        "standing_count": 2,
        "window_days": 365,
        "grace_minutes": 15,
        "reinstated": T,
    }
    fee = (
        (Decimal("60.00"), "AUD")
        if message.template
        in (domain.NO_SHOW_FEE_TEMPLATE, domain.TURNAWAY_TEMPLATE, domain.REFUND_TEMPLATE, domain.LATE_FEE_TEMPLATE)
        else None
    )
    patient = None if message.recipient == "professional" else ADA
    return domain.template_context(
        message, starts_at=T, practice=PRACTICE, patient=patient, fee=fee, **(defaults | facts)
    )


def _only(messages: list[domain.Message], recipient: str, channel: str, locale: str = "en") -> domain.Message:
    [message] = [m for m in messages if m.recipient == recipient and m.channel == channel]
    return domain.Message(**{**message.__dict__, "locale": locale})


def test_staff_cancellation_email_quotes_the_reason_in_the_practices_time() -> None:
    message = _only(domain.plan_cancellation("staff", ADA, PRACTICE), "patient", "email")
    out = Renderer().render(
        message.template,
        "patient",
        "email",
        "en",
        _context(message, reason_text="Dr Lee is unwell", reason_code="illness"),
    )
    assert out.subject == "Your appointment on Tuesday, March 11, 2031, 9:00 AM AEDT has been cancelled"
    assert out.body.startswith("Hello Ada,\n")
    assert 'Reason given: "Dr Lee is unwell"' in out.body
    assert "+61 2 9000 0000" in out.body
    assert "\n\n\n" not in out.body


def test_reason_code_is_given_when_there_is_no_text_and_left_out_when_neither() -> None:
    message = _only(domain.plan_cancellation("staff", ADA, PRACTICE), "patient", "sms")
    renderer = Renderer()
    with_code = renderer.render(
        message.template, "patient", "sms", "en", _context(message, reason_code="practitioner_unavailable")
    )
    assert "Reason: practitioner unavailable." in with_code.body
    without = renderer.render(message.template, "patient", "sms", "en", _context(message))
    assert "Reason" not in without.body


def test_german_sms_and_fee() -> None:
    message = _only(domain.plan_cancellation("staff", ADA, PRACTICE), "patient", "email", "de")
    context = domain.template_context(
        message,
        starts_at=T,
        practice=PRACTICE,
        patient=ADA,
        fee=(Decimal("45"), "AUD"),
        reason_text="Krank",
        booking_id="bk-1",
    )
    out = Renderer().render(message.template, "patient", "email", "de", context)
    assert out.subject == "Ihr Termin am Dienstag, 11. März 2031, 09:00 AEDT wurde abgesagt"
    assert "Angegebener Grund: „Krank“" in out.body
    assert "45,00\xa0AU$" in out.body  # CLDR: a no-break space before the sign


def test_online_cancellation_gives_the_patient_a_rebook_link() -> None:
    message = _only(domain.plan_cancellation("patient", ADA, ASKED), "patient", "sms")
    out = Renderer().render(message.template, "patient", "sms", "en", _context(message))
    assert out.body == (
        "Harbour Dental: your appointment on Tuesday, March 11, 2031, 9:00 AM AEDT is cancelled. "
        "Book again: https://portal.example/practices/p1/rebook?booking_id=bk-1"
    )


def test_rejection_tells_the_patient_what_to_do_next() -> None:
    message = _only(domain.plan_rejection("within_online_cutoff", None, ADA, PRACTICE), "patient", "email")
    renderer = Renderer()
    english = renderer.render(message.template, "patient", "email", "en", _context(message))
    assert "Please contact the practice to cancel within 48 hours of your appointment." in english.body
    assert "You can reach Harbour Dental on +61 2 9000 0000 or at desk@harbour.example." in english.body
    german = renderer.render(message.template, "patient", "email", "de", _context(message))
    assert "bitte wenden Sie sich direkt an die Praxis" in german.body


def test_offer_link() -> None:
    assert (
        domain.offer_url("https://portal.example/", "prac 1", "of/2")
        == "https://portal.example/practices/prac%201/offers/of%2F2"
    )


def test_system_cancellation_caused_by_a_suspension_says_so_and_others_do_not() -> None:
    renderer = Renderer()
    for practice in (PRACTICE, PREFERS_SMS):
        [message] = domain.plan_cancellation("system", ADA, practice)
        for locale, words in (("en", "account is suspended"), ("de", "Konto der gebuchten Fachkraft gesperrt")):
            suspended = renderer.render(
                message.template,
                "practice",
                message.channel,
                locale,
                _context(
                    message,
                    suspension=True,
                    reason_code="professional_suspended",
                    reason_text="The booked professional's account is suspended.",
                ),
            )
            assert words in suspended.body
            assert "The booked professional's account is suspended." not in suspended.body  # said once, in words
            other = renderer.render(
                message.template, "practice", message.channel, locale, _context(message, reason_text="Clinic flooded")
            )
            assert words not in other.body and "Clinic flooded" in other.body


@pytest.mark.parametrize(
    ("settlement", "english", "german"),
    [
        (
            "charged_to_card",
            "The fee has been charged to the card we hold on file for you.",
            "Die Gebühr wurde von der bei uns hinterlegten Karte abgebucht.",
        ),
        ("outstanding", "The fee is outstanding on your account.", "Die Gebühr ist auf Ihrem Konto offen."),
        (
            "card_failed",
            "We could not charge the fee to the card we hold on file for you, so it is outstanding",
            "Wir konnten die Gebühr nicht von der bei uns hinterlegten Karte abbuchen",
        ),
    ],
)
def test_no_show_fee_email_names_amount_code_and_how_it_is_paid(settlement, english, german) -> None:
    [message] = domain.plan_no_show_fee(ADA, PRACTICE)
    renderer = Renderer()
    en = renderer.render(message.template, "patient", "email", "en", _context(message, settlement=settlement))
    assert en.subject == "No-show fee for your appointment on Tuesday, March 11, 2031, 9:00 AM AEDT"
    assert "a no-show fee of A$60.00 applies (code D9986, CDT)" in en.body
    assert english in en.body
    de_message = domain.Message(**{**message.__dict__, "locale": "de"})
    de = renderer.render(message.template, "patient", "email", "de", _context(de_message, settlement=settlement))
    assert de.subject == "Ausfallgebühr für Ihren Termin am Dienstag, 11. März 2031, 09:00 AEDT"
    assert "Ausfallgebühr von 60,00\xa0AU$ an (Code D9986, CDT)" in de.body
    assert german in de.body


def test_slot_offer_names_the_slot_and_the_expiry_in_the_practices_time() -> None:
    messages = domain.plan_slot_offer(ADA, PRACTICE, expires_at=T, now=T - timedelta(minutes=1))
    renderer = Renderer()
    expires = datetime(2031, 3, 10, 21, 30, tzinfo=UTC)  # 8:30 am in Sydney
    sms = _only(messages, "waitlist", "sms")
    out = renderer.render(sms.template, "waitlist", "sms", "en", _context(sms, expires=expires))
    assert out.body == (
        "Harbour Dental: an appointment on Tuesday, March 11, 2031, 9:00 AM AEDT has come free and is held for you "
        "until Tuesday, March 11, 2031, 8:30 AM AEDT. Take it: https://portal.example/practices/p1/offers/of-1 "
        "or call +61 2 9000 0000."
    )
    german_sms = _only(messages, "waitlist", "sms", "de")
    out = renderer.render(german_sms.template, "waitlist", "sms", "de", _context(german_sms, expires=expires))
    assert "Dienstag, 11. März 2031, 09:00 AEDT" in out.body
    assert "reserviert bis Dienstag, 11. März 2031, 08:30 AEDT" in out.body
    email = _only(messages, "waitlist", "email")
    out = renderer.render(email.template, "waitlist", "email", "en", _context(email, expires=expires))
    assert out.subject == "An appointment has come free: Tuesday, March 11, 2031, 9:00 AM AEDT"
    assert f"We are holding it for you until Tuesday, March 11, 2031, 8:30{NNBSP}AM AEDT." in out.body
    assert out.body.startswith("Hello Ada,\n")


def test_slot_offer_without_a_known_slot_time_still_reads() -> None:
    [email, _sms] = domain.plan_slot_offer(ADA, PRACTICE, expires_at=T, now=T - timedelta(minutes=1))
    context = domain.template_context(
        email, starts_at=None, practice=PRACTICE, patient=ADA, expires=T, offer_url="https://x/o", booking_id="bk-1"
    )
    out = Renderer().render(email.template, "waitlist", "email", "en", context)
    assert out.subject == "An appointment has come free"
    assert "None" not in out.body and f"until Tuesday, March 11, 2031, 9:00{NNBSP}AM AEDT" in out.body


def test_hold_email_gives_the_holds_end_in_the_practices_time() -> None:
    [message] = domain.plan_professional_notice(domain.HOLD_TEMPLATE, NOOR, PRACTICE)
    renderer = Renderer()
    en = renderer.render(message.template, "professional", "email", "en", _context(message))
    assert en.subject == "Your account is on hold until Tuesday, March 18, 2031, 9:00 AM AEDT"
    assert en.body.startswith("Hello Noor,\n")
    assert (
        f"from Tuesday, March 11, 2031, 9:00{NNBSP}AM AEDT until Tuesday, March 18, 2031, 9:00{NNBSP}AM AEDT" in en.body
    )
    assert "because of a late cancellation of booking bk-1" in en.body
    assert "Ada" not in en.body  # the patient is none of the professional's business here
    de_message = domain.Message(**{**message.__dict__, "locale": "de"})
    de = renderer.render(message.template, "professional", "email", "de", _context(de_message, hold_cause="no_show"))
    assert de.subject == "Ihr Konto ist vorübergehend gesperrt bis Dienstag, 18. März 2031, 09:00 AEDT"
    assert "wegen eines Nichterscheinens" in de.body


def test_suspension_email() -> None:
    [message] = domain.plan_professional_notice(domain.SUSPENSION_TEMPLATE, NOOR, PRACTICE)
    renderer = Renderer()
    en = renderer.render(message.template, "professional", "email", "en", _context(message))
    assert en.subject == "Your account has been suspended"
    assert f"suspended on Tuesday, March 11, 2031, 9:00{NNBSP}AM AEDT, after 3 holds within 365 days" in en.body
    assert "future bookings have been cancelled" in en.body
    de_message = domain.Message(**{**message.__dict__, "locale": "de"})
    de = renderer.render(message.template, "professional", "email", "de", _context(de_message))
    assert "am Dienstag, 11. März 2031, 09:00 AEDT gesperrt" in de.body


def test_manual_update_tells_the_practice_the_pms_message() -> None:
    renderer = Renderer()
    [email] = domain.plan_manual_update(PRACTICE)
    en = renderer.render(email.template, "practice", "email", "en", _context(email))
    assert en.subject == "Manual update required: cancel this booking in your PMS"
    assert en.body.startswith("Manual update required: cancel this booking in your PMS too\n")
    assert f"Appointment: Tuesday, March 11, 2031, 9:00{NNBSP}AM AEDT" in en.body
    de_email = domain.Message(**{**email.__dict__, "locale": "de"})
    de = renderer.render(email.template, "practice", "email", "de", _context(de_email, pms_action="record_no_show"))
    assert "das Nichterscheinen" in de.subject
    assert "„Manual update required: cancel this booking in your PMS too“" in de.body
    [sms] = domain.plan_manual_update(PREFERS_SMS)
    out = renderer.render(sms.template, "practice", "sms", "en", _context(sms))
    assert out.body == (
        "Manual update required: cancel this booking in your PMS too. Booking bk-1, patient Ada, "
        "Tuesday, March 11, 2031, 9:00 AM AEDT."
    )


def test_time_facts_are_shown_in_the_practices_timezone_and_locale() -> None:
    [message] = domain.plan_professional_notice(domain.HOLD_TEMPLATE, NOOR_GERMAN, PRACTICE)
    context = domain.template_context(
        message, starts_at=None, practice=PRACTICE, patient=None, hold_starts=T, hold_ends=None
    )
    assert context["hold_starts"] == "Dienstag, 11. März 2031, 09:00 AEDT"
    assert context["hold_ends"] is None and context["when"] is None


def test_a_message_is_formatted_in_its_readers_region_and_never_in_someone_elses() -> None:
    aussie = domain.PatientContact(first_name="Ada", email="ada@example.com", locale="en-AU")
    [to_patient] = domain.plan_no_show_fee(aussie, PRACTICE)
    context = domain.template_context(
        to_patient, starts_at=T, practice=PRACTICE, patient=aussie, fee=(Decimal("3000"), "JPY")
    )
    assert context["when"] == f"Tuesday, 11 March 2031, 9:00{NNBSP}am AEDT"
    assert context["fee"] == "JPY3,000"  # en-AU writes the yen by its code; never "3,000.00"
    # The office is told in the practice's locale, whatever the patient's.
    [to_office] = domain.plan_cancellation("professional", aussie, PRACTICE)
    context = domain.template_context(to_office, starts_at=T, practice=PRACTICE, patient=aussie)
    assert context["when"] == f"Tuesday, March 11, 2031, 9:00{NNBSP}AM AEDT"
    aussie_practice = domain.PracticeContact(**{**PRACTICE.__dict__, "locale": "en-AU"})
    [to_office] = domain.plan_cancellation("professional", aussie, aussie_practice)
    context = domain.template_context(to_office, starts_at=T, practice=aussie_practice, patient=aussie)
    assert context["when"] == f"Tuesday, 11 March 2031, 9:00{NNBSP}am AEDT"
    # A professional in their own; a German reader at that practice in German, not en-AU.
    noor_au = domain.ProfessionalContact(first_name="Noor", email="noor@locums.example", locale="en-AU")
    [to_professional] = domain.plan_professional_notice(domain.HOLD_TEMPLATE, noor_au, PRACTICE)
    context = domain.template_context(to_professional, starts_at=None, practice=PRACTICE, patient=None, hold_ends=T)
    assert context["hold_ends"] == f"Tuesday, 11 March 2031, 9:00{NNBSP}am AEDT"
    [to_german] = domain.plan_professional_notice(domain.HOLD_TEMPLATE, NOOR_GERMAN, aussie_practice)
    context = domain.template_context(to_german, starts_at=None, practice=aussie_practice, patient=None, hold_ends=T)
    assert context["hold_ends"] == "Dienstag, 11. März 2031, 09:00 AEDT"


@pytest.mark.parametrize(
    ("template", "recipient", "channel", "locale", "facts", "subject", "says"),
    [
        (
            domain.STANDING_TEMPLATE,
            "practice",
            "email",
            "en",
            {},
            "Patient pat-77: deposit required",
            "moved from good standing to deposit required",
        ),
        (
            domain.STANDING_TEMPLATE,
            "practice",
            "email",
            "de",
            {"standing": "good", "previous_standing": "prepayment_required", "standing_count": 1},
            "Patient pat-77: guter Stand",
            "von „Vorauszahlung erforderlich“ zu „guter Stand“",
        ),
        (
            domain.STANDING_TEMPLATE,
            "practice",
            "sms",
            "en",
            {"standing": "online_booking_blocked", "previous_standing": "prepayment_required", "standing_count": 4},
            None,
            "moved from prepayment required to online booking blocked (4 no-shows",
        ),
        (
            domain.NO_SHOW_SUSPECTED_TEMPLATE,
            "practice",
            "email",
            "en",
            {},
            "Did the patient come? Booking bk-1",
            "by 15 minutes after its start",
        ),
        (
            domain.NO_SHOW_SUSPECTED_TEMPLATE,
            "practice",
            "sms",
            "de",
            {},
            None,
            "15 Min. nach Beginn nichts erfasst",
        ),
        (
            domain.TURNAWAY_TEMPLATE,
            "professional",
            "email",
            "en",
            {},
            "Turn-away pay owed to you: A$60.00",
            "owes you A$60.00 as turn-away pay",
        ),
        (
            domain.TURNAWAY_TEMPLATE,
            "professional",
            "email",
            "de",
            {},
            "Ausfallvergütung für Sie: 60,00",
            "Ausfallvergütung",
        ),
        (
            domain.REINSTATEMENT_TEMPLATE,
            "professional",
            "email",
            "en",
            {},
            "Your account has been reinstated",
            "reinstated on Tuesday, March 11, 2031",
        ),
        (
            domain.REINSTATEMENT_TEMPLATE,
            "professional",
            "email",
            "de",
            {},
            "Ihr Konto wurde wieder freigeschaltet",
            "wieder freigeschaltet",
        ),
    ],
)
def test_the_second_release_notices_read_right(template, recipient, channel, locale, facts, subject, says) -> None:
    message = domain.Message(recipient, channel, template, locale, "x@example.com", None, tags=(locale,))
    out = Renderer().render(template, recipient, channel, locale, _context(message, **facts))
    assert out.subject is None if subject is None else out.subject.startswith(subject)
    assert says in " ".join(out.body.split())
    assert "None" not in out.body and "\n\n\n" not in out.body


def test_a_locale_without_its_own_template_falls_back_to_english(tmp_path: Path) -> None:
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "patient.sms.en.j2").write_text("Hello {{ first_name }}")
    assert Renderer(tmp_path).render("t", "patient", "sms", "de", {"first_name": "Ada"}).body == "Hello Ada"


def test_template_context_refuses_a_fact_no_template_knows() -> None:
    message = domain.plan_cancellation("staff", ADA, PRACTICE)[0]
    with pytest.raises(TypeError):
        domain.template_context(message, starts_at=T, practice=PRACTICE, patient=ADA, patient_email="x@y.z")


# --- retries ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("attempts", "expected"),
    [(1, 30.0), (2, 60.0), (3, 120.0), (4, 240.0), (8, 3600.0), (20, 3600.0)],
)
def test_retry_delay_doubles_up_to_a_cap(attempts: int, expected: float) -> None:
    """The nominal delay (the jitter's upper end) doubles; with jitter, between half and all of it."""
    assert domain.retry_delay(attempts, base_seconds=30, max_seconds=3600, rng=lambda: 1.0) == expected
    assert domain.retry_delay(attempts, base_seconds=30, max_seconds=3600, rng=lambda: 0.0) == expected / 2
    for _ in range(200):
        assert expected / 2 <= domain.retry_delay(attempts, base_seconds=30, max_seconds=3600) <= expected


def test_retry_delays_are_spread() -> None:
    """Messages that failed together are not retried in the same second."""
    delays = {round(domain.retry_delay(3, base_seconds=30, max_seconds=3600), 1) for _ in range(50)}
    assert len(delays) > 10


@pytest.mark.parametrize(
    ("attempts", "permanent", "expected"),
    [
        (1, False, "retry"),
        (4, False, "retry"),
        (5, False, "failed"),  # out of attempts
        (6, False, "failed"),
        (1, True, "failed"),  # no retry can fix it
    ],
)
def test_after_a_failure(attempts: int, permanent: bool, expected: str) -> None:
    assert domain.after_failure(attempts, max_attempts=5, permanent=permanent) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "SMTP refused the recipient: {'ada@example.com': (550, b'no such user')}",
            "SMTP refused the recipient: {'[email]': (550, b'no such user')}",
        ),
        (
            "SMS provider answered 400: invalid number +61 400 000 001",
            "SMS provider answered 400: invalid number [phone]",
        ),
        ("SMTP 451: try again later", "SMTP 451: try again later"),
    ],
)
def test_errors_are_redacted_before_they_are_stored_or_published(text: str, expected: str) -> None:
    assert domain.redact(text) == expected


# --- the channels' own rules (no network) -------------------------------------------------------


def test_sms_without_a_provider_is_a_permanent_failure() -> None:
    settings = NotificationSettings(sms_api_url=None)
    channel = SmsChannel(settings, client=None)  # type: ignore[arg-type]  # never reached
    with pytest.raises(DeliveryError) as raised:
        asyncio.run(channel.send(uuid.uuid4(), "+61 400 000 001", "hello"))
    assert str(raised.value) == SMS_NOT_CONFIGURED == "SMS delivery is not configured"
    assert raised.value.permanent


def test_email_carries_the_notification_id_as_its_message_id() -> None:
    notification_id = uuid.uuid4()
    msg = EmailChannel(NotificationSettings(smtp_from="notices@harbour.example")).message(
        notification_id, "ada@example.com", "Subject line", "Body\n"
    )
    assert msg["Message-ID"] == f"<{notification_id}@harbour.example>"
    assert (msg["From"], msg["To"], msg["Subject"]) == ("notices@harbour.example", "ada@example.com", "Subject line")


@pytest.mark.parametrize(
    ("env", "mode"),
    [
        ({}, "none"),  # localhost
        ({"SMTP_HOST": "127.0.0.1"}, "none"),
        ({"SMTP_HOST": "::1"}, "none"),
        ({"SMTP_HOST": "[::1]"}, "none"),
        ({"SMTP_HOST": "LocalHost"}, "none"),
        ({"SMTP_HOST": "smtp.mailprovider.example"}, "starttls"),
        ({"SMTP_HOST": "mailpit"}, "starttls"),
        ({"SMTP_HOST": "smtp.mailprovider.example", "SMTP_TLS": "implicit"}, "implicit"),
        ({"SMTP_HOST": "smtp.mailprovider.example", "SMTP_TLS": "none"}, "none"),
        ({"SMTP_HOST": "127.0.0.1", "SMTP_TLS": "starttls"}, "starttls"),
        ({"SMTP_HOST": "127.0.0.1", "SMTP_STARTTLS": "true"}, "starttls"),  # the old setting still works
        ({"SMTP_HOST": "smtp.mailprovider.example", "SMTP_STARTTLS": "false"}, "none"),
        ({"SMTP_HOST": "smtp.mailprovider.example", "SMTP_STARTTLS": "false", "SMTP_TLS": "implicit"}, "implicit"),
    ],
)
def test_smtp_tls_default_by_host(monkeypatch: pytest.MonkeyPatch, env: dict[str, str], mode: str) -> None:
    for name in ("SMTP_HOST", "SMTP_TLS", "SMTP_STARTTLS"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert NotificationSettings().smtp_tls_mode == mode


@pytest.mark.parametrize(
    ("mode", "start_tls", "use_tls"), [("none", False, False), ("starttls", True, False), ("implicit", False, True)]
)
@pytest.mark.parametrize("pool", [0, 4])
def test_smtp_tls_reaches_aiosmtplib(
    monkeypatch: pytest.MonkeyPatch, mode: str, start_tls: bool, use_tls: bool, pool: int
) -> None:
    """A connection per message (SMTP_POOL_SIZE=0) or kept ones: the TLS mode reaches aiosmtplib."""
    seen: dict[str, object] = {}

    async def fake_send(message: object, **kwargs: object) -> None:
        seen.update(kwargs)

    class FakeSMTP:
        is_connected = True

        def __init__(self, **kwargs: object) -> None:
            seen.update(kwargs)

        async def connect(self) -> None: ...

        async def send_message(self, message: object) -> None: ...

    monkeypatch.setattr("notification.delivery.aiosmtplib.send", fake_send)
    monkeypatch.setattr("notification.delivery.aiosmtplib.SMTP", FakeSMTP)
    channel = EmailChannel(NotificationSettings(smtp_host="smtp.example", smtp_tls=mode, smtp_pool_size=pool))  # type: ignore[arg-type]
    asyncio.run(channel.send(uuid.uuid4(), "p@example.com", "s", "b"))
    assert (seen["start_tls"], seen["use_tls"]) == (start_tls, use_tls)


def test_a_subject_that_is_not_ascii_is_an_encoded_word_and_a_line_break_in_a_header_is_refused() -> None:
    channel = EmailChannel(NotificationSettings(smtp_from="notices@harbour.example"))
    msg = channel.message(uuid.uuid4(), "ada@example.com", "Ihr Konto ist vorübergehend gesperrt", "Grüße\n")
    assert msg["Subject"].startswith("=?utf-8?")
    assert str(make_header(decode_header(msg["Subject"]))) == "Ihr Konto ist vorübergehend gesperrt"
    assert message_from_bytes(msg.as_bytes()).get_payload(decode=True).decode() == "Grüße\n"
    with pytest.raises(DeliveryError) as refused:
        channel.message(uuid.uuid4(), "ada@example.com", "Hi\r\nBcc: eve@example.com", "b")
    assert refused.value.permanent and "eve" not in str(refused.value)
