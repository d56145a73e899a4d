"""Who hears about what, on which channel, in which words, and when a failed send is retried.

Pure: plain values in, plain values out, no I/O. Guarantees:
- One causing event gives at most one message per recipient and channel, with the
  deterministic `notification_id(event id, recipient, channel)`: recording it twice is
  recording it once, and the id is the idempotency key the email and SMS providers see.
- A channel the recipient has no address for is planned as *skipped* with the reason, never
  dropped silently and never an error.
- Times shown to people are in the practice's timezone (UTC when it is unknown or not a valid
  IANA name) and in the recipient's locale (English when it is not one we write); times and
  money are formatted by Babel (CLDR) in that locale, with the region the recipient's or the
  practice's tag names (`en-AU`), and money with its currency's own decimals (JPY 0, KWD 3).
- Where one fact reaches us as several events (a no-show fee: the no-show, the charge, the
  card payment) or can be re-published under a new envelope id (a slot offer, a hold), the id
  is derived from the fact's own key (the no-show's booking, `offer_id`, `hold_id` …), not
  from the envelope, so the recipient still hears once.
- Text that leaves for the delivery log's `reason` or a published event goes through
  `redact` first, so an address a provider echoes back never travels further.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, tzinfo
from decimal import Decimal
from typing import Any, Literal
from urllib.parse import quote, urlencode
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from babel import Locale, UnknownLocaleError
from babel.dates import format_datetime, get_datetime_format
from babel.numbers import format_currency

from shared.backoff import backoff_delay
from shared.redaction import mask_text

SUPPORTED_LOCALES = ("en", "de")
DEFAULT_LOCALE = "en"

# docs/rules.md#notifications: which template a cancellation is told with, by who cancelled.
CANCELLATION_TEMPLATES = {
    "staff": "booking_cancelled_by_staff",
    "patient": "booking_cancelled_online",
    "professional": "booking_cancelled_by_professional",
    "system": "booking_cancelled_by_system",
}
REJECTION_TEMPLATE = "booking_cancellation_rejected"
NO_SHOW_FEE_TEMPLATE = "no_show_fee_charged"
REFUND_TEMPLATE = "fee_refunded"
LATE_FEE_TEMPLATE = "late_cancellation_fee"  # a fee that was in review, now final
SLOT_OFFER_TEMPLATE = "slot_offered"
HOLD_TEMPLATE = "hold_placed"
SUSPENSION_TEMPLATE = "account_suspended"
MANUAL_UPDATE_TEMPLATE = "pms_manual_update_required"
# Second release (issue 17)
STANDING_TEMPLATE = "patient_standing_changed"
NO_SHOW_SUSPECTED_TEMPLATE = "no_show_suspected"
TURNAWAY_TEMPLATE = "turnaway_pay_owed"
REINSTATEMENT_TEMPLATE = "account_reinstated"

# The reason_code the booking service gives the cancellations it makes for a suspended
# professional: the office is told the cancellation was caused by the suspension.
SUSPENSION_REASON_CODE = "professional_suspended"

# Rejections only a patient's own portal request can get: when we never saw the request, these
# reasons are what tells us the patient asked (and is waiting for an answer).
PATIENT_PORTAL_REASONS = frozenset({"within_online_cutoff", "online_cancellation_disabled", "no_portal_account"})

Recipient = Literal["patient", "practice", "professional", "waitlist"]
Channel = Literal["email", "sms"]

_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "urn:cancellations:notification")


@dataclass(frozen=True)
class PatientContact:
    first_name: str
    email: str | None = None
    phone: str | None = None
    locale: str | None = None


@dataclass(frozen=True)
class ProfessionalContact:
    """The booked professional, as the latest booking.scheduled that carried a contact named them."""

    first_name: str | None = None
    email: str | None = None
    phone: str | None = None
    locale: str | None = None


@dataclass(frozen=True)
class PracticeContact:
    practice_id: str
    name: str = ""
    timezone: str = "UTC"
    locale: str = DEFAULT_LOCALE
    email: str | None = None
    phone: str | None = None
    preferred_channel: Channel = "email"
    notify_practice_on_online_cancel: bool = False

    @classmethod
    def unknown(cls, practice_id: str) -> PracticeContact:
        """A practice that never published its settings: no contacts, UTC, English, no opt-ins."""
        return cls(practice_id=practice_id)


@dataclass(frozen=True)
class Message:
    """One message to record: to whom (a role, not a person), how, with which template."""

    recipient: Recipient
    channel: Channel
    template: str
    locale: str  # the language of the template: en | de
    address: str | None  # None exactly when skipped
    skip_reason: str | None = None
    # The reader's locale tags the language was chosen from, most specific first (the
    # recipient's, then the practice's): times and money are formatted in the first one in
    # `locale`'s language, so an `en-AU` reader gets Australian conventions.
    tags: tuple[str | None, ...] = ()

    @property
    def skipped(self) -> bool:
        return self.skip_reason is not None


def notification_id(event_id: str, recipient: str, channel: str) -> uuid.UUID:
    """The id of the one message a causing event sends one recipient on one channel."""
    return uuid.uuid5(_NAMESPACE, f"{event_id}/{recipient}/{channel}")


def resolve_locale(*candidates: str | None) -> str:
    """The first candidate we write in (`de-AT` and `de_AT` count as `de`), else English."""
    for candidate in candidates:
        if not candidate:
            continue
        tag = candidate.strip().lower().replace("_", "-")
        if tag in SUPPORTED_LOCALES:
            return tag
        language = tag.split("-", 1)[0]
        if language in SUPPORTED_LOCALES:
            return language
    return DEFAULT_LOCALE


# --- who hears, on which channel --------------------------------------------------------------


def _patient_messages(
    template: str,
    patient: PatientContact | None,
    practice: PracticeContact,
    *,
    recipient: Recipient = "patient",
    unknown: str = "no contact details are known for this booking's patient",
) -> list[Message]:
    """Email and SMS where the patient has them; a channel without an address is skipped."""
    tags = (patient.locale if patient else None, practice.locale)
    locale = resolve_locale(*tags)
    if patient is None:
        return [Message(recipient, channel, template, locale, None, unknown) for channel in ("email", "sms")]
    return [
        _message(recipient, "email", template, tags, patient.email, "the patient has no email address on file"),
        _message(recipient, "sms", template, tags, patient.phone, "the patient has no mobile number on file"),
    ]


def _office_message(template: str, practice: PracticeContact) -> Message:
    """The office through its preferred channel, or its other one when the preferred has no
    address: the office must learn that a professional (or the system) cancelled."""
    addresses: dict[Channel, str | None] = {"email": practice.email, "sms": practice.phone}
    other: Channel = "sms" if practice.preferred_channel == "email" else "email"
    for channel in (practice.preferred_channel, other):
        if addresses[channel]:
            return Message(
                "practice",
                channel,
                template,
                resolve_locale(practice.locale),
                addresses[channel],
                tags=(practice.locale,),
            )
    return Message(
        "practice",
        practice.preferred_channel,
        template,
        resolve_locale(practice.locale),
        None,
        "the practice has no email address or phone number on file",
    )


def _message(
    recipient: Recipient,
    channel: Channel,
    template: str,
    tags: tuple[str | None, ...],
    address: str | None,
    missing: str,
) -> Message:
    """To the reader whose locale `tags` are (most specific first), or skipped without an address."""
    address = address.strip() if address else None
    return Message(
        recipient, channel, template, resolve_locale(*tags), address or None, None if address else missing, tags=tags
    )


def plan_cancellation(actor_kind: str, patient: PatientContact | None, practice: PracticeContact) -> list[Message]:
    """docs/rules.md#notifications, booking.cancelled:
    - by staff: the patient, by email and SMS (the reason quoted by the template);
    - online by the patient: the patient by email and SMS with a rebook link, and the practice
      by email only when it asked for it (`notify_practice_on_online_cancel`);
    - by a professional or the system: the office through its preferred channel.
    """
    template = CANCELLATION_TEMPLATES[actor_kind]
    if actor_kind == "staff":
        return _patient_messages(template, patient, practice)
    if actor_kind == "patient":
        messages = _patient_messages(template, patient, practice)
        if practice.notify_practice_on_online_cancel:
            messages.append(
                _message(
                    "practice",
                    "email",
                    template,
                    (practice.locale,),
                    practice.email,
                    "the practice has no email address on file",
                )
            )
        return messages
    return [_office_message(template, practice)]


def patient_asked(reason: str, requester_kind: str | None) -> bool:
    """Whether a rejection answers a patient's own request.

    Known from the remembered upstream request when we saw it; otherwise only the reasons a
    patient-portal request alone can get say so.
    """
    if requester_kind is not None:
        return requester_kind == "patient"
    return reason in PATIENT_PORTAL_REASONS


def plan_rejection(
    reason: str, requester_kind: str | None, patient: PatientContact | None, practice: PracticeContact
) -> list[Message]:
    """booking.cancellation_rejected: the patient, when they asked, learns what to do next."""
    if not patient_asked(reason, requester_kind):
        return []
    return _patient_messages(REJECTION_TEMPLATE, patient, practice)


# --- no-show fees ----------------------------------------------------------------------------------

Settlement = Literal["charged_to_card", "outstanding", "card_failed"]


@dataclass(frozen=True)
class NoShowFee:
    """What is known so far of one booking's no-show fee, gathered from three events that may
    arrive in any order: `booking.no_show_recorded` (whether the card is to be charged),
    `charge.created` kind no_show (the charge: amount and code), and `payment.captured` /
    `payment.failed` (the card's answer)."""

    charge_id: str | None = None  # None until charge.created was seen
    charge_card: bool | None = None  # None until booking.no_show_recorded was seen
    payment: Literal["captured", "failed"] | None = None


def no_show_fee_settlement(fee: NoShowFee) -> Settlement | None:
    """How the patient's no-show fee stands, or None while it is not yet known (nothing to send).

    docs/rules.md: "no-show recorded, fee charged → patient, email". The patient is told once, when
    the answer is final: a fee on the card after the gateway answered (charged, or could not be
    charged and so outstanding); a fee not for the card at once (outstanding on the account).
    """
    if fee.charge_id is None:
        return None  # no charge was raised (yet): a waived fee is never told
    if fee.payment == "captured":
        return "charged_to_card"
    if fee.payment == "failed":
        return "card_failed"
    if fee.charge_card is False:
        return "outstanding"
    return None  # to be charged to the card (or not known yet whether): wait for the answer


def _patient_email(template: str, patient: PatientContact | None, practice: PracticeContact) -> list[Message]:
    """The patient, by email only; skipped with the reason when they cannot be reached."""
    tags = (patient.locale if patient else None, practice.locale)
    if patient is None:
        return [
            Message(
                "patient",
                "email",
                template,
                resolve_locale(*tags),
                None,
                "no contact details are known for this booking's patient",
            )
        ]
    return [_message("patient", "email", template, tags, patient.email, "the patient has no email address on file")]


def plan_no_show_fee(patient: PatientContact | None, practice: PracticeContact) -> list[Message]:
    """The patient, by email only (docs/rules.md#notifications)."""
    return _patient_email(NO_SHOW_FEE_TEMPLATE, patient, practice)


def plan_refund(patient: PatientContact | None, practice: PracticeContact) -> list[Message]:
    """A fee lowered or waived after it was paid: the patient, by email, of the money given back."""
    return _patient_email(REFUND_TEMPLATE, patient, practice)


def plan_late_fee(patient: PatientContact | None, practice: PracticeContact) -> list[Message]:
    """A late-cancellation fee that was in staff review when the cancellation was told (which so
    quoted no fee), now final: the patient, by email, like a no-show fee."""
    return _patient_email(LATE_FEE_TEMPLATE, patient, practice)


def fee_is_final(decision: Any) -> bool:
    """Whether a decision's fee may be told to the patient: not while it waits for staff review
    (docs/rules.md: nobody is told of a fee before it is final)."""
    return decision.fee is not None and not decision.review_hours


# --- slot offers -------------------------------------------------------------------------------------


def plan_slot_offer(
    waitlisted: PatientContact | None, practice: PracticeContact, *, expires_at: datetime, now: datetime
) -> list[Message]:
    """booking.slot_offered: the waitlisted patient, by SMS and email, while the offer stands.

    An offer that expired before it could be recorded (a lagging consumer, contacts that came
    late) is recorded skipped: the slot has gone to the next person, a message would mislead.
    """
    messages = _patient_messages(
        SLOT_OFFER_TEMPLATE,
        waitlisted,
        practice,
        recipient="waitlist",
        unknown="no contact details are known for this waitlist entry",
    )
    if expires_at <= now:
        expired = "the offer expired before it could be sent"
        return [Message(m.recipient, m.channel, m.template, m.locale, None, expired) for m in messages]
    return messages


# --- the professional ----------------------------------------------------------------------------------


def plan_professional_notice(
    template: str, professional: ProfessionalContact | None, practice: PracticeContact
) -> list[Message]:
    """hold.placed, account.suspended: the professional, by email (docs/rules.md#notifications).
    No known email is recorded skipped with the reason, never an error."""
    tags = (professional.locale if professional else None, practice.locale)
    if professional is None:
        return [
            Message(
                "professional",
                "email",
                template,
                resolve_locale(*tags),
                None,
                "no contact details are known for this professional",
            )
        ]
    return [
        _message(
            "professional",
            "email",
            template,
            tags,
            professional.email,
            "no email address is known for this professional",
        )
    ]


# --- the practice's PMS ----------------------------------------------------------------------------


def plan_practice_notice(template: str, practice: PracticeContact) -> list[Message]:
    """patient.standing_changed, booking.no_show_suspected: the office, through its preferred
    channel (the other one when the preferred has no address)."""
    return [_office_message(template, practice)]


def plan_manual_update(practice: PracticeContact) -> list[Message]:
    """pms.manual_update_required: the office, through its preferred channel (the other one when
    the preferred has no address), because staff must change their PMS by hand."""
    return [_office_message(MANUAL_UPDATE_TEMPLATE, practice)]


# --- what the templates are given --------------------------------------------------------------


def zone(name: str | None) -> tzinfo:
    """The practice's IANA timezone; UTC when unknown or invalid (a message still goes out)."""
    if not name:
        return UTC
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return UTC


def formatting_locale(language: str, *tags: str | None) -> Locale:
    """The locale a message's times and money are formatted in: the first of `tags` (most
    specific first: the recipient's, then the practice's) in the message's `language`, so an
    `en-AU` reader gets Australian conventions; else the language's own (`en`, `de`)."""
    for tag in tags:
        if not tag:
            continue
        try:
            locale = Locale.parse(tag.strip().replace("_", "-"), sep="-")
        except (ValueError, UnknownLocaleError):
            continue
        if locale.language == language:
            return locale
    return Locale.parse(resolve_locale(language))


def format_when(at: datetime, timezone: str | None, locale: str | Locale) -> str:
    """The moment as the locale writes a full date with a short time, in the practice's
    timezone, then the zone's abbreviation (tz database): `Tuesday, March 11, 2031, 9:00 AM AEDT`
    (en; CLDR puts a narrow no-break space before AM), `Dienstag, 11. März 2031, 09:00 AEDT` (de).
    The abbreviation says which side of a daylight-saving change the time lies on."""
    locale = locale if isinstance(locale, Locale) else formatting_locale(resolve_locale(locale), locale)
    local_zone = zone(timezone)
    pattern = (
        str(get_datetime_format("full", locale=locale))
        .replace("{1}", locale.date_formats["full"].pattern)
        .replace("{0}", locale.time_formats["short"].pattern)
    )
    text = format_datetime(at, pattern, tzinfo=local_zone, locale=locale)
    return f"{text} {at.astimezone(local_zone).tzname()}"


def rebook_url(portal_base_url: str, practice_id: str, booking_id: str) -> str:
    """Where a patient who cancelled online books again."""
    query = urlencode({"booking_id": booking_id})
    return f"{portal_base_url.rstrip('/')}/practices/{quote(practice_id, safe='')}/rebook?{query}"


def offer_url(portal_base_url: str, practice_id: str, offer_id: str) -> str:
    """Where a waitlisted patient takes the slot offered to them (the portal's offer page)."""
    return f"{portal_base_url.rstrip('/')}/practices/{quote(practice_id, safe='')}/offers/{quote(offer_id, safe='')}"


def caused_by_suspension(actor_kind: str, reason_code: str | None) -> bool:
    """A system cancellation the booking service made because the professional was suspended."""
    return actor_kind == "system" and reason_code == SUSPENSION_REASON_CODE


def format_money(amount: Decimal, currency: str, locale: str | Locale) -> str:
    """As the locale writes an amount of the currency, with the currency's own decimals (Babel's,
    the contract's): `A$45.00` / `45,00 €` (de) / `¥3,000` / `KWD1.250`."""
    locale = locale if isinstance(locale, Locale) else formatting_locale(resolve_locale(locale), locale)
    return format_currency(amount, currency, locale=locale)


# Every fact a template may ask for, so a template never meets an undefined name for an event
# that does not have it (StrictUndefined would rightly fail it).
FACT_DEFAULTS: dict[str, Any] = {
    "booking_id": None,
    "service_code": None,
    "practitioner_id": None,
    "professional_id": None,
    "classification": None,
    "reason_code": None,  # the practice's code, in words ("illness")
    "reason_text": None,  # quoted as given
    "series_count": 0,  # later occurrences cancelled with this booking
    "rebook_url": None,
    "reason": None,  # a rejection's contract reason
    "message": None,  # a rejection's sentence a person can act on
    "suspension": False,  # a system cancellation caused by the professional's suspension
    # no-show fee
    "fee_code": None,
    "fee_code_system": None,
    "settlement": None,  # charged_to_card | outstanding | card_failed
    # a refund of a fee lowered or waived after it was paid
    "waived": False,
    # slot offer
    "expires": None,  # formatted, in the practice's timezone
    "offer_url": None,
    # the professional
    "professional_first_name": None,
    "hold_starts": None,  # formatted
    "hold_ends": None,  # formatted
    "hold_cause": None,  # late_cancellation | no_show
    "suspended": None,  # formatted
    "hold_count": 0,
    # the practice's PMS
    "pms_action": None,  # cancel_booking | record_no_show
    "pms_integration": None,
    "pms_message": None,  # pms-sync's own sentence (English)
    # second release: a patient's standing, a suspected no-show, turn-away pay, reinstatement
    "patient_id": None,
    "standing": None,  # good | deposit_required | prepayment_required | online_booking_blocked
    "previous_standing": None,
    "standing_count": 0,
    "window_days": 0,
    "grace_minutes": 0,
    "reinstated": None,  # formatted
}

# Facts that are times: given as datetimes, shown formatted like `when`.
TIME_FACTS = frozenset({"expires", "hold_starts", "hold_ends", "suspended", "reinstated"})


def template_context(
    message: Message,
    /,
    *,
    starts_at: datetime | None,
    practice: PracticeContact,
    patient: PatientContact | None,
    fee: tuple[Decimal, str] | None = None,
    **facts: Any,
) -> dict[str, Any]:
    """Everything a template may show, in the message's locale and the practice's timezone.

    The patient's first name is given to every template: the office is the patient's own
    practice, which holds it anyway.
    """
    unknown = set(facts) - set(FACT_DEFAULTS)
    if unknown:
        raise TypeError(f"templates are given no fact(s) {sorted(unknown)}")
    reason_code = facts.get("reason_code")
    locale = formatting_locale(message.locale, *message.tags)
    times = {
        name: format_when(value, practice.timezone, locale)
        for name, value in facts.items()
        if name in TIME_FACTS and value is not None
    }
    return {
        **FACT_DEFAULTS,
        **facts,
        **times,
        "reason_code": reason_code.replace("_", " ") if reason_code else None,
        "fee": format_money(fee[0], fee[1], locale) if fee else None,
        "locale": message.locale,
        "recipient": message.recipient,
        "channel": message.channel,
        "first_name": patient.first_name if patient else None,
        "practice_name": practice.name,
        "practice_email": practice.email,
        "practice_phone": practice.phone,
        "when": format_when(starts_at, practice.timezone, locale) if starts_at else None,
    }


# --- sending, failing, retrying -----------------------------------------------------------------


def retry_delay(
    attempts: int, *, base_seconds: float, max_seconds: float, rng: Callable[[], float] = random.random
) -> float:
    """Seconds to wait after the `attempts`-th failed try: base, 2×base, 4×base, … capped, with
    equal jitter (between half and all of that; shared.backoff), so the messages that failed
    together in a provider's outage are not all retried in the same second. `rng` (a float
    in [0, 1)) makes it deterministic in tests."""
    return backoff_delay(attempts, base=base_seconds, cap=max_seconds, rng=rng)


def after_failure(attempts: int, *, max_attempts: int, permanent: bool) -> Literal["retry", "failed"]:
    """A permanent failure (a refused address, SMS not configured) is reported at once; a
    transient one is retried until `max_attempts` tries were made."""
    if permanent or attempts >= max_attempts:
        return "failed"
    return "retry"


def redact(text: str, limit: int = 300) -> str:
    """An error as it may be stored and published: personal data and secrets masked as in the
    logs (`shared.redaction.mask_text`: addresses → "[email]", numbers → "[phone]"), shortened."""
    return mask_text(text)[:limit]


# --- an SMS provider's status of a message it accepted (Twilio's MessageStatus) ----------------

# In the order a message goes through them; statuses of one step are alternatives (a message
# ends delivered or undelivered or failed, never two of them). `read` follows delivery on
# channels that report it.
SMS_STATUS_STEPS: tuple[frozenset[str], ...] = (
    frozenset({"accepted", "scheduled", "queued"}),
    frozenset({"sending"}),
    frozenset({"sent"}),
    frozenset({"delivered", "undelivered", "failed", "canceled"}),
    frozenset({"read"}),
)
SMS_STATUSES = frozenset().union(*SMS_STATUS_STEPS)


def sms_statuses_before(status: str) -> list[str]:
    """The statuses a report of `status` may replace: those of earlier steps. A report repeated
    or late (Twilio does not promise their order) replaces nothing, so the furthest status
    stands. Raises ValueError for a status that is not Twilio's."""
    for step, statuses in enumerate(SMS_STATUS_STEPS):
        if status in statuses:
            return sorted(s for earlier in SMS_STATUS_STEPS[:step] for s in earlier)
    raise ValueError("not an SMS status")
