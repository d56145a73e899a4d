"""The one masking of personal data and secrets, for logs and for any text that leaves a service.

Guarantee, for `redact(value)` and `mask_text(text)`:
- By key, at any depth: a value under a key that names personal data (names, email, phone,
  address, notes, `reason_text`, `chart_note` …) or a secret (password, token, api key,
  authorization, cookie …) is replaced by "[redacted]" — in dicts, pydantic models,
  dataclasses and named tuples (turned into key → value first), and in text where a value
  stands after its key: `name='Ann'`, `"email": "…"`, `{'phone': …}`, `password=…`,
  `Authorization: Bearer …`. In prose, `key: rest of the sentence` is masked for secrets only
  ("first_name: Field required" is a message about a field, not its value). `None` and
  booleans under such keys stay: they carry no value.
- By pattern, in every string: email addresses → "[email]", phone numbers in international
  and national formats → "[phone]", the password of a URL (`postgresql://user:[redacted]@host`),
  bearer tokens and JWTs → "[redacted]".
- Every other value becomes text before it is masked: an exception as "Type: message" (a
  pydantic `ValidationError` as `describe_validation_error`, never its input values), dates
  and times in ISO form, anything else as its `repr`.
- Nothing passes unmasked because it is deep, large or odd: past `MAX_DEPTH` a value becomes
  "[too deep]", a container already being walked "[cycle]", items past `MAX_ITEMS` or
  `MAX_VALUES` are dropped with a count, text past `MAX_TEXT_CHARS` is cut (and masked).

What stays: dates and timestamps ("2026-11-30", "2026-11-30T09:15:00+01:00"), UUIDs, ids
("bk-2026-000123", "req_20261130_0001"), offsets, counts, amounts ("1234.5"), durations,
host:port ("127.0.0.1:9092") and versions. A bare run of digits is a phone number only with a
"+" or a leading trunk "0" ("+4915112345678", "015112345678"), never an offset or a count.

Limits: a name or street in prose without its key ("cancelled by Ann Lee") cannot be told
from other words; personal data must be logged as key-value fields, never formatted into the
message.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Mapping
from datetime import date, time, timedelta
from decimal import Decimal
from functools import lru_cache
from typing import Any, Final, Literal
from uuid import UUID

from pydantic import BaseModel, ValidationError

REDACTED: Final = "[redacted]"
EMAIL_MASK: Final = "[email]"
PHONE_MASK: Final = "[phone]"

MAX_DEPTH: Final = 32  # a log line nests a few levels; deeper is hostile or a bug
MAX_ITEMS: Final = 1_000  # per dict or list
MAX_VALUES: Final = 20_000  # per call, all levels together
MAX_TEXT_CHARS: Final = 32_768  # per string; a traceback fits

Sensitivity = Literal["secret", "personal"]

# --- keys ----------------------------------------------------------------------------------------

# A key is split into lower-case words ("patientEmail", "X-Api-Key" → patient/email, x/api/key).
_SECRET_WORDS = frozenset(
    {
        "password",
        "passwd",
        "pwd",
        "passphrase",
        "secret",
        "secrets",
        "token",
        "tokens",
        "authorization",
        "auth",
        "cookie",
        "cookies",
        "credential",
        "credentials",
        "signature",
        "apikey",
        "sessionid",
    }
)
_SECRET_SUFFIXES = ("api_key", "access_key", "private_key", "secret_key", "signing_key", "session_key")
_PERSONAL_WORDS = frozenset(
    {
        "email",
        "emails",
        "mail",
        "phone",
        "phones",
        "mobile",
        "telephone",
        "tel",
        "fax",
        "msisdn",
        "address",
        "addresses",
        "street",
        "postcode",
        "postal",
        "zip",
        "zipcode",
        "birthday",
        "birthdate",
        "birth",
        "dob",
        "ssn",
        "iban",
        "note",
        "notes",
        "comment",
        "comments",
        "text",  # free text: reason_text, chart_note …
    }
)
_PERSONAL_KEYS = frozenset(
    {
        "to",
        "cc",
        "bcc",
        "contact",
        "contacts",
        "firstname",
        "lastname",
        "surname",
        "fullname",
        "username",
        "input",
        "input_value",  # pydantic's copy of the offending value
    }
)
# "…_name" is a person's name unless the word before says what else it names.
_NAME_WORDS = frozenset({"name", "names"})
_TECHNICAL_NAME_OWNERS = frozenset(
    {
        "app",
        "attr",
        "attribute",
        "bucket",
        "channel",
        "class",
        "column",
        "container",
        "currency",
        "database",
        "db",
        "domain",
        "event",
        "field",
        "file",
        "func",
        "function",
        "group",
        "header",
        "host",
        "image",
        "index",
        "integration",
        "job",
        "key",
        "locale",
        "logger",
        "metric",
        "model",
        "module",
        "param",
        "process",
        "queue",
        "record",
        "schema",
        "server",
        "service",
        "state",
        "status",
        "step",
        "table",
        "task",
        "template",
        "thread",
        "timezone",
        "topic",
        "type",
        "tz",
    }
)
_CAMEL_BOUNDARY = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")
_NON_WORD = re.compile(r"[^a-z0-9]+")


@lru_cache(maxsize=4096)
def key_sensitivity(key: str) -> Sensitivity | None:
    """Whether a value under `key` is a secret, personal data, or neither (None)."""
    words = [w for w in _NON_WORD.split(_CAMEL_BOUNDARY.sub("_", key).lower()) if w]
    if not words:
        return None
    joined = "_".join(words)
    if _SECRET_WORDS.intersection(words) or joined.endswith(_SECRET_SUFFIXES):
        return "secret"
    if joined in _PERSONAL_KEYS or _PERSONAL_WORDS.intersection(words):
        return "personal"
    if words[-1] in _NAME_WORDS and (len(words) == 1 or words[-2] not in _TECHNICAL_NAME_OWNERS):
        return "personal"
    return None


def is_sensitive_key(key: str) -> bool:
    return key_sensitivity(key) is not None


# --- text ----------------------------------------------------------------------------------------

# `key=`, `key: `, `"key": `, `'key': `, `\"key\": ` — the value is looked at separately.
_KEY_BEFORE_VALUE = re.compile(r"""(?<![\w-])(?P<key>[A-Za-z_][\w-]*)\\?["']?[ \t]*(?P<sep>=(?!=)|:(?!//|:))[ \t]*""")
_QUOTED = re.compile(r"""(["'])(?:\\.|(?!\1).)*\1""", re.DOTALL)
_ESCAPED_QUOTED = re.compile(r"""\\(["']).*?\\\1""", re.DOTALL)
# Words up to a delimiter or the next `key=` / `key:`.
_BARE_VALUE = re.compile(r"""[^\s,;&)}\]]+(?:[ \t]++(?![\w.-]+["']?[ \t]*[:=])[^\s,;&)}\]]+)*""")
_CLOSING = {"{": "}", "[": "]", "(": ")"}

_URL_PASSWORD = re.compile(r"(?<![A-Za-z0-9+.-])(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^\s:/@]*:)[^\s/?#]*(?=@)")
_BEARER = re.compile(r"(?<![\w-])(?P<scheme>(?i:bearer))\s+[\w.~+/=-]+")
_JWT = re.compile(r"(?<![\w-])eyJ[\w-]+\.[\w-]+\.[\w-]*")
# Not after "/": "postgresql://app@db.example.com" is a user at a host. A text cut right after
# the "@" still hides the local part.
_EMAIL = re.compile(r"(?<![\w.+/-])[\w.+-]+(?:@|%40)(?:[\w-]+(?:\.[\w-]+)*\.[^\W\d_][\w-]*|[\w.-]*\Z)")
_PHONE = re.compile(
    r"""
    (?:
        (?<![\w+])\+\d{1,3}(?:[ .-]?\(\d{1,4}\))?(?:[ .-]?\d{1,5}){1,5}  # +49 151 …, +1 (555) …
      | (?<![\w.:/+-])
        (?:
            \(\d{2,5}\)[ .-]?\d{2,5}(?:[ .-]?\d{2,5}){0,3}             # (555) 123-4567
          | 0\d{1,4}(?:[ /.-]?\d{2,8}){1,4}                            # 0151 1234 5678, 030/123456
          | \d{3}(?P<sep>[ .-])\d{3}(?P=sep)\d{4}                      # 555-123-4567
        )
    )
    (?![\w@]|[.:/-]\w)  # not the head of a longer token: 0151-…-x, an IP, a time
    """,
    re.VERBOSE,
)
_PHONE_MIN_DIGITS, _PHONE_MAX_DIGITS = 8, 15  # E.164 allows at most 15
_DATE = re.compile(r"\d{4}([./-])\d{1,2}\1\d{1,2}(?!\d)|\d{1,2}([./-])\d{1,2}\2\d{2,4}(?!\d)")
_GROUP_BREAK = re.compile(r"[ ./-]")
_TRAILING_TOKEN = re.compile(r"\S*\Z")


def mask_text(text: str) -> str:
    """`text` with personal data and secrets masked (see the module's guarantee)."""
    cut = len(text) - MAX_TEXT_CHARS
    if cut > 0:
        # Drop the last, maybe partial, token too: half an address would not be recognised.
        head = _TRAILING_TOKEN.sub("", text[:MAX_TEXT_CHARS])
        return f"{mask_text(head)}…[{len(text) - len(head)} characters cut]"
    text = _mask_values_after_keys(text)
    text = _URL_PASSWORD.sub(rf"\g<head>{REDACTED}", text)
    text = _BEARER.sub(rf"\g<scheme> {REDACTED}", text)
    text = _JWT.sub(REDACTED, text)
    text = _EMAIL.sub(EMAIL_MASK, text)
    return _PHONE.sub(_phone_or_keep, text)


def _mask_values_after_keys(text: str) -> str:
    parts: list[str] = []
    position = 0
    while (found := _KEY_BEFORE_VALUE.search(text, position)) is not None:
        start = found.end()
        sensitivity = key_sensitivity(found["key"])
        end = None if sensitivity is None else _value_end(text, start, found["sep"], sensitivity)
        if end is None:
            parts.append(text[position:start])
            position = start
        else:
            parts += [text[position:start], REDACTED]
            position = end
    parts.append(text[position:])
    return "".join(parts)


def _value_end(text: str, start: int, separator: str, sensitivity: Sensitivity) -> int | None:
    """Where the value starting at `start` ends, or None when there is nothing to mask."""
    if start >= len(text):
        return None
    first = text[start]
    if first in "\"'":
        quoted = _QUOTED.match(text, start)
        return quoted.end() if quoted else len(text)  # unterminated: to the end
    if text.startswith(('\\"', "\\'"), start):
        escaped = _ESCAPED_QUOTED.match(text, start)
        return escaped.end() if escaped else len(text)
    if first in _CLOSING:
        return _bracketed_end(text, start)
    if separator == ":" and sensitivity == "personal":
        return None  # prose: "patient.first_name: Field required"
    bare = _BARE_VALUE.match(text, start)
    return bare.end() if bare else None


def _bracketed_end(text: str, start: int) -> int:
    """The end of a balanced {…}, […] or (…) (quotes respected); unbalanced: the end of text."""
    expected: list[str] = []
    quote: str | None = None
    index = start
    while index < len(text):
        char = text[index]
        if quote is not None:
            if char == "\\":
                index += 1
            elif char == quote:
                quote = None
        elif char in "\"'":
            quote = char
        elif char in _CLOSING:
            expected.append(_CLOSING[char])
        elif expected and char == expected[-1]:
            expected.pop()
            if not expected:
                return index + 1
        index += 1
    return len(text)


def _phone_or_keep(found: re.Match[str]) -> str:
    candidate = found[0]
    leading_date = _DATE.match(candidate)
    if leading_date is not None:  # "01.12.2026" is a day, whatever follows it
        return leading_date[0] + _PHONE.sub(_phone_or_keep, candidate[leading_date.end() :])
    if _is_phone(candidate):
        return PHONE_MASK
    if _digit_count(candidate) > _PHONE_MAX_DIGITS:
        # Two things in a row ("+4915112345678 2026-11-30"): the longest phone at the front.
        for brk in reversed([m.start() for m in _GROUP_BREAK.finditer(candidate)]):
            if _is_phone(candidate[:brk]):
                return PHONE_MASK + _PHONE.sub(_phone_or_keep, candidate[brk:])
    return candidate


def _is_phone(candidate: str) -> bool:
    if candidate.isdigit() and candidate.startswith("00"):
        return False  # zero-padded number
    return _PHONE_MIN_DIGITS <= _digit_count(candidate) <= _PHONE_MAX_DIGITS


def _digit_count(text: str) -> int:
    return sum(char.isdigit() for char in text)


# --- values --------------------------------------------------------------------------------------


def redact(value: object) -> Any:
    """`value` as JSON-friendly data (dicts, lists, str, numbers, bool, None) with personal data
    and secrets masked."""
    return _Redactor().value(value, depth=0)


def redact_fields(fields: Mapping[str, object]) -> dict[Any, Any]:
    """A mapping of fields (a log event) redacted: the same keys, their values masked."""
    return _Redactor().mapping(fields.items(), depth=0)


def describe_validation_error(exc: ValidationError, *, max_errors: int = 10) -> str:
    """The errors as "loc: msg; loc: msg" — where and what, never the input values."""
    errors = exc.errors(include_input=False, include_url=False, include_context=False)
    parts = [
        f"{'.'.join(mask_text(str(part)) for part in error['loc']) or '(root)'}: {mask_text(error['msg'])}"
        for error in errors[:max_errors]
    ]
    if len(errors) > max_errors:
        parts.append(f"and {len(errors) - max_errors} more")
    return "; ".join(parts)


class _Redactor:
    """One walk over one value: remembers what it is inside (cycles) and how much it has seen."""

    def __init__(self) -> None:
        self._inside: set[int] = set()
        self._budget = MAX_VALUES

    def value(self, value: object, depth: int) -> Any:
        self._budget -= 1
        if self._budget < 0:
            return "[cut]"
        if value is None or isinstance(value, (bool, int, float)):
            return value
        if isinstance(value, str):
            return mask_text(value)
        if depth >= MAX_DEPTH:
            return "[too deep]"
        if id(value) in self._inside:
            return "[cycle]"
        self._inside.add(id(value))
        try:
            return self._compound(value, depth)
        except Exception:  # noqa: BLE001 - a mapping or model that cannot be walked: its text, masked
            return mask_text(_as_text(value))
        finally:
            self._inside.discard(id(value))

    def _compound(self, value: object, depth: int) -> Any:
        if isinstance(value, Mapping):
            return self.mapping(value.items(), depth)
        if isinstance(value, BaseModel):
            return self.mapping(iter(value), depth)  # its fields (and extras), not serialised
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            return self.mapping(((f.name, getattr(value, f.name)) for f in dataclasses.fields(value)), depth)
        if isinstance(value, tuple) and hasattr(value, "_fields"):  # a named tuple
            return self.mapping(zip(value._fields, value, strict=False), depth)
        if isinstance(value, (list, tuple, set, frozenset)):
            return self._sequence(value, depth)
        return mask_text(_as_text(value))

    def mapping(self, items: Iterable[tuple[Any, Any]], depth: int) -> dict[Any, Any]:
        result: dict[Any, Any] = {}
        dropped = 0
        for key, item in items:
            if len(result) >= MAX_ITEMS:
                dropped += 1
                continue
            if isinstance(key, str) and is_sensitive_key(key) and not (item is None or isinstance(item, bool)):
                result[mask_text(key)] = REDACTED
            else:
                result[self._key(key)] = self.value(item, depth + 1)
        if dropped:
            result["[cut]"] = f"{dropped} more keys"
        return result

    def _sequence(self, items: list[Any] | tuple[Any, ...] | set[Any] | frozenset[Any], depth: int) -> list[Any]:
        result = [self.value(item, depth + 1) for _, item in zip(range(MAX_ITEMS), items, strict=False)]
        if len(items) > MAX_ITEMS:
            result.append(f"[cut: {len(items) - MAX_ITEMS} more items]")
        return result

    @staticmethod
    def _key(key: object) -> Any:
        if key is None or isinstance(key, (bool, int, float)):
            return key
        return mask_text(key if isinstance(key, str) else _as_text(key))


def _as_text(value: object) -> str:
    """Text for a value that is not data: ISO for dates, "Type: message" for an exception."""
    try:
        if isinstance(value, ValidationError):
            return f"ValidationError: {describe_validation_error(value)}"
        if isinstance(value, BaseException):
            return f"{type(value).__name__}: {value}"
        if isinstance(value, (date, time)):
            return value.isoformat()
        if isinstance(value, (UUID, Decimal, timedelta)):
            return str(value)
        return repr(value)
    except Exception:  # noqa: BLE001 - a broken __repr__ or __str__ must not break the log line
        return f"<{type(value).__name__}>"
