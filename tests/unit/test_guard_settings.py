"""Guards against hostile input and bad configuration, without infrastructure: the jittered
backoff's bounds, the pool's timeouts as settings, the consumer's view of a timeout (transient),
and billing's refusal to start outside development without an explicit PAYMENT_GATEWAY."""

from __future__ import annotations

import importlib.util
import random
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from pydantic import ValidationError

from billing.app import definition
from billing.gateway import ConfigurationError
from billing.settings import BillingSettings
from shared import db
from shared import service as service_module
from shared.backoff import FULL_JITTER, backoff_delay, nominal_delay
from shared.consumer import is_transient
from shared.settings import ServiceSettings, is_development

ROOT = Path(__file__).resolve().parents[2]

# --- backoff --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("attempt", "nominal"),
    [(0, 30.0), (1, 30.0), (2, 60.0), (3, 120.0), (7, 1920.0), (8, 3600.0), (50, 3600.0), (10_000, 3600.0)],
)
def test_equal_jitter_stays_between_half_and_all_of_the_nominal_delay(attempt: int, nominal: float) -> None:
    assert nominal_delay(attempt, base=30, cap=3600) == nominal
    assert backoff_delay(attempt, base=30, cap=3600, rng=lambda: 1.0) == nominal
    assert backoff_delay(attempt, base=30, cap=3600, rng=lambda: 0.0) == nominal / 2
    seeded = random.Random(attempt)
    for _ in range(500):
        assert nominal / 2 <= backoff_delay(attempt, base=30, cap=3600, rng=seeded.random) <= nominal


def test_full_jitter_spans_zero_to_the_nominal_delay_and_none_is_exact() -> None:
    assert backoff_delay(3, base=1, cap=10, jitter=FULL_JITTER, rng=lambda: 0.0) == 0.0
    assert backoff_delay(3, base=1, cap=10, jitter=FULL_JITTER, rng=lambda: 0.5) == 2.0
    assert backoff_delay(3, base=1, cap=10, jitter=0.0, rng=lambda: 0.123) == 4.0
    seeded = random.Random(7)
    delays = [backoff_delay(5, base=1, cap=10, jitter=FULL_JITTER, rng=seeded.random) for _ in range(500)]
    assert all(0.0 <= d <= 10.0 for d in delays) and min(delays) < 1.0 and max(delays) > 9.0


def test_the_same_seed_gives_the_same_schedule() -> None:
    a, b = random.Random(42), random.Random(42)
    assert [backoff_delay(n, base=2, cap=60, rng=a.random) for n in range(1, 10)] == [
        backoff_delay(n, base=2, cap=60, rng=b.random) for n in range(1, 10)
    ]


@pytest.mark.parametrize("jitter", [-0.1, 1.5])
def test_jitter_outside_zero_to_one_is_refused(jitter: float) -> None:
    with pytest.raises(ValueError, match="jitter"):
        backoff_delay(1, base=1, cap=10, jitter=jitter)


# --- database timeouts ----------------------------------------------------------------------------


def test_timeouts_and_inbox_retention_defaults() -> None:
    settings = ServiceSettings(service_name="x")
    assert (settings.database_statement_timeout_ms, settings.database_lock_timeout_ms) == (30_000, 10_000)
    assert (settings.database_statement_timeout_ms, settings.database_lock_timeout_ms) == (
        db.DEFAULT_STATEMENT_TIMEOUT_MS,
        db.DEFAULT_LOCK_TIMEOUT_MS,
    )
    assert settings.inbox_retention_hours == 336  # 14 days: twice Kafka's default topic retention
    assert settings.inbox_prune_batch_size == 10_000


def test_timeouts_are_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_STATEMENT_TIMEOUT_MS", "5000")
    monkeypatch.setenv("DATABASE_LOCK_TIMEOUT_MS", "0")
    monkeypatch.setenv("INBOX_RETENTION_HOURS", "720")
    settings = ServiceSettings(service_name="x")
    assert (settings.database_statement_timeout_ms, settings.database_lock_timeout_ms) == (5000, 0)
    assert settings.inbox_retention_hours == 720


@pytest.mark.parametrize(
    "bad",
    [{"database_statement_timeout_ms": -1}, {"database_lock_timeout_ms": -5}, {"inbox_retention_hours": 0}],
)
def test_nonsense_guard_settings_are_refused(bad: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        ServiceSettings(service_name="x", **bad)


async def test_every_pool_connection_gets_the_timeouts(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[dict[str, Any]] = []

    async def fake_create_pool(dsn: str, **kwargs: Any) -> str:
        seen.append(kwargs)
        return "pool"

    monkeypatch.setattr(db.asyncpg, "create_pool", fake_create_pool)
    await db.create_pool("postgresql://x/y", "billing", application_name="billing")
    settings = ServiceSettings(
        service_name="pms-sync", database_statement_timeout_ms=1234, database_lock_timeout_ms=567
    )
    assert await service_module._connect_pool(settings, "pms-sync") == "pool"
    assert seen[0]["server_settings"] == {
        "search_path": "billing",
        "application_name": "billing",
        "statement_timeout": "30000",
        "lock_timeout": "10000",
    }
    assert seen[1]["server_settings"] == {
        "search_path": "pms_sync",
        "application_name": "pms-sync",
        "statement_timeout": "1234",
        "lock_timeout": "567",
    }


@pytest.mark.parametrize(
    "exc",
    [
        asyncpg.exceptions.QueryCanceledError("canceling statement due to statement timeout"),
        asyncpg.exceptions.LockNotAvailableError("canceling statement due to lock timeout"),
    ],
)
def test_a_timed_out_statement_is_transient(exc: Exception) -> None:
    """Retried, never dead-lettered: the same record may well succeed once the database is less busy."""
    assert is_transient(exc)


# --- ENVIRONMENT and PAYMENT_GATEWAY --------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "development"),
    [
        ("development", True),
        ("Development ", True),
        ("production", False),
        ("staging", False),
        ("dev", False),
        ("", False),
        (None, False),
    ],
)
def test_only_development_is_development(value: str | None, development: bool) -> None:
    assert is_development(value) is development


def test_the_environment_is_production_unless_told(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ENVIRONMENT", raising=False)
    assert ServiceSettings(service_name="x").environment == "production"
    assert not ServiceSettings(service_name="x").is_development


@pytest.mark.parametrize("environment", [None, "production", "staging"])
def test_billing_refuses_to_start_outside_development_without_a_gateway(
    monkeypatch: pytest.MonkeyPatch, environment: str | None
) -> None:
    monkeypatch.delenv("PAYMENT_GATEWAY", raising=False)
    if environment is None:
        monkeypatch.delenv("ENVIRONMENT", raising=False)
    else:
        monkeypatch.setenv("ENVIRONMENT", environment)
    settings = BillingSettings()
    assert settings.payment_gateway is None  # never the sandbox by omission
    with pytest.raises(ConfigurationError, match="PAYMENT_GATEWAY is not set") as refused:
        definition(settings)
    message = str(refused.value)
    assert "ENVIRONMENT is not 'development'" in message and "ENVIRONMENT=development" in message
    assert "PAYMENT_GATEWAY=stripe" in message and "PAYMENT_GATEWAY=sandbox" in message


def test_billing_defaults_to_the_sandbox_in_development(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PAYMENT_GATEWAY", raising=False)
    monkeypatch.setenv("ENVIRONMENT", "development")
    settings = BillingSettings()
    assert settings.payment_gateway == "sandbox"
    assert definition(settings).name == "billing"


@pytest.mark.parametrize("gateway", ["sandbox", "stripe"])
def test_billing_starts_in_production_with_an_explicit_gateway(monkeypatch: pytest.MonkeyPatch, gateway: str) -> None:
    monkeypatch.setenv("ENVIRONMENT", "production")
    monkeypatch.setenv("PAYMENT_GATEWAY", gateway)
    monkeypatch.setenv("STRIPE_API_KEY", "sk_test_123")
    assert BillingSettings().payment_gateway == gateway
    assert definition(BillingSettings()).name == "billing"


def test_production_stripe_without_a_key_is_still_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ENVIRONMENT", "production")
    monkeypatch.setenv("PAYMENT_GATEWAY", "stripe")
    monkeypatch.delenv("STRIPE_API_KEY", raising=False)
    with pytest.raises(ConfigurationError, match="STRIPE_API_KEY"):
        definition(BillingSettings())


def _supervise_module() -> Any:
    spec = importlib.util.spec_from_file_location("supervise_under_test", ROOT / "infra" / "supervise.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_make_run_starts_services_in_development_with_the_sandbox(monkeypatch: pytest.MonkeyPatch) -> None:
    supervise = _supervise_module()
    monkeypatch.delenv("ENVIRONMENT", raising=False)
    monkeypatch.delenv("PAYMENT_GATEWAY", raising=False)
    env = supervise.Process("billing", 0, 10, None).env("postgresql://postgres:postgres@localhost:5432/cancellations")
    assert (env["ENVIRONMENT"], env["PAYMENT_GATEWAY"]) == ("development", "sandbox")
    monkeypatch.setenv("PAYMENT_GATEWAY", "stripe")  # what the environment names wins
    env = supervise.Process("billing", 0, 10, None).env("postgresql://postgres:postgres@localhost:5432/cancellations")
    assert env["PAYMENT_GATEWAY"] == "stripe"


def test_the_local_env_file_and_compose_name_development() -> None:
    up = (ROOT / "infra" / "up.sh").read_text()
    assert "export ENVIRONMENT=\\${ENVIRONMENT:-development}" in up
    assert "export PAYMENT_GATEWAY=\\${PAYMENT_GATEWAY:-sandbox}" in up
    compose = (ROOT / "docker-compose.yml").read_text()
    assert "  ENVIRONMENT: development\n" in compose.split("services:", 1)[0]  # every app's environment
    assert "PAYMENT_GATEWAY: sandbox" in compose


def test_roles_get_a_scram_verifier_never_the_password() -> None:
    import base64
    import hashlib
    import hmac

    from shared.provision import scram_verifier

    verifier = scram_verifier("s3cret-Password", iterations=4096)
    assert "s3cret" not in verifier
    scheme, rest = verifier.split("$", 1)
    iterations_salt, keys = rest.split("$")
    iterations, salt = iterations_salt.split(":")
    stored, server = (base64.b64decode(k) for k in keys.split(":"))
    assert scheme == "SCRAM-SHA-256" and iterations == "4096"
    salted = hashlib.pbkdf2_hmac("sha256", b"s3cret-Password", base64.b64decode(salt), 4096)
    assert stored == hashlib.sha256(hmac.new(salted, b"Client Key", hashlib.sha256).digest()).digest()
    assert server == hmac.new(salted, b"Server Key", hashlib.sha256).digest()
    assert scram_verifier("s3cret-Password") != verifier  # a fresh salt each time
