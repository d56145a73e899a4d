from pydantic import SecretStr

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
    smtp_starttls: bool = False
    smtp_timeout_seconds: float = 20.0

    # SMS provider (Twilio-style form POST). No URL: SMS is reported failed, never silently dropped.
    sms_api_url: str | None = None
    sms_api_key: SecretStr | None = None
    sms_from: str | None = None  # sender id, when the provider wants one
    sms_timeout_seconds: float = 15.0

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
