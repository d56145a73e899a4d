"""The `cancellations` CLI against the running services on the secured broker, as a person runs
it after `make run`: no superuser credentials in its environment, only where the broker is and
the principals' settings files (.local/clients), from which it picks `upstream` to write
settings and `observer` to read answers and dead letters."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from shared.access import ADMIN_ONLY_SETTINGS, clients_dir
from shared.testing import unique

pytestmark = pytest.mark.integration


def run_cli(*args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ADMIN_ONLY_SETTINGS and k not in ("KAFKA_SASL_USERNAME", "KAFKA_SASL_PASSWORD")
    }
    env["KAFKA_CLIENTS_DIR"] = str(clients_dir())
    env["COLUMNS"] = "200"
    return subprocess.run(
        [str(Path(sys.executable).parent / "cancellations"), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def settings(practice_id: str, **override: object) -> dict[str, object]:
    return {
        "practice_id": practice_id,
        "name": "Harbour Dental",
        "timezone": "Australia/Sydney",
        "locale": "en",
        "contact": {"email": "frontdesk@harbour.test", "preferred_channel": "email"},
        "fees": {
            "late_cancellation": {"amount": "45.00", "currency": "AUD", "code": "D9987", "code_system": "CDT"},
            "charge_card_on_file": True,
        },
        **override,
    }


def test_practice_apply_is_answered_accepted_or_rejected_by_the_running_policy(system, tmp_path: Path):
    practice = unique("practice-cli")
    good = tmp_path / "harbour.json"
    good.write_text(json.dumps(settings(practice)))
    accepted = run_cli("practice", "apply", str(good))
    assert accepted.returncode == 0, accepted.stderr + accepted.stdout
    assert "accepted" in accepted.stdout.lower() and practice in accepted.stdout

    bad = tmp_path / "harbour.yaml"
    bad.write_text(
        "practice_id: " + practice + "\nname: Harbour Dental\ntimezone: Australia/Sydney\nlocale: en\n"
        "contact: {email: frontdesk@harbour.test, preferred_channel: email}\n"
        "fees: {late_cancellation: {amount: '-5.00', currency: AUD, code: D9987, code_system: CDT}}\n"
    )
    refused = run_cli("practice", "apply", str(bad))
    assert refused.returncode != 0
    assert "amount" in (refused.stdout + refused.stderr)


def test_dead_letters_can_be_listed_as_the_observer(system):
    listed = run_cli("dlq", "list")
    assert listed.returncode == 0, listed.stderr + listed.stdout
