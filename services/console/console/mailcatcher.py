"""A development mail catcher: an SMTP server that keeps every message under `.local/mail/`, and a page to read them.

    python -m console.mailcatcher    # MAIL_SMTP_PORT (1025), MAIL_HTTP_PORT (8025), MAIL_HOST (127.0.0.1),
                                     # MAIL_DIR (.local/mail)

Guarantees: a message is answered `250` only after it is on disk whole (sinks.MailStore), so
what the notification service reports sent can be read; a message over `MAX_MESSAGE_BYTES` is
refused with `552` (aiosmtpd). Plain SMTP without TLS or authentication: for loopback in
development only (the notification service speaks plain SMTP to a loopback host). GET `/` lists
what arrived, `/messages/<id>` shows one, `/api/messages` lists them as JSON. Logs never carry
an address, a subject or a body.
"""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path
from typing import Any

from aiosmtpd.smtp import SMTP, Envelope, Session
from fastapi import FastAPI, HTTPException
from fastapi.responses import HTMLResponse

from .sinks import LIST_LIMIT, MailStore
from .templating import Pages

log = logging.getLogger("console.mailcatcher")

MAX_MESSAGE_BYTES = 10 * 1024 * 1024


class Keep:
    """aiosmtpd handler: every message accepted is stored before it is acknowledged."""

    def __init__(self, store: MailStore) -> None:
        self.store = store

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        content = envelope.original_content or b""
        message_id = await asyncio.to_thread(
            self.store.save, str(envelope.mail_from or ""), [str(r) for r in envelope.rcpt_tos], content
        )
        log.info("mail stored: %s (%d bytes, %d recipient(s))", message_id, len(content), len(envelope.rcpt_tos))
        return "250 Message accepted for delivery"


def create_page(store: MailStore, smtp_port: int) -> FastAPI:
    pages = Pages(product="Mail catcher")
    app = FastAPI(title="Mail catcher (development)", docs_url=None, redoc_url=None, openapi_url=None)

    @app.get("/", response_class=HTMLResponse)
    async def listing() -> HTMLResponse:
        return pages.render(
            "sink_mail.html",
            title="Mail",
            messages=store.list(),
            directory=str(store.directory),
            limit=LIST_LIMIT,
            smtp_port=smtp_port,
            base="",
        )

    @app.get("/messages/{message_id}", response_class=HTMLResponse)
    async def one(message_id: str) -> HTMLResponse:
        mail = store.get(message_id)
        if mail is None:
            raise HTTPException(404, "no such message")
        return pages.render("sink_mail_one.html", title=mail.subject or "Mail", mail=mail, base="")

    @app.get("/api/messages")
    async def list_json(limit: int = LIST_LIMIT) -> dict[str, Any]:
        return {"messages": store.list(max(1, min(limit, LIST_LIMIT)))}

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app


async def serve(directory: Path, host: str, smtp_port: int, http_port: int) -> None:
    import uvicorn

    store = MailStore(directory)
    loop = asyncio.get_running_loop()
    smtp = await loop.create_server(
        lambda: SMTP(Keep(store), data_size_limit=MAX_MESSAGE_BYTES, hostname="mailcatcher.local"), host, smtp_port
    )
    log.info(
        "mail catcher: SMTP on %s:%d, page on http://%s:%d (mail in %s)", host, smtp_port, host, http_port, directory
    )
    server = uvicorn.Server(uvicorn.Config(create_page(store, smtp_port), host=host, port=http_port, access_log=False))
    try:
        await server.serve()
    finally:
        smtp.close()
        await smtp.wait_closed()


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    asyncio.run(
        serve(
            Path(os.environ.get("MAIL_DIR", ".local/mail")),
            os.environ.get("MAIL_HOST", "127.0.0.1"),
            int(os.environ.get("MAIL_SMTP_PORT", "1025")),
            int(os.environ.get("MAIL_HTTP_PORT", "8025")),
        )
    )


if __name__ == "__main__":
    main()
