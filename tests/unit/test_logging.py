"""Personal data and secrets never reach the logs; dates, ids and numbers do, unchanged."""

import json
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
import structlog
from pydantic import BaseModel, ValidationError

from shared.logging import configure_logging, describe_validation_error, get_logger, redact_personal_data
from shared.redaction import MAX_DEPTH, MAX_ITEMS, MAX_TEXT_CHARS, REDACTED, mask_text, redact


def logged(value: Any, key: str = "detail") -> Any:
    """What the log processor makes of `value` logged under a key that is not personal."""
    return redact_personal_data(None, "info", {key: value})[key]


def test_personal_keys_are_redacted_and_free_text_is_masked():
    event = redact_personal_data(
        None,
        "info",
        {
            "event": "sent to ann.lee@example.com and +61 412 345 678",
            "email": "ann.lee@example.com",
            "patient": {"first_name": "Ann", "phone": "+61412345678", "patient_id": "pat-1"},
        },
    )
    text = json.dumps(event)
    assert "ann.lee" not in text and "412" not in text and "Ann" not in text
    assert event["patient"]["patient_id"] == "pat-1"  # ids are not personal data


def test_configured_logs_are_json_with_correlation_id(capsys):
    configure_logging("test-service", "INFO", "json")
    structlog.contextvars.bind_contextvars(correlation_id="corr-1")
    get_logger("t").info("cancelled", email="bob@example.com")
    logging.getLogger("faststream").warning("from a library: bob@example.com")
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.strip()]
    assert lines[0]["correlation_id"] == "corr-1" and lines[0]["service"] == "test-service"
    assert all("bob@example.com" not in json.dumps(line) for line in lines)
    structlog.contextvars.clear_contextvars()


def test_ids_and_timestamps_pass_through_unmasked():
    event = redact_personal_data(
        None,
        "info",
        {
            "event": "charge 253dbec1-a39b-4f1e-9c8e-0a1b2c3d4e5f at 2026-11-21T05:43:27Z",
            "booking_id": "b-20261121-0001",
        },
    )
    assert event["event"] == "charge 253dbec1-a39b-4f1e-9c8e-0a1b2c3d4e5f at 2026-11-21T05:43:27Z"
    assert event["booking_id"] == "b-20261121-0001"


# --- the corpus: text that must be masked, and text that must stay as it is ---------------------

MUST_MASK = [
    # (text, what must not survive, what replaces it)
    ("reply to ann.lee@example.com please", "ann.lee@example.com", "[email]"),
    ("mailto:o'brien+tag@mail.example.co.uk", "brien+tag@mail", "[email]"),
    ("?email=ann.lee%40example.com&x=1", "ann.lee", "[redacted]"),
    ("SMTP refused ann@example.com", "ann@example.com", "[email]"),
    ("cut off mid-address: ann.lee@exam", "ann.lee", "[email]"),  # a text shortened before logging
    ("+4915112345678", "4915112345678", "[phone]"),
    ("call +1 (555) 123-4567 now", "123-4567", "[phone]"),
    ("0151 1234 5678", "1234 5678", "[phone]"),
    ("555-123-4567", "555-123-4567", "[phone]"),
    ("+44 20 7946 0958", "7946 0958", "[phone]"),
    ("invalid number +61 400 000 001.", "400 000 001", "[phone]"),
    ("(555) 123-4567", "123-4567", "[phone]"),
    ("555.123.4567", "555.123.4567", "[phone]"),
    ("+49 (0)151 1234 5678", "1234 5678", "[phone]"),
    ("+33 1 23 45 67 89", "23 45 67 89", "[phone]"),
    ("07700 900123", "900123", "[phone]"),
    ("030/1234567", "1234567", "[phone]"),
    ("tel:+4915112345678", "4915112345678", "[phone]"),
    ("+4915112345678 on 2026-11-30", "4915112345678", "[phone]"),
    ("Patient(first_name='Ann', last_name=\"Lee\", patient_id='pat-1')", "Ann", "[redacted]"),
    ("{'full_name': 'Ann Lee', 'booking_id': 'bk-1'}", "Ann Lee", "[redacted]"),
    ('{"patient_name": "Ann Lee", "booking_id": "bk-1"}', "Ann Lee", "[redacted]"),
    ("Professional(name='Dr Noor Haddad')", "Noor", "[redacted]"),
    ("professionalName=Noor Haddad, status=active", "Noor", "[redacted]"),
    ("reason_text='my daughter is ill'", "daughter", "[redacted]"),
    ("{'chart_note': 'knee pain, see x-ray'}", "knee", "[redacted]"),
    ('note="called twice"', "called twice", "[redacted]"),
    ("{'address': {'street': '1 Main St', 'city': 'Springfield'}}", "Main St", "[redacted]"),
    ("input_value='Ann Lee', input_type=str", "Ann Lee", "[redacted]"),
    ("input_value={'first_name': 'Ann', 'notes': ['a', 'b']}, input_type=dict", "Ann", "[redacted]"),
    ("password=hunter2", "hunter2", "[redacted]"),
    ("host=db user=app password=s3cret dbname=x", "s3cret", "[redacted]"),
    ("db_password: hunter2", "hunter2", "[redacted]"),
    ("x-api-key: sk_live_abc123", "sk_live_abc123", "[redacted]"),
    ("api_key=abc123&page=2", "abc123", "[redacted]"),
    ("client_secret='abc123'", "abc123", "[redacted]"),
    ("access_token=abc.def.ghi", "abc.def", "[redacted]"),
    ("Authorization: Bearer abc.def.ghi", "abc.def", "[redacted]"),
    ("retrying with bearer abcdefgh12345678", "abcdefgh12345678", "[redacted]"),
    ("token eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJl", "eyJhbGciOiJIUzI1NiJ9", "[redacted]"),
    (
        "postgresql://app:s3cret@db.example.com:5432/app",
        "s3cret",
        "postgresql://app:[redacted]@db.example.com:5432/app",
    ),
    ("connecting to postgresql://app:p@ss@db:5432/app failed", "p@ss", "app:[redacted]@db:5432"),
    ("redis://:s3cret@cache:6379/0", "s3cret", "redis://:[redacted]@cache:6379/0"),
]

MUST_STAY = [
    "2026-11-30",
    "2026-11-30T09:15:00Z",
    "2026-11-30T09:15:00+01:00",
    "2026-11-30 09:15:00.123456+00:00",
    "run 2026-11-30 done at 2026-11-30T23:59:59.999999Z",
    "01.12.2026 09:15",
    "253dbec1-a39b-4f1e-9c8e-0a1b2c3d4e5f",
    "00000000-0000-0000-0000-000000000000",
    "bk-2026-000123",
    "req_20261130_0001",
    "b-20261121-0001",
    "offset=123456789 partition=3",
    "cancellations.booking[2]@1234567890",
    "committed offsets 1024 2048 4096",
    "45.00",
    "1234.5",
    "EUR 1,234.50",
    "took 0.25s (250 ms), 1500ms budget",
    "PT15M",
    "attempt 3 of 5, 12 records, delay=1.6",
    "127.0.0.1:9092",
    "kafka-1:9092,kafka-2:9092",
    "10.0.0.12:9092",
    "r1.s3",
    "faststream 0.7.8, pydantic 2.13.4",
    "1764494100123",
    "00012345678",
    "SMTP 451: try again later",
    "HTTP 503 after 30.0s",
    "patient.first_name: Field required",  # a message about a field, not its value
    "topic_name=cancellations.booking service=booking",
    "postgresql://app@db.example.com:5432/app",
    'File "/work/main/shared/shared/consumer.py", line 170, in _process',
]


@pytest.mark.parametrize(("text", "secret", "mask"), MUST_MASK)
def test_personal_data_and_secrets_in_text_are_masked(text: str, secret: str, mask: str) -> None:
    masked = logged(text)
    assert secret not in masked
    assert mask in masked


@pytest.mark.parametrize("text", MUST_STAY)
def test_dates_ids_and_numbers_stay_as_they_are(text: str) -> None:
    assert logged(text) == text
    assert logged({"event": text}, key="nested") == {"event": text}


def test_a_date_is_not_a_phone_number() -> None:
    # The bug this module was rewritten for: "run_date": "2026-11-30" was logged as "[phone]".
    event = redact_personal_data(None, "info", {"event": "nightly recalculation ran", "run_date": "2026-11-30"})
    assert event["run_date"] == "2026-11-30"


# --- by key, at every depth ------------------------------------------------------------------------

PERSONAL_OR_SECRET_KEYS = [
    "first_name",
    "last_name",
    "name",
    "full_name",
    "patient_name",
    "professional_name",
    "firstName",
    "Surname",
    "display_name",
    "email",
    "patient_email",
    "emails",
    "phone",
    "mobile",
    "contact_phone",
    "address",
    "recipient_address",
    "street",
    "postcode",
    "date_of_birth",
    "reason_text",
    "chart_note",
    "note",
    "notes",
    "to",
    "contact",
    "password",
    "db_password",
    "api_key",
    "X-Api-Key",
    "apiKey",
    "secret",
    "client_secret",
    "token",
    "access_token",
    "Authorization",
    "cookie",
    "credentials",
]
ORDINARY_KEYS = [
    "event",
    "booking_id",
    "patient_id",
    "professional_id",
    "run_date",
    "offset",
    "partition",
    "topic",
    "topic_name",
    "task_name",
    "service",
    "logger",
    "correlation_id",
    "status",
    "attempt",
    "delay",
    "amount",
    "currency",
    "duration_ms",
    "reason",
    "failure_reason",
    "error",
    "detail",
    "integration",
    "channel",
    "score_changes",
    "records",
]


@pytest.mark.parametrize("key", PERSONAL_OR_SECRET_KEYS)
def test_values_under_personal_or_secret_keys_are_redacted(key: str) -> None:
    event = redact_personal_data(None, "info", {"event": "x", key: "Ann Lee 42", "nested": [{key: 4915112345678}]})
    assert event[key] == REDACTED
    assert event["nested"] == [{key: REDACTED}]
    assert logged(f"{key}='Ann Lee 42'") == f"{key}={REDACTED}"


@pytest.mark.parametrize("key", ORDINARY_KEYS)
def test_values_under_ordinary_keys_are_kept(key: str) -> None:
    event = redact_personal_data(None, "info", {key: "bk-2026-000123 at 2026-11-30", "n": {key: 7}})
    assert event[key] == "bk-2026-000123 at 2026-11-30"
    assert event["n"] == {key: 7}


def test_absent_or_boolean_personal_values_are_kept() -> None:
    event = redact_personal_data(None, "info", {"email": None, "phone_verified": True})
    assert event == {"email": None, "phone_verified": True}


def test_nested_ten_levels_deep_is_redacted_like_the_top() -> None:
    value: Any = {
        "booking_id": "bk-2026-000123",
        "first_name": "Ann",
        "contact": "ann@example.com",
        "detail": "call +4915112345678",
    }
    for level in range(10):
        value = {"level": level, "items": [value]} if level % 2 else {"level": level, "inner": (value,)}
    text = json.dumps(redact_personal_data(None, "info", {"event": "deep", "data": value}))
    assert "Ann" not in text and "ann@example.com" not in text and "4915112345678" not in text
    assert "bk-2026-000123" in text and "call [phone]" in text


def test_deeper_than_the_limit_is_dropped_not_passed_through() -> None:
    value: Any = "ann@example.com"
    for _ in range(MAX_DEPTH + 5):
        value = [value]
    text = json.dumps(logged(value))
    assert "ann" not in text and "[too deep]" in text


def test_cycles_and_huge_structures_are_bounded() -> None:
    cyclic: dict[str, Any] = {"booking_id": "bk-1"}
    cyclic["self"] = cyclic
    assert logged(cyclic) == {"booking_id": "bk-1", "self": "[cycle]"}

    huge = [f"item {i}" for i in range(MAX_ITEMS + 10)]
    kept = logged(huge)
    assert len(kept) == MAX_ITEMS + 1 and kept[-1] == "[cut: 10 more items]"

    long_text = "x" * (MAX_TEXT_CHARS - 10) + " ann.lee@example.com and more"
    cut = logged(long_text)
    assert "ann.lee" not in cut and "characters cut]" in cut and len(cut) < MAX_TEXT_CHARS + 50


# --- objects: models, dataclasses, exceptions, anything with a repr -----------------------------


class Contact(BaseModel):
    email: str
    phone: str | None = None


class Patient(BaseModel):
    patient_id: str
    first_name: str
    last_name: str
    reason_text: str
    contact: Contact
    visits: list[Contact]
    remark: str  # no personal key: its text is masked by pattern
    booked_at: datetime
    fee: Decimal


def test_a_pydantic_model_is_logged_as_its_fields_redacted() -> None:
    patient = Patient(
        patient_id="pat-1",
        first_name="Ann",
        last_name="Lee",
        reason_text="sick child",
        contact=Contact(email="ann@example.com", phone="+61 412 345 678"),
        visits=[Contact(email="lee@example.com")],
        remark="reachable at ann@example.com or 0151 1234 5678",
        booked_at=datetime(2026, 11, 30, 9, 15, tzinfo=UTC),
        fee=Decimal("45.00"),
    )
    assert logged(patient) == {
        "patient_id": "pat-1",
        "first_name": REDACTED,
        "last_name": REDACTED,
        "reason_text": REDACTED,
        "contact": REDACTED,
        "visits": [{"email": REDACTED, "phone": None}],
        "remark": "reachable at [email] or [phone]",
        "booked_at": "2026-11-30T09:15:00+00:00",
        "fee": "45.00",
    }


@dataclass
class Professional:
    professional_id: str
    name: str
    email: str


def test_a_dataclass_is_logged_as_its_fields_redacted() -> None:
    professional = Professional("pro-7", "Dr Noor Haddad", "noor@example.com")
    assert logged(professional) == {"professional_id": "pro-7", "name": REDACTED, "email": REDACTED}
    # Its repr, formatted into a message by someone, is masked the same way.
    assert logged(f"saving {professional!r}") == (
        f"saving Professional(professional_id='pro-7', name={REDACTED}, email={REDACTED})"
    )


class Opaque:
    def __repr__(self) -> str:
        return "<Opaque patient_name='Ann Lee' phone=+4915112345678 ref=bk-2026-000123>"


class Broken:
    def __repr__(self) -> str:
        raise RuntimeError("no repr")


def test_any_other_object_is_logged_by_its_repr_masked() -> None:
    assert logged(Opaque()) == f"<Opaque patient_name={REDACTED} phone={REDACTED} ref=bk-2026-000123>"
    assert logged(Broken()) == "<Broken>"
    assert logged({("tuple", "key"): 1}) == {"('tuple', 'key')": 1}


def test_an_exception_is_logged_as_its_message_masked() -> None:
    error = ValueError("no account for ann.lee@example.com (booking bk-2026-000123)")
    assert logged(error) == "ValueError: no account for [email] (booking bk-2026-000123)"
    assert logged({"errors": [KeyError("+44 20 7946 0958")]}) == {"errors": ["KeyError: '[phone]'"]}


class Booking(BaseModel):
    booking_id: str
    first_name: str
    email: str
    party: dict[str, int]


def _validation_error() -> ValidationError:
    with pytest.raises(ValidationError) as raised:
        Booking.model_validate(
            {
                "booking_id": 12,
                "first_name": ["Ann Lee"],
                "email": None,
                "party": {"ann@example.com": "many"},
            }
        )
    return raised.value


def test_a_validation_error_is_described_without_its_input() -> None:
    error = _validation_error()
    assert "Ann Lee" in str(error)  # pydantic's own text carries the input …
    described = describe_validation_error(error)
    assert described == (
        "booking_id: Input should be a valid string; first_name: Input should be a valid string; "
        "email: Input should be a valid string; "
        "party.[email]: Input should be a valid integer, unable to parse string as an integer"
    )
    assert logged(error) == f"ValidationError: {described}"
    # … and if its text is logged anyway, the inputs are masked.
    assert "Ann Lee" not in logged(str(error)) and "ann@example.com" not in logged(str(error))
    assert logged(f"rejected: {described}") == f"rejected: {described}"  # the description survives


def test_notification_errors_are_masked_by_the_same_implementation() -> None:
    from notification import domain

    for text, _, _ in MUST_MASK:
        assert domain.redact(text, limit=10_000) == mask_text(text)
    assert redact({"to": "x"}) == {"to": REDACTED}


# --- the structlog pipeline, end to end --------------------------------------------------------


def test_the_configured_pipeline_masks_everything_it_prints(capsys) -> None:
    configure_logging("test-service", "INFO", "json")
    log = get_logger("test.pipeline")
    log.info(
        "nightly recalculation ran",
        run_date="2026-11-30",
        patient=Patient(
            patient_id="pat-1",
            first_name="Ann",
            last_name="Lee",
            reason_text="sick child",
            contact=Contact(email="ann@example.com"),
            visits=[],
            remark="call +4915112345678",
            booked_at=datetime(2026, 11, 30, 9, 15, tzinfo=UTC),
            fee=Decimal("45.00"),
        ),
        professional=Professional("pro-7", "Dr Noor Haddad", "noor@example.com"),
        dsn="postgresql://app:s3cret@db:5432/app",
        offset=123456789,
    )
    try:
        raise RuntimeError("could not notify ann.lee@example.com at +44 20 7946 0958")
    except RuntimeError:
        log.exception("delivery failed", booking_id="bk-2026-000123")
    logging.getLogger("aiokafka").error("sending to %s failed; password=%s", "+1 (555) 123-4567", "hunter2")

    output = capsys.readouterr().out
    for leaked in (
        "Ann",
        "Lee",
        "ann@example.com",
        "ann.lee",
        "4915112345678",
        "Noor",
        "noor@",
        "s3cret",
        "7946 0958",
        "123-4567",
        "hunter2",
        "sick child",
    ):
        assert leaked not in output
    first, failure, foreign = (json.loads(line) for line in output.splitlines() if line.strip())
    assert first["event"] == "nightly recalculation ran" and first["run_date"] == "2026-11-30"
    assert first["offset"] == 123456789 and first["patient"]["patient_id"] == "pat-1"
    assert first["patient"]["booked_at"] == "2026-11-30T09:15:00+00:00"
    assert first["dsn"] == "postgresql://app:[redacted]@db:5432/app"
    assert first["professional"] == {"professional_id": "pro-7", "name": REDACTED, "email": REDACTED}
    assert datetime.fromisoformat(first["timestamp"]).tzinfo is not None
    assert first["service"] == "test-service" and first["level"] == "info"
    assert failure["booking_id"] == "bk-2026-000123"
    assert "RuntimeError: could not notify [email] at [phone]" in failure["exception"]
    assert foreign["event"] == f"sending to [phone] failed; password={REDACTED}"
    assert foreign["logger"] == "aiokafka" and foreign["level"] == "error"
    structlog.contextvars.clear_contextvars()


def test_a_line_below_the_level_is_dropped_before_any_processor_reads_it(capsys):
    """The hot path logs at debug: below the level, not one of its values is looked at (nor
    redacted), and a line at the level still is."""
    configure_logging("test-service", "INFO", "json")
    looked_at: list[str] = []

    class Watched:
        def __str__(self) -> str:
            looked_at.append("str")
            return "watched"

        __repr__ = __str__

    log = get_logger("test.level")
    log.debug("below the level", value=Watched())
    assert looked_at == [] and capsys.readouterr().out == ""
    log.info("at the level", value=Watched())
    assert looked_at and json.loads(capsys.readouterr().out.strip().splitlines()[-1])["value"] == "watched"
