"""The answer to a `practice.configured` that breaks the contract's bounds.

Guarantees: such settings are never stored (the consumer dead-letters the message, so the
previous settings stay in force), and, when the message names a valid practice id, the practice
is told so on `practice.events.v1` with `practice.configuration_rejected`: which settings are
wrong and why, in one message a person can act on. The message quotes what was sent only
briefly (at most `QUOTE_MAX_CHARS` characters, never a contact detail), whatever its size, and
the answer never raises: hostile settings cannot stop the consumer.
"""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Any

from pydantic import ValidationError

from shared.contracts.base import Payload
from shared.contracts.common import MESSAGE_MAX_CHARS, valid_id
from shared.contracts.policy import PracticeConfigurationRejected
from shared.contracts.upstream import PracticeConfigured
from shared.logging import get_logger
from shared.topics import PRACTICE_EVENTS

log = get_logger(__name__)

QUOTE_MAX_CHARS = 40
PROBLEMS_SHOWN = 3
_PROBLEM_MAX_CHARS = 400
_FIELD_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_PRIVATE_SECTIONS = ("contact",)  # contact details are not quoted back, even to their practice


def _quoted(value: Any, *, bare: bool = False) -> str | None:
    """A short, printable rendering of a sent value, or None when it is not worth quoting;
    `bare`: a string as it is (an amount), not in quotes."""
    if isinstance(value, bool) or value is None:
        return "true" if value is True else "false" if value is False else "null"
    if isinstance(value, int):
        if value.bit_length() > 128:
            return f"a number of about {int(value.bit_length() * 0.30103)} digits"
        text = str(value)
    elif isinstance(value, (float, Decimal)):
        text = str(value)  # scientific notation for huge exponents: short, never expanded
    elif isinstance(value, str):
        text = value[: QUOTE_MAX_CHARS + 1] if bare else repr(value[: QUOTE_MAX_CHARS + 1])
    else:
        return None  # an object or a list: the message names where it is
    text = "".join(ch if ch.isprintable() else "?" for ch in text)
    return text if len(text) <= QUOTE_MAX_CHARS else f"{text[:QUOTE_MAX_CHARS]}…"


def _problem(error: Any) -> str:
    """One validation error as words: where, what was sent (briefly), and what is allowed."""
    path = [str(part) for part in error["loc"] if isinstance(part, int) or _FIELD_NAME.fullmatch(str(part))]
    where = ".".join(path) or "the settings"
    message = str(error["msg"]).removeprefix("Value error, ")
    value = error.get("input")
    if error["type"] == "missing":
        return f"{where} is missing"
    if path and path[0] in _PRIVATE_SECTIONS:
        return f"{where}: {message}"
    if isinstance(value, dict):
        # A rule over several fields (money: the amount against its currency) names the amount.
        amount = _quoted(value.get("amount"), bare=True) if message.startswith("the amount ") else None
        if amount is not None:
            message = message.replace("the amount ", f"the amount {amount} ", 1)
        return f"{where}: {message}"
    quoted = _quoted(value)
    if quoted is None:
        return f"{where}: {message}"
    return f"{where} is {quoted}: {message[:1].lower()}{message[1:]}"


def rejection_message(data: dict[str, Any], error: str) -> str:
    """What was wrong with the settings, and what to do about it, in one message."""
    try:
        PracticeConfigured.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
        problems = [_problem(e)[:_PROBLEM_MAX_CHARS] for e in errors[:PROBLEMS_SHOWN]]
        if len(errors) > PROBLEMS_SHOWN:
            problems.append(f"and {len(errors) - PROBLEMS_SHOWN} more")
    else:  # the message broke the contract some other way than its settings
        problems = [error.split(": ", 1)[-1][:_PROBLEM_MAX_CHARS]]
    corrected = "this" if len(problems) == 1 else "these"
    message = (
        f"The practice settings were not applied: {'; '.join(problems)}. "
        f"Send the settings again with {corrected} corrected; the previous settings stay in force."
    )
    return message if len(message) <= MESSAGE_MAX_CHARS else f"{message[: MESSAGE_MAX_CHARS - 1]}…"


def reject_invalid_settings(data: dict[str, Any], error: str, subject: str | None) -> list[tuple[str, Payload, str]]:
    """`practice.configuration_rejected` for settings that broke the contract (besides the dead
    letter), keyed by the practice: its id from the payload when valid, else from the envelope's
    subject; neither valid, no answer (the dead letter only)."""
    try:
        practice_id = valid_id(data.get("practice_id")) or valid_id(subject)
        if practice_id is None:
            return []
        rejection = PracticeConfigurationRejected.new(
            practice_id=practice_id, reason="invalid_settings", message=rejection_message(data, error)
        )
        return [(PRACTICE_EVENTS, rejection, practice_id)]
    except Exception as exc:  # noqa: BLE001 - the dead letter stands; an answer must never wedge the consumer
        log.warning("no answer to invalid practice settings", error=type(exc).__name__)
        return []
