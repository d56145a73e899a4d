"""Settings every service reads from its environment (DESIGN.md "Settings every deployment knows").

Names and defaults are fixed so operators and tools can rely on them; a service adds its own
settings by subclassing `ServiceSettings`.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class ServiceSettings(BaseSettings):
    model_config = SettingsConfigDict(extra="ignore", frozen=True)

    service_name: str
    kafka_bootstrap_servers: str = "localhost:9092"
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    kafka_sasl_mechanism: str | None = None
    kafka_sasl_username: str | None = None
    kafka_sasl_password: SecretStr | None = None
    database_url: str = "postgresql://localhost:5432/cancellations"
    database_schema: str | None = None  # default: the service name with '-' as '_'
    database_pool_size: int = 10
    topic_partitions: int = 6
    http_host: str = "0.0.0.0"
    http_port: int = 8000
    log_level: str = "INFO"
    log_format: Literal["json", "console"] = "json"
    # How many records one consumer transaction may take at once.
    consumer_max_records: int = 200
    consumer_batch_timeout_ms: int = 50
    # Off: a batch claims its ids and writes its events in one statement each (faster); on: a
    # savepoint per record from the start (the fallback a failing batch uses anyway).
    consumer_savepoint_per_record: bool = False
    relay_batch_size: int = 500
    relay_poll_interval_seconds: float = 0.2

    @property
    def schema(self) -> str:
        return self.database_schema or self.service_name.replace("-", "_")

    def kafka_client_args(self) -> dict[str, Any]:
        """Connection arguments for aiokafka clients (admin, plain producers)."""
        args: dict[str, Any] = {"security_protocol": self.kafka_security_protocol}
        if self.kafka_sasl_mechanism:
            args["sasl_mechanism"] = self.kafka_sasl_mechanism
            args["sasl_plain_username"] = self.kafka_sasl_username
            args["sasl_plain_password"] = (
                self.kafka_sasl_password.get_secret_value() if self.kafka_sasl_password else None
            )
        if self.kafka_security_protocol in ("SSL", "SASL_SSL"):
            from aiokafka.helpers import create_ssl_context

            args["ssl_context"] = create_ssl_context()
        return args
