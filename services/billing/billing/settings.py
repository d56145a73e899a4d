from typing import Any

from pydantic import Field, SecretStr, model_validator

from shared.settings import ServiceSettings, is_development

from .gateway import DEFAULT_SANDBOX_DECLINES


class BillingSettings(ServiceSettings):
    service_name: str = "billing"
    http_port: int = 8004
    # sandbox | stripe (Stripe needs STRIPE_API_KEY; STRIPE_API_BASE points it elsewhere, e.g. a
    # local Stripe-speaking server in tests; unset: Stripe's own https://api.stripe.com).
    # Unset: `sandbox` when ENVIRONMENT=development; otherwise billing refuses to start (a
    # production deployment must never take payments in the sandbox by omission).
    payment_gateway: str | None = None
    stripe_api_key: SecretStr | None = None
    stripe_api_base: str | None = None
    # SANDBOX_DECLINES='{"-decline": "card_declined"}': customer-reference suffix -> decline reason.
    sandbox_declines: dict[str, str] = Field(default_factory=lambda: dict(DEFAULT_SANDBOX_DECLINES))
    # The capture task: how often it looks for pending card charges, how many it takes at once,
    # how long a charge is leased to one attempt (doubling per retry), and the call's timeout.
    capture_poll_interval_seconds: float = 1.0
    capture_batch_size: int = 20
    capture_lease_seconds: float = 60.0
    # Charges of different bookings asked of the gateway at once (each under its own idempotency
    # key); their answers are recorded together (shared.background's group commit). 1: one by one.
    capture_concurrency: int = Field(default=4, ge=1, le=32)
    gateway_timeout_seconds: float = 20.0
    # How often replicas look for fees whose review window ended undecided (they are approved).
    review_check_interval_seconds: float = 30.0
    # Stripe's webhook signing secret (whsec_…): without it POST /stripe/webhook answers 403.
    stripe_webhook_secret: SecretStr | None = None
    # The largest webhook body read (Stripe's events are a few KiB); a larger one is refused (413).
    stripe_webhook_max_bytes: int = 256 * 1024

    @model_validator(mode="before")
    @classmethod
    def _sandbox_by_default_in_development(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("payment_gateway") is None and is_development(data.get("environment")):
            return {**data, "payment_gateway": "sandbox"}
        return data
