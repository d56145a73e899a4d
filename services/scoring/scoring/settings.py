from shared.settings import ServiceSettings


class ScoringSettings(ServiceSettings):
    service_name: str = "scoring"
    http_port: int = 8003
    # RULES.md: three holds not excused within 365 days suspend the account (platform settings).
    suspension_holds: int = 3
    suspension_window_days: int = 365
