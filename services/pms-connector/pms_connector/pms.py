"""Calling the PMS: the part of a connector that is specific to one PMS. Replace it with your
PMS's API; keep the three outcomes.

The reference PMS API:
- `POST {PMS_API_URL}/appointments/{booking_id}/cancel`, `…/no-show` and `…/fee` (the fee
  changed after the fact: `{"practice_id", "charge_id", "fee"}`, `fee` null when waived), a JSON
  body built from the command (below), header `Idempotency-Key: <sync_id>`;
- 2xx: applied (a repeat of the same key answers as the first time did), `{"reference": "…"}`
  is the PMS's own id for the change;
- 4xx: refused for good (unknown appointment, locked, invalid), `{"message": "…"}` says why;
- 5xx, 408, 429 or no answer at all: try again later.

Outcomes: `ok` (acknowledge with the reference), `error` (acknowledge with the PMS's reason:
the practice will be asked to update by hand), `unavailable` (do not acknowledge: pms-sync
sends the command again later, with the same sync_id).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import quote

import httpx
import stamina

from shared.contracts.pms_sync import PmsCancelBooking, PmsRecordNoShow, PmsUpdateFee

Command = PmsCancelBooking | PmsRecordNoShow | PmsUpdateFee


@dataclass(frozen=True)
class PmsRequest:
    path: str
    body: dict[str, Any]
    idempotency_key: str


@dataclass(frozen=True)
class PmsResult:
    outcome: Literal["ok", "error", "unavailable"]
    external_ref: str | None = None
    error: str | None = None


def request_for(command: Command) -> PmsRequest:
    """The PMS call that applies one command. Everything the command carries goes to the PMS:
    who, when, why, the label staff see, the fee billing raised (code and amount) and the chart
    note for the clinical record. Optional fields the command does not have are left out, but a
    fee update always says what the fee is now (`null`: waived, nothing owed)."""
    booking = quote(command.booking_id, safe="")
    fields = command.to_json_dict()
    if isinstance(command, PmsUpdateFee):
        body = {"practice_id": fields["practice_id"], "charge_id": fields["charge_id"], "fee": fields.get("fee")}
        return PmsRequest(f"/appointments/{booking}/fee", body, command.sync_id)
    if isinstance(command, PmsCancelBooking):
        body = {
            "practice_id": fields["practice_id"],
            "status": "cancelled",
            "status_label": fields["status_label"],
            "cancelled_at": fields["cancelled_at"],
            "cancelled_by": fields["actor"],
            "classification": fields["classification"],
            "reason_code": fields.get("reason_code"),
            "reason_text": fields.get("reason_text"),
            "fee": fields.get("fee"),
            "chart_note": fields.get("chart_note"),
        }
        path = f"/appointments/{booking}/cancel"
    else:
        body = {
            "practice_id": fields["practice_id"],
            "status": "no_show",
            "code": fields["code"],
            "recorded_at": fields["recorded_at"],
            "recorded_by": fields["actor"],
            "fee": fields.get("fee"),
            "chart_note": fields.get("chart_note"),
        }
        path = f"/appointments/{booking}/no-show"
    return PmsRequest(path, {k: v for k, v in body.items() if v is not None}, command.sync_id)


def is_transient(status_code: int) -> bool:
    """Worth trying again: the PMS is down, overloaded or timed out; any other 4xx is final."""
    return status_code >= 500 or status_code in (408, 429)


def external_ref_of(response: httpx.Response) -> str | None:
    body = _json(response)
    ref = body.get("reference") or body.get("id")
    return str(ref) if ref is not None else None


def error_of(response: httpx.Response) -> str:
    """The PMS's own reason, for the practice: "422 Unprocessable Entity: appointment is locked"."""
    body = _json(response)
    reason = body.get("message") or body.get("error") or body.get("detail") or response.text.strip()
    status = f"{response.status_code} {response.reason_phrase}".strip()
    return f"{status}: {str(reason)[:300]}" if reason else status


def _json(response: httpx.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


class _TryAgain(Exception):
    """A transient answer (5xx, 408, 429): what the PMS said, and its Retry-After if any. Its
    text is the status alone: stamina logs each retry with it, and the PMS's words stay out of
    the logs (they go to pms-sync in the acknowledgement only)."""

    def __init__(self, response: httpx.Response) -> None:
        super().__init__(f"HTTP {response.status_code}")
        self.why = error_of(response)
        self.retry_after = _retry_after(response)


async def apply(
    client: httpx.AsyncClient, request: PmsRequest, *, attempts: int, backoff: float, max_backoff: float
) -> PmsResult:
    """Send one request, trying again on a transient failure (no answer, 5xx, 408, 429): up to
    `attempts` tries in all, waiting `backoff` × 2^(n−1) plus up to `backoff` of jitter, at most
    `max_backoff` (or the PMS's Retry-After, capped the same), by `stamina`. Safe to repeat: the
    PMS applies one Idempotency-Key once, so a retry here, or a redelivery later, never applies
    it twice."""

    def worth_another_try(exc: Exception) -> bool | float:
        if isinstance(exc, _TryAgain) and exc.retry_after is not None:
            return min(max_backoff, exc.retry_after)
        return isinstance(exc, (httpx.TransportError, _TryAgain))

    try:
        async for attempt in stamina.retry_context(
            on=worth_another_try,
            attempts=attempts,
            timeout=None,  # bounded by the attempts (and each call's own timeout)
            wait_initial=backoff,
            wait_max=max_backoff,
            wait_jitter=backoff,
        ):
            with attempt:
                response = await client.post(
                    request.path, json=request.body, headers={"Idempotency-Key": request.idempotency_key}
                )
                if is_transient(response.status_code):
                    raise _TryAgain(response)
    except httpx.TransportError as exc:  # refused, reset, DNS, timeout: no answer at all
        return PmsResult("unavailable", error=f"PMS not reachable: {type(exc).__name__}")
    except _TryAgain as exc:
        return PmsResult("unavailable", error=exc.why)
    if response.is_success:
        return PmsResult("ok", external_ref=external_ref_of(response))
    return PmsResult("error", error=error_of(response))


def _retry_after(response: httpx.Response) -> float | None:
    try:
        return max(0.0, float(response.headers["Retry-After"]))
    except (KeyError, ValueError):
        return None  # absent, or an HTTP date: use our own backoff
