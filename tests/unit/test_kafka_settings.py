"""The one translation of the Kafka settings (shared.kafka): protocols x mechanisms x files ->
aiokafka arguments, FastStream security, librdkafka config, or a refusal; with a real CA and
client certificate generated here, so every ssl_context really loads them."""

from __future__ import annotations

import os
import ssl
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from faststream.security import BaseSecurity, SASLPlaintext, SASLScram256, SASLScram512

from shared.kafka import KafkaConnection, KafkaSettingsError, client_args
from shared.settings import ServiceSettings
from shared.topics import ALL_TOPICS, DEFAULT_RETENTION_MS, TopicSettings, dead_letter_topic, new_topic_args


@pytest.fixture(autouse=True)
def no_kafka_settings_in_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each case names its settings; none leaks in from a sourced .local/env.sh (make test)."""
    for name in [n for n in os.environ if n.startswith("KAFKA_")]:
        monkeypatch.delenv(name)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A CA, and a client certificate it signed, with its key, as PEM files."""
    base = tmp_path_factory.mktemp("pki")
    now = datetime.now(UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test kafka CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=1))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "booking")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=1))
        .not_valid_after(now + timedelta(days=1))
        .sign(ca_key, hashes.SHA256())
    )
    files = {
        "ca": (base / "ca.pem", ca.public_bytes(serialization.Encoding.PEM)),
        "cert": (base / "client.pem", cert.public_bytes(serialization.Encoding.PEM)),
        "key": (
            base / "client.key",
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            ),
        ),
    }
    for path, data in files.values():
        Path(path).write_bytes(data)
    return {name: str(path) for name, (path, _) in files.items()}


def _settings(pki: dict[str, str], protocol: str, mechanism: str | None, creds: bool, files: str) -> ServiceSettings:
    values: dict[str, Any] = {
        "service_name": "booking",
        "kafka_bootstrap_servers": "broker-1:9093,broker-2:9093",
        "kafka_security_protocol": protocol,
        "kafka_sasl_mechanism": mechanism,
    }
    if creds:
        values |= {"kafka_sasl_username": "booking", "kafka_sasl_password": "s3cret"}
    if files in ("ca", "ca+cert"):
        values["kafka_ssl_cafile"] = pki["ca"]
    if files == "ca+cert":
        values |= {"kafka_ssl_certfile": pki["cert"], "kafka_ssl_keyfile": pki["key"]}
    if files == "cert-only":
        values["kafka_ssl_certfile"] = pki["cert"]
    return ServiceSettings(**values)


SASL_KIND = {"PLAIN": SASLPlaintext, "SCRAM-SHA-256": SASLScram256, "SCRAM-SHA-512": SASLScram512}

# protocol, mechanism, credentials, files -> the mechanism used (None: no SASL), or the refusal.
CASES: list[tuple[str, str | None, bool, str, str | None]] = [
    ("PLAINTEXT", None, False, "none", None),
    ("SSL", None, False, "none", None),
    ("SSL", None, False, "ca", None),
    ("SSL", None, False, "ca+cert", None),
    ("SASL_PLAINTEXT", None, True, "none", "SCRAM-SHA-512"),
    ("SASL_PLAINTEXT", "PLAIN", True, "none", "PLAIN"),
    ("SASL_PLAINTEXT", "scram-sha-256", True, "none", "SCRAM-SHA-256"),
    ("SASL_SSL", None, True, "none", "SCRAM-SHA-512"),
    ("SASL_SSL", None, True, "ca", "SCRAM-SHA-512"),
    ("SASL_SSL", "SCRAM-SHA-512", True, "ca+cert", "SCRAM-SHA-512"),
    ("SASL_SSL", "SCRAM-SHA-256", True, "ca", "SCRAM-SHA-256"),
    ("SASL_SSL", "PLAIN", True, "ca", "PLAIN"),
]

REFUSALS: list[tuple[str, str | None, bool, str, str]] = [
    ("SASL_SSL", None, False, "ca", "needs KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD"),
    ("SASL_PLAINTEXT", "SCRAM-SHA-512", False, "none", "needs KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD"),
    ("SASL_SSL", "GSSAPI", True, "ca", "KAFKA_SASL_MECHANISM 'GSSAPI' is not one of"),
    ("SASL_PLAINTEXT", "OAUTHBEARER", True, "none", "is not one of"),
    ("PLAINTEXT", "PLAIN", True, "none", "does not use SASL"),
    ("SSL", None, False, "cert-only", "KAFKA_SSL_CERTFILE and KAFKA_SSL_KEYFILE go together"),
    ("PLAINTEXT", None, False, "ca", "does not use TLS"),
    ("SASL_PLAINTEXT", None, True, "ca", "does not use TLS"),
]


@pytest.mark.parametrize(("protocol", "mechanism", "creds", "files", "used"), CASES)
def test_translation(
    pki: dict[str, str], protocol: str, mechanism: str | None, creds: bool, files: str, used: str | None
) -> None:
    settings = _settings(pki, protocol, mechanism, creds, files)
    conn = KafkaConnection.from_settings(settings)
    tls = protocol.endswith("SSL")

    args = settings.kafka_client_args()
    expected_keys = {"bootstrap_servers", "security_protocol"}
    assert args["bootstrap_servers"] == "broker-1:9093,broker-2:9093"
    assert args["security_protocol"] == protocol
    if used:
        expected_keys |= {"sasl_mechanism", "sasl_plain_username", "sasl_plain_password"}
        assert (args["sasl_mechanism"], args["sasl_plain_username"], args["sasl_plain_password"]) == (
            used,
            "booking",
            "s3cret",
        )
    if tls:
        expected_keys.add("ssl_context")
        context = args["ssl_context"]
        assert isinstance(context, ssl.SSLContext)
        assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
        if files != "none":  # the generated CA really loaded (and only it: no system store)
            subjects = [dict(x[0] for x in c["subject"]) for c in context.get_ca_certs()]
            assert subjects == [{"commonName": "test kafka CA"}]
    assert set(args) == expected_keys

    security = conn.faststream_security()
    if not used and not tls:
        assert security is None
    elif not used:
        assert type(security) is BaseSecurity and security.use_ssl
        assert isinstance(security.ssl_context, ssl.SSLContext)
    else:
        assert type(security) is SASL_KIND[used]
        assert (security.username, security.password, bool(security.use_ssl)) == ("booking", "s3cret", tls)
        assert isinstance(security.ssl_context, ssl.SSLContext) if tls else security.ssl_context is None

    rd = conn.librdkafka_config()
    assert rd["bootstrap.servers"] == "broker-1:9093,broker-2:9093"
    assert rd["security.protocol"] == protocol.lower()
    assert rd.get("sasl.mechanism") == used
    assert ("ssl.ca.location" in rd) == (files in ("ca", "ca+cert"))
    assert rd.get("ssl.certificate.location") == (pki["cert"] if files == "ca+cert" else None)
    assert rd.get("ssl.key.location") == (pki["key"] if files == "ca+cert" else None)


@pytest.mark.parametrize(("protocol", "mechanism", "creds", "files", "says"), REFUSALS)
def test_refusal(pki: dict[str, str], protocol: str, mechanism: str | None, creds: bool, files: str, says: str) -> None:
    settings = _settings(pki, protocol, mechanism, creds, files)
    with pytest.raises(KafkaSettingsError, match=says):
        KafkaConnection.from_settings(settings)
    with pytest.raises(KafkaSettingsError, match=says):  # the service refuses before any client starts
        settings.kafka_client_args()


def test_a_wrong_client_key_is_refused_when_the_context_loads(pki: dict[str, str]) -> None:
    conn = KafkaConnection(
        security_protocol="SSL", ssl_cafile=pki["ca"], ssl_certfile=pki["cert"], ssl_keyfile=pki["ca"]
    )
    with pytest.raises(ssl.SSLError):
        conn.aiokafka_args()


def test_the_environment_gives_the_harnesses_the_same_connection(pki: dict[str, str]) -> None:
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": "from-env:9093",
        "KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "KAFKA_SASL_USERNAME": "loadtest",
        "KAFKA_SASL_PASSWORD": "pw",
        "KAFKA_SSL_CAFILE": pki["ca"],
    }
    conn = KafkaConnection.from_env(environ=env)
    assert conn.bootstrap_servers == "from-env:9093" and conn.sasl_mechanism == "SCRAM-SHA-512"
    assert KafkaConnection.from_env("given:9092", environ=env).bootstrap_servers == "given:9092"
    assert KafkaConnection.from_env(environ={}).aiokafka_args() == {
        "bootstrap_servers": "localhost:9092",
        "security_protocol": "PLAINTEXT",
    }


def test_client_args_default_to_plaintext(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("KAFKA_SECURITY_PROTOCOL", "KAFKA_SASL_MECHANISM", "KAFKA_SSL_CAFILE"):
        monkeypatch.delenv(name, raising=False)
    assert client_args("h:1") == {"bootstrap_servers": "h:1", "security_protocol": "PLAINTEXT"}


# Topics for managed clusters (shared.topics).


def test_new_topic_arguments_default() -> None:
    settings = TopicSettings.from_env({})
    assert new_topic_args("booking.events.v1", settings) == {
        "name": "booking.events.v1",
        "num_partitions": 6,
        "replication_factor": 1,
        "topic_configs": {"retention.ms": str(DEFAULT_RETENTION_MS)},
    }
    dlq = new_topic_args(dead_letter_topic("billing"), settings)
    assert int(dlq["topic_configs"]["retention.ms"]) > DEFAULT_RETENTION_MS


def test_new_topic_arguments_from_the_environment() -> None:
    settings = TopicSettings.from_env(
        {
            "TOPIC_PARTITIONS": "12",
            "TOPIC_REPLICATION_FACTOR": "3",
            "TOPIC_RETENTION_MS": "86400000",
            "DLQ_RETENTION_MS": "-1",
        }
    )
    built = {t: new_topic_args(t, settings) for t in ALL_TOPICS}
    assert {(a["num_partitions"], a["replication_factor"]) for a in built.values()} == {(12, 3)}
    retention = {t: a["topic_configs"]["retention.ms"] for t, a in built.items()}
    assert {t for t, r in retention.items() if r == "-1"} == {t for t in ALL_TOPICS if t.startswith("dlq.")}
    assert {r for t, r in retention.items() if not t.startswith("dlq.")} == {"86400000"}


@pytest.mark.parametrize(
    "env", [{"TOPIC_REPLICATION_FACTOR": "0"}, {"TOPIC_PARTITIONS": "0"}, {"DLQ_RETENTION_MS": "-5"}]
)
def test_topic_settings_refuse_nonsense(env: dict[str, str]) -> None:
    with pytest.raises(ValueError, match=r"TOPIC_|DLQ_"):
        TopicSettings.from_env(env)
