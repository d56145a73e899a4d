from typing import Literal

from pydantic import Field, SecretStr

from shared.settings import ServiceSettings


class NotificationSettings(ServiceSettings):
    service_name: str = "notification"
    http_port: int = 8005

    # Email (docs/design.md#settings-every-deployment-knows).
    smtp_host: str = "localhost"
    smtp_port: int = 1025
    smtp_from: str = "no-reply@localhost"
    smtp_username: str | None = None
    smtp_password: SecretStr | None = None
    # TLS to the SMTP server: none, starttls (upgrade the plain connection; the server must offer
    # it) or implicit (TLS from the first byte, usually port 465). Unset: starttls for any host
    # but a loopback one (localhost, 127.0.0.1, ::1), where it is none.
    smtp_tls: Literal["none", "starttls", "implicit"] | None = None
    # Deprecated, still honoured when SMTP_TLS is unset: true = starttls, false = none.
    smtp_starttls: bool | None = None
    smtp_timeout_seconds: float = 20.0
    # SMTP connections kept and reused, and so the most sends at once; 0: a connection per message.
    smtp_pool_size: int = Field(default=8, ge=0, le=100)
    smtp_idle_seconds: float = Field(default=30.0, gt=0)  # a kept connection idle longer is closed

    # SMS: `http`, a generic provider (form POST of To/Body/From to SMS_API_URL, bearer
    # SMS_API_KEY), or `twilio`, Twilio's Messages API through the official SDK (Basic auth with
    # TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN, From SMS_FROM). Not configured: SMS is reported
    # failed, never silently dropped.
    sms_provider: Literal["http", "twilio"] = "http"
    sms_api_url: str | None = None
    sms_api_key: SecretStr | None = None
    sms_from: str | None = None  # sender id, when the provider wants one (Twilio always does)
    sms_timeout_seconds: float = 15.0
    twilio_account_sid: str | None = None
    twilio_auth_token: SecretStr | None = None  # also the key that signs Twilio's status callbacks
    twilio_api_base_url: str | None = None  # unset: the SDK's own (https://api.twilio.com)
    # Where Twilio posts a message's status (this service's POST /sms/status, as Twilio reaches
    # it): the exact URL is part of what Twilio signs. Unset: no status callbacks are asked for.
    sms_status_callback_url: str | None = None
    # The SDK blocks: at most this many sends in worker threads at once.
    sms_max_concurrent_sends: int = Field(default=8, ge=1, le=64)

    # Delivery: retries with exponential backoff, then `notification.failed`.
    delivery_max_attempts: int = 5
    delivery_retry_base_seconds: float = 30.0
    delivery_retry_max_seconds: float = 3600.0
    delivery_batch_size: int = 20
    delivery_poll_interval_seconds: float = 0.5
    # A claimed row is not claimed again for this long: it must outlast one send (the SMTP and
    # SMS timeouts) or a slow send could be repeated by another replica.
    delivery_lease_seconds: float = 300.0

    # Where a patient who cancelled online books again.
    portal_base_url: str = "http://localhost:8080"

    @property
    def smtp_tls_mode(self) -> Literal["none", "starttls", "implicit"]:
        """SMTP_TLS if set, else the deprecated SMTP_STARTTLS if set, else by host (loopback: none)."""
        if self.smtp_tls is not None:
            return self.smtp_tls
        if self.smtp_starttls is not None:
            return "starttls" if self.smtp_starttls else "none"
        return "none" if self.smtp_host.strip("[]").lower() in LOOPBACK_HOSTS else "starttls"


LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})
