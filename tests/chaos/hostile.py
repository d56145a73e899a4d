"""Hostile input: a deterministic table of named cases, each a healthy inbound message with ONE
field replaced by an edge value (issue "hostile input", item 7).

Every field of every event type the registry lists for the inbound topics is visited (found by
walking the contract models, so a field added to a model is covered without touching this
file), and gets the edge values of its kind: ids, free text, emails, phones, locales,
timezones, currencies, amounts, times, enumerations, booleans, integers, lists and objects.
Each event type also gets the byte-level edges (NUL, invalid UTF-8, a lone surrogate) and the
size edges (a 700 KB field, a message of about 1 MB) on one field; each topic gets the edges
of the CloudEvents envelope and of the message itself (not JSON, tombstone, nested 5000 deep …).

`build(...)` returns the cases in send order (round-robin over classes, so the first few
cases a consumer meets are of different classes) with the ids they need; nothing here talks
to Kafka. `python -m tests.chaos.hostile` prints the table.

A case expects `refuse` (dead-lettered, or rejected with an invalid-input reason, by every
service that consumes its topic) unless the contract allows the value to be processed:
`refuse_or_process` is for request times far from the record's own time, which CONTRACT.md
says are decided at the record's time instead.
"""

from __future__ import annotations

import copy
import json
import types
import typing
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel

from shared.contracts.registry import TOPIC_EVENTS
from shared.testing import iso
from shared.topics import (
    BILLING_COMMANDS,
    PMS_SYNC_ACKS,
    UPSTREAM_BOOKINGS,
    UPSTREAM_PRACTICES,
    UPSTREAM_PROFESSIONALS,
)

INBOUND_TOPICS = (UPSTREAM_PRACTICES, UPSTREAM_PROFESSIONALS, BILLING_COMMANDS, UPSTREAM_BOOKINGS, PMS_SYNC_ACKS)
# Published one group after another, so that a service never has hostile records of two
# topics in flight at once (a wedged consumer is then stuck on exactly one candidate record).
# upstream.bookings.v1 first: it has the most cases, and a consumer that wedges for good in one
# phase is not reached by the later ones.
PHASES = ((UPSTREAM_BOOKINGS, UPSTREAM_PROFESSIONALS, BILLING_COMMANDS), (UPSTREAM_PRACTICES,), (PMS_SYNC_ACKS,))

KB = 1024
NEAR_LIMIT_BYTES = 1_000_000  # a whole message just under the broker's ~1 MB record limit
REFUSE, REFUSE_OR_PROCESS = "refuse", "refuse_or_process"

# Which service may refuse an event type with a rejection event instead of (or besides) a dead
# letter, and the rejection types and reasons that count as "refused as invalid input".
REJECTIONS: dict[str, tuple[str, frozenset[str], frozenset[str]]] = {
    "booking.cancellation_requested": (
        "booking",
        frozenset({"booking.cancellation_rejected"}),
        frozenset({"invalid_request"}),
    ),
    "booking.no_show_reported": ("booking", frozenset({"booking.no_show_rejected"}), frozenset({"invalid_request"})),
    "charge.adjustment_requested": (
        "billing",
        frozenset({"charge.adjustment_rejected"}),
        frozenset({"invalid_request"}),
    ),
    "practice.configured": (
        "cancellation-policy",
        frozenset({"practice.configuration_rejected"}),
        frozenset({"invalid_settings"}),
    ),
}
ALL_REJECTION_TYPES = frozenset(t for _, types_, _ in REJECTIONS.values() for t in types_)


@dataclass(frozen=True)
class Raw:
    """JSON text put in place of a value as it is (it may be invalid JSON or UTF-8 on purpose)."""

    text: bytes


@dataclass(frozen=True)
class Variant:
    name: str  # what the value is, e.g. "two addresses"
    klass: str  # the class the summary groups by, e.g. "email: two addresses"
    value: Any  # a JSON value, a Raw, or Size (filled in to reach a message size)
    expect: str = REFUSE


@dataclass(frozen=True)
class Size:
    """A string of `fill` characters making the field `bytes_` long, or the whole message when `whole`."""

    bytes_: int
    whole: bool = False
    fill: str = "x"


@dataclass
class Case:
    n: int
    name: str  # "<event type> <field>: <variant>", unique
    klass: str
    topic: str
    event_type: str  # "(message)" for the message-level cases
    field: str  # dotted path in data, "(envelope).<name>" or "(message)"
    variant: str
    expect: str
    key: bytes
    value: bytes | None
    envelope_id: str | None  # what a service's answer carries as its correlationid, when readable
    tag: str  # the case's own id prefix: every id the template makes for this case starts with it
    sacrificial_booking: str | None = None  # a booking scheduled in setup for this request to act on
    booking_starts_in: timedelta | None = None
    # Set when published:
    partition: int = -1
    offset: int = -1
    send_error: str | None = None

    @property
    def size(self) -> int:
        return 0 if self.value is None else len(self.value)


# --- the edge values of each kind of field ------------------------------------------------------

DEEP = Raw(b"[" * 5000 + b"]" * 5000)
DIGITS_5000 = Raw(b"9" * 5000)
LONE_SURROGATE = Raw(b'"hostile\\ud800"')
INVALID_UTF8 = Raw(b'"hostile\xff\xfe\xfd"')

WRONG_NUMBER = Variant("number", "wrong type: number where a string belongs", 12345)
WRONG_LIST = Variant("list", "wrong type: list where a string belongs", ["hostile"])
NESTED = Variant("nested 5000 deep", "JSON nested 5000 deep", DEEP)
NULL = Variant("null", "empty value: null for a required field", None)

VARIANTS: dict[str, list[Variant]] = {
    "id": [
        Variant("10000 characters", "id: 10 000 characters", "i" * 10_000),
        Variant("spaces", "id: spaces", "hostile id with spaces"),
        Variant("control characters", "id: control characters", "hostile\x01\x07\x1b[2J\x7f"),
        Variant("empty", "empty value: empty string", ""),
        WRONG_NUMBER,
    ],
    # A reference into another system (a document, a PMS record): its format is theirs, so
    # spaces may be fine; its size and control characters are not.
    "ref": [
        Variant("10000 characters", "id: 10 000 characters", "r" * 10_000),
        Variant("control characters", "id: control characters", "hostile\x01\x07\x1b[2J\x7f"),
        Variant("empty", "empty value: empty string", ""),
        WRONG_NUMBER,
    ],
    "text": [
        Variant("100 KB", "text: 100 KB", "t" * (100 * KB)),
        WRONG_NUMBER,
        WRONG_LIST,
    ],
    "email": [
        Variant("two addresses", "email: two addresses in one field", "first@hostile.test, second@hostile.test"),
        Variant("not an address", "email: not an address", "not-an-email-address"),
        Variant("header injection", "email: header injection", "pat@hostile.test\r\nBcc: victim@hostile.test"),
        Variant("100 KB", "text: 100 KB", "e" * (100 * KB) + "@hostile.test"),
        WRONG_NUMBER,
    ],
    "phone": [
        Variant("local format", "phone: not E.164", "0412 345 678"),
        Variant("letters", "phone: not E.164", "call me maybe"),
        Variant("40 digits", "phone: not E.164", "+" + "1" * 40),
        WRONG_NUMBER,
    ],
    "locale": [
        Variant("path traversal", "locale/timezone: not a known value", "../../../../etc/passwd"),
        Variant("not a tag", "locale/timezone: not a known value", "xx_INVALID-123!"),
        Variant("100 KB", "text: 100 KB", "l" * (100 * KB)),
        WRONG_NUMBER,
    ],
    "timezone": [
        Variant("unknown zone", "locale/timezone: not a known value", "Mars/Olympus_Mons"),
        Variant("path traversal", "locale/timezone: not a known value", "../../../../etc/passwd"),
        Variant("100 KB", "text: 100 KB", "z" * (100 * KB)),
        WRONG_NUMBER,
    ],
    "currency": [
        Variant("XYZ", "money: unknown currency", "XYZ"),
        Variant("four letters", "money: unknown currency", "AUDD"),
        Variant("empty", "empty value: empty string", ""),
        WRONG_NUMBER,
    ],
    "amount": [
        Variant("1E+1000000", "number: huge exponent", "1E+1000000"),
        Variant("1E-1000000", "number: huge exponent", "1E-1000000"),
        Variant("5000-digit integer", "number: 5000 digits", "9" * 5000),
        Variant("JSON number 1E+1000000", "number: huge exponent", Raw(b"1E+1000000")),
        Variant("JSON 5000-digit number", "number: 5000 digits", DIGITS_5000),
        Variant("float", "money: float", 45.5),
        Variant("NaN", "money: not a finite amount", "NaN"),
        Variant("Infinity", "money: not a finite amount", "Infinity"),
        Variant("negative", "money: negative", "-45.00"),
        Variant("sub-cent", "money: more decimals than the currency has", "45.001"),
        Variant("a billion", "money: more than a currency can sensibly charge", "1000000000.00"),
        Variant("list", "wrong type: list where a string belongs", ["45.00"]),
    ],
    "datetime": [
        Variant("year 1", "datetime: year 1", "0001-01-01T00:00:00Z"),
        Variant("year 9999", "datetime: year 9999", "9999-12-31T23:59:59Z"),
        Variant("9999-12-31T23:59:59-23:59", "datetime: overflows on conversion to UTC", "9999-12-31T23:59:59-23:59"),
        Variant("0001-01-01T00:00:00+23:59", "datetime: underflows on conversion to UTC", "0001-01-01T00:00:00+23:59"),
        Variant("no offset", "datetime: no offset (naive)", "2026-03-01T10:00:00"),
        Variant("not a date", "datetime: not a date", "next tuesday"),
        Variant("JSON 5000-digit number", "number: 5000 digits", DIGITS_5000),
    ],
    "enum": [
        Variant("unknown value", "enum: unknown value", "hostile_value"),
        Variant("empty", "empty value: empty string", ""),
        WRONG_NUMBER,
    ],
    "bool": [
        Variant("string", "wrong type: string where a bool belongs", "maybe"),
        Variant("list", "wrong type: list where a bool belongs", [True]),
    ],
    "int": [
        Variant("100000", "range: out-of-range integer", 100_000),
        Variant("-1", "range: negative integer", -1),
        Variant("2^63", "range: beyond 64 bits", 2**63),
        Variant("JSON 1e308", "number: huge exponent", Raw(b"1e308")),
        Variant("JSON 5000-digit number", "number: 5000 digits", DIGITS_5000),
        Variant("fraction", "wrong type: fraction where an integer belongs", 1.5),
    ],
    "list": [
        Variant("object", "wrong type: object where a list belongs", {"hostile": 1}),
        Variant("5000 entries", "list: 5000 entries", ["r"] * 5000),
        Variant("numbers", "wrong type: number where a string belongs", [1, 2, 3]),
        NESTED,
    ],
    "object": [
        Variant("list", "wrong type: list where an object belongs", []),
        Variant("string", "wrong type: string where an object belongs", "hostile"),
        NESTED,
    ],
}
# Request times far in the past or future are not refused: CONTRACT.md decides them at the
# Kafka record's own time ("the decision says so").
DECIDED_AT_RECORD_TIME = {"requested_at", "reported_at"}

# One field per event type carries the byte-level and size edges.
BYTE_VARIANTS = [
    Variant("NUL", "text: NUL character", "hostile\x00nul"),
    Variant("invalid UTF-8", "bytes: invalid UTF-8", INVALID_UTF8),
    Variant("lone surrogate", "text: lone UTF-16 surrogate", LONE_SURROGATE),
]
SIZE_VARIANTS = [Variant("700 KB", "size: 700 KB field", Size(700 * KB))]
# Once per topic, on the carrier of its first event type: a message just under the broker's limit.
NEAR_LIMIT = Variant("message of about 1 MB", "size: message of about 1 MB", Size(NEAR_LIMIT_BYTES, whole=True))

# "{tag}" in an envelope id or correlationid is the case's own tag: a service that accepts the
# message answers with it as the correlationid, so the answer is still traced to its case.
ENVELOPE_VARIANTS: dict[str, list[Variant]] = {
    "id": [
        Variant("10000 characters", "id: 10 000 characters", "{tag}" + "e" * 9_970),
        Variant("control characters", "id: control characters", "{tag}\x01\x1b[2J"),
        Variant("empty", "empty value: empty string", ""),
        WRONG_NUMBER,
    ],
    "type": [
        Variant("unknown", "envelope: unknown event type", "hostile.happened"),
        Variant("10000 characters", "text: 10 000 characters", "t" * 10_000),
        WRONG_LIST,
    ],
    "source": [Variant("10000 characters", "text: 10 000 characters", "s" * 10_000), WRONG_NUMBER],
    "subject": [Variant("10000 characters", "text: 10 000 characters", "s" * 10_000), WRONG_NUMBER],
    "time": [
        Variant("year 1", "datetime: year 1", "0001-01-01T00:00:00Z"),
        Variant("year 9999", "datetime: year 9999", "9999-12-31T23:59:59Z"),
        Variant("9999-12-31T23:59:59-23:59", "datetime: overflows on conversion to UTC", "9999-12-31T23:59:59-23:59"),
        Variant("no offset", "datetime: no offset (naive)", "2026-03-01T10:00:00"),
        Variant("not a date", "datetime: not a date", "next tuesday"),
    ],
    "specversion": [Variant("2.0", "envelope: wrong specversion", "2.0"), WRONG_NUMBER],
    "datacontenttype": [Variant("text/plain", "envelope: wrong content type", "text/plain")],
    "data": [
        Variant("list", "wrong type: list where an object belongs", []),
        Variant("string", "wrong type: string where an object belongs", "hostile"),
        NULL,
        NESTED,
    ],
    "correlationid": [Variant("10000 characters", "text: 10 000 characters", "{tag}" + "c" * 9_970), WRONG_NUMBER],
}


def _message_variants(healthy: bytes) -> list[tuple[Variant, bytes | None]]:
    """Edges of the message itself, around one healthy message of the topic."""
    return [
        (Variant("not JSON", "message: not JSON", None), b"{hostile: not json"),
        (Variant("invalid UTF-8", "bytes: invalid UTF-8", None), b'{"specversion": "1.0", "id": "\xff\xfe\xfd"}'),
        (Variant("raw NUL byte", "text: NUL character", None), healthy.replace(b'"1.0"', b'"1.\x000"', 1)),
        (Variant("tombstone (no value)", "empty value: tombstone", None), None),
        (Variant("empty bytes", "empty value: empty message", None), b""),
        (Variant("empty object", "empty value: empty message", None), b"{}"),
        (Variant("JSON array", "wrong type: list where an object belongs", None), b"[" + healthy + b"]"),
        (Variant("JSON number", "wrong type: number where an object belongs", None), b"42"),
        (Variant("JSON 5000-digit number", "number: 5000 digits", None), DIGITS_5000.text),
        (Variant("nested 5000 deep", "JSON nested 5000 deep", None), DEEP.text),
        (Variant("UTF-8 byte-order mark", "bytes: byte-order mark / UTF-16", None), b"\xef\xbb\xbf" + healthy),
        (Variant("UTF-16", "bytes: byte-order mark / UTF-16", None), healthy.decode().encode("utf-16")),
        (
            Variant("1 MB of whitespace", "size: message of about 1 MB", None),
            healthy[:-1] + b" " * (NEAR_LIMIT_BYTES - len(healthy)) + b"}",
        ),
    ]


# --- the healthy messages every case starts from --------------------------------------------------


@dataclass
class Ids:
    """The ids of the hostile round's own world (its practice, charge and sync), made in setup."""

    run: str
    practice_id: str
    charge_id: str = "00000000-0000-0000-0000-000000000000"  # replaced by the real one
    sync_id: str = "hostile-sync"
    sync_booking_id: str = "hostile-sync-booking"


def _patient(tag: str) -> dict[str, Any]:
    return {
        "patient_id": f"{tag}-pat",
        "first_name": "Hostile",
        "email": f"{tag}@patients.hostile.test",
        "phone": "+61400000000",
        "portal_account": True,
        "card_on_file": False,
        "locale": "en",
    }


def templates(ids: Ids, tag: str, n: int, now: datetime) -> dict[str, dict[str, Any]]:
    """One healthy payload per inbound event type (every optional field set), for one case."""
    future, soon = now + timedelta(hours=72), now + timedelta(hours=73)
    fee = {"amount": "45.00", "currency": "AUD", "code": "D9987", "code_system": "CDT"}
    return {
        "booking.scheduled": {
            "booking_id": tag,
            "practice_id": ids.practice_id,
            "starts_at": iso(future),
            "ends_at": iso(soon),
            "practitioner_id": "dr-hostile",
            "service_code": "D1110",
            "patient": _patient(tag),
            "professional_id": f"{tag}-pro",
            "series_id": f"{tag}-series",
            "deposit": {"amount": "20.00", "currency": "AUD"},
            "price": {"amount": "120.00", "currency": "AUD"},
            "professional_contact": {
                "first_name": "Pro",
                "email": f"{tag}@pros.hostile.test",
                "phone": "+61400000001",
                "locale": "en",
            },
        },
        "booking.rescheduled": {
            "booking_id": tag,
            "starts_at": iso(future + timedelta(days=1)),
            "ends_at": iso(soon + timedelta(days=1)),
        },
        "booking.completed": {"booking_id": tag, "completed_at": iso(now)},
        "booking.cancellation_requested": {
            "request_id": f"{tag}-req",
            "booking_id": tag,
            "requested_at": iso(now),
            "actor": {"kind": "staff", "id": "staff-hostile", "roles": ["reception"]},
            "channel": "practice",
            "reason_code": "illness",
            "reason_text": "Hostile round template",
            "scope": "this",
            "fee_decision": "policy",
            "chart_note": "Hostile round chart note",
            "deposit_decision": "policy",
        },
        "booking.no_show_reported": {
            "request_id": f"{tag}-req",
            "booking_id": tag,
            "reported_at": iso(now),
            "actor": {"kind": "staff", "id": "staff-hostile", "roles": ["reception"]},
            "party": "patient",
            "code": "FTA",
            "fee_decision": "policy",
            "chart_note": "Hostile round chart note",
        },
        "booking.arrived": {"booking_id": tag, "arrived_at": iso(now)},
        "waitlist.offer_accepted": {
            "offer_id": f"{tag}-offer",
            "waitlist_id": f"{tag}-wl",
            "new_booking_id": f"{tag}-new",
            "accepted_at": iso(now),
        },
        "practice.configured": {
            "practice_id": tag,
            "name": "Hostile practice",
            "timezone": "Australia/Sydney",
            "locale": "en",
            "contact": {
                "email": f"{tag}@practices.hostile.test",
                "phone": "+61400000002",
                "preferred_channel": "email",
            },
            "cancellation": {
                "online_enabled": True,
                "patient_cutoff_hours": 48,
                "late_window_hours": 24,
                "professional_no_show_minutes": 60,
                "notify_practice_on_online_cancel": False,
            },
            "fees": {
                "late_cancellation": dict(fee),
                "no_show": {**fee, "amount": "60.00", "code": "D9986"},
                "charge_card_on_file": False,
            },
            "deposits": {"timely": "refund", "late": "keep", "no_show": "keep"},
            "waitlist": {"enabled": False, "offer_minutes": 30},
            "pms": {"integration": "none"},
        },
        "waitlist.joined": {
            "waitlist_id": tag,
            "practice_id": ids.practice_id,
            "patient": _patient(tag),
            "service_code": "D1110",
            "practitioner_id": "dr-hostile",
            "joined_at": iso(now),
        },
        "excuse.submitted": {
            "excuse_id": f"{tag}-exc",
            "professional_id": tag,
            "booking_id": f"{tag}-bk",
            "document_ref": "docs://hostile/excuse.pdf",
            "submitted_at": iso(now),
        },
        "excuse.reviewed": {
            "excuse_id": f"{tag}-exc",
            "decision": "approved",
            "reviewer_id": "reviewer-hostile",
            "reviewed_at": iso(now),
        },
        "score.recalculation_requested": {"professional_id": tag},
        "professional.reinstated": {
            "professional_id": tag,
            "reviewer_id": "reviewer-hostile",
            "reinstated_at": iso(now),
            "note": "Hostile round",
        },
        "charge.adjustment_requested": {
            # A distinct amount per case: an adjustment that changes nothing is refused as
            # invalid_request whatever else it carries, which would pass a case by accident.
            "request_id": f"{tag}-req",
            "charge_id": ids.charge_id,
            "actor": {"id": "manager-hostile", "roles": ["manager"]},
            "amount": str(Decimal("10.00") + Decimal(n) / 100),
            "code": "D9987",
            "code_system": "CDT",
        },
        "charge.review_decided": {
            "request_id": f"{tag}-req",
            "charge_id": ids.charge_id,
            "actor": {"id": "manager-hostile", "roles": ["manager"]},
            "decision": "approve",
        },
        "pms.sync_acknowledged": {
            "sync_id": ids.sync_id,
            "booking_id": ids.sync_booking_id,
            "status": "error",
            "error": "Hostile round: the PMS said no",
            "external_ref": f"{tag}-ext",
        },
    }


# Bookings the request types act on: scheduled in setup, one per case, so a request the
# system wrongly accepts changes only its own booking (and shows as processed).
BOOKING_STARTS = {
    "booking.cancellation_requested": timedelta(hours=72),
    "booking.rescheduled": timedelta(hours=72),
    "booking.no_show_reported": timedelta(minutes=-30),
    "booking.completed": timedelta(hours=-2),
    "booking.arrived": timedelta(minutes=-5),
}


# --- walking the contract models -------------------------------------------------------------


@dataclass(frozen=True)
class Leaf:
    path: tuple[str, ...]
    kind: str
    required: bool
    model: type[BaseModel] | None = None  # for object fields
    choices: tuple[Any, ...] = ()


def _unwrap(annotation: Any) -> tuple[Any, bool]:
    """(the annotation without Optional/Annotated, whether None is allowed)."""
    nullable = False
    while True:
        origin = get_origin(annotation)
        if origin is typing.Annotated:
            annotation = get_args(annotation)[0]
        elif origin in (Union, types.UnionType):
            args = [a for a in get_args(annotation) if a is not type(None)]
            nullable = nullable or len(args) < len(get_args(annotation))
            if len(args) != 1:
                return annotation, nullable
            annotation = args[0]
        else:
            return annotation, nullable


def _kind_of(name: str, annotation: Any) -> tuple[str, Any]:
    ann, _ = _unwrap(annotation)
    origin = get_origin(ann)
    if origin is Literal:
        return "enum", get_args(ann)
    if origin in (list, tuple, set, frozenset) or ann in (list, tuple):
        return "list", None
    if isinstance(ann, type):
        if issubclass(ann, BaseModel):
            return "object", ann
        if ann is bool:
            return "bool", None
        if ann is int:
            return "int", None
        if ann is Decimal or name == "amount":
            return "amount", None
        if issubclass(ann, datetime) or ann.__name__ == "AwareDatetime":
            return "datetime", None
        if ann is str:
            if name == "id" or name.endswith("_id"):
                return "id", None
            if name.endswith("_ref"):
                return "ref", None
            for kind in ("email", "phone", "locale", "timezone", "currency"):
                if name == kind or name.endswith(f"_{kind}"):
                    return kind, None
            return "text", None
    if "datetime" in str(ann).lower():
        return "datetime", None
    return "text", None


def leaves(model: type[BaseModel], prefix: tuple[str, ...] = ()) -> Iterator[Leaf]:
    """Every field of `model` and of the models inside it, objects before their fields."""
    for name, info in model.model_fields.items():
        path = (*prefix, info.alias or name)
        kind, extra = _kind_of(name, info.annotation)
        required = info.is_required()
        if kind == "object":
            yield Leaf(path, "object", required, model=extra)
            yield from leaves(extra, path)
        else:
            yield Leaf(path, kind, required, choices=tuple(extra or ()))


def _healthy_value(leaf: Leaf, tag: str, now: datetime) -> Any:
    """A valid value for a field the template does not set (a field added after this file)."""
    return {
        "id": f"{tag}-{leaf.path[-1]}",
        "ref": f"{tag}-{leaf.path[-1]}",
        "text": "hostile",
        "email": f"{tag}@hostile.test",
        "phone": "+61400000003",
        "locale": "en",
        "timezone": "UTC",
        "currency": "AUD",
        "amount": "10.00",
        "datetime": iso(now),
        "enum": leaf.choices[0] if leaf.choices else "x",
        "bool": False,
        "int": 1,
        "list": [],
    }.get(leaf.kind, "hostile")


def _set(data: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    for part in path[:-1]:
        if not isinstance(data.get(part), dict):
            data[part] = {}
        data = data[part]
    data[path[-1]] = value


def _complete(model: type[BaseModel], data: dict[str, Any], tag: str, now: datetime) -> dict[str, Any]:
    """The template with every field of the model present (defaults for fields it lacks)."""
    data = copy.deepcopy(data)
    for leaf in leaves(model):
        node: Any = data
        for part in leaf.path[:-1]:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict) and leaf.path[-1] not in node and leaf.kind != "object":
            node[leaf.path[-1]] = _healthy_value(leaf, tag, now)
        elif node is None and leaf.kind != "object":
            _set(data, leaf.path, _healthy_value(leaf, tag, now))
    return data


# --- building the messages --------------------------------------------------------------------

_PLACEHOLDER = "@@hostile-raw-{}@@"


def _envelope(type_: str, subject: str, data: Any, envelope_id: str, now: datetime) -> dict[str, Any]:
    return {
        "specversion": "1.0",
        "id": envelope_id,
        "type": type_,
        "source": "upstream/hostile",
        "subject": subject,
        "time": iso(now),
        "datacontenttype": "application/json",
        "data": data,
    }


def _encode(document: Any, raws: dict[str, bytes]) -> bytes:
    out = json.dumps(document).encode()
    for token, raw in raws.items():
        out = out.replace(json.dumps(token).encode(), raw)
    return out


def _fill(value: Any, raws: dict[str, bytes]) -> Any:
    if isinstance(value, Raw):
        token = _PLACEHOLDER.format(len(raws))
        raws[token] = value.text
        return token
    return value


@dataclass
class _Builder:
    ids: Ids
    now: datetime
    cases: list[Case] = field(default_factory=list)

    def tag(self) -> str:
        return f"hostile-{self.ids.run}-{len(self.cases):04d}"

    def add(
        self,
        topic: str,
        event_type: str,
        field_: str,
        variant: Variant,
        value: bytes | None,
        envelope_id: str | None,
        tag: str,
    ) -> None:
        starts = BOOKING_STARTS.get(event_type) if topic == UPSTREAM_BOOKINGS else None
        self.cases.append(
            Case(
                n=len(self.cases),
                name=f"{event_type if event_type != '(message)' else topic} {field_}: {variant.name}",
                klass=variant.klass,
                topic=topic,
                event_type=event_type,
                field=field_,
                variant=variant.name,
                expect=variant.expect,
                key=tag.encode(),
                value=value,
                envelope_id=envelope_id,
                tag=tag,
                sacrificial_booking=tag if starts is not None else None,
                booking_starts_in=starts,
            )
        )

    def payload_case(
        self,
        topic: str,
        event_type: str,
        model: type[BaseModel],
        path: tuple[str, ...] | None,
        variant: Variant,
        *,
        envelope_field: str | None = None,
    ) -> None:
        tag = self.tag()
        data = _complete(model, templates(self.ids, tag, len(self.cases), self.now)[event_type], tag, self.now)
        envelope_id = f"{tag}-env"
        subject = _subject(event_type, data, tag)
        env = _envelope(event_type, subject, data, envelope_id, self.now)
        raws: dict[str, bytes] = {}
        value = variant.value
        if envelope_field is not None:
            if isinstance(value, str) and "{tag}" in value:
                value = value.replace("{tag}", tag)
            env[envelope_field] = _fill(value, raws)
            where = f"(envelope).{envelope_field}"
            if envelope_field == "id":
                envelope_id = value if isinstance(value, str) else None
            if envelope_field == "correlationid":
                envelope_id = value if isinstance(value, str) else None
        else:
            assert path is not None
            where = ".".join(path)
            if isinstance(value, Size):
                _set(data, path, _PLACEHOLDER.format("size"))
                base = len(_encode(env, raws)) - len(json.dumps(_PLACEHOLDER.format("size")))
                length = (value.bytes_ - base - 2) if value.whole else value.bytes_
                _set(data, path, value.fill * max(1, length))
            else:
                _set(data, path, _fill(value, raws))
        self.add(topic, event_type, where, variant, _encode(env, raws), envelope_id, tag)

    def message_case(self, topic: str, event_type: str, model: type[BaseModel]) -> None:
        for i in range(len(_message_variants(b"{}"))):
            tag = self.tag()
            # The healthy message inside carries this case's own ids and envelope id.
            data = _complete(model, templates(self.ids, tag, len(self.cases), self.now)[event_type], tag, self.now)
            healthy = _encode(_envelope(event_type, _subject(event_type, data, tag), data, f"{tag}-env", self.now), {})
            variant, raw = _message_variants(healthy)[i]
            self.add(topic, "(message)", "(message)", variant, raw, f"{tag}-env", tag)


def _subject(event_type: str, data: dict[str, Any], tag: str) -> str:
    for key in ("booking_id", "practice_id", "professional_id", "charge_id", "waitlist_id"):
        value = data.get(key)
        if isinstance(value, str) and value:
            return value
    return tag


def _field_variants(leaf: Leaf) -> list[Variant]:
    variants = list(VARIANTS.get(leaf.kind, VARIANTS["text"]))
    if leaf.path[-1] in DECIDED_AT_RECORD_TIME:
        variants = [
            Variant(v.name, v.klass, v.value, REFUSE_OR_PROCESS) if v.name in ("year 1", "year 9999") else v
            for v in variants
        ]
    if leaf.required:
        variants.append(NULL)
    return variants


# The field of an event type that carries the byte-level and size edges (its longest free text).
CARRIERS = {
    "booking.scheduled": ("patient", "first_name"),
    "booking.cancellation_requested": ("reason_text",),
    "booking.no_show_reported": ("chart_note",),
    "practice.configured": ("name",),
    "waitlist.joined": ("patient", "first_name"),
    "excuse.submitted": ("document_ref",),
    "charge.adjustment_requested": ("code",),
    "pms.sync_acknowledged": ("error",),
}


def _carrier(model: type[BaseModel]) -> tuple[str, ...]:
    """The field that carries the byte-level and size edges: the named one, else the first free
    text, else the first id."""
    found = list(leaves(model))
    named = CARRIERS.get(getattr(model, "event_type", ""))
    if named is not None and any(leaf.path == named for leaf in found):
        return named
    for kinds in (("text",), ("id", "ref"), ("email", "locale", "timezone", "phone")):
        for leaf in found:
            if leaf.kind in kinds:
                return leaf.path
    return found[0].path


def build(ids: Ids, now: datetime | None = None) -> list[Case]:
    """Every case, in send order (round-robin over classes); ids and bytes deterministic per `ids`."""
    now = now or datetime.now(UTC)
    builder = _Builder(ids, now)
    known = templates(ids, "t", 0, now)
    for topic in INBOUND_TOPICS:
        registry = TOPIC_EVENTS.get(topic, {})
        covered = [t for t in registry if t in known]
        for event_type in covered:
            model = registry[event_type]
            for leaf in leaves(model):
                for variant in (
                    _field_variants(leaf)
                    if leaf.kind != "object"
                    else (VARIANTS["object"] + ([NULL] if leaf.required else []))
                ):
                    builder.payload_case(topic, event_type, model, leaf.path, variant)
            carrier = _carrier(model)
            for variant in BYTE_VARIANTS + SIZE_VARIANTS:
                builder.payload_case(topic, event_type, model, carrier, variant)
        if covered:
            first = covered[0] if topic != UPSTREAM_BOOKINGS else "booking.cancellation_requested"
            builder.payload_case(topic, first, registry[first], _carrier(registry[first]), NEAR_LIMIT)
            for name, variants in ENVELOPE_VARIANTS.items():
                for variant in variants:
                    builder.payload_case(topic, first, registry[first], None, variant, envelope_field=name)
            builder.message_case(topic, first, registry[first])
    return _round_robin(builder.cases)


def uncovered_event_types() -> list[str]:
    """Inbound event types the registry lists but no template here knows (their cases are missing)."""
    known = templates(Ids("x", "p"), "t", 0, datetime.now(UTC))
    return [f"{topic} {t}" for topic in INBOUND_TOPICS for t in TOPIC_EVENTS.get(topic, {}) if t not in known]


def _round_robin(cases: list[Case]) -> list[Case]:
    """Per phase, per topic: one case of each class in turn, so early cases differ in class."""
    by_klass: dict[str, list[Case]] = defaultdict(list)
    for case in cases:
        by_klass[case.klass].append(case)
    ordered: list[Case] = []
    queues = list(by_klass.values())
    while queues:
        for queue in queues:
            ordered.append(queue.pop(0))
        queues = [q for q in queues if q]
    return ordered


def table(cases: list[Case]) -> str:
    """The case table: one line per case (topic, event type, field, variant, class, size)."""
    rows = [("#", "topic", "event type", "field", "value", "class", "bytes", "expect")]
    for c in sorted(cases, key=lambda c: c.n):
        rows.append((str(c.n), c.topic, c.event_type, c.field, c.variant, c.klass, str(c.size), c.expect))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join(" | ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)) for r in rows)


def summary(cases: list[Case]) -> str:
    per_type: dict[tuple[str, str], int] = defaultdict(int)
    for c in cases:
        per_type[(c.topic, c.event_type)] += 1
    lines = [
        f"{len(cases)} hostile cases, {len({c.klass for c in cases})} classes, "
        f"{sum(c.size for c in cases) / 1e6:.1f} MB"
    ]
    lines += [f"  {topic} {event_type}: {n}" for (topic, event_type), n in sorted(per_type.items())]
    missing = uncovered_event_types()
    if missing:
        lines.append(f"  no template (not covered): {', '.join(missing)}")
    return "\n".join(lines)


def _checked(cases: list[Case]) -> Callable[[], None]:
    def check() -> None:
        names = [c.name for c in cases]
        dupes = {n for n in names if names.count(n) > 1}
        assert not dupes, f"case names not unique: {sorted(dupes)[:5]}"

    return check


if __name__ == "__main__":
    built = build(Ids("0000000000", "hostile-0000000000-practice"), now=datetime(2026, 3, 1, tzinfo=UTC))
    _checked(built)()
    print(table(built))
    print(summary(built))
