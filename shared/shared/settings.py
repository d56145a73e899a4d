"""Settings every service reads from its environment (docs/design.md#settings-every-deployment-knows).

Names and defaults are fixed so operators and tools can rely on them; a service adds its own
settings by subclassing `ServiceSettings`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from .auth import TokenVerifier

DEVELOPMENT = "development"


def is_development(environment: str | None) -> bool:
    """ENVIRONMENT names development (any case); anything else, unset included, is production."""
    return (environment or "").strip().lower() == DEVELOPMENT


class ServiceSettings(BaseSettings):
    model_config = SettingsConfigDict(extra="ignore", frozen=True)

    service_name: str
    # Where the service runs. Anything but `development` is treated as production: a setting
    # whose safe default differs (billing's PAYMENT_GATEWAY) must then be given explicitly.
    # `make run`, docker-compose and the test harnesses set `development`.
    environment: str = "production"
    kafka_bootstrap_servers: str = "localhost:9092"
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    kafka_sasl_mechanism: str | None = None
    kafka_sasl_username: str | None = None
    kafka_sasl_password: SecretStr | None = None
    # TLS (SSL, SASL_SSL): the CA that signed the brokers' certificates (default: the system's),
    # and a client certificate with its key when the brokers want one (shared.kafka).
    kafka_ssl_cafile: Path | None = None
    kafka_ssl_certfile: Path | None = None
    kafka_ssl_keyfile: Path | None = None
    # The service's runtime role (data only); it must neither be a superuser nor own the schema.
    database_url: str = "postgresql://localhost:5432/cancellations"
    # The role that owns the schema: migrations run with it at startup, on a short-lived pool.
    database_migration_url: str | None = None
    # asyncpg's `ssl` for both (disable, allow, prefer, require, verify-ca, verify-full);
    # unset: whatever the URL says (libpq's default, prefer).
    database_sslmode: Literal["disable", "allow", "prefer", "require", "verify-ca", "verify-full"] | None = None
    database_schema: str | None = None  # default: the service name with '-' as '_'
    database_pool_size: int = 10
    # Set on every pooled connection (0 = no limit): a statement running longer is cancelled
    # (QueryCanceledError), a lock waited on longer is given up (LockNotAvailableError); the
    # consumer retries both as transient. Migrations run without either limit.
    database_statement_timeout_ms: int = Field(default=30_000, ge=0)
    database_lock_timeout_ms: int = Field(default=10_000, ge=0)
    # Inbox rows (the ids of the events already handled) older than this are deleted, in
    # batches, by every replica every INBOX_PRUNE_INTERVAL_SECONDS. An event redelivered after
    # its row is gone would be handled twice: keep this far longer than any redelivery window
    # (the retention of the consumed topics and of the consumer group's offsets; Kafka's
    # defaults are 7 days each).
    inbox_retention_hours: float = Field(default=336.0, gt=0)
    inbox_prune_interval_seconds: float = Field(default=3600.0, gt=0)
    inbox_prune_batch_size: int = Field(default=10_000, gt=0)
    topic_partitions: int = 6
    # Loopback unless told otherwise: a deployment that wants the network says so (compose does).
    http_host: str = "127.0.0.1"
    # Who may read the APIs (shared.auth): bearer JWTs from this issuer, for this audience, signed
    # with a key from the JWKS URL or the PEM public key file (exactly one of the two).
    auth_issuer: str = "cancellations-dev"
    auth_audience: str = "cancellations"
    auth_jwks_url: str | None = None
    auth_public_key_file: Path | None = None
    auth_leeway_seconds: int = Field(default=30, ge=0, le=300)
    http_port: int = 8000
    log_level: str = "INFO"
    log_format: Literal["json", "console"] = "json"
    # How many records one consumer transaction may take at once.
    consumer_max_records: int = 200
    consumer_batch_timeout_ms: int = 50
    # Off: a batch claims its ids and writes its events in one statement each (faster); on: a
    # savepoint per record from the start (the fallback a failing batch uses anyway).
    consumer_savepoint_per_record: bool = False
    # On: a set-based handler (shared.consumer.SetBased) takes all its records of a batch at once,
    # a fixed number of statements per set; off: it is called record by record (make bench shows
    # what it buys).
    consumer_set_based: bool = True
    # The event loop: uvloop (libuv) or asyncio's own; and the hot path's JSON: orjson or the
    # standard library's (shared.contracts.envelope, shared.outbox). Both only for make bench to
    # show what they buy: the defaults are the faster ones.
    event_loop: Literal["uvloop", "asyncio"] = "uvloop"
    fast_json: bool = True
    # Once started, the objects made so far (modules, models, the app) are moved out of the
    # garbage collector's sight (gc.freeze): its full collections then walk only what handling
    # messages made, not the hundreds of thousands of objects of the libraries.
    gc_freeze: bool = True
    relay_batch_size: int = 500
    relay_poll_interval_seconds: float = 0.2

    def token_verifier(self) -> TokenVerifier:
        """The verifier of bearer tokens these settings name (shared.auth)."""
        return TokenVerifier(
            issuer=self.auth_issuer,
            audience=self.auth_audience,
            jwks_url=self.auth_jwks_url,
            public_key_pem=self.auth_public_key_file.read_bytes() if self.auth_public_key_file else None,
            leeway_seconds=self.auth_leeway_seconds,
        )

    @property
    def schema(self) -> str:  # type: ignore[override]  # pydantic's deprecated BaseModel.schema(); ours names the database schema
        return self.database_schema or self.service_name.replace("-", "_")

    @property
    def is_development(self) -> bool:
        return is_development(self.environment)

    def kafka_client_args(self) -> dict[str, Any]:
        """Connection arguments for aiokafka clients, bootstrap servers included (shared.kafka)."""
        from .kafka import KafkaConnection

        return KafkaConnection.from_settings(self).aiokafka_args()
