"""A local server that speaks the part of Twilio's REST API notification uses: POST
/2010-04-01/Accounts/{AccountSid}/Messages.json (form: To, From, Body, StatusCallback), Basic
auth with the account SID and auth token, answers in Twilio's JSON shapes; and the signature
Twilio puts on a status callback (`signed_status`).

Numbers decide the answer, as Twilio's magic test numbers do: INVALID_NUMBER is refused
(400, error 21211), BUSY_PREFIX gets 503, anything else is queued (201). Wrong credentials: 401,
error 20003.
"""

from __future__ import annotations

import base64
import json
import re
import threading
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs

from twilio.request_validator import RequestValidator

from shared.testing import free_port

ACCOUNT_SID = "AC" + "0123456789abcdef" * 2
AUTH_TOKEN = "twilio-test-auth-token-5f0c"
FROM_NUMBER = "+15005550006"
INVALID_NUMBER = "+15005550001"
BUSY_PREFIX = "+1555"
MESSAGES_PATH = re.compile(r"/2010-04-01/Accounts/(?P<sid>AC[0-9a-f]{32})/Messages\.json")


@dataclass
class TwilioRequest:
    path: str
    headers: dict[str, str]  # names in lower case
    form: dict[str, str]
    answered: int
    sid: str | None  # the message SID answered, when queued


@dataclass
class FakeTwilio:
    account_sid: str = ACCOUNT_SID
    auth_token: str = AUTH_TOKEN
    requests: list[TwilioRequest] = field(default_factory=list)
    server: ThreadingHTTPServer | None = None

    def start(self) -> FakeTwilio:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                form = {k: v[-1] for k, v in parse_qs(self.rfile.read(length).decode()).items()}
                status, answer, sid = fake._answer(self.path, self.headers.get("Authorization", ""), form)
                fake.requests.append(
                    TwilioRequest(self.path, {k.lower(): v for k, v in self.headers.items()}, form, status, sid)
                )
                body = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    @property
    def url(self) -> str:
        """What TWILIO_API_BASE_URL is set to: the SDK puts /2010-04-01/... after it."""
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()

    def to(self, phone: str) -> list[TwilioRequest]:
        return [r for r in self.requests if r.form.get("To") == phone]

    def basic_auth(self) -> str:
        return "Basic " + base64.b64encode(f"{self.account_sid}:{self.auth_token}".encode()).decode()

    def _answer(self, path: str, authorization: str, form: dict[str, str]) -> tuple[int, dict[str, Any], str | None]:
        match = MESSAGES_PATH.fullmatch(path)
        if match is None:
            return 404, _error(20404, "The requested resource was not found", 404), None
        if authorization != self.basic_auth() or match["sid"] != self.account_sid:
            return 401, _error(20003, "Authenticate", 401), None
        to = form.get("To", "")
        if to == INVALID_NUMBER:
            return 400, _error(21211, f"The 'To' number {to} is not a valid phone number.", 400), None
        if to.startswith(BUSY_PREFIX):
            return 503, _error(20503, "Service unavailable", 503), None
        sid = "SM" + uuid.uuid4().hex
        now = datetime.now(UTC).strftime("%a, %d %b %Y %H:%M:%S +0000")
        return (
            201,
            {
                "account_sid": self.account_sid,
                "api_version": "2010-04-01",
                "body": form.get("Body", ""),
                "date_created": now,
                "date_sent": None,
                "date_updated": now,
                "direction": "outbound-api",
                "error_code": None,
                "error_message": None,
                "from": form.get("From"),
                "messaging_service_sid": None,
                "num_media": "0",
                "num_segments": "1",
                "price": None,
                "price_unit": "USD",
                "sid": sid,
                "status": "queued",
                "subresource_uris": {"media": f"/2010-04-01/Accounts/{self.account_sid}/Messages/{sid}/Media.json"},
                "to": to,
                "uri": f"/2010-04-01/Accounts/{self.account_sid}/Messages/{sid}.json",
            },
            sid,
        )


def _error(code: int, message: str, status: int) -> dict[str, Any]:
    return {
        "code": code,
        "message": message,
        "more_info": f"https://www.twilio.com/docs/errors/{code}",
        "status": status,
    }


def signed_status(url: str, form: dict[str, str], auth_token: str = AUTH_TOKEN) -> dict[str, str]:
    """The headers Twilio sends with a status callback of `form` to `url`."""
    return {
        "X-Twilio-Signature": RequestValidator(auth_token).compute_signature(url, form),
        "Content-Type": "application/x-www-form-urlencoded",
    }
