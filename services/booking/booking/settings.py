from shared.settings import ServiceSettings


class BookingSettings(ServiceSettings):
    service_name: str = "booking"
    http_port: int = 8001
    # How often the scheduler looks for waitlist offers that expired.
    offer_check_interval_seconds: float = 5.0
