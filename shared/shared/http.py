"""What every service's read API shares (FastAPI): ids in paths, pagination, not-found.

Guarantees: a path id is bounded like a contract id (422 otherwise); a page is 1-based with
at most `MAX_PAGE_SIZE` items (422 otherwise); what does not exist and what the caller may not
see answer the same 404, so an id of another practice reveals nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Generic, TypeVar

from fastapi import HTTPException, Path, Query, Request, status
from pydantic import BaseModel, ConfigDict

from .contracts.common import ID_MAX_CHARS, ID_PATTERN

MAX_PAGE_SIZE = 500
T = TypeVar("T")

PathId = Annotated[str, Path(min_length=1, max_length=ID_MAX_CHARS, pattern=ID_PATTERN)]
QueryId = Annotated[str | None, Query(min_length=1, max_length=ID_MAX_CHARS, pattern=ID_PATTERN)]


@dataclass(frozen=True)
class Page:
    """`?page=` (from 1) and `?page_size=` (1 to MAX_PAGE_SIZE, default 50)."""

    page: Annotated[int, Query(ge=1, le=1_000_000)] = 1
    page_size: Annotated[int, Query(ge=1, le=MAX_PAGE_SIZE)] = 50

    @property
    def limit(self) -> int:
        return self.page_size

    @property
    def offset(self) -> int:
        return (self.page - 1) * self.page_size


class View(BaseModel):
    """A response model: what a route returns, read from database rows."""

    model_config = ConfigDict(from_attributes=True, extra="ignore")


class PageOf(View, Generic[T]):
    items: list[T]
    page: int
    page_size: int


def not_found(what: str) -> HTTPException:
    """404 for what does not exist, and for what exists but is not the caller's."""
    return HTTPException(status.HTTP_404_NOT_FOUND, f"no such {what}")


class BodyTooLarge(Exception):
    """A request body over the limit its route sets."""


async def read_body(request: Request, limit: int) -> bytes:
    """The request's body, read no further than `limit` bytes: BodyTooLarge past it, and at once
    when the declared Content-Length is over it (the route says what to answer)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge
        chunks.append(chunk)
    return b"".join(chunks)
