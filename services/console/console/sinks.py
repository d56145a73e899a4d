"""Where the development sinks keep what they caught: mail under `.local/mail/`, SMS under `.local/sms/`.

Guarantees:
- One file per message, written whole or not at all (a temporary file renamed into place), so a
  reader never sees half a message.
- An SMS sent twice with the same idempotency key is stored once, and the second send is
  answered with the first one's record (the provider behaviour the notification service relies on).
- Reading is bounded: a listing reads at most `limit` of the newest messages, and a message id
  is checked against a fixed pattern before it becomes a file name.

These stores hold personal data (addresses, phone numbers, message text): they are for
development only, and nothing here logs any of it.
"""

from __future__ import annotations

import email
import email.policy
import json
import os
import re
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from email.message import EmailMessage
from pathlib import Path
from typing import Any

MESSAGE_ID = re.compile(r"^[0-9]{8}T[0-9]{6}[0-9]{6}Z-[0-9a-f]{32}$")
LIST_LIMIT = 200


def _new_id(now: datetime) -> str:
    # Sortable by time first, unique by the uuid: the newest-first listing is a sort of names.
    return f"{now.astimezone(UTC):%Y%m%dT%H%M%S%f}Z-{uuid.uuid4().hex}"


def _write_atomically(path: Path, data: bytes) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_bytes(data)
    os.replace(temporary, path)


def _newest(directory: Path, suffix: str, limit: int) -> list[Path]:
    if not directory.is_dir():
        return []
    names = sorted((p.name for p in directory.iterdir() if p.name.endswith(suffix)), reverse=True)
    return [directory / n for n in names[:limit]]


@dataclass(frozen=True)
class Mail:
    id: str
    received_at: str
    mail_from: str
    rcpt_to: list[str]
    subject: str
    text: str | None
    html: str | None
    size: int


class MailStore:
    """Each message as `<id>.eml` (the bytes as received) beside `<id>.json` (envelope, subject)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def save(self, mail_from: str, rcpt_to: list[str], data: bytes, now: datetime | None = None) -> str:
        now = now or datetime.now(UTC)
        self.directory.mkdir(parents=True, exist_ok=True)
        message_id = _new_id(now)
        parsed = email.message_from_bytes(data, policy=email.policy.default)
        meta = {
            "id": message_id,
            "received_at": now.astimezone(UTC).isoformat(),
            "mail_from": mail_from,
            "rcpt_to": list(rcpt_to),
            "subject": str(parsed.get("Subject", "")),
            "size": len(data),
        }
        _write_atomically(self.directory / f"{message_id}.eml", data)
        _write_atomically(self.directory / f"{message_id}.json", json.dumps(meta).encode())
        return message_id

    def list(self, limit: int = LIST_LIMIT) -> list[dict[str, Any]]:
        """The newest messages' envelopes and subjects, newest first."""
        items = []
        for path in _newest(self.directory, ".json", limit):
            try:
                items.append(json.loads(path.read_text()))
            except (OSError, ValueError):
                continue  # removed or being replaced meanwhile: the next listing has it
        return items

    def get(self, message_id: str) -> Mail | None:
        if not MESSAGE_ID.match(message_id):
            return None
        try:
            meta = json.loads((self.directory / f"{message_id}.json").read_text())
            data = (self.directory / f"{message_id}.eml").read_bytes()
        except (OSError, ValueError):
            return None
        parsed = email.message_from_bytes(data, policy=email.policy.default)
        assert isinstance(parsed, EmailMessage)
        return Mail(
            id=message_id,
            received_at=meta["received_at"],
            mail_from=meta["mail_from"],
            rcpt_to=meta["rcpt_to"],
            subject=meta["subject"],
            text=_part(parsed, "plain"),
            html=_part(parsed, "html"),
            size=len(data),
        )


def _part(message: EmailMessage, subtype: str) -> str | None:
    body = message.get_body(preferencelist=(subtype,))
    if body is None:
        return None
    try:
        return str(body.get_content())
    except (LookupError, ValueError):  # an unknown charset: show what can be shown
        payload = body.get_payload(decode=True)
        return payload.decode("utf-8", errors="replace") if isinstance(payload, bytes) else None


class SmsStore:
    """Each SMS as `<id>.json`; an idempotency key names the message it was first sent as."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def save(
        self, *, to: str, body: str, sender: str | None, idempotency_key: str | None, now: datetime | None = None
    ) -> tuple[dict[str, Any], bool]:
        """The stored record, and whether it is new (False: the key was seen, nothing stored)."""
        now = now or datetime.now(UTC)
        self.directory.mkdir(parents=True, exist_ok=True)
        if idempotency_key:
            key_path = self.directory / "keys" / f"{uuid.uuid5(uuid.NAMESPACE_URL, idempotency_key).hex}.key"
            if key_path.exists():
                earlier = self.get(key_path.read_text().strip())
                if earlier is not None:
                    return earlier, False
        message_id = _new_id(now)
        record = {
            "id": message_id,
            "sid": "SM" + message_id.rsplit("-", 1)[1],  # Twilio's shape: SM and 32 hex digits
            "received_at": now.astimezone(UTC).isoformat(),
            "to": to,
            "from": sender,
            "body": body,
            "idempotency_key": idempotency_key,
        }
        _write_atomically(self.directory / f"{message_id}.json", json.dumps(record).encode())
        if idempotency_key:
            key_path.parent.mkdir(exist_ok=True)
            _write_atomically(key_path, message_id.encode())
        return record, True

    def list(self, limit: int = LIST_LIMIT) -> list[dict[str, Any]]:
        items = []
        for path in _newest(self.directory, ".json", limit):
            try:
                items.append(json.loads(path.read_text()))
            except (OSError, ValueError):
                continue
        return items

    def get(self, message_id: str) -> dict[str, Any] | None:
        if not MESSAGE_ID.match(message_id):
            return None
        try:
            record: dict[str, Any] = json.loads((self.directory / f"{message_id}.json").read_text())
        except (OSError, ValueError):
            return None
        return record
