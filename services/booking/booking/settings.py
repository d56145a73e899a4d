from pydantic import Field

from shared.settings import ServiceSettings


class BookingSettings(ServiceSettings):
    service_name: str = "booking"
    http_port: int = 8001
    # How often the offer-expiry job looks for waitlist offers that expired, and how many
    # offers one of its transactions takes.
    offer_check_interval_seconds: float = Field(default=5.0, gt=0)
    offer_expiry_batch_size: int = Field(default=100, ge=1)
    # A request's own time is believed only this far before / after its Kafka record's timestamp.
    request_time_trusted_before_seconds: int = Field(default=600, ge=0, le=86_400)
    request_time_trusted_after_seconds: int = Field(default=120, ge=0, le=86_400)
    # The no-show sweep (second release): how often it looks for bookings past start + grace,
    # and how many one of its transactions takes.
    no_show_sweep_interval_seconds: float = Field(default=30.0, gt=0)
    no_show_sweep_batch_size: int = Field(default=200, ge=1)
