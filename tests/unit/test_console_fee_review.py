"""The console's fee review queue (console/fee_review.py) rendered in process, with the fakes of
tests/unit/test_console_pages.py: billing's queue shown to the token's roles, and a decision
published as the signed-in person only with the session's CSRF token, the roles billing accepts,
and for a fee billing still shows in review."""

from __future__ import annotations

from decimal import Decimal

import pytest
from test_console_pages import ANSWERS, FakeBroker, FakeServices, csrf_of, sign_in, token

from console.app import create_app
from console.backends import Answer
from console.settings import ConsoleSettings
from shared import auth

IN_REVIEW = {
    "charge_id": "c-9",
    "booking_id": "b-9",
    "practice_id": "p-1",
    "kind": "late_cancellation",
    "amount": "45.00",
    "currency": "AUD",
    "code": "D9987",
    "code_system": "CDT",
    "status": "pending_review",
    "review_until": "2031-03-11T10:00:00Z",
}
FEES = {
    "billing/charges/in-review": Answer(200, {"charges": [IN_REVIEW], "page": 1, "page_size": 200}),
    "billing/bookings/b-9/billing": Answer(200, {"charges": [IN_REVIEW]}),
    "billing/bookings/b-1/billing": ANSWERS["billing/bookings/b-1/billing"],  # c-1 there is paid
}


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    private, public = auth.generate_key_pair(tmp_path_factory.mktemp("keys"))
    return private.read_bytes(), public


@pytest.fixture
def console(keys, tmp_path):
    from fastapi.testclient import TestClient

    services, broker = FakeServices(dict(ANSWERS) | FEES), FakeBroker()
    settings = ConsoleSettings(auth_public_key_file=keys[1], environment="development", mail_dir=tmp_path / "m")
    with TestClient(create_app(settings, broker=broker, services=services), follow_redirects=False) as client:
        yield client, services, broker


def test_the_queue_lists_billings_fees_in_review_with_the_decisions_for_a_biller(console, keys):
    client, services, _ = console
    bearer = token(keys, ["biller"], practices=["p-1"], subject="bill-ben")
    sign_in(client, bearer)
    page = client.get("/fees/review")
    assert page.status_code == 200
    assert "c-9" in page.text and "45.00 AUD" in page.text and "2031-03-11T10:00:00Z" in page.text
    for decision in ("approve", "waive", "edit"):
        assert f'name="decision" value="{decision}"' in page.text
    assert services.tokens[-1] == bearer  # billing decides what this person may see


def test_a_reader_of_money_who_may_not_decide_sees_the_queue_without_buttons(console, keys):
    client, _, broker = console
    sign_in(client, token(keys, ["financial"], practices=["p-1"]))
    page = client.get("/fees/review")
    assert "c-9" in page.text and 'name="decision"' not in page.text and "may read these fees" in page.text
    done = client.post("/charges/c-9/review", data={"csrf": csrf_of(page), "booking_id": "b-9", "decision": "approve"})
    assert done.status_code == 403 and broker.fee_decisions == []


def test_a_role_billing_refuses_sees_that_it_reads_no_fees(console, keys):
    client, services, _ = console
    services.answers["billing/charges/in-review"] = Answer(403, {"detail": "forbidden"})
    sign_in(client, token(keys, ["receptionist"], practices=["p-1"]))
    assert "Your roles do not read fees" in client.get("/fees/review").text


@pytest.mark.parametrize(
    ("form", "expected"),
    [
        ({"decision": "approve"}, {"decision": "approve", "amount": None, "code": None, "code_system": None}),
        ({"decision": "waive", "note": "first visit"}, {"decision": "waive", "amount": None, "note": "first visit"}),
        (
            {"decision": "edit", "amount": "30.00", "code": "", "code_system": ""},
            {"decision": "edit", "amount": Decimal("30.00"), "code": None, "code_system": None},
        ),
        (
            {"decision": "edit", "amount": "", "code": "D9986", "code_system": "CDT"},
            {"decision": "edit", "amount": None, "code": "D9986", "code_system": "CDT"},
        ),
        # an amount sent with approve is not an edit: only the decision goes
        ({"decision": "approve", "amount": "1.00"}, {"decision": "approve", "amount": None}),
    ],
)
def test_a_decision_is_published_as_the_signed_in_person(console, keys, form, expected):
    client, _, broker = console
    sign_in(client, token(keys, ["therapist", "financial"], practices=["p-1"], subject="dr-lee"))
    csrf = csrf_of(client.get("/fees/review"))
    done = client.post("/charges/c-9/review", data={"csrf": csrf, "booking_id": "b-9", **form})
    assert done.status_code == 303 and done.headers["location"].startswith("/fees/review?flash=")
    [command] = broker.fee_decisions
    assert command.charge_id == "c-9" and command.request_id  # a fresh request id: once per decision
    assert (command.actor.id, sorted(command.actor.roles)) == ("dr-lee", ["financial", "therapist"])
    for field, value in expected.items():
        assert getattr(command, field) == value, field


@pytest.mark.parametrize(
    ("form", "status"),
    [
        ({"decision": "approve"}, 403),  # no CSRF token
        ({"csrf": "forged", "decision": "approve"}, 403),
        ({"csrf": None, "decision": "maybe"}, 422),
        ({"csrf": None, "decision": "edit"}, 422),  # an edit that changes nothing
        ({"csrf": None, "decision": "edit", "amount": "-5"}, 422),
        ({"csrf": None, "decision": "edit", "amount": "ten"}, 422),
        ({"csrf": None, "decision": "edit", "code": "D9986", "code_system": "ICD"}, 422),
        ({"csrf": None, "decision": "approve", "booking_id": "b-1", "charge": "c-1"}, 409),  # paid, not in review
        ({"csrf": None, "decision": "approve", "booking_id": "b-404"}, 409),  # billing does not show it
        ({"csrf": None, "decision": "approve", "booking_id": ""}, 409),
    ],
)
def test_nothing_is_published_for_a_form_that_is_not_a_decision_on_a_fee_in_review(console, keys, form, status):
    client, _, broker = console
    sign_in(client, token(keys, ["manager"], practices=["p-1"]))
    csrf = csrf_of(client.get("/fees/review"))
    fields = {"booking_id": "b-9", **form}
    charge = fields.pop("charge", "c-9")
    if fields.get("csrf", "") is None:
        fields["csrf"] = csrf
    assert client.post(f"/charges/{charge}/review", data=fields).status_code == status
    assert broker.fee_decisions == []


def test_the_queues_page_links_to_the_fee_queue_and_the_nav_offers_it(console, keys):
    client, _, _ = console
    sign_in(client, token(keys, ["ops"], subject="ops-anna"))
    queues = client.get("/queues").text
    assert 'href="/fees/review"' in queues and "Not available yet" not in queues
