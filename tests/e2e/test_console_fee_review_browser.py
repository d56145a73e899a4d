"""The console's fee review queue in a real browser (chromium driven by Playwright) against the
six services as processes: a practice manager signs in, finds a late-cancellation fee billing
holds for review, edits it lower, and billing takes the decision as that person (the fee is
final at the new amount, its review recorded with the manager as who).
"""

from __future__ import annotations

import json
import os
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from playwright.async_api import async_playwright

from shared.testing import dev_token, iso, unique, wait_for_row
from shared.topics import UPSTREAM_BOOKINGS, UPSTREAM_PRACTICES

from .stories import LATE_FEE, ann_booked, harbour_dental
from .test_console_browser import CHROMIUM, _until, console_url  # noqa: F401 - the module's console process

pytestmark = pytest.mark.e2e


def _billing_json(system, path: str, token: str):
    request = urllib.request.Request(
        f"http://127.0.0.1:{system['billing'].port}{path}", headers={"Authorization": f"Bearer {token}"}
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as answer:
            return json.loads(answer.read())
    except urllib.error.HTTPError:
        return None


async def test_a_manager_edits_a_fee_in_review_in_the_console(system, infra, publisher, console_url, tmp_path):  # noqa: F811
    artefacts = Path(os.environ.get("TEST_ARTIFACTS_DIR", tmp_path))
    artefacts.mkdir(parents=True, exist_ok=True)
    practice_id, booking_id, patient_id = unique("practice"), unique("booking"), unique("patient")
    starts = datetime.now(UTC) + timedelta(hours=6)
    fee = LATE_FEE
    await publisher.event(
        UPSTREAM_PRACTICES,
        "practice.configured",
        practice_id,
        harbour_dental(practice_id, fees={"late_cancellation": fee, "review_hours": 24}, contact=None, pms=None),
    )
    await publisher.event(
        UPSTREAM_BOOKINGS,
        "booking.scheduled",
        booking_id,
        ann_booked(booking_id, practice_id, patient_id, starts, patient={"card_on_file": False}),
    )
    await wait_for_row(
        infra.admin_dsn, "SELECT true FROM cancellation_policy.practice_settings WHERE practice_id = $1", practice_id
    )
    await wait_for_row(infra.admin_dsn, "SELECT true FROM booking.bookings WHERE booking_id = $1", booking_id)
    await publisher.event(
        UPSTREAM_BOOKINGS,
        "booking.cancellation_requested",
        booking_id,
        {
            "request_id": unique("request"),
            "booking_id": booking_id,
            "requested_at": iso(datetime.now(UTC)),
            "actor": {"kind": "staff", "id": "staff-7", "roles": ["receptionist"]},
            "channel": "practice",
        },
    )
    manager = dev_token(practice_ids=[practice_id], roles=["manager"])
    queue = await _until(lambda: (_billing_json(system, "/charges/in-review", manager) or {}).get("charges"))
    [charge] = queue
    assert (charge["booking_id"], charge["amount"]) == (booking_id, "45.00")

    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = await browser.new_page()
        await page.goto(f"{console_url}/login")
        await page.fill("#token", manager)
        await page.click("button[type=submit]")
        await page.goto(f"{console_url}/fees/review")
        assert await page.locator("h1").inner_text() == "Fees to review"
        row = page.locator("tr", has_text=charge["charge_id"])
        await row.locator("input[name=amount]").fill("30.00")
        await row.locator("input[name=note]").fill("first late cancellation")
        await row.locator("button", has_text="Edit").click()
        await page.wait_for_url("**/fees/review?flash=*")
        assert charge["charge_id"] in await page.locator(".flash").inner_text()
        await page.screenshot(path=str(artefacts / "fee_review.png"), full_page=True)
        await browser.close()

    def decided():
        billing = _billing_json(system, f"/bookings/{booking_id}/billing", manager) or {}
        [found] = billing.get("charges") or [None]
        return billing if found and found["status"] != "pending_review" else None

    billing = await _until(decided)
    [final] = billing["charges"]
    assert (final["amount"], final["status"]) == ("30.00", "outstanding")  # no card on file: owed
    [review] = billing["reviews"]
    assert (review["decision"], review["outcome"], review["actor"]) == ("edit", "edited", "staff:dev-user")
