from pydantic import Field

from shared.settings import ServiceSettings


class ScoringSettings(ServiceSettings):
    service_name: str = "scoring"
    http_port: int = 8003
    # docs/rules.md: three holds not excused within 365 days suspend the account (platform settings).
    suspension_holds: int = 3
    suspension_window_days: int = 365
    # How often the expiry job looks for running holds whose end has passed, and how many
    # professionals one of its transactions takes.
    hold_expiry_poll_seconds: float = Field(default=30.0, gt=0)
    hold_expiry_batch_size: int = Field(default=200, ge=1)
    # The nightly recalculation runs once a day from this hour (UTC) on, across all replicas.
    recalculation_hour_utc: int = Field(default=3, ge=0, le=23)
    # How often the nightly loop looks at the clock (it also wakes at the hour itself).
    recalculation_check_seconds: float = Field(default=300.0, gt=0)
    # Patient standing (second release): how often the review job looks for standings whose
    # oldest counted case has aged out, and how many one of its transactions takes.
    standing_review_poll_seconds: float = Field(default=60.0, gt=0)
    standing_review_batch_size: int = Field(default=200, ge=1)
