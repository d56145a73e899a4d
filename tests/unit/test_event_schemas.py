"""The committed JSON Schemas (docs/schemas/) are what the generator writes from the contract
models, valid draft 2020-12, and they accept the events the services really send and refuse
what the contract refuses, in both CloudEvents modes (the envelope, and `data` alone)."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from shared import schemas
from shared.contracts.billing import ChargeCreated
from shared.contracts.envelope import new_envelope
from shared.contracts.notification import NotificationSent

ROOT = Path(__file__).resolve().parents[2]
COMMITTED = ROOT / "docs" / "schemas"


def committed(relative: str) -> dict[str, Any]:
    return json.loads((COMMITTED / relative).read_text())  # type: ignore[no-any-return]


def test_the_committed_schemas_are_what_the_generator_writes(tmp_path: Path) -> None:
    written = {p.relative_to(tmp_path).as_posix(): p.read_text() for p in schemas.write(tmp_path)}
    on_disk = {p.relative_to(COMMITTED).as_posix(): p.read_text() for p in COMMITTED.rglob("*.json")}
    assert written == on_disk, "run: python -m shared.schemas --out docs/schemas"
    assert {"upstream/booking.completed.json", "booking/booking.completed.json"} <= set(written)


def test_every_schema_is_valid_draft_2020_12_with_its_own_id() -> None:
    ids = set()
    for relative, schema in schemas.schemas().items():
        Draft202012Validator.check_schema(schema)
        assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
        assert schema["$id"] == schemas.SCHEMA_BASE_URI + relative
        ids.add(schema["$id"])
    assert len(ids) == len(schemas.schemas())


def scheduled() -> dict[str, Any]:
    booking_id = f"bk-{uuid.uuid4()}"
    return {
        "specversion": "1.0",
        "id": str(uuid.uuid4()),
        "type": "booking.scheduled",
        "source": "upstream/test",
        "subject": booking_id,
        "time": "2026-12-01T09:00:00Z",
        "datacontenttype": "application/json",
        "data": {
            "booking_id": booking_id,
            "practice_id": "pr-1",
            "starts_at": "2026-12-02T09:00:00Z",
            "ends_at": "2026-12-02T09:30:00Z",
            "practitioner_id": "dr-1",
            "service_code": "D1110",
            "patient": {"patient_id": "pat-1", "first_name": "Ana", "portal_account": True, "card_on_file": False},
        },
    }


def published(payload: Any) -> dict[str, Any]:
    """An event as a service's outbox writes it."""
    return new_envelope(payload, source="service/test", subject="bk-1", correlation_id="corr-1")


SAMPLES = [
    ("upstream/booking.scheduled.json", scheduled()),
    (
        "notification/notification.sent.json",
        published(
            NotificationSent.new(
                notification_id=str(uuid.uuid4()),
                booking_id="bk-1",
                recipient="patient",
                channel="sms",
                template="booking_cancelled_by_patient",
            )
        ),
    ),
    (
        "billing/charge.created.json",
        published(
            ChargeCreated.new(
                charge_id="ch-1",
                booking_id="bk-1",
                patient_id="pat-1",
                kind="late_cancellation",
                amount="45.00",
                currency="EUR",
                code="LC01",
                code_system="custom",
            )
        ),
    ),
]


@pytest.mark.parametrize(("relative", "event"), SAMPLES, ids=[s[0] for s in SAMPLES])
def test_real_events_validate_whole_and_as_binary_data(relative: str, event: dict[str, Any]) -> None:
    schema = committed(relative)
    Draft202012Validator(schema).validate(event)
    data_schema = {**schema, "$ref": schema["properties"]["data"]["$ref"]}
    for key in ("properties", "required", "type"):
        data_schema.pop(key)
    Draft202012Validator(data_schema).validate(event["data"])  # binary mode: the value alone


def errors(schema: dict[str, Any], event: dict[str, Any]) -> list[str]:
    return [e.message for e in Draft202012Validator(schema).iter_errors(event)]


def test_the_schemas_refuse_what_the_contract_refuses() -> None:
    schema = committed("upstream/booking.scheduled.json")
    assert not errors(schema, scheduled())
    wrong_type = {**scheduled(), "type": "booking.cancelled"}
    no_booking = scheduled()
    del no_booking["data"]["booking_id"]
    control_in_id = {**scheduled(), "id": "a\u0007b"}
    no_time = scheduled()
    del no_time["time"]
    for event in (wrong_type, no_booking, control_in_id, no_time):
        assert errors(schema, event), event
