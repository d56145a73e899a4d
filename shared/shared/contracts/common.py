"""Value types several events share: ids, texts, contacts, times, actors, patients, fees, decisions.

Guarantees (CONTRACT.md "Rules every consumer keeps": every field has bounds):
- an id is 1 to `ID_MAX_CHARS` characters of `A-Z a-z 0-9 . _ : @ / -` (uuids, "bk-1",
  "load-x-p1", "service/booking" all fit), never whitespace or a control character;
- every free text has a maximum length, and no control character (texts of several lines may
  hold line breaks and tabs); an error text quoted from another system may hold anything but
  NUL and lone surrogates, which no database or JSON encoder can store;
- an email field holds exactly one address (one '@', no spaces, commas or semicolons, at most
  254 characters); a phone is E.164 ("+61400000000"); an empty contact means none was given;
- a time is timezone-aware, between `EARLIEST` and `LATEST`, and held in UTC (a time at the edge
  of the calendar is refused as out of range, never an OverflowError);
- a timezone is an IANA name this system knows; a locale a well-formed tag ("en", "en-AU");
- lists are bounded (`ROLES_MAX_ITEMS` roles, `IDS_MAX_ITEMS` ids); money: see `.base`;
- every enumerated field is one of the values CONTRACT.md names (a `Literal`), so an unknown
  value is a contract violation, not a silent fallback.
Validation messages never quote the offending value.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from decimal import Decimal
from functools import lru_cache
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BeforeValidator,
    Field,
    PlainSerializer,
    StringConstraints,
    WithJsonSchema,
)

from .base import ContractModel, Money

# --- limits ------------------------------------------------------------------------------------

ID_MAX_CHARS = 128
_ID_CHARS = r"[A-Za-z0-9._:@/-]"
ID_PATTERN = rf"^{_ID_CHARS}+$"
_ID = re.compile(f"{_ID_CHARS}+")
NAME_MAX_CHARS = 200  # a practice's or a person's name
CODE_MAX_CHARS = 32  # service and billing codes
REASON_CODE_MAX_CHARS = 64
LABEL_MAX_CHARS = 64  # roles, template names, policy versions, reasons given as words
REFERENCE_MAX_CHARS = 500  # a document or an external system's reference
NOTE_MAX_CHARS = 4000  # chart notes; the hard cap of a reason text (booking's own rule is shorter)
MESSAGE_MAX_CHARS = 2000  # sentences for people: rejection messages, explanations
ERROR_MAX_CHARS = 2000
EMAIL_MAX_CHARS = 254
TIMEZONE_MAX_CHARS = 64
LOCALE_MAX_CHARS = 35
ROLES_MAX_ITEMS = 20
IDS_MAX_ITEMS = 1000
EARLIEST = datetime(2000, 1, 1, tzinfo=UTC)
LATEST = datetime(2100, 1, 1, tzinfo=UTC)  # exclusive

# --- texts -------------------------------------------------------------------------------------

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
_CONTROL_BUT_LINE_BREAKS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff]")
_UNSTORABLE = re.compile(r"[\x00\ud800-\udfff]")


def _one_line(value: str) -> str:
    if _CONTROL.search(value):
        raise ValueError("must not contain control characters or line breaks")
    return value


def _lines(value: str) -> str:
    if _CONTROL_BUT_LINE_BREAKS.search(value):
        raise ValueError("must not contain control characters other than line breaks and tabs")
    return value


def _storable(value: str) -> str:
    if _UNSTORABLE.search(value):
        raise ValueError("must not contain NUL characters or lone surrogates")
    return value


Id = Annotated[str, StringConstraints(min_length=1, max_length=ID_MAX_CHARS, pattern=ID_PATTERN)]
Name = Annotated[str, StringConstraints(max_length=NAME_MAX_CHARS), AfterValidator(_one_line)]
Code = Annotated[str, StringConstraints(min_length=1, max_length=CODE_MAX_CHARS), AfterValidator(_one_line)]
ReasonCode = Annotated[
    str, StringConstraints(min_length=1, max_length=REASON_CODE_MAX_CHARS), AfterValidator(_one_line)
]
Label = Annotated[str, StringConstraints(min_length=1, max_length=LABEL_MAX_CHARS), AfterValidator(_one_line)]
Reference = Annotated[str, StringConstraints(min_length=1, max_length=REFERENCE_MAX_CHARS), AfterValidator(_one_line)]
Note = Annotated[str, StringConstraints(max_length=NOTE_MAX_CHARS), AfterValidator(_lines)]
Message = Annotated[str, StringConstraints(min_length=1, max_length=MESSAGE_MAX_CHARS), AfterValidator(_lines)]
ErrorText = Annotated[str, StringConstraints(max_length=ERROR_MAX_CHARS), AfterValidator(_storable)]
Roles = Annotated[list[Label], Field(max_length=ROLES_MAX_ITEMS)]
IdList = Annotated[list[Id], Field(max_length=IDS_MAX_ITEMS)]

# --- contacts ----------------------------------------------------------------------------------

_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_EMAIL = re.compile(rf"{_ATOM}(?:\.{_ATOM})*@(?:{_LABEL}\.)+[A-Za-z](?:[A-Za-z0-9-]{{0,61}}[A-Za-z0-9])?")
_E164 = re.compile(r"\+[1-9][0-9]{6,14}")


def _email(value: str) -> str:
    if len(value) > EMAIL_MAX_CHARS or not _EMAIL.fullmatch(value) or len(value.split("@")[0]) > 64:
        raise ValueError(
            f"must be one email address of at most {EMAIL_MAX_CHARS} characters, e.g. front@practice.example"
        )
    return value


def _e164(value: str) -> str:
    if not _E164.fullmatch(value):
        raise ValueError("must be one phone number in E.164 form: + and country code, no spaces, e.g. +61400000000")
    return value


def _blank_is_absent(value: Any) -> Any:
    # An optional contact sent as "" (or spaces) was not given: the message stays readable.
    return None if isinstance(value, str) and len(value) <= EMAIL_MAX_CHARS and not value.strip() else value


Email = Annotated[
    str,
    AfterValidator(_email),
    WithJsonSchema({"type": "string", "format": "email", "maxLength": EMAIL_MAX_CHARS}),
]
Phone = Annotated[str, AfterValidator(_e164), WithJsonSchema({"type": "string", "pattern": r"^\+[1-9]\d{6,14}$"})]
OptionalEmail = Annotated[Email | None, BeforeValidator(_blank_is_absent)]
OptionalPhone = Annotated[Phone | None, BeforeValidator(_blank_is_absent)]

# --- places and languages ----------------------------------------------------------------------

_ZONE_NAME = re.compile(r"[A-Za-z0-9_+-]+(?:/[A-Za-z0-9_+-]+)*")
_LOCALE = re.compile(r"[A-Za-z]{2,3}(?:[-_][A-Za-z0-9]{1,8})*")


@lru_cache(maxsize=1024)
def _known_zone(name: str) -> bool:
    try:
        ZoneInfo(name)
    except (KeyError, ValueError, OSError):  # ZoneInfoNotFoundError is a KeyError
        return False
    return True


def _timezone(value: str) -> str:
    if len(value) > TIMEZONE_MAX_CHARS or not _ZONE_NAME.fullmatch(value) or not _known_zone(value):
        raise ValueError("must be an IANA timezone name, e.g. Australia/Sydney")
    return value


def _locale(value: str) -> str:
    if len(value) > LOCALE_MAX_CHARS or not _LOCALE.fullmatch(value):
        raise ValueError("must be a language tag such as en or en-AU")
    return value


Timezone = Annotated[
    str, AfterValidator(_timezone), WithJsonSchema({"type": "string", "description": "IANA timezone name"})
]
Locale = Annotated[
    str,
    AfterValidator(_locale),
    WithJsonSchema({"type": "string", "maxLength": LOCALE_MAX_CHARS, "description": "language tag, e.g. en-AU"}),
]

# --- times -------------------------------------------------------------------------------------


_OUT_OF_RANGE = f"must be a time from {EARLIEST:%Y-%m-%d} to before {LATEST:%Y-%m-%d} (UTC)"


def _in_range_utc(value: datetime) -> datetime:
    # Runs for every time of every message: the refusal's text is made once, above, not per call.
    try:
        utc = value.astimezone(UTC)
    except OverflowError:  # year 9999 with a negative offset, year 1 with a positive one
        raise ValueError(_OUT_OF_RANGE) from None
    if not EARLIEST <= utc < LATEST:
        raise ValueError(_OUT_OF_RANGE)
    return utc


UtcDatetime = Annotated[AwareDatetime, AfterValidator(_in_range_utc)]


def valid_id(value: Any) -> str | None:
    """`value` when it is a valid id, else None (for answering a message that broke the contract)."""
    if isinstance(value, str) and len(value) <= ID_MAX_CHARS and _ID.fullmatch(value):
        return value
    return None


# --- enumerations named by CONTRACT.md -------------------------------------------------------

ActorKind = Literal["patient", "staff", "professional", "system"]
Channel = Literal["patient_portal", "practice", "professional_app", "system"]
Scope = Literal["this", "this_and_future"]
FeeDecision = Literal["policy", "charge", "waive"]
Party = Literal["patient", "professional"]
NoShowCode = Literal["FTA", "DNA"]
Classification = Literal["timely", "late", "no_show"]
CodeSystem = Literal["CPT", "CDT", "custom"]
DepositAction = Literal["refund", "keep", "credit_note", "none"]
DepositChoice = Literal["refund", "keep", "credit_note"]  # what a practice configures
DepositDecision = Literal["policy", "refund", "keep", "credit_note"]  # staff's choice at cancel time
REVIEW_HOURS_MAX = 720  # a fee waits at most 30 days for staff to review it
StatusLabel = Literal["Cancelled", "Cancelled online"]
RejectionReason = Literal[
    "not_found",
    "already_cancelled",
    "already_completed",
    "appointment_started",
    "appointment_not_started",
    "online_cancellation_disabled",
    "within_online_cutoff",
    "no_portal_account",
    "not_allowed",
    "invalid_request",
]
ContactChannel = Literal["email", "sms"]
PmsIntegration = Literal["praktika", "core_practice", "manual", "none"]
SyncedIntegration = Literal["praktika", "core_practice"]  # the ones with a pms-sync topic
PmsAction = Literal["cancel_booking", "record_no_show"]
ChargeKind = Literal["late_cancellation", "no_show"]
ScoreCause = Literal["cancelled", "late_cancelled", "no_show", "completed", "excused", "recalculated"]
HoldCause = Literal["late_cancellation", "no_show"]
HoldLiftCause = Literal["excused", "expired"]
ExcuseDecision = Literal["approved", "rejected"]
Recipient = Literal["patient", "practice", "professional", "waitlist"]
AckStatus = Literal["ok", "error"]
# Second release (issue 17)
PolicyChangesApplyTo = Literal["new_bookings", "all_bookings"]
Standing = Literal["good", "deposit_required", "prepayment_required", "online_booking_blocked"]
OfficeScoreCause = Literal["cancelled_professional", "late_cancelled_professional"]


# --- shared value objects --------------------------------------------------------------------


class Actor(ContractModel):
    """Who asked: a patient, a staff member, a professional or the system itself."""

    kind: ActorKind
    id: Id
    roles: Roles = []


class StaffActor(ContractModel):
    """The actor of a billing command: always practice staff, so it carries no `kind`."""

    id: Id
    roles: Roles = []


class Patient(ContractModel):
    patient_id: Id
    first_name: Name
    email: OptionalEmail = None
    phone: OptionalPhone = None
    portal_account: bool
    card_on_file: bool
    locale: Locale | None = None


class Fee(Money):
    """Money with the billing code a PMS and a claim need (`amount` never a float)."""

    code: Code
    code_system: CodeSystem


TIER_HOURS_MAX = 720  # a fee tier's notice, as the late window's
PERCENT_MAX = Decimal(100)
Percent = Annotated[
    Decimal,
    Field(gt=0, le=PERCENT_MAX, max_digits=5, decimal_places=2),
    PlainSerializer(lambda value: format(value, "f"), return_type=str),
    WithJsonSchema({"type": "string", "pattern": r"^\d+(\.\d+)?$", "examples": ["50"]}),
]


class DecidedTier(ContractModel):
    """The late-cancellation tier a decision used (second release): a percent tier names its
    percent; an amount tier only its notice (the amount is the decision's fee)."""

    notice_under_hours: int = Field(ge=1, le=TIER_HOURS_MAX)
    percent: Percent | None = None


SCORE_DELTA_LIMIT = 1000  # a decision's penalty, either way (docs/rules.md: -10, -50, -100)
HOLD_DAYS_MAX = 365


class Decision(ContractModel):
    """The cancellation policy's answer, as embedded in `booking.cancelled` and
    `booking.no_show_recorded` (the fields of `cancellation.assessed` without its ids)."""

    allowed: bool
    rejection_reason: RejectionReason | None = None
    classification: Classification
    fee: Fee | None = None
    charge_card: bool
    deposit_action: DepositAction
    # professional cancellations and no-shows
    score_delta: int | None = Field(default=None, ge=-SCORE_DELTA_LIMIT, le=SCORE_DELTA_LIMIT)
    hold_days: int | None = Field(default=None, ge=0, le=HOLD_DAYS_MAX)  # professional cancellations and no-shows
    policy_version: Label
    explanation: Message | None = None  # plain words: why this decision (optional addition)
    # Optional addition (second release): the practice's `fees.review_hours` in force for this
    # decision, so billing raises the fee `pending_review` for that long (None or 0: at once).
    review_hours: int | None = Field(default=None, ge=0, le=REVIEW_HOURS_MAX)
    # Optional additions (second release): the fee tier that priced a late cancellation, and,
    # for staff cancelling a booked professional, what the office answers for (issue 17).
    tier: DecidedTier | None = None
    office_score_delta: int | None = Field(default=None, ge=-SCORE_DELTA_LIMIT, le=SCORE_DELTA_LIMIT)
    office_cause: OfficeScoreCause | None = None  # late_…: inside the office's late window
    turnaway_pay: Money | None = None  # owed by the office to the booked professional
    fee_waived: bool | None = None  # True: staff waived the fee (the case does not count to standing)
