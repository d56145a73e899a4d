"""The connector's settings, from the environment. The Kafka and log settings have the names
every service of the system uses (docs/design.md#settings-every-deployment-knows)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared.kafka import KafkaConnection
from shared.topics import PMS_INTEGRATION_TOPICS


class ConnectorSettings(BaseSettings):
    model_config = SettingsConfigDict(extra="ignore", frozen=True)

    # Which integration this connector serves: it consumes that integration's topic only.
    connector_integration: Literal["praktika", "core_practice"]
    # Its own consumer group; default `pms-connector-<integration>`. Every replica uses the same one.
    connector_group_id: str | None = None
    # Only these practices' commands (comma-separated), e.g. a PMS installed at one practice;
    # empty: every practice on the topic.
    connector_practice_ids: str = ""

    pms_api_url: str  # e.g. https://api.praktika.example/v2
    pms_api_token: SecretStr | None = None  # sent as `Authorization: Bearer …` when set
    pms_timeout_seconds: float = 10.0
    # A 5xx, 408, 429 or a connection error is tried again, this many times in all, waiting
    # backoff × 2^(n−1) plus up to backoff of jitter, capped (stamina; a Retry-After is capped
    # the same), in between; then the command is left unacknowledged.
    connector_http_attempts: int = 5
    connector_http_backoff_seconds: float = 0.5
    connector_http_max_backoff_seconds: float = 8.0

    kafka_bootstrap_servers: str = "localhost:9092"
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    kafka_sasl_mechanism: str | None = None
    kafka_sasl_username: str | None = None
    kafka_sasl_password: SecretStr | None = None
    kafka_ssl_cafile: Path | None = None  # TLS: the brokers' CA (default: the system's)
    kafka_ssl_certfile: Path | None = None  # a client certificate, with its key, when wanted
    kafka_ssl_keyfile: Path | None = None

    log_level: str = "INFO"
    log_format: Literal["json", "console"] = "json"

    @field_validator("pms_api_url")
    @classmethod
    def _no_trailing_slash(cls, value: str) -> str:
        return value.rstrip("/")

    @property
    def topic(self) -> str:
        return PMS_INTEGRATION_TOPICS[self.connector_integration]

    @property
    def group_id(self) -> str:
        return self.connector_group_id or f"pms-connector-{self.connector_integration}"

    @property
    def practice_ids(self) -> frozenset[str]:
        return frozenset(p.strip() for p in self.connector_practice_ids.split(",") if p.strip())

    def kafka_client_args(self) -> dict[str, Any]:
        """aiokafka arguments, bootstrap servers included: the one translation (shared.kafka)."""
        return KafkaConnection.from_settings(self).aiokafka_args()
