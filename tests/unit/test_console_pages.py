"""The console's pages rendered in process: sign-in, roles and practice scoping, CSRF, escaping,
charts; the services and Kafka are fakes with the real ports' methods (console.backends)."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from console import backends, charts
from console.app import create_app
from console.backends import Answer, Lag, summarise_metrics
from console.settings import ConsoleSettings
from shared import auth
from shared.contracts.deadletter import MessageDeadLettered
from shared.tools import dlq

NOW = datetime.now(UTC)


class FakeServices:
    """console.backends.Services: answers by path, records the tokens it was called with."""

    def __init__(self, answers: dict[str, Answer]) -> None:
        self.answers = answers
        self.tokens: list[str | None] = []

    async def close(self) -> None:
        pass

    async def get(self, service, path, token, params=None):
        self.tokens.append(token)
        status = (params or {}).get("status")
        if status and f"{service}{path}?status={status}" in self.answers:
            return self.answers[f"{service}{path}?status={status}"]
        return self.answers.get(f"{service}{path}", Answer(404, {"detail": "no such thing"}))

    async def metrics(self, service):
        return {"outbox backlog": 3.0, "parked rows": 1.0, "messages processed": 10.0}


class FakeBroker:
    """console.backends.Broker: dead letters in memory, published decisions recorded."""

    def __init__(self) -> None:
        letter = MessageDeadLettered.of(
            service="booking",
            topic="upstream.bookings.v1",
            partition=1,
            offset=5,
            key=b"b-1",
            value=b'{"x": "<script>alert(1)</script>"}',
            error="invalid CloudEvents envelope",
            at=NOW,
        )
        self.letters = [dlq.DeadLetter("booking", 0, 3, letter)]
        self.replayed: list[str] = []
        self.reviews: list[tuple[str, str, str, str]] = []
        self.reinstated: list[tuple[str, str]] = []
        self.fee_decisions: list = []

    async def dead_letters(self):
        return self.letters

    async def find_letter(self, letter_id):
        dlq.parse_letter_id(letter_id)
        return next((d for d in self.letters if d.id == letter_id), None)

    async def replay(self, dead):
        self.replayed.append(dead.id)
        return "upstream.bookings.v1", 1, 99

    async def review_excuse(self, professional_id, excuse_id, decision, reviewer_id):
        self.reviews.append((professional_id, excuse_id, decision, reviewer_id))
        return "event-1"

    async def reinstate_professional(self, professional_id, reviewer_id):
        self.reinstated.append((professional_id, reviewer_id))
        return "event-2"

    async def decide_fee(self, decision):
        self.fee_decisions.append(decision)
        return "event-3"

    async def lag(self):
        return [Lag("booking", "upstream.bookings.v1", 0, 7, 9)]


def test_the_fakes_keep_the_real_ports_methods():
    for fake, real in ((FakeServices, backends.Services), (FakeBroker, backends.Broker)):
        public = {n for n in vars(real) if not n.startswith("_")} - {"urls"}
        assert public <= set(vars(fake)), public - set(vars(fake))


@pytest.fixture(scope="module")
def keys(tmp_path_factory) -> tuple[bytes, Path]:
    private, public = auth.generate_key_pair(tmp_path_factory.mktemp("keys"))
    return private.read_bytes(), public


def token(keys, roles, practices=(), subject="pat-the-user"):
    return auth.mint(keys[0], practice_ids=practices, roles=roles, subject=subject)


def report(key, **counts):
    base = {
        "practice_id": "p-1",
        "key": key,
        "bookings": 10,
        "cancelled": 4,
        "timely": 1,
        "late": 3,
        "cancelled_as_no_show": 0,
        "no_shows": 1,
        "completed": 5,
        "cancellation_rate": 0.4,
        "no_show_rate": 0.1,
        "late_share_of_cancellations": 0.75,
        "timely_share_of_cancellations": 0.25,
    }
    return {**base, **counts}


ANSWERS = {
    "pms-sync/practices/p-1/manual-updates": Answer(
        200,
        {
            "practice_id": "p-1",
            "items": [
                {
                    "id": 7,
                    "booking_id": "b-<9>",
                    "practice_id": "p-1",
                    "integration": "manual",
                    "action": "cancel_booking",
                    "message": "Cancel <script>x</script> in the PMS",
                    "sync_id": None,
                    "created_at": "2026-12-01T09:00:00Z",
                }
            ],
            "page": 1,
            "page_size": 50,
        },
    ),
    "booking/readyz": Answer(200, {"status": "ready"}),
    "booking/reports/cancellations": Answer(200, {"groups": [report("<b>dr-lee</b>")]}),
    "booking/bookings?status=no_show": Answer(200, {"items": [], "page": 1, "page_size": 500}),
    "booking/bookings": Answer(
        200,
        {
            "items": [
                {
                    "booking_id": "b-1",
                    "starts_at": (NOW + timedelta(hours=10)).isoformat(),
                    "closed_at": NOW.isoformat(),
                },
                {
                    "booking_id": "b-2",
                    "starts_at": (NOW + timedelta(hours=80)).isoformat(),
                    "closed_at": NOW.isoformat(),
                },
            ],
            "page": 1,
            "page_size": 500,
        },
    ),
    "billing/bookings/b-1/billing": Answer(
        200,
        {
            "charges": [
                {
                    "charge_id": "c-1",
                    "kind": "late_cancellation",
                    "amount": "45.00",
                    "currency": "AUD",
                    "code": "D9987",
                    "code_system": "CDT",
                    "status": "paid",
                }
            ],
            "payments": [
                {
                    "payment_id": "pay-1",
                    "status": "captured",
                    "amount": "45.00",
                    "currency": "AUD",
                    "gateway": "sandbox",
                }
            ],
            "deposits": [{"outcome": "refunded", "amount": "20.00", "currency": "AUD"}],
            "adjustments": [],
            "audit": [],
        },
    ),
    "booking/bookings/b-1": Answer(
        200,
        {
            "booking_id": "b-1",
            "practice_id": "p-1",
            "practitioner_id": "dr-lee",
            "service_code": "D1110",
            "starts_at": NOW.isoformat(),
            "patient_id": "pat-1",
            "professional_id": None,
            "status": "cancelled",
            "status_label": "Cancelled",
            "classification": "late",
            "audit_trail": [
                {
                    "at": NOW.isoformat(),
                    "action": "cancelled",
                    "actor": {"kind": "staff", "id": "s-1"},
                    "channel": "practice",
                    "reason": None,
                    "policy_version": "3",
                }
            ],
        },
    ),
    "cancellation-policy/bookings/b-1/decisions": Answer(
        200, {"decisions": [{"explanation": "10 hours' notice < 24"}]}
    ),
    "scoring/excuses": Answer(
        200,
        {
            "items": [
                {
                    "excuse_id": "x-1",
                    "professional_id": "pro-1",
                    "booking_id": "b-9",
                    "document_ref": "docs/cert.pdf",
                    "submitted_at": NOW.isoformat(),
                }
            ],
            "page": 1,
            "page_size": 200,
        },
    ),
    "scoring/excuses/x-1": Answer(200, {"excuse_id": "x-1", "professional_id": "pro-1", "status": "pending"}),
    "scoring/suspended-professionals": Answer(
        200,
        {
            "items": [
                {
                    "professional_id": "pro-7",
                    "suspended_at": NOW.isoformat(),
                    "suspension_holds": ["h-1", "h-2", "h-3"],
                    "score": -50,
                }
            ],
            "page": 1,
            "page_size": 200,
        },
    ),
    "scoring/professionals/pro-7": Answer(200, {"professional_id": "pro-7", "suspended_at": NOW.isoformat()}),
    "scoring/professionals/pro-1": Answer(200, {"professional_id": "pro-1", "suspended_at": None}),
}


@pytest.fixture
def console(keys, tmp_path):
    services, broker = FakeServices(dict(ANSWERS)), FakeBroker()
    settings = ConsoleSettings(
        auth_public_key_file=keys[1],
        environment="development",
        mail_dir=tmp_path / "mail",
        sms_sink_dir=tmp_path / "sms",
    )
    with TestClient(create_app(settings, broker=broker, services=services), follow_redirects=False) as client:
        yield client, services, broker


def sign_in(client, bearer):
    page = client.get("/login")
    csrf = re.search(r'name="csrf" value="([0-9a-f]+)"', page.text).group(1)
    return client.post("/login", data={"csrf": csrf, "token": bearer})


def csrf_of(page) -> str:
    return re.search(r'name="csrf" value="([0-9a-f]+)"', page.text).group(1)


def test_every_page_needs_a_session(console):
    client, _, _ = console
    for path in ("/", "/pipeline", "/practices/p-1", "/bookings/b-1", "/queues", "/mail", "/sms", "/dlq/booking:0:3"):
        answer = client.get(path)
        assert (answer.status_code, answer.headers["location"]) == (303, "/login"), path


def test_the_probes_answer_without_a_session_and_say_nothing_else(console):
    client, _, _ = console
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json() == {"status": "ready"}


def test_sign_in_keeps_the_token_in_a_strict_httponly_cookie(console, keys):
    client, _, _ = console
    signed = sign_in(client, token(keys, ["ops"]))
    assert signed.status_code == 303 and signed.headers["location"] == "/pipeline"
    cookie = signed.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie


def test_a_form_larger_than_the_limit_is_refused_unread(console):
    client, _, _ = console
    big = b"token=" + b"a" * (17 * 1024)
    assert (
        client.post("/login", content=big, headers={"Content-Type": "application/x-www-form-urlencoded"}).status_code
        == 413
    )

    def chunks():  # no Content-Length: the body is read no further than the limit
        yield b"token="
        for _ in range(40):
            yield b"a" * 1024

    streamed = client.post("/login", content=chunks(), headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert streamed.status_code == 413


def test_a_bad_token_or_a_forged_form_signs_nobody_in(console, keys):
    client, _, _ = console
    refused = sign_in(client, "not.a.token")
    assert refused.status_code == 200 and "was not accepted" in refused.text
    client.get("/login")
    assert client.post("/login", data={"csrf": "0" * 64, "token": token(keys, ["ops"])}).status_code == 403


def test_the_pipeline_shows_readiness_backlog_lag_and_dead_letters_escaped(console, keys):
    client, _services, _ = console
    sign_in(client, token(keys, ["ops"]))
    page = client.get("/pipeline")
    assert page.status_code == 200
    text = page.text
    assert "ready" in text and "no answer" not in text.split("booking")[1][:200]
    assert "upstream.bookings.v1" in text and "booking:0:3" in text and "invalid CloudEvents envelope" in text
    assert ">2<" in text  # the lag: end 9 minus committed 7
    one = client.get("/dlq/booking:0:3")
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in one.text and "<script>alert(1)" not in one.text
    assert "script-src" not in one.headers["content-security-policy"]


def test_a_replay_needs_the_session_csrf_token(console, keys):
    client, _, broker = console
    sign_in(client, token(keys, ["ops"]))
    assert client.post("/dlq/booking:0:3/replay", data={"csrf": "f" * 64}).status_code == 403
    assert client.post("/dlq/booking:0:3/replay", data={}).status_code == 403
    assert broker.replayed == []
    csrf = csrf_of(client.get("/pipeline"))
    done = client.post("/dlq/booking:0:3/replay", data={"csrf": csrf})
    assert done.status_code == 303 and broker.replayed == ["booking:0:3"]
    assert client.post("/dlq/booking:0:404/replay", data={"csrf": csrf}).status_code == 404


def test_practice_staff_see_their_practice_only_and_no_operator_page(console, keys):
    client, services, _ = console
    bearer = token(keys, ["manager"], ["p-1"])
    signed = sign_in(client, bearer)
    assert signed.headers["location"] == "/practices/p-1"
    for path in ("/pipeline", "/queues", "/mail", "/sms", "/dlq/booking:0:3"):
        assert client.get(path).status_code == 403, path
    assert client.get("/practices/p-2").status_code == 404
    page = client.get("/practices/p-1")
    assert page.status_code == 200
    assert "&lt;b&gt;dr-lee&lt;/b&gt;" in page.text and "<b>dr-lee</b>" not in page.text
    assert page.text.count("<svg") == 6
    assert "45.00" in page.text and "20.00" in page.text  # raised and collected, deposits refunded
    assert set(services.tokens) == {bearer}  # every read with the person's own token


def test_the_practices_manual_pms_updates_are_listed_for_its_staff_only(console, keys):
    client, services, _ = console
    bearer = token(keys, ["receptionist"], ["p-1"])
    sign_in(client, bearer)
    assert 'href="/practices/p-1/manual-updates"' in client.get("/practices/p-1").text
    page = client.get("/practices/p-1/manual-updates")
    assert page.status_code == 200
    assert "cancel_booking" in page.text and "Cancel &lt;script&gt;x&lt;/script&gt; in the PMS" in page.text
    assert "<script>" not in page.text and 'href="/bookings/b-%3C9%3E"' in page.text
    assert client.get("/practices/p-2/manual-updates").status_code == 404  # another practice's
    assert set(services.tokens) == {bearer}


def test_a_role_that_reads_no_money_sees_no_fees(console, keys):
    client, services, _ = console
    services.answers["billing/bookings/b-1/billing"] = Answer(403, {"detail": "needs a fee role"})
    sign_in(client, token(keys, ["receptionist"], ["p-1"]))
    page = client.get("/practices/p-1")
    assert "Fees are shown to the roles that read money" in page.text and "45.00" not in page.text


def test_one_bookings_timeline_gathers_every_service(console, keys):
    client, _, _ = console
    sign_in(client, token(keys, ["ops"]))
    page = client.get("/bookings/b-1")
    assert page.status_code == 200
    assert (
        "10 hours" in page.text
        and "notice < 24" not in page.text
        and "D9987" in page.text
        and "Nothing recorded." in page.text
    )
    assert client.get("/bookings/unknown").status_code == 404
    assert client.get("/bookings/..%2Fx").status_code == 404


def test_an_excuse_is_approved_with_the_reviewer_from_the_token(console, keys):
    client, _, broker = console
    sign_in(client, token(keys, ["ops"], subject="ops-anna"))
    queue = client.get("/queues")
    assert "x-1" in queue.text and 'href="/fees/review"' in queue.text
    csrf = csrf_of(queue)
    assert client.post("/excuses/x-1/review", data={"decision": "approved"}).status_code == 403
    assert client.post("/excuses/x-1/review", data={"csrf": csrf, "decision": "maybe"}).status_code == 422
    done = client.post("/excuses/x-1/review", data={"csrf": csrf, "decision": "approved"})
    assert done.status_code == 303 and broker.reviews == [("pro-1", "x-1", "approved", "ops-anna")]
    assert client.post("/excuses/x-404/review", data={"csrf": csrf, "decision": "rejected"}).status_code == 409


def test_a_suspended_professional_is_reinstated_by_the_operator_from_the_token(console, keys):
    client, _, broker = console
    sign_in(client, token(keys, ["ops"], subject="ops-anna"))
    queue = client.get("/queues")
    assert "pro-7" in queue.text and "Reinstate" in queue.text
    csrf = csrf_of(queue)
    assert client.post("/professionals/pro-7/reinstate", data={}).status_code == 403  # no CSRF token
    assert client.post("/professionals/pro-1/reinstate", data={"csrf": csrf}).status_code == 409  # not suspended
    assert client.post("/professionals/pro-404/reinstate", data={"csrf": csrf}).status_code == 409
    done = client.post("/professionals/pro-7/reinstate", data={"csrf": csrf})
    assert done.status_code == 303 and broker.reinstated == [("pro-7", "ops-anna")]


def test_caught_mail_and_sms_are_for_operators_in_development(console, keys, tmp_path):
    from console.sinks import MailStore, SmsStore

    MailStore(tmp_path / "mail").save("a@localhost", ["ann@patients.test"], b"Subject: Cancelled\r\n\r\nHello\r\n")
    SmsStore(tmp_path / "sms").save(to="+61400000001", body="Cancelled <b>", sender=None, idempotency_key=None)
    client, _, _ = console
    sign_in(client, token(keys, ["ops"]))
    mail = client.get("/mail")
    assert "ann@patients.test" in mail.text and "Cancelled" in mail.text
    message_id = re.search(r'href="/mail/([^"]+)"', mail.text).group(1)
    assert "Hello" in client.get(f"/mail/{message_id}").text
    assert "Cancelled &lt;b&gt;" in client.get("/sms").text


def test_sign_out_needs_csrf_and_ends_the_session(console, keys):
    client, _, _ = console
    sign_in(client, token(keys, ["ops"]))
    csrf = csrf_of(client.get("/pipeline"))
    assert client.post("/logout", data={}).status_code == 403
    out = client.post("/logout", data={"csrf": csrf})
    assert out.status_code == 303
    assert client.get("/pipeline").headers["location"] == "/login"


def test_charts_draw_any_numbers():
    empty = charts.bar_chart("nothing", [])
    assert empty.bars == [] and empty.height > 0
    zeros = charts.bar_chart("zeros", [("a", 0.0), ("b", 0.0)])
    assert [b.width for b in zeros.bars] == [0, 0]
    rates = charts.bar_chart("rates", [("a", 0.5), ("b", 0.25)], percent=True)
    assert [b.shown for b in rates.bars] == ["50.0%", "25.0%"] and rates.bars[0].width == 2 * rates.bars[1].width
    hist = charts.histogram("notice", [0.5, 3, 30, 30, 500], charts.NOTICE_EDGES)
    assert [b.value for b in hist.bars] == [1, 1, 0, 0, 2, 0, 0, 1]
    assert hist.bars[-1].label == "≥ 168 h"


def test_metrics_are_read_from_prometheus_text():
    text = (
        'cancellations_outbox_unpublished{service="booking"} 4.0\n'
        'cancellations_outbox_parked_rows{service="booking"} 1.0\n'
        "# TYPE cancellations_messages_total counter\n"
        'cancellations_messages_total{service="booking",topic="a",outcome="processed"} 5.0\n'
        'cancellations_messages_total{service="booking",topic="b",outcome="processed"} 2.0\n'
        'cancellations_messages_created{service="booking",topic="b",outcome="processed"} 1.7e9\n'
    )
    assert summarise_metrics(text) == {"outbox backlog": 4.0, "parked rows": 1.0, "messages processed": 7.0}
