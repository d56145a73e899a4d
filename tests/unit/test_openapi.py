"""Every service's OpenAPI document is complete, and no read route escapes the bearer token:
each route the app serves is in the document, and every route but the probes and metrics
requires the bearer scheme (a route that forgot `authenticated` would show up here)."""

from __future__ import annotations

import importlib
from typing import Any

import pytest
from fastapi.routing import APIRoute

from shared.asyncapi import SERVICE_MODULES
from shared.service import http_app

OPEN = {"/healthz", "/readyz", "/metrics"}  # probes and scraping: no personal data
# Callbacks a provider makes: no bearer token, the provider's signature instead (checked by the route).
SIGNED = {"/sms/status": "TwilioSignature", "/stripe/webhook": "StripeSignature"}


@pytest.fixture(autouse=True)
def development(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ENVIRONMENT", "development")  # billing's definition needs a gateway


def _paths(routes: list[Any]) -> list[str]:
    """The paths of every API route, also those of included routers (no prefixes are used)."""
    found: list[str] = []
    for route in routes:
        if isinstance(route, APIRoute):
            found.append(route.path)
        elif hasattr(route, "original_router"):  # FastAPI's wrapper of an included router
            found += _paths(route.original_router.routes)
    return found


@pytest.mark.parametrize("service", sorted(SERVICE_MODULES))
def test_every_route_is_documented_and_needs_a_bearer_token(service: str) -> None:
    app = http_app(importlib.import_module(SERVICE_MODULES[service]).definition())
    document = app.openapi()
    served = set(_paths(app.routes))
    assert served == set(document["paths"]), "a route missing from the OpenAPI document"
    read_routes = served - OPEN - set(SIGNED)
    assert read_routes, f"{service} serves no read API"
    for path in sorted(served & set(SIGNED)):
        for method, operation in document["paths"][path].items():
            assert operation.get("security") == [{SIGNED[path]: []}], f"{method.upper()} {path} is not signed"
    for path in sorted(read_routes):
        for method, operation in document["paths"][path].items():
            assert operation.get("security") == [{"HTTPBearer": []}], f"{method.upper()} {path} answers without a token"
            assert "200" in operation["responses"] and operation["responses"]["200"].get("content"), path
    for path in OPEN:
        assert "security" not in document["paths"][path]["get"]
