"""notification's read API: the delivery log, by booking and by professional; and the one
route that writes, Twilio's SMS status callbacks (`POST /sms/status`).

Every read route needs a bearer token (shared.auth). The status callback has none (Twilio
cannot send one): it must carry Twilio's `X-Twilio-Signature` over SMS_STATUS_CALLBACK_URL and
the form, made with TWILIO_AUTH_TOKEN, or it is refused with 403 before its content is read; a
status is recorded at most once and never steps back (`domain.sms_statuses_before`). A booking's log is shown to its practice (`ops`:
every practice); another practice's booking answers 404 like one that does not exist. A
professional works across offices, so their notices are shown to `ops` only (403 otherwise).
Nothing here carries personal data: no address, no subject, no text; a skip or error reason is
shown as recorded, masked by shared.redaction.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any, cast
from urllib.parse import parse_qsl
from uuid import UUID

from fastapi import APIRouter, Depends, HTTPException, Request, Security
from fastapi.security import APIKeyHeader
from starlette.datastructures import ImmutableMultiDict
from twilio.request_validator import RequestValidator

from shared.auth import Principal, authenticated, with_role
from shared.http import BodyTooLarge, Page, PageOf, PathId, View, not_found, read_body
from shared.logging import get_logger
from shared.service import Runtime, runtime_of

from . import domain, repository
from .settings import NotificationSettings

log = get_logger(__name__)

router = APIRouter(tags=["notifications"])


class Delivery(View):
    notification_id: UUID
    event_id: str
    event_type: str
    booking_id: str | None
    professional_id: str | None
    practice_id: str | None
    recipient: str
    channel: str
    template: str
    locale: str
    status: str
    reason: str | None
    attempts: int
    next_attempt_at: datetime
    created_at: datetime
    finished_at: datetime | None
    provider_status: str | None = None  # an SMS provider's last word on it (Twilio's status callbacks)
    provider_error_code: str | None = None
    provider_status_at: datetime | None = None


class BookingNotifications(PageOf[Delivery]):
    booking_id: str


class ProfessionalNotifications(PageOf[Delivery]):
    professional_id: str


Caller = Annotated[Principal, Depends(authenticated)]
Ops = Annotated[Principal, Depends(with_role(frozenset({"ops"})))]
Service = Annotated[Runtime, Depends(runtime_of)]


@router.get("/bookings/{booking_id}/notifications", response_model=BookingNotifications)
async def booking_notifications(
    booking_id: PathId, caller: Caller, service: Service, page: Annotated[Page, Depends()]
) -> dict[str, Any]:
    """Every delivery about one booking (cancellation, rejection, no-show fee, slot offer,
    manual update; holds told to the professional for ops only) with its status, reason and
    attempts, oldest first, paginated."""
    booking = await repository.booking_practice(service.pool, booking_id)
    if not booking["known"] or not caller.can_read(booking["practice_id"]):
        raise not_found("booking")
    rows = await repository.deliveries_for_booking(
        service.pool, booking_id, with_professional=caller.is_ops, limit=page.limit, offset=page.offset
    )
    return {"booking_id": booking_id, "items": [dict(r) for r in rows], "page": page.page, "page_size": page.page_size}


@router.get("/professionals/{professional_id}/notifications", response_model=ProfessionalNotifications)
async def professional_notifications(
    professional_id: PathId, caller: Ops, service: Service, page: Annotated[Page, Depends()]
) -> dict[str, Any]:
    """The notices sent to one professional (holds, suspension), oldest first, paginated."""
    if not await repository.professional_known(service.pool, professional_id):
        raise not_found("professional")
    rows = await repository.deliveries_for_professional(
        service.pool, professional_id, limit=page.limit, offset=page.offset
    )
    return {
        "professional_id": professional_id,
        "items": [dict(r) for r in rows],
        "page": page.page,
        "page_size": page.page_size,
    }


# --- Twilio's status callbacks -----------------------------------------------------------------

TwilioSignature = APIKeyHeader(
    name="X-Twilio-Signature",
    scheme_name="TwilioSignature",
    description="Twilio's signature of the callback URL and form, with the account's auth token",
    auto_error=False,
)
# Twilio's callback is a few hundred bytes of form; anything much larger is not Twilio.
STATUS_CALLBACK_MAX_BYTES = 16 * 1024
STATUS_CALLBACK_MAX_FIELDS = 64
MESSAGE_SID = re.compile(r"(SM|MM)[0-9a-f]{32}")
ERROR_CODE = re.compile(r"[0-9]{1,8}")


class SmsStatusRecorded(View):
    recorded: bool  # false: repeated, older than the status on record, or for a message not ours


def forbidden() -> HTTPException:
    return HTTPException(403, "not signed by Twilio for this service")


@router.post("/sms/status", response_model=SmsStatusRecorded)
async def sms_status(
    request: Request, service: Service, signature: Annotated[str | None, Security(TwilioSignature)]
) -> dict[str, Any]:
    """Twilio's StatusCallback for an SMS it accepted (form: MessageSid, MessageStatus,
    ErrorCode): the status is recorded on the delivery, once, never a step back."""
    settings = cast(NotificationSettings, service.settings)
    url, token = settings.sms_status_callback_url, settings.twilio_auth_token
    if not signature or not url or token is None:
        raise forbidden()
    try:
        body = await read_body(request, STATUS_CALLBACK_MAX_BYTES)
    except BodyTooLarge:
        raise forbidden() from None  # what Twilio signs is small; this is not Twilio
    try:
        form = ImmutableMultiDict(
            parse_qsl(body.decode("utf-8"), keep_blank_values=True, max_num_fields=STATUS_CALLBACK_MAX_FIELDS)
        )
    except ValueError:  # not UTF-8, or too many fields
        raise forbidden() from None
    if not RequestValidator(token.get_secret_value()).validate(url, form, signature):
        raise forbidden()
    sid, status, error_code = form.get("MessageSid", ""), form.get("MessageStatus", ""), form.get("ErrorCode") or None
    if not MESSAGE_SID.fullmatch(sid) or status not in domain.SMS_STATUSES:
        raise HTTPException(400, "MessageSid and MessageStatus must be a Twilio message SID and status")
    if error_code is not None and not ERROR_CODE.fullmatch(error_code):
        raise HTTPException(400, "ErrorCode must be Twilio's numeric error code")
    recorded = await repository.record_provider_status(
        service.pool, sid, status, error_code, domain.sms_statuses_before(status)
    )
    if recorded is None:
        # Before this service recorded the SID (the callback can outrun the send's own
        # transaction) or not a message of ours: nothing to record it on.
        log.info("sms status for an unknown message", message_sid=sid, status=status)
    return {"recorded": bool(recorded)}
