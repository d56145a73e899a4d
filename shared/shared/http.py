"""The read APIs of every service, served by FastAPI (`shared.service.http_app`).

A read route is `async def route(query) -> body` over the query parameters
(`/bookings?practice_id=…&page=2`); `BadRequest` answers 400 with its sentence. The body may
hold datetimes, decimals and UUIDs; it is written as JSON.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from datetime import date, datetime
from decimal import Decimal
from typing import Any
from uuid import UUID

from fastapi import Request
from fastapi.responses import Response

ReadRoute = Callable[[dict[str, str]], Awaitable[Any]]


class BadRequest(Exception):
    """A read request with an argument we cannot use: 400 with the sentence."""


def _default(value: Any) -> Any:
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    if isinstance(value, (Decimal, UUID)):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def json_response(body: Any, status: int = 200) -> Response:
    return Response(json.dumps(body, default=_default).encode(), status_code=status, media_type="application/json")


def read_endpoint(route: ReadRoute) -> Callable[[Request], Awaitable[Response]]:
    """The FastAPI endpoint of a read route."""

    async def endpoint(request: Request) -> Response:
        try:
            return json_response(await route(dict(request.query_params)))
        except BadRequest as exc:
            return json_response({"error": str(exc)}, status=400)

    endpoint.__doc__ = route.__doc__
    return endpoint


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
