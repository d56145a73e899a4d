"""The handler tier: each service's handlers run against in-memory fakes of their ports (the
repository, the clock), in milliseconds, for the branches the domain tables cannot reach.

A test gets a real `shared.consumer.Unit` from `unit_for`: its event is the payload's wire form
parsed as the consumer parses it (envelope and contract), its deps are the test's fakes, and its
connection is a `NoConnection`, which fails the test if anything but the fake repository (which
ignores it) touches it. What the handler publishes is `unit.emitted`, as the outbox would get it.
`clock` is a clock that stands still until the test moves it (`clock.now = ...`). No Kafka, no
Postgres, no mocks of our own code.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pytest

from shared.consumer import Unit
from shared.contracts.base import Payload
from shared.contracts.envelope import new_envelope, parse_envelope
from shared.contracts.registry import models_for


class NoConnection:
    """The transaction's connection in a handler test: only the repository may use it, and the
    fakes ignore it, so any use of it is SQL outside the repository."""

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"a handler used the connection itself (.{name}): SQL belongs in repository.py")


@dataclass
class FixedClock:
    """A clock that reads `now` until the test moves it."""

    now: datetime

    def __call__(self) -> datetime:
        return self.now


def _unit_for(
    service: str,
    deps: Any,
    topic: str,
    payload: Payload,
    *,
    subject: str = "test",
    event_id: str | None = None,
    correlation_id: str | None = None,
    time: datetime | None = None,
    record_time: datetime | None = None,
) -> Unit[Any]:
    """The unit the consumer would hand `service`'s handler for `payload` arriving on `topic`."""
    wire = new_envelope(
        payload, source="test/handlers", subject=subject, correlation_id=correlation_id, time=time, event_id=event_id
    )
    event = parse_envelope(json.dumps(wire).encode(), models_for(topic))
    return Unit(
        conn=NoConnection(),  # type: ignore[arg-type]
        service=service,
        deps=deps,
        correlation_id=event.correlation_id,
        event=event,
        record_time=record_time or event.envelope.time,
    )


@pytest.fixture
def unit_for() -> Callable[..., Unit[Any]]:
    """`unit_for(service, deps, topic, payload, *, subject, event_id, correlation_id, time, record_time)`."""
    return _unit_for


@pytest.fixture
def clock() -> FixedClock:
    return FixedClock(datetime(2031, 1, 1, tzinfo=UTC))
