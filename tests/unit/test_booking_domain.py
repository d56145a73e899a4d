"""Booking's own checks before it asks the policy (pure)."""

from datetime import UTC, datetime, timedelta

import pytest

from booking.domain import check_request, later_occurrences, status_label


@pytest.mark.parametrize(
    ("status", "reason_text", "reason"),
    [
        (None, None, "not_found"),
        ("cancelled", None, "already_cancelled"),
        ("completed", None, "already_completed"),
        ("no_show", None, "already_completed"),
        ("scheduled", "x" * 256, "invalid_request"),
    ],
)
def test_booking_refuses(status, reason_text, reason):
    rejection = check_request(status, reason_text)
    assert rejection is not None and rejection.reason == reason
    assert rejection.message.endswith(".") and len(rejection.message) > 20


@pytest.mark.parametrize("reason_text", [None, "", "x" * 255])
def test_booking_passes_scheduled_requests_to_the_policy(reason_text):
    assert check_request("scheduled", reason_text) is None


@pytest.mark.parametrize(
    ("kind", "channel", "label"),
    [
        ("patient", "patient_portal", "Cancelled online"),
        ("staff", "practice", "Cancelled"),
        ("professional", "professional_app", "Cancelled"),
        ("system", "system", "Cancelled"),
    ],
)
def test_status_labels(kind, channel, label):
    assert status_label(kind, channel) == label


def test_later_occurrences_of_a_series_in_time_order():
    t = datetime(2026, 12, 1, tzinfo=UTC)
    series = [
        ("c", t + timedelta(days=14), "scheduled"),
        ("a", t, "scheduled"),
        ("b", t + timedelta(days=7), "cancelled"),
        ("d", t + timedelta(days=21), "scheduled"),
    ]
    assert later_occurrences(t, series) == ["c", "d"]
