"""The development mail catcher on a real socket: what an SMTP client sends is on disk and on the page."""

from __future__ import annotations

import asyncio
import contextlib
from email.message import EmailMessage

import aiosmtplib
import httpx

from console.mailcatcher import serve
from shared.testing import free_port


async def test_a_sent_mail_is_kept_and_readable(tmp_path):
    smtp_port, http_port = free_port(), free_port()
    server = asyncio.create_task(serve(tmp_path, "127.0.0.1", smtp_port, http_port))
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{http_port}") as http:
            for _ in range(100):
                with contextlib.suppress(httpx.TransportError):
                    if (await http.get("/healthz")).status_code == 200:
                        break
                await asyncio.sleep(0.05)
            message = EmailMessage()
            message["From"], message["To"], message["Subject"] = (
                "no-reply@localhost",
                "ann@patients.test",
                "Cancelled <b>",
            )
            message.set_content("Your appointment on Monday was cancelled.")
            await aiosmtplib.send(message, hostname="127.0.0.1", port=smtp_port, start_tls=False, use_tls=False)

            listed = (await http.get("/api/messages")).json()["messages"]
            assert [(m["rcpt_to"], m["subject"]) for m in listed] == [(["ann@patients.test"], "Cancelled <b>")]
            page = (await http.get("/")).text
            assert "Cancelled &lt;b&gt;" in page
            one = (await http.get(f"/messages/{listed[0]['id']}")).text
            assert "Your appointment on Monday was cancelled." in one
            assert (await http.get("/messages/..%2F..%2Fetc")).status_code == 404
        assert len(list(tmp_path.glob("*.eml"))) == 1
    finally:
        server.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await server
