"""The whole system for a load run: the six services as processes (any number of replicas),
a real SMTP server and a local SMS provider, on the infrastructure the environment names."""

from __future__ import annotations

import asyncio
import os
import re
import time
import urllib.request
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from shared.testing import SERVICE_MODULES, Mailbox, ServiceProcess, SmsProvider, free_port


@dataclass
class System:
    bootstrap: str
    admin_dsn: str
    log_dir: Path
    env: dict[str, str] = field(default_factory=dict)  # for every service
    replicas: dict[str, int] = field(default_factory=dict)
    procs: dict[str, list[ServiceProcess]] = field(default_factory=lambda: defaultdict(list))
    mailbox: Mailbox | None = None
    sms: SmsProvider | None = None
    _smtp = None

    @classmethod
    def from_environment(cls, log_dir: Path, **kw) -> System:
        return cls(
            os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "localhost:9092"),
            os.environ.get("ADMIN_DATABASE_URL", "postgresql://postgres:postgres@localhost:5432/cancellations"),
            log_dir,
            **kw,
        )

    def service_env(self, service: str) -> dict[str, str]:
        assert self.mailbox is not None and self.sms is not None
        extra = {
            "notification": {
                "SMTP_HOST": "127.0.0.1",
                "SMTP_PORT": str(self.mailbox.port),
                "SMS_API_URL": self.sms.url,
                "SMS_API_KEY": "load",
                "DELIVERY_POLL_INTERVAL_SECONDS": "0.05",
                "DELIVERY_BATCH_SIZE": "100",
            },
            "billing": {
                "PAYMENT_GATEWAY": "sandbox",
                "CAPTURE_POLL_INTERVAL_SECONDS": "0.05",
                "CAPTURE_BATCH_SIZE": "100",
            },
            # No connector acks during a load run: resends would only add noise.
            "pms-sync": {"PMS_RETRY_POLL_SECONDS": "0.5", "PMS_ACK_TIMEOUT_SECONDS": "3600"},
        }.get(service, {})
        return {"LOG_LEVEL": "WARNING", **self.env, **extra}

    def start(self) -> System:
        from aiosmtpd.controller import Controller

        self.mailbox = Mailbox(free_port())
        self._smtp = Controller(self.mailbox, hostname="127.0.0.1", port=self.mailbox.port)
        self._smtp.start()
        self.sms = SmsProvider().start()
        try:
            for service in SERVICE_MODULES:
                for _ in range(self.replicas.get(service, 1)):
                    self.add_replica(service, wait=False)
            for procs in self.procs.values():
                for p in procs:
                    p.wait_ready(120)
        except BaseException:
            # One service failed to start: stop the others, or they would stay in their consumer
            # groups (and claim rows from the shared tables) long after this run.
            self.stop()
            raise
        return self

    def add_replica(self, service: str, wait: bool = True) -> ServiceProcess:
        proc = ServiceProcess(service, self.bootstrap, self.admin_dsn, self.log_dir, env=self.service_env(service))
        proc.start(wait_ready=wait)
        self.procs[service].append(proc)
        return proc

    def remove_replica(self, service: str) -> None:
        proc = self.procs[service].pop()
        proc.stop()

    def restart(self, proc: ServiceProcess) -> None:
        proc.kill()
        proc.port = 0
        proc.start(wait_ready=True)

    def stop(self) -> None:
        for procs in self.procs.values():
            for p in procs:
                p.stop()
        if self._smtp is not None:
            self._smtp.stop()
        if self.sms is not None:
            self.sms.stop()

    def processed(self) -> dict[str, float]:
        """cancellations_messages_total{outcome="processed"} per service, summed over its replicas."""
        totals: dict[str, float] = defaultdict(float)
        for service, procs in self.procs.items():
            for p in procs:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{p.port}/metrics", timeout=5) as r:
                        text = r.read().decode()
                except OSError:
                    continue
                for m in re.finditer(
                    r'^cancellations_messages_total\{[^}]*outcome="processed"[^}]*\} ([0-9.e+]+)$', text, re.M
                ):
                    totals[service] += float(m.group(1))
        return dict(totals)


async def wait_until(predicate, timeout: float, interval: float = 0.2) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await predicate():
            return True
        await asyncio.sleep(interval)
    return False
