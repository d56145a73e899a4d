from shared.settings import ServiceSettings


class PolicySettings(ServiceSettings):
    service_name: str = "cancellation-policy"
    http_port: int = 8002
