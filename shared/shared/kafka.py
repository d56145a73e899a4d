"""How to reach Kafka, translated once for every client (docs/design.md#settings-every-deployment-knows).

The settings (`KAFKA_BOOTSTRAP_SERVERS`, `KAFKA_SECURITY_PROTOCOL`, `KAFKA_SASL_MECHANISM`,
`KAFKA_SASL_USERNAME`, `KAFKA_SASL_PASSWORD`, `KAFKA_SSL_CAFILE`, `KAFKA_SSL_CERTFILE`,
`KAFKA_SSL_KEYFILE`) become, here and nowhere else:

- keyword arguments for aiokafka's consumer, producer and admin client (`aiokafka_args`),
- the `security` of FastStream's KafkaBroker (`faststream_security`),
- a librdkafka-style configuration dict (`librdkafka_config`, for confluent-kafka clients).

SASL defaults to SCRAM-SHA-512. A combination that cannot work (SASL without a username and
password, an unknown mechanism, a certificate without its key) is refused with a sentence saying
which setting to fix, before any client is started.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
DEFAULT_MECHANISM = "SCRAM-SHA-512"


class KafkaSettingsError(ValueError):
    """The Kafka settings name a combination no client can connect with."""


def _secret(value: Any) -> str | None:
    if value is None:
        return None
    if hasattr(value, "get_secret_value"):
        return str(value.get_secret_value())
    return str(value)


def _path(value: Any) -> str | None:
    return str(value) if value not in (None, "") else None


@dataclass(frozen=True)
class KafkaConnection:
    bootstrap_servers: str = "localhost:9092"
    security_protocol: str = "PLAINTEXT"
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password: str | None = None
    ssl_cafile: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None

    def __post_init__(self) -> None:
        protocol = self.security_protocol.upper()
        object.__setattr__(self, "security_protocol", protocol)
        if protocol not in PROTOCOLS:
            raise KafkaSettingsError(
                f"KAFKA_SECURITY_PROTOCOL {self.security_protocol!r} is not one of {', '.join(PROTOCOLS)}."
            )
        if self.uses_sasl:
            mechanism = (self.sasl_mechanism or DEFAULT_MECHANISM).upper()
            if mechanism not in MECHANISMS:
                raise KafkaSettingsError(
                    f"KAFKA_SASL_MECHANISM {self.sasl_mechanism!r} is not one of {', '.join(MECHANISMS)}."
                )
            object.__setattr__(self, "sasl_mechanism", mechanism)
            if not self.sasl_username or not self.sasl_password:
                raise KafkaSettingsError(
                    f"KAFKA_SECURITY_PROTOCOL {protocol} needs KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD."
                )
        elif self.sasl_mechanism:
            raise KafkaSettingsError(
                f"KAFKA_SASL_MECHANISM is set but KAFKA_SECURITY_PROTOCOL {protocol} does not use SASL;"
                " use SASL_PLAINTEXT or SASL_SSL, or unset the mechanism."
            )
        if bool(self.ssl_certfile) != bool(self.ssl_keyfile):
            raise KafkaSettingsError("KAFKA_SSL_CERTFILE and KAFKA_SSL_KEYFILE go together: set both or neither.")
        if not self.uses_ssl and (self.ssl_cafile or self.ssl_certfile):
            raise KafkaSettingsError(
                f"KAFKA_SSL_CAFILE/CERTFILE/KEYFILE are set but KAFKA_SECURITY_PROTOCOL {protocol} does not use"
                " TLS; use SSL or SASL_SSL."
            )

    @property
    def uses_sasl(self) -> bool:
        return self.security_protocol.startswith("SASL_")

    @property
    def uses_ssl(self) -> bool:
        return self.security_protocol.endswith("SSL")

    @classmethod
    def from_settings(cls, settings: Any, bootstrap_servers: str | None = None) -> KafkaConnection:
        """From any settings object with the `kafka_*` fields (ServiceSettings, ConnectorSettings)."""
        return cls(
            bootstrap_servers=bootstrap_servers or settings.kafka_bootstrap_servers,
            security_protocol=settings.kafka_security_protocol,
            sasl_mechanism=getattr(settings, "kafka_sasl_mechanism", None) or None,
            sasl_username=getattr(settings, "kafka_sasl_username", None) or None,
            sasl_password=_secret(getattr(settings, "kafka_sasl_password", None)) or None,
            ssl_cafile=_path(getattr(settings, "kafka_ssl_cafile", None)),
            ssl_certfile=_path(getattr(settings, "kafka_ssl_certfile", None)),
            ssl_keyfile=_path(getattr(settings, "kafka_ssl_keyfile", None)),
        )

    @classmethod
    def from_env(
        cls, bootstrap_servers: str | None = None, environ: Mapping[str, str] | None = None
    ) -> KafkaConnection:
        """From the environment (the tools and test harnesses); `bootstrap_servers` wins if given."""
        env = os.environ if environ is None else environ

        def get(name: str) -> str | None:
            return env.get(name) or None

        return cls(
            bootstrap_servers=bootstrap_servers or get("KAFKA_BOOTSTRAP_SERVERS") or "localhost:9092",
            security_protocol=get("KAFKA_SECURITY_PROTOCOL") or "PLAINTEXT",
            sasl_mechanism=get("KAFKA_SASL_MECHANISM"),
            sasl_username=get("KAFKA_SASL_USERNAME"),
            sasl_password=get("KAFKA_SASL_PASSWORD"),
            ssl_cafile=get("KAFKA_SSL_CAFILE"),
            ssl_certfile=get("KAFKA_SSL_CERTFILE"),
            ssl_keyfile=get("KAFKA_SSL_KEYFILE"),
        )

    def ssl_context(self) -> ssl.SSLContext | None:
        """The TLS context for SSL/SASL_SSL (the system's CAs unless KAFKA_SSL_CAFILE), else None."""
        if not self.uses_ssl:
            return None
        from aiokafka.helpers import create_ssl_context

        context: ssl.SSLContext = create_ssl_context(
            cafile=self.ssl_cafile, certfile=self.ssl_certfile, keyfile=self.ssl_keyfile
        )
        return context

    def aiokafka_args(self) -> dict[str, Any]:
        """Keyword arguments for AIOKafkaConsumer/AIOKafkaProducer/AIOKafkaAdminClient."""
        args: dict[str, Any] = {
            "bootstrap_servers": self.bootstrap_servers,
            "security_protocol": self.security_protocol,
        }
        if self.uses_sasl:
            args["sasl_mechanism"] = self.sasl_mechanism
            args["sasl_plain_username"] = self.sasl_username
            args["sasl_plain_password"] = self.sasl_password
        if self.uses_ssl:
            args["ssl_context"] = self.ssl_context()
        return args

    def faststream_security(self) -> Any:
        """The `security` argument of faststream.kafka.KafkaBroker (None for PLAINTEXT)."""
        from faststream.security import BaseSecurity, SASLPlaintext, SASLScram256, SASLScram512

        if not self.uses_sasl:
            return BaseSecurity(ssl_context=self.ssl_context(), use_ssl=True) if self.uses_ssl else None
        kinds: dict[str, Any] = {"PLAIN": SASLPlaintext, "SCRAM-SHA-256": SASLScram256, "SCRAM-SHA-512": SASLScram512}
        return kinds[str(self.sasl_mechanism)](
            username=str(self.sasl_username),
            password=str(self.sasl_password),
            ssl_context=self.ssl_context(),
            use_ssl=self.uses_ssl,
        )

    def librdkafka_config(self) -> dict[str, str]:
        """The same connection as librdkafka (confluent-kafka) configuration properties."""
        config = {"bootstrap.servers": self.bootstrap_servers, "security.protocol": self.security_protocol.lower()}
        if self.uses_sasl:
            config["sasl.mechanism"] = str(self.sasl_mechanism)
            config["sasl.username"] = str(self.sasl_username)
            config["sasl.password"] = str(self.sasl_password)
        if self.ssl_cafile:
            config["ssl.ca.location"] = self.ssl_cafile
        if self.ssl_certfile and self.ssl_keyfile:
            config["ssl.certificate.location"] = self.ssl_certfile
            config["ssl.key.location"] = self.ssl_keyfile
        return config


def client_args(bootstrap_servers: str | None = None) -> dict[str, Any]:
    """aiokafka keyword arguments from the environment: what tools and test harnesses pass."""
    return KafkaConnection.from_env(bootstrap_servers).aiokafka_args()
