"""The console in a real browser (Debian's chromium driven by Playwright) against the six
services as processes: sign in, read the pipeline and a practice, approve an excuse.

Screenshots are kept in TEST_ARTIFACTS_DIR (default: the test's tmp_path) as test artefacts.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import urllib.request
from datetime import UTC, datetime
from pathlib import Path

import pytest
from playwright.async_api import async_playwright

from shared.testing import dev_token, free_port, unique, wait_for_row
from shared.tools.demo import first_sends, morning
from shared.topics import UPSTREAM_BOOKINGS

pytestmark = pytest.mark.e2e

CHROMIUM = os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium")


@pytest.fixture(scope="module")
def console_url(system, infra, tmp_path_factory):
    port = free_port()
    env = {
        **os.environ,
        "HTTP_PORT": str(port),
        "ENVIRONMENT": "development",
        "KAFKA_BOOTSTRAP_SERVERS": infra.bootstrap,
        **{
            f"{name.upper().replace('-', '_')}_API_URL": f"http://127.0.0.1:{proc.port}"
            for name, proc in system.items()
        },
    }
    log = (tmp_path_factory.mktemp("console") / "console.log").open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "console"], env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"{url}/healthz", timeout=1):
                    break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise AssertionError(f"the console did not start; see {log.name}") from None
                time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()


def _scoring_json(system, path: str):
    request = urllib.request.Request(
        f"http://127.0.0.1:{system['scoring'].port}{path}",
        headers={"Authorization": f"Bearer {dev_token(roles=['ops'])}"},
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as answer:
            return json.loads(answer.read())
    except urllib.error.HTTPError:
        return None


async def _until(check, timeout: float = 60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = await asyncio.to_thread(check)
        if found:
            return found
        await asyncio.sleep(0.2)
    raise AssertionError("not reached in time")


async def test_sign_in_see_the_pipeline_and_a_practice_and_approve_an_excuse(
    system, infra, publisher, console_url, tmp_path
):
    artefacts = Path(os.environ.get("TEST_ARTIFACTS_DIR", tmp_path))
    artefacts.mkdir(parents=True, exist_ok=True)
    m = morning(datetime.now(UTC), unique("r")[-8:])
    for send in first_sends(m):
        await publisher.event(send.topic, send.payload.event_type, send.subject, send.payload.to_json_dict())
    office = m.practices[1].practice_id
    late = next(c for c in m.cases if c.title.startswith("professional cancels 8 hours"))
    await wait_for_row(
        infra.admin_dsn, "SELECT true FROM cancellation_policy.practice_settings WHERE practice_id = $1", office
    )
    await wait_for_row(infra.admin_dsn, "SELECT true FROM booking.bookings WHERE booking_id = $1", late.booking_id)
    [request] = late.requests
    await publisher.event(
        UPSTREAM_BOOKINGS, request.payload.event_type, request.subject, request.payload.to_json_dict()
    )
    professional = late.booking.professional_id
    await _until(lambda: (_scoring_json(system, f"/professionals/{professional}") or {}).get("holds"))
    [excuse] = m.excuses
    await publisher.event(excuse.topic, excuse.payload.event_type, excuse.subject, excuse.payload.to_json_dict())
    excuse_id = excuse.payload.excuse_id
    await _until(lambda: _scoring_json(system, f"/excuses/{excuse_id}"))

    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = await browser.new_page()
        await page.goto(f"{console_url}/pipeline")
        assert page.url.endswith("/login")
        await page.fill("#token", dev_token(roles=["ops"]))
        await page.click("button[type=submit]")
        await page.wait_for_url("**/pipeline")
        assert await page.locator("h1").inner_text() == "Pipeline"
        assert await page.locator("span.ok", has_text="ready").count() == 6
        await page.screenshot(path=str(artefacts / "pipeline.png"), full_page=True)

        await page.goto(f"{console_url}/practices/{office}")
        assert await page.locator("h1").inner_text() == f"Practice {office}"
        assert await page.locator("svg").count() == 6
        await page.screenshot(path=str(artefacts / "practice.png"), full_page=True)

        await page.goto(f"{console_url}/queues")
        row = page.locator("tr", has_text=excuse_id)
        await row.locator("button", has_text="Approve").click()
        await page.wait_for_url("**/queues?flash=*")
        assert excuse_id in await page.locator(".flash").inner_text()
        await page.screenshot(path=str(artefacts / "queues.png"), full_page=True)
        await browser.close()

    reviewed = await _until(
        lambda: (e := _scoring_json(system, f"/excuses/{excuse_id}")) and e["status"] != "pending" and e
    )
    assert (reviewed["status"], reviewed["reviewer_id"]) == ("approved", "dev-user")
