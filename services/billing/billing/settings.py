from pydantic import Field, SecretStr

from shared.settings import ServiceSettings

from .gateway import DEFAULT_SANDBOX_DECLINES


class BillingSettings(ServiceSettings):
    service_name: str = "billing"
    http_port: int = 8004
    # sandbox | stripe (Stripe needs STRIPE_API_KEY; STRIPE_API_BASE points it elsewhere, e.g. a
    # local Stripe-speaking server in tests; unset: Stripe's own https://api.stripe.com)
    payment_gateway: str = "sandbox"
    stripe_api_key: SecretStr | None = None
    stripe_api_base: str | None = None
    # SANDBOX_DECLINES='{"-decline": "card_declined"}': customer-reference suffix -> decline reason.
    sandbox_declines: dict[str, str] = Field(default_factory=lambda: dict(DEFAULT_SANDBOX_DECLINES))
    # The capture task: how often it looks for pending card charges, how many it takes at once,
    # how long a charge is leased to one attempt (doubling per retry), and the call's timeout.
    capture_poll_interval_seconds: float = 1.0
    capture_batch_size: int = 20
    capture_lease_seconds: float = 60.0
    gateway_timeout_seconds: float = 20.0
