"""A practice's settings from a file (YAML or JSON) to `practice.configured`, and the policy service's answer.

Guarantees: the file is checked against the contract (`PracticeConfigured`) before anything is
sent, and a file that breaks it is refused with where and what, never its values; the answer is
read from `practice.events.v1` from a position fixed before sending, so it cannot be missed.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import yaml  # type: ignore[import-untyped]
from pydantic import ValidationError

from ..contracts.upstream import PracticeConfigured
from ..kafka import KafkaConnection
from ..redaction import describe_validation_error
from ..topics import PRACTICE_EVENTS, UPSTREAM_PRACTICES
from .bus import open_bus, open_reader

SETTINGS_FILE_MAX_BYTES = 256 * 1024
SOURCE = "tools/cancellations-cli"


class SettingsError(ValueError):
    """The settings file cannot be sent; the sentence says what to fix."""


def load_settings(path: Path) -> PracticeConfigured:
    """A `practice.configured` payload from a .yaml/.yml or .json file."""
    data = path.read_bytes()
    if len(data) > SETTINGS_FILE_MAX_BYTES:
        raise SettingsError(f"{path} is larger than {SETTINGS_FILE_MAX_BYTES} bytes")
    return parse_settings(data.decode("utf-8"), json_only=path.suffix.lower() == ".json")


def parse_settings(text: str, *, json_only: bool = False) -> PracticeConfigured:
    try:
        document: Any = json.loads(text) if json_only else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as exc:
        raise SettingsError(
            f"the file is not {'JSON' if json_only else 'YAML or JSON'} ({type(exc).__name__})"
        ) from None
    if not isinstance(document, dict):
        raise SettingsError("the file must hold one mapping: practice_id, name, timezone, locale and the settings")
    try:
        return PracticeConfigured.model_validate(document)
    except ValidationError as exc:
        raise SettingsError(describe_validation_error(exc)) from None


async def apply(
    conn: KafkaConnection,
    settings: PracticeConfigured,
    *,
    reader_conn: KafkaConnection | None = None,
    timeout: float = 30.0,
) -> dict[str, Any] | None:
    """Send the settings (as `conn`: a principal that may write upstream.practices.v1) and wait
    for the answer about this practice, read as `reader_conn` (one that may read
    practice.events.v1; default `conn`): the answer's envelope (`practice.configuration_accepted`
    or `_rejected`), or None after `timeout` seconds."""
    async with open_reader(reader_conn or conn, [PRACTICE_EVENTS]) as reader:
        async with open_bus(conn) as bus:
            sent = await bus.event(UPSTREAM_PRACTICES, settings, subject=settings.practice_id, source=SOURCE)
        deadline = asyncio.get_running_loop().time() + timeout
        while asyncio.get_running_loop().time() < deadline:
            for record in await reader.batch(500):
                answer = _answer_for(record.value, settings.practice_id, sent["id"])
                if answer is not None:
                    return answer
    return None


def _answer_for(value: bytes | None, practice_id: str, event_id: str) -> dict[str, Any] | None:
    try:
        envelope = json.loads(value or b"")
        data = envelope["data"]
    except (ValueError, KeyError, TypeError):
        return None
    if not isinstance(data, dict) or data.get("practice_id") != practice_id:
        return None
    # The answer carries the settings' event id as its correlation id; an answer to an older
    # configuration of the same practice (published before ours) is not ours.
    if envelope.get("correlationid") not in (None, event_id):
        return None
    return dict(envelope)
