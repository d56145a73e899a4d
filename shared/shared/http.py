"""JSON over HTTP for every service: /healthz, /readyz, /metrics and the read APIs.

FastStream's ASGI app matches exact paths, so read APIs take their arguments as query
parameters (`/bookings?practice_id=…&page=2`).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from datetime import date, datetime
from decimal import Decimal
from typing import Any
from urllib.parse import parse_qs
from uuid import UUID

from faststream.asgi import AsgiResponse, get
from faststream.asgi.handlers import GetHandler
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest


class BadRequest(Exception):
    """A read request with an argument we cannot use: 400 with the sentence."""


def _default(value: Any) -> Any:
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    if isinstance(value, (Decimal, UUID)):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def json_response(body: Any, status: int = 200) -> AsgiResponse:
    return AsgiResponse(
        json.dumps(body, default=_default).encode(),
        status_code=status,
        headers={"content-type": "application/json"},
    )


def query_params(scope: dict[str, Any]) -> dict[str, str]:
    parsed = parse_qs(scope.get("query_string", b"").decode(), keep_blank_values=False)
    return {k: v[-1] for k, v in parsed.items()}


def json_route(func: Callable[[dict[str, str]], Awaitable[Any]]) -> GetHandler:
    """A GET route from `async def func(query) -> body`; BadRequest becomes a 400."""

    async def handler(scope: Any) -> AsgiResponse:
        try:
            return json_response(await func(query_params(scope)))
        except BadRequest as exc:
            return json_response({"error": str(exc)}, status=400)

    handler.__doc__ = func.__doc__
    return get(handler)


def required(query: dict[str, str], name: str) -> str:
    """The value of a query parameter the route cannot do without (400 when missing or empty)."""
    value = query.get(name)
    if not value:
        raise BadRequest(f"{name} is required")
    return value


def page_args(query: dict[str, str], default_size: int = 50, max_size: int = 500) -> tuple[int, int]:
    """(limit, offset) from `page` (1-based) and `page_size`."""
    try:
        page = int(query.get("page", "1"))
        size = int(query.get("page_size", str(default_size)))
    except ValueError:
        raise BadRequest("page and page_size must be whole numbers") from None
    if page < 1 or not 1 <= size <= max_size:
        raise BadRequest(f"page starts at 1 and page_size is between 1 and {max_size}")
    return size, (page - 1) * size


def metrics_route() -> GetHandler:
    async def metrics(scope: Any) -> AsgiResponse:
        return AsgiResponse(generate_latest(), headers={"content-type": CONTENT_TYPE_LATEST})

    return get(metrics)
