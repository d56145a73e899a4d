from shared.settings import ServiceSettings


class PmsSyncSettings(ServiceSettings):
    service_name: str = "pms-sync"
    http_port: int = 8006

    # A command not acknowledged within the timeout is sent again; the wait doubles each time
    # (capped), and after PMS_MAX_ATTEMPTS sends the practice is asked to update by hand.
    pms_ack_timeout_seconds: float = 60.0
    pms_max_attempts: int = 5
    pms_max_backoff_seconds: float = 3600.0
    pms_retry_poll_seconds: float = 1.0
    # How long a command waits for its upstream request (the chart note) when booking.events.v1
    # was read first; after that it is sent without it.
    pms_request_wait_seconds: float = 30.0
    pms_retry_batch_size: int = 100
