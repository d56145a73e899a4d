"""The console's settings, from the environment (pydantic-settings).

| variable | default | meaning |
|---|---|---|
| `HTTP_HOST`, `HTTP_PORT` | `127.0.0.1`, `8010` | where the console listens |
| `AUTH_ISSUER`, `AUTH_AUDIENCE`, `AUTH_JWKS_URL`, `AUTH_PUBLIC_KEY_FILE` | as the services | the tokens people sign in with (shared.auth) |
| `<SERVICE>_API_URL` | `http://127.0.0.1:800N` | each service's read API, readiness and metrics (shared.tools.readapi) |
| `ENVIRONMENT` | `production` | `development` shows the mail and SMS the sinks caught |
| `MAIL_DIR`, `SMS_SINK_DIR` | `.local/mail`, `.local/sms` | where the sinks keep them |
| `CONSOLE_COOKIE_SECURE` | `false` | mark the session cookie Secure (behind HTTPS) |
| `KAFKA_*`, `CONSOLE_KAFKA_CLIENT` | the environment | the broker (shared.kafka); a principal's `.local/clients/<name>.env` |
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared.auth import TokenVerifier


class ConsoleSettings(BaseSettings):
    model_config = SettingsConfigDict(extra="ignore")

    http_host: str = "127.0.0.1"
    http_port: int = 8010
    environment: str = "production"
    auth_issuer: str = "cancellations-dev"
    auth_audience: str = "cancellations"
    auth_jwks_url: str | None = None
    auth_public_key_file: Path | None = None
    auth_leeway_seconds: int = Field(default=30, ge=0, le=300)
    mail_dir: Path = Path(".local/mail")
    sms_sink_dir: Path = Path(".local/sms")
    console_cookie_secure: bool = False
    console_kafka_client: str | None = None
    http_timeout_seconds: float = Field(default=5.0, gt=0, le=60)

    @property
    def development(self) -> bool:
        return self.environment == "development"

    def token_verifier(self) -> TokenVerifier:
        return TokenVerifier(
            issuer=self.auth_issuer,
            audience=self.auth_audience,
            jwks_url=self.auth_jwks_url,
            public_key_pem=self.auth_public_key_file.read_bytes() if self.auth_public_key_file else None,
            leeway_seconds=self.auth_leeway_seconds,
        )
