"""The six services as separate processes, once for the whole end-to-end tier, with a real SMTP
server and a local SMS provider (the session's `mailbox` and `sms`), exporting their traces over
OTLP/HTTP to a local collector (`collector`): tracing is on for every end-to-end test, so each of
them also shows that tracing loses no message."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from shared.testing import SERVICE_MODULES, ServiceProcess

from .otlp import Collector


@pytest.fixture(scope="package")
def collector() -> Iterator[Collector]:
    collector = Collector().start()
    try:
        yield collector
    finally:
        collector.stop()


@pytest.fixture(scope="package")
def system(
    infra, mailbox, sms, collector: Collector, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, ServiceProcess]]:
    logs = tmp_path_factory.mktemp("e2e-logs")
    # The standard OpenTelemetry settings (shared.tracing); spans leave every 100 ms.
    tracing = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": collector.endpoint,
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
        "OTEL_BSP_SCHEDULE_DELAY": "100",
    }
    env = {
        "notification": {
            "SMTP_HOST": "127.0.0.1",
            "SMTP_PORT": str(mailbox.port),
            "SMS_API_URL": sms.url,
            "SMS_API_KEY": "e2e",
            "DELIVERY_POLL_INTERVAL_SECONDS": "0.1",
        },
        "billing": {"PAYMENT_GATEWAY": "sandbox", "CAPTURE_POLL_INTERVAL_SECONDS": "0.2"},
        "pms-sync": {"PMS_RETRY_POLL_SECONDS": "0.2"},
    }
    procs = {
        name: ServiceProcess(name, infra.bootstrap, infra.admin_dsn, logs, env={**tracing, **env.get(name, {})}).start(
            wait_ready=False
        )
        for name in SERVICE_MODULES
    }
    try:
        for proc in procs.values():
            proc.wait_ready(90)
        yield procs
    finally:
        for proc in procs.values():
            proc.stop()
