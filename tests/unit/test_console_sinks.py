"""The development sinks' stores and the SMS sink's Twilio-style API (no network: ASGI in process)."""

from __future__ import annotations

import base64
from datetime import UTC, datetime
from email.message import EmailMessage

import pytest
from fastapi.testclient import TestClient

from console.sinks import MailStore, SmsStore
from console.smssink import authorised, create_app

PATH = "/2010-04-01/Accounts/ACdev/Messages.json"


def _mail(subject: str, text: str, html: str | None = None) -> bytes:
    message = EmailMessage()
    message["From"], message["To"], message["Subject"] = "no-reply@localhost", "ann@patients.test", subject
    message.set_content(text)
    if html:
        message.add_alternative(html, subtype="html")
    return bytes(message)


def test_mail_is_kept_whole_and_listed_newest_first(tmp_path):
    store = MailStore(tmp_path)
    first = store.save(
        "no-reply@localhost", ["ann@patients.test"], _mail("First", "one"), datetime(2020, 1, 1, tzinfo=UTC)
    )
    second = store.save("no-reply@localhost", ["bo@patients.test"], _mail("Second", "two", "<p>two</p>"))
    assert [m["id"] for m in store.list()] == [second, first]
    mail = store.get(second)
    assert mail is not None and mail.subject == "Second" and mail.rcpt_to == ["bo@patients.test"]
    assert mail.text is not None and mail.text.strip() == "two" and mail.html is not None and "<p>two</p>" in mail.html
    assert not list(tmp_path.glob(".*.tmp"))


@pytest.mark.parametrize("bad", ["../../etc/passwd", "x", "20300101T000000000000Z-" + "g" * 32])
def test_a_message_id_never_becomes_an_arbitrary_path(tmp_path, bad):
    assert MailStore(tmp_path).get(bad) is None
    assert SmsStore(tmp_path).get(bad) is None


def test_an_sms_sent_twice_with_one_key_is_kept_once(tmp_path):
    store = SmsStore(tmp_path)
    first, new = store.save(to="+61400000001", body="Hi", sender=None, idempotency_key="k-1")
    again, new_again = store.save(to="+61400000001", body="Hi", sender=None, idempotency_key="k-1")
    other, _ = store.save(to="+61400000001", body="Hi", sender=None, idempotency_key="k-2")
    assert new and not new_again and again == first and other["sid"] != first["sid"]
    assert len(store.list()) == 2


@pytest.mark.parametrize(
    ("header", "key", "ok"),
    [
        ("Bearer dev", None, True),
        ("Bearer dev", "dev", True),
        ("Bearer other", "dev", False),
        ("Basic " + base64.b64encode(b"ACdev:dev").decode(), "dev", True),
        ("Basic " + base64.b64encode(b"ACdev:nope").decode(), "dev", False),
        ("Basic " + base64.b64encode(b"no-colon").decode(), None, False),
        ("Basic ***", None, False),
        ("Digest x", None, False),
        (None, None, False),
        ("Bearer ", None, False),
    ],
)
def test_bearer_and_basic_credentials(header, key, ok):
    assert authorised(header, key) is ok


def test_the_sink_answers_like_twilio_and_keeps_the_message(tmp_path):
    client = TestClient(create_app(tmp_path, api_key="dev"))
    sent = client.post(
        PATH,
        data={"To": "+61400000002", "Body": "Your appointment was cancelled.", "From": "+15550000000"},
        headers={"Authorization": "Bearer dev", "Idempotency-Key": "n-1"},
    )
    assert sent.status_code == 201
    body = sent.json()
    assert body["sid"].startswith("SM") and len(body["sid"]) == 34 and body["status"] == "queued"
    assert body["account_sid"] == "ACdev" and body["to"] == "+61400000002" and body["from"] == "+15550000000"
    assert body["uri"] == f"/2010-04-01/Accounts/ACdev/Messages/{body['sid']}.json"
    # the Twilio SDK's way: Basic account sid and auth token, its own idempotency header
    basic = "Basic " + base64.b64encode(b"ACdev:dev").decode()
    again = client.post(
        PATH, data={"To": "+61400000002", "Body": "x"}, headers={"Authorization": basic, "Idempotency-Key": "n-1"}
    )
    assert again.status_code == 201 and again.json()["sid"] == body["sid"]
    listed = client.get("/api/messages").json()["messages"]
    assert [m["sid"] for m in listed] == [body["sid"]]
    page = client.get("/")
    assert page.status_code == 200 and "Your appointment was cancelled." in page.text
    assert "script-src" not in page.headers["content-security-policy"]


@pytest.mark.parametrize(
    ("data", "headers", "status", "code"),
    [
        ({"To": "+61400000003", "Body": "x"}, {}, 401, 20003),
        ({"To": "+61400000003", "Body": "x"}, {"Authorization": "Bearer wrong"}, 401, 20003),
        ({"Body": "x"}, {"Authorization": "Bearer dev"}, 400, 21604),
        ({"To": "+61400000003"}, {"Authorization": "Bearer dev"}, 400, 21602),
        ({"To": "+61400000003", "Body": "x" * 1601}, {"Authorization": "Bearer dev"}, 400, 21617),
    ],
)
def test_the_sink_refuses_like_twilio(tmp_path, data, headers, status, code):
    client = TestClient(create_app(tmp_path, api_key="dev"))
    answer = client.post(PATH, data=data, headers=headers)
    assert answer.status_code == status and answer.json()["code"] == code
    assert client.get("/api/messages").json()["messages"] == []


def test_a_caught_text_is_shown_escaped(tmp_path):
    client = TestClient(create_app(tmp_path))
    client.post(
        PATH, data={"To": "+61400000004", "Body": "<script>alert(1)</script>"}, headers={"Authorization": "Bearer k"}
    )
    page = client.get("/").text
    assert "<script>alert(1)</script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
