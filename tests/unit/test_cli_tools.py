"""The `cancellations` command line's pieces that need no broker: summaries, dead-letter replay
targets, settings files, client settings, the demo's events and the report's rows."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from shared import cli
from shared.contracts.deadletter import MessageDeadLettered
from shared.contracts.envelope import parse_envelope
from shared.contracts.registry import TOPIC_EVENTS
from shared.tools import bus, demo, dlq, practice, report
from shared.tools.bus import Record
from shared.tools.summaries import summarise
from shared.topics import BOOKING_EVENTS, UPSTREAM_BOOKINGS

NOW = datetime(2030, 3, 4, 9, 0, tzinfo=UTC)


def _event(type_: str, data: dict, subject: str = "b-1") -> bytes:
    return json.dumps(
        {
            "specversion": "1.0",
            "id": "e-1",
            "type": type_,
            "source": "s",
            "subject": subject,
            "time": "2030-03-04T09:00:00Z",
            "data": data,
        }
    ).encode()


def test_a_summary_shows_what_happened_and_no_personal_data():
    line = summarise(
        BOOKING_EVENTS,
        _event(
            "booking.cancelled",
            {
                "booking_id": "b-1",
                "practice_id": "p-1",
                "classification": "late",
                "reason_text": "my divorce hearing",
                "decision": {
                    "allowed": True,
                    "fee": {"amount": "45.00", "currency": "AUD", "code": "D9987"},
                    "explanation": "x",
                },
                "patient": {"first_name": "Ann", "email": "ann@example.com", "phone": "+61400000000"},
                "actor": {"kind": "patient", "id": "pat-1"},
            },
        ),
    )
    assert line.startswith("2030-03-04T09:00:00 booking.events.v1 booking.cancelled b-1 ")
    assert "practice_id=p-1" in line and "classification=late" in line and "amount=45.00" in line
    for secret in ("divorce", "Ann", "ann@example.com", "+61400000000", "explanation"):
        assert secret not in line


@pytest.mark.parametrize("value", [b"not json", b"[]", b'{"type": 1}', b"\xff\xfe", None])
def test_a_record_that_is_no_event_is_summarised_by_its_size(value):
    line = summarise("t.v1", value)
    assert line.startswith("t.v1 (") and (value is None or str(len(value)) in line)


def _dead(value: bytes | None, key: bytes | None = b"b-9", truncated_size: int | None = None) -> dlq.DeadLetter:
    letter = MessageDeadLettered.of(
        service="booking", topic=UPSTREAM_BOOKINGS, partition=2, offset=41, key=key, value=value, error="bad", at=NOW
    )
    if truncated_size:
        letter = letter.model_copy(update={"original_value_truncated": True, "original_value_length": truncated_size})
    return dlq.DeadLetter("booking", 0, 7, letter)


@pytest.mark.parametrize("original", [b'{"specversion": "1.0"}', bytes(range(256)), "caf\u00e9 \u2603".encode()])
def test_a_replay_sends_the_original_bytes_and_key_to_the_original_topic(original):
    assert dlq.replay_target(_dead(original)) == (UPSTREAM_BOOKINGS, b"b-9", original)
    assert dlq.replay_target(_dead(original, key=None)) == (UPSTREAM_BOOKINGS, None, original)


def test_what_is_not_the_whole_message_is_never_replayed():
    with pytest.raises(dlq.NotReplayable, match=r"prefix.*upstream\.bookings\.v1 partition 2 offset 41"):
        dlq.replay_target(_dead(b"{", truncated_size=600_000))
    with pytest.raises(dlq.NotReplayable, match="tombstone"):
        dlq.replay_target(_dead(None))
    with pytest.raises(dlq.NotReplayable, match="not a readable"):
        dlq.replay_target(dlq.DeadLetter("booking", 0, 1, None))


def test_a_dead_letter_is_read_from_its_record_and_named_by_where_it_lies():
    letter = _dead(b"x").letter
    value = _event("message.dead_lettered", letter.to_json_dict(), subject="b-9")
    parse_envelope(value, TOPIC_EVENTS["dlq.booking.v1"])  # what the services write
    dead = dlq.read_letter("booking", Record("dlq.booking.v1", 3, 12, b"b-9", value, 0))
    assert dead.id == "booking:3:12" and dead.letter == letter
    assert dlq.read_letter("booking", Record("dlq.booking.v1", 3, 13, None, b"garbage", 0)).letter is None
    assert dlq.parse_letter_id("pms-sync:0:5") == ("pms-sync", 0, 5)
    for bad in ("booking:0", "nobody:0:1", "booking:-1:2", "booking:0:1;rm"):
        with pytest.raises(ValueError):
            dlq.parse_letter_id(bad)


SETTINGS_YAML = """
practice_id: p-yaml
name: Harbour Dental
timezone: Australia/Sydney
locale: en
fees:
  late_cancellation: {amount: "45.00", currency: AUD, code: D9987, code_system: CDT}
waitlist: {enabled: true, offer_minutes: 20}
"""


def test_settings_come_from_yaml_or_json():
    from_yaml = practice.parse_settings(SETTINGS_YAML)
    assert from_yaml.practice_id == "p-yaml" and from_yaml.waitlist.offer_minutes == 20
    assert str(from_yaml.fees.late_cancellation.amount) == "45.00"
    from_json = practice.parse_settings(json.dumps(from_yaml.to_json_dict()), json_only=True)
    assert from_json == from_yaml


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("- a list", "one mapping"),
        ("practice_id: [unclosed", "not YAML"),
        (SETTINGS_YAML.replace("offer_minutes: 20", "offer_minutes: 99999"), "offer_minutes"),
        (SETTINGS_YAML.replace('"45.00"', '"-45.00"'), "amount"),
    ],
)
def test_settings_that_break_the_contract_are_refused_without_their_values(text, says):
    with pytest.raises(practice.SettingsError, match=says) as refused:
        practice.parse_settings(text)
    assert "99999" not in str(refused.value) and "-45.00" not in str(refused.value)


def test_practice_apply_refuses_a_bad_file_before_reaching_the_broker(tmp_path, capsys):
    path = tmp_path / "settings.yaml"
    path.write_text("practice_id: p-1\nname: x\n")  # timezone and locale missing
    assert cli.main(["practice", "apply", str(path)]) == 2
    assert "not sent" in capsys.readouterr().err


def test_a_malformed_dead_letter_id_is_refused_before_reaching_the_broker(capsys):
    assert cli.main(["dlq", "show", "booking:x:1"]) == 2
    assert "<service>:<partition>:<offset>" in capsys.readouterr().err


def test_client_settings_files_are_read_over_the_environment(tmp_path, monkeypatch):
    (tmp_path / "observer.env").write_text(
        "# written by infra\nexport KAFKA_SECURITY_PROTOCOL=SASL_SSL\nKAFKA_SASL_USERNAME=observer\n"
        "KAFKA_SASL_PASSWORD='p a$s'\n\nnot a line\n"
    )
    monkeypatch.setenv("KAFKA_CLIENTS_DIR", str(tmp_path))
    env = bus.client_env("observer", {"KAFKA_BOOTSTRAP_SERVERS": "broker:9093", "KAFKA_SASL_USERNAME": "me"})
    assert env["KAFKA_BOOTSTRAP_SERVERS"] == "broker:9093" and env["KAFKA_SASL_USERNAME"] == "observer"
    assert env["KAFKA_SASL_PASSWORD"] == "p a$s" and env["KAFKA_SECURITY_PROTOCOL"] == "SASL_SSL"
    assert bus.client_env(None, {"A": "1"}) == {"A": "1"}
    with pytest.raises(FileNotFoundError):
        bus.client_env("upstream", {})
    with pytest.raises(ValueError):
        bus.client_env("../secrets", {})


def test_the_demo_morning_is_valid_and_tells_every_kind_of_cancellation():
    morning = demo.morning(NOW, "0a1b2c3d")
    sends = [*demo.first_sends(morning), *(s for c in morning.cases for s in c.requests), *morning.excuses]
    for send in sends:  # every event as the services will parse it
        registry = TOPIC_EVENTS[send.topic]
        wire = json.dumps(
            {
                "specversion": "1.0",
                "id": "x",
                "type": send.payload.event_type,
                "source": "s",
                "subject": send.subject,
                "time": "2030-03-04T09:00:00Z",
                "data": send.payload.to_json_dict(),
            }
        )
        assert parse_envelope(wire.encode(), registry).payload == send.payload
        assert "0a1b2c3d" in send.subject
    kinds = {
        (type(s.payload).__name__, getattr(getattr(s.payload, "actor", None), "kind", None))
        for c in morning.cases
        for s in c.requests
    }
    assert {("BookingCancellationRequested", k) for k in ("patient", "staff", "professional")} <= kinds
    assert ("BookingNoShowReported", "staff") in kinds
    assert len({c.booking_id for c in morning.cases}) == len(morning.cases)
    no_shows = [c for c in morning.cases for s in c.requests if s.payload.event_type == "booking.no_show_reported"]
    assert no_shows and all(c.booking.starts_at < NOW for c in no_shows)  # a no-show needs a start in the past
    dental = morning.practices[0]
    assert dental.fees.late_cancellation and dental.waitlist.enabled and dental.pms.integration == "praktika"
    assert any(c.booking.professional_id for c in morning.cases if c.practice == morning.practices[1].practice_id)
    assert morning.waitlist[0].practitioner_id == "dr-lee"
    assert demo.morning(NOW + timedelta(hours=1), "0a1b2c3d").cases[0].booking.starts_at == NOW + timedelta(
        days=3, hours=1
    )


def test_outcomes_in_words():
    fee = {"amount": "45.00", "currency": "AUD", "code": "D9987"}
    assert (
        demo.outcome_line("booking.cancelled", {"classification": "late", "decision": {"fee": fee}})
        == "cancelled, late, fee 45.00 AUD (D9987)"
    )
    assert (
        demo.outcome_line("booking.cancellation_rejected", {"reason": "within_online_cutoff", "message": "Call us"})
        == "rejected: within_online_cutoff"
    )
    assert (
        demo.outcome_line("booking.no_show_recorded", {"party": "patient", "code": "FTA", "decision": {}})
        == "no-show recorded (patient, FTA)"
    )


def test_report_rows_show_rates_as_percentages():
    answer = {
        "groups": [
            {
                "practice_id": "p-1",
                "key": "dr-lee",
                "bookings": 8,
                "cancelled": 2,
                "timely": 1,
                "late": 1,
                "no_shows": 1,
                "completed": 5,
                "cancellation_rate": 0.25,
                "no_show_rate": 0.125,
                "late_share_of_cancellations": 0.5,
            },
            {
                "practice_id": "p-2",
                "key": None,
                "bookings": 0,
                "cancelled": 0,
                "timely": 0,
                "late": 0,
                "no_shows": 0,
                "completed": 0,
                "cancellation_rate": None,
                "no_show_rate": None,
                "late_share_of_cancellations": None,
            },
        ]
    }
    assert report.rows(answer) == [
        ["p-1", "dr-lee", "8", "2", "1", "1", "1", "5", "25.0", "12.5", "50.0"],
        ["p-2", "", "0", "0", "0", "0", "0", "0", "–", "–", "–"],
    ]
