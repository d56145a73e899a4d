"""Personal data never reaches the logs."""

import json
import logging

from shared.logging import configure_logging, get_logger, redact_personal_data


def test_personal_keys_are_redacted_and_free_text_is_masked():
    event = redact_personal_data(None, "info", {
        "event": "sent to ann.lee@example.com and +61 412 345 678",
        "email": "ann.lee@example.com",
        "patient": {"first_name": "Ann", "phone": "+61412345678", "patient_id": "pat-1"},
    })
    text = json.dumps(event)
    assert "ann.lee" not in text and "412" not in text and "Ann" not in text
    assert event["patient"]["patient_id"] == "pat-1"  # ids are not personal data


def test_configured_logs_are_json_with_correlation_id(capsys):
    import structlog

    configure_logging("test-service", "INFO", "json")
    structlog.contextvars.bind_contextvars(correlation_id="corr-1")
    get_logger("t").info("cancelled", email="bob@example.com")
    logging.getLogger("faststream").warning("from a library: bob@example.com")
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.strip()]
    assert lines[0]["correlation_id"] == "corr-1" and lines[0]["service"] == "test-service"
    assert all("bob@example.com" not in json.dumps(line) for line in lines)
    structlog.contextvars.clear_contextvars()


def test_ids_and_timestamps_pass_through_unmasked():
    event = redact_personal_data(None, "info", {
        "event": "charge 253dbec1-a39b-4f1e-9c8e-0a1b2c3d4e5f at 2026-11-21T05:43:27Z",
        "booking_id": "b-20261121-0001",
    })
    assert event["event"] == "charge 253dbec1-a39b-4f1e-9c8e-0a1b2c3d4e5f at 2026-11-21T05:43:27Z"
    assert event["booking_id"] == "b-20261121-0001"
