"""A development SMS provider: takes what the notification service sends and keeps it under `.local/sms/`.

    python -m console.smssink        # SMS_SINK_PORT (8026), SMS_SINK_HOST (127.0.0.1), SMS_SINK_DIR (.local/sms)

It speaks the protocol of the notification SMS channel, which is Twilio's: a form POST of `To`,
`Body` and optionally `From` to `/2010-04-01/Accounts/{AccountSid}/Messages.json` (also accepted
at `/messages`), answered `201` with Twilio's message JSON (`sid`, `status: queued`, ...), and
errors in Twilio's error JSON (`code`, `message`, `status`). Both the channel's `Bearer` key and
the Twilio SDK's `Basic` account-sid:auth-token are taken; with `SMS_SINK_API_KEY` set, the
bearer token or the basic password must equal it, otherwise any credentials are taken, but some
must be sent (401 without, as a real provider would).

Guarantees: a send repeated with the same `Idempotency-Key` (or Twilio's
`I-Twilio-Idempotency-Token`) is stored once and answered with the first record. GET `/` shows
what arrived; GET `/api/messages` lists it as JSON. Logs never carry a number or a text.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import logging
import os
from datetime import datetime
from email.utils import format_datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse

from .sinks import LIST_LIMIT, SmsStore
from .templating import Pages

log = logging.getLogger("console.smssink")

API_VERSION = "2010-04-01"
FORM_MAX_BYTES = 64 * 1024
BODY_MAX_CHARS = 1600  # Twilio's limit for one message's text


def twilio_error(status: int, code: int, message: str) -> JSONResponse:
    return JSONResponse(
        {"code": code, "message": message, "more_info": f"https://www.twilio.com/docs/errors/{code}", "status": status},
        status_code=status,
    )


def authorised(header: str | None, api_key: str | None) -> bool:
    """A Bearer token or Basic credentials; checked against `api_key` when one is set."""
    if not header:
        return False
    scheme, _, value = header.partition(" ")
    value = value.strip()
    if scheme.lower() == "bearer" and value:
        secret = value
    elif scheme.lower() == "basic" and value:
        try:
            user, sep, secret = base64.b64decode(value, validate=True).decode("utf-8").partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return False
        if not sep or not user:
            return False
    else:
        return False
    return api_key is None or hmac.compare_digest(secret.encode(), api_key.encode())


def message_json(record: dict[str, Any], account_sid: str) -> dict[str, Any]:
    """A stored SMS as Twilio's Message resource."""
    created = format_datetime(datetime.fromisoformat(record["received_at"]))
    return {
        "sid": record["sid"],
        "account_sid": account_sid,
        "api_version": API_VERSION,
        "to": record["to"],
        "from": record["from"],
        "body": record["body"],
        "status": "queued",
        "direction": "outbound-api",
        "num_segments": str(max(1, -(-len(record["body"]) // 160))),
        "num_media": "0",
        "price": None,
        "price_unit": "USD",
        "error_code": None,
        "error_message": None,
        "messaging_service_sid": None,
        "date_created": created,
        "date_updated": created,
        "date_sent": None,
        "uri": f"/{API_VERSION}/Accounts/{account_sid}/Messages/{record['sid']}.json",
        "subresource_uris": {"media": f"/{API_VERSION}/Accounts/{account_sid}/Messages/{record['sid']}/Media.json"},
    }


def create_app(directory: Path, api_key: str | None = None) -> FastAPI:
    store = SmsStore(directory)
    pages = Pages(product="SMS sink")
    app = FastAPI(title="SMS sink (development)", docs_url=None, redoc_url=None, openapi_url=None)

    async def receive(request: Request, account_sid: str) -> JSONResponse:
        if not authorised(request.headers.get("authorization"), api_key):
            return JSONResponse(
                {
                    "code": 20003,
                    "message": "Authenticate",
                    "more_info": "https://www.twilio.com/docs/errors/20003",
                    "status": 401,
                },
                status_code=401,
                headers={"WWW-Authenticate": 'Basic realm="Twilio API"'},
            )
        raw = await request.body()
        if len(raw) > FORM_MAX_BYTES:
            return twilio_error(413, 21617, "The request is too large.")
        try:
            form = parse_qs(raw.decode("utf-8"), keep_blank_values=True, strict_parsing=False, max_num_fields=50)
        except (UnicodeDecodeError, ValueError):
            return twilio_error(400, 20001, "The request body is not a form.")
        to, body, sender = (form.get(name, [None])[0] for name in ("To", "Body", "From"))
        if not to:
            return twilio_error(400, 21604, "A 'To' phone number is required.")
        if not body:
            return twilio_error(400, 21602, "Message body is required.")
        if len(body) > BODY_MAX_CHARS:
            return twilio_error(
                400, 21617, f"The concatenated message body exceeds the {BODY_MAX_CHARS} character limit."
            )
        key = request.headers.get("idempotency-key") or request.headers.get("i-twilio-idempotency-token")
        record, new = store.save(to=to, body=body, sender=sender, idempotency_key=key)
        log.info("sms %s: %s", "stored" if new else "repeated, not stored again", record["sid"])
        return JSONResponse(message_json(record, account_sid), status_code=201)

    @app.post(f"/{API_VERSION}/Accounts/{{account_sid}}/Messages.json")
    async def twilio_messages(account_sid: str, request: Request) -> JSONResponse:
        return await receive(request, account_sid[:64])

    @app.post("/messages")
    async def messages(request: Request) -> JSONResponse:
        return await receive(request, "ACdevelopment")

    @app.get("/api/messages")
    async def list_json(limit: int = LIST_LIMIT) -> dict[str, Any]:
        return {"messages": store.list(max(1, min(limit, LIST_LIMIT)))}

    @app.get("/", response_class=HTMLResponse)
    async def page() -> HTMLResponse:
        return pages.render(
            "sink_sms.html", title="SMS", messages=store.list(), directory=str(directory), limit=LIST_LIMIT, base=""
        )

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app


def main() -> None:
    import uvicorn

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    directory = Path(os.environ.get("SMS_SINK_DIR", ".local/sms"))
    host, port = os.environ.get("SMS_SINK_HOST", "127.0.0.1"), int(os.environ.get("SMS_SINK_PORT", "8026"))
    log.info("SMS sink on http://%s:%d (messages in %s)", host, port, directory)
    uvicorn.run(
        create_app(directory, os.environ.get("SMS_SINK_API_KEY") or None), host=host, port=port, access_log=False
    )


if __name__ == "__main__":
    main()
