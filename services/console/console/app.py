"""The console's pages: sign-in, Pipeline, Practice, one booking's timeline, Queues, caught mail and SMS.

Guarantees:
- Every page but the sign-in needs a valid token in the session cookie; what a page shows comes
  from the services' read APIs called with that token, so practice scoping and roles are the
  services' own. Pages for operators (Pipeline, dead letters, Queues, caught mail and SMS) need
  the `ops` role; a practice's page needs the practice in the token (or `ops`).
- Every form POST is CSRF-checked (session.py); every value shown is escaped (templating.py).
- The console publishes only what a person decided (`excuse.reviewed`, `professional.reinstated`,
  `charge.review_decided`) and dead-letter replays.
"""

import asyncio
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from shared.auth import InvalidToken, Principal
from shared.contracts.common import valid_id
from shared.tools import dlq, readapi
from shared.topics import SERVICES

from . import charts, fee_review
from .backends import Broker, Services
from .session import LOGIN_COOKIE, SESSION_COOKIE, Sessions, form
from .settings import ConsoleSettings
from .sinks import LIST_LIMIT, MailStore, SmsStore
from .templating import Pages

MAX_DAYS = 180
WEEKS_SHOWN = 8
FEE_BOOKINGS_MAX = 100  # bookings whose billing the practice page adds up


class SignIn(Exception):
    """No valid session: go to the sign-in page."""


def create_app(settings: ConsoleSettings, *, broker: Broker | None = None, services: Services | None = None) -> FastAPI:
    sessions = Sessions(settings.token_verifier(), settings.console_cookie_secure)
    pages = Pages(product="Cancellations console", development=settings.development)
    kafka = broker or Broker(settings.console_kafka_client)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.services = services or Services(readapi.service_urls(), settings.http_timeout_seconds)
        yield
        await app.state.services.close()

    app = FastAPI(title="Cancellations console", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)

    @app.exception_handler(SignIn)
    async def to_sign_in(request: Request, exc: SignIn) -> Response:
        return RedirectResponse("/login", status_code=303)

    @app.exception_handler(HTTPException)
    async def error_page(request: Request, exc: HTTPException) -> Response:
        return pages.render(
            "error.html", status_code=exc.status_code, title="Error", who=None, csrf="", message=exc.detail
        )

    def who(request: Request) -> tuple[Principal, str]:
        found = sessions.principal(request)
        if found is None:
            raise SignIn
        return found

    def operator(request: Request) -> tuple[Principal, str]:
        principal, token = who(request)
        if not principal.is_ops:
            raise HTTPException(403, "this page is for operators (the ops role)")
        return principal, token

    Who = Annotated[tuple[Principal, str], Depends(who)]
    Operator = Annotated[tuple[Principal, str], Depends(operator)]

    def render(name: str, session: tuple[Principal, str], **context: Any) -> HTMLResponse:
        principal, token = session
        return pages.render(name, who=principal, csrf=sessions.csrf_for(token), **context)

    def svc(request: Request) -> Services:
        found: Services = request.app.state.services
        return found

    # --- signing in ----------------------------------------------------------------------------

    @app.get("/login", response_class=HTMLResponse)
    async def login_page(request: Request, error: str | None = None) -> Response:
        nonce = secrets.token_urlsafe(24)
        page = pages.render(
            "login.html",
            title="Sign in",
            who=None,
            csrf=sessions.csrf_for(nonce),
            error=error,
            development=settings.development,
        )
        page.set_cookie(LOGIN_COOKIE, nonce, max_age=900, **sessions.cookie_args())  # type: ignore[arg-type]
        return page

    @app.post("/login")
    async def login(request: Request) -> Response:
        fields = await form(request)
        sessions.check_csrf(request.cookies.get(LOGIN_COOKIE), fields.get("csrf"))
        token = fields.get("token", "").strip().removeprefix("Bearer ").strip()
        try:
            principal = sessions.verify(token)
        except InvalidToken as exc:
            return await login_page(request, error=f"That token was not accepted: {exc}.")
        target = "/pipeline" if principal.is_ops else home_of(principal)
        answer = RedirectResponse(target, status_code=303)
        answer.set_cookie(SESSION_COOKIE, token, **sessions.cookie_args())  # type: ignore[arg-type]
        answer.delete_cookie(LOGIN_COOKIE, path="/")
        return answer

    @app.post("/logout")
    async def logout(request: Request, session: Who) -> Response:
        sessions.check_csrf(session[1], (await form(request)).get("csrf"))
        answer = RedirectResponse("/login", status_code=303)
        answer.delete_cookie(SESSION_COOKIE, path="/")
        return answer

    def home_of(principal: Principal) -> str:
        return f"/practices/{sorted(principal.practice_ids)[0]}" if principal.practice_ids else "/practices"

    @app.get("/")
    async def home(session: Who) -> Response:
        return RedirectResponse("/pipeline" if session[0].is_ops else home_of(session[0]), status_code=303)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz() -> dict[str, str]:
        """Ready as soon as it answers: the console keeps no state of its own."""
        return {"status": "ready"}

    # --- pipeline and dead letters -------------------------------------------------------------

    @app.get("/pipeline", response_class=HTMLResponse)
    async def pipeline(request: Request, session: Operator) -> HTMLResponse:
        services_ = svc(request)
        ready, metrics = await asyncio.gather(
            asyncio.gather(*(services_.get(s, "/readyz", None) for s in SERVICES)),
            asyncio.gather(*(services_.metrics(s) for s in SERVICES)),
        )
        lag, lag_error = await _attempt(kafka.lag())
        letters, letters_error = await _attempt(kafka.dead_letters())
        rows = [
            {"service": s, "ready": r.ok, "status": r.status, "metrics": m}
            for s, r, m in zip(SERVICES, ready, metrics, strict=True)
        ]
        return render(
            "pipeline.html",
            session,
            title="Pipeline",
            services=rows,
            lag=lag or [],
            lag_error=lag_error,
            letters=list(reversed(letters or []))[:200],
            letters_total=len(letters or []),
            letters_error=letters_error,
            flash=request.query_params.get("flash"),
        )

    @app.get("/dlq/{letter_id}", response_class=HTMLResponse)
    async def dead_letter(letter_id: str, session: Operator) -> HTMLResponse:
        try:
            dead = await kafka.find_letter(letter_id)
        except ValueError:
            raise HTTPException(404, "no such dead letter") from None
        if dead is None:
            raise HTTPException(404, "no such dead letter")
        replayable = True
        try:
            dlq.replay_target(dead)
        except dlq.NotReplayable:
            replayable = False
        original = dead.letter.original_value_text if dead.letter else None
        return render(
            "dead_letter.html",
            session,
            title=f"Dead letter {dead.id}",
            dead=dead,
            original=original,
            replayable=replayable,
        )

    @app.post("/dlq/{letter_id}/replay")
    async def replay(letter_id: str, request: Request, session: Operator) -> Response:
        sessions.check_csrf(session[1], (await form(request)).get("csrf"))
        try:
            dead = await kafka.find_letter(letter_id)
        except ValueError:
            raise HTTPException(404, "no such dead letter") from None
        if dead is None:
            raise HTTPException(404, "no such dead letter")
        try:
            topic, partition, offset = await kafka.replay(dead)
        except dlq.NotReplayable as exc:
            raise HTTPException(409, str(exc)) from None
        return RedirectResponse(
            f"/pipeline?flash=replayed+{letter_id}+to+{topic}+{partition}+{offset}", status_code=303
        )

    # --- practices -----------------------------------------------------------------------------

    @app.get("/practices", response_class=HTMLResponse)
    async def practices(session: Who, practice_id: str | None = None) -> Response:
        if practice_id:
            if not valid_id(practice_id):
                raise HTTPException(404, "no such practice")
            return RedirectResponse(f"/practices/{practice_id}", status_code=303)
        return render("practices.html", session, title="Practices", practice_ids=sorted(session[0].practice_ids))

    @app.get("/practices/{practice_id}", response_class=HTMLResponse)
    async def practice(
        practice_id: str, request: Request, session: Who, days: Annotated[int, Query(ge=1, le=MAX_DAYS)] = 30
    ) -> HTMLResponse:
        principal, token = session
        if not valid_id(practice_id) or not principal.can_read(practice_id):
            raise HTTPException(404, "no such practice")
        view = await practice_view(svc(request), token, practice_id, days, datetime.now(UTC))
        return render(
            "practice.html", session, title=f"Practice {practice_id}", practice_id=practice_id, days=days, **view
        )

    @app.get("/practices/{practice_id}/manual-updates", response_class=HTMLResponse)
    async def manual_updates(
        practice_id: str, request: Request, session: Who, page: Annotated[int, Query(ge=1, le=1000)] = 1
    ) -> HTMLResponse:
        """What the practice's staff must change in their PMS by hand (pms-sync's queue for
        practices without a write-back, or whose write-back failed for good), newest first."""
        principal, token = session
        if not valid_id(practice_id) or not principal.can_read(practice_id):
            raise HTTPException(404, "no such practice")
        answer = await svc(request).get(
            "pms-sync", f"/practices/{practice_id}/manual-updates", token, {"page": page, "page_size": 50}
        )
        items = answer.body.get("items", []) if answer.status == 200 and isinstance(answer.body, dict) else []
        return render(
            "manual_updates.html",
            session,
            title=f"Manual PMS updates, {practice_id}",
            practice_id=practice_id,
            status=answer.status,
            items=items,
            page=page,
        )

    # --- one booking ---------------------------------------------------------------------------

    @app.get("/bookings", response_class=HTMLResponse)
    async def find_booking(session: Who, booking_id: str = "") -> Response:
        if not valid_id(booking_id):
            raise HTTPException(404, "no such booking")
        return RedirectResponse(f"/bookings/{booking_id}", status_code=303)

    @app.get("/bookings/{booking_id}", response_class=HTMLResponse)
    async def booking(booking_id: str, request: Request, session: Who) -> HTMLResponse:
        if not valid_id(booking_id):
            raise HTTPException(404, "no such booking")
        services_, token = svc(request), session[1]
        base, decisions, billing, notes, syncs = await asyncio.gather(
            services_.get("booking", f"/bookings/{booking_id}", token),
            services_.get("cancellation-policy", f"/bookings/{booking_id}/decisions", token),
            services_.get("billing", f"/bookings/{booking_id}/billing", token),
            services_.get("notification", f"/bookings/{booking_id}/notifications", token),
            services_.get("pms-sync", f"/bookings/{booking_id}/syncs", token),
        )
        if not base.ok:
            raise HTTPException(404, "no such booking")
        return render(
            "booking.html",
            session,
            title=f"Booking {booking_id}",
            booking=base.body,
            decisions=decisions,
            billing=billing,
            notifications=notes,
            syncs=syncs,
        )

    # --- queues ---------------------------------------------------------------------------------

    @app.get("/queues", response_class=HTMLResponse)
    async def queues(request: Request, session: Operator) -> HTMLResponse:
        excuses = await svc(request).get("scoring", "/excuses", session[1], {"status": "pending", "page_size": 200})
        suspended = await svc(request).get("scoring", "/suspended-professionals", session[1], {"page_size": 200})
        return render(
            "queues.html",
            session,
            title="Queues",
            excuses=excuses,
            suspended=suspended,
            flash=request.query_params.get("flash"),
        )

    @app.post("/excuses/{excuse_id}/review")
    async def review(excuse_id: str, request: Request, session: Operator) -> Response:
        fields = await form(request)
        sessions.check_csrf(session[1], fields.get("csrf"))
        decision = fields.get("decision")
        if decision not in ("approved", "rejected") or not valid_id(excuse_id):
            raise HTTPException(422, "decide approved or rejected")
        found = await svc(request).get("scoring", f"/excuses/{excuse_id}", session[1])
        if not found.ok or found.body.get("status") != "pending" or not found.body.get("professional_id"):
            raise HTTPException(409, "this excuse is no longer waiting for a review")
        await kafka.review_excuse(found.body["professional_id"], excuse_id, decision, session[0].subject)
        return RedirectResponse(f"/queues?flash={decision}+{excuse_id}", status_code=303)

    @app.post("/professionals/{professional_id}/reinstate")
    async def reinstate(professional_id: str, request: Request, session: Operator) -> Response:
        fields = await form(request)
        sessions.check_csrf(session[1], fields.get("csrf"))
        if not valid_id(professional_id):
            raise HTTPException(422, "not a professional id")
        found = await svc(request).get("scoring", f"/professionals/{professional_id}", session[1])
        if not found.ok or not found.body.get("suspended_at"):
            raise HTTPException(409, "this professional is not suspended")
        await kafka.reinstate_professional(professional_id, session[0].subject)
        return RedirectResponse(f"/queues?flash=reinstated+{professional_id}", status_code=303)

    # --- the fee review queue (fee_review.py) ---------------------------------------------------

    @app.get("/fees/review", response_class=HTMLResponse)
    async def fees_to_review(request: Request, session: Who, practice_id: str | None = None) -> HTMLResponse:
        params: dict[str, Any] = {"page_size": 200} | ({"practice_id": practice_id} if practice_id else {})
        queue = await svc(request).get("billing", "/charges/in-review", session[1], params)
        return render(
            "fee_review.html",
            session,
            title="Fees to review",
            queue=queue,
            may_decide=fee_review.may_decide(session[0].roles),
            code_systems=fee_review.CODE_SYSTEMS,
            flash=request.query_params.get("flash"),
        )

    @app.post("/charges/{charge_id}/review")
    async def decide_fee(charge_id: str, request: Request, session: Who) -> Response:
        fields = await form(request)
        sessions.check_csrf(session[1], fields.get("csrf"))
        command = fee_review.decision_of(session[0], charge_id, fields)
        booking_id = valid_id(fields.get("booking_id"))
        found = await svc(request).get("billing", f"/bookings/{booking_id}/billing", session[1]) if booking_id else None
        if fee_review.in_review(found, charge_id) is None:
            raise HTTPException(409, "this fee is no longer waiting for a review")
        await kafka.decide_fee(command)
        return RedirectResponse(f"/fees/review?flash={command.decision}+{charge_id}", status_code=303)

    # --- caught mail and SMS (development) ------------------------------------------------------

    @app.get("/mail", response_class=HTMLResponse)
    async def mail(session: Operator) -> HTMLResponse:
        if not settings.development:
            raise HTTPException(404, "caught mail is shown in development only")
        return render(
            "mail.html", session, title="Mail caught", messages=MailStore(settings.mail_dir).list(), limit=LIST_LIMIT
        )

    @app.get("/mail/{message_id}", response_class=HTMLResponse)
    async def one_mail(message_id: str, session: Operator) -> HTMLResponse:
        caught = MailStore(settings.mail_dir).get(message_id) if settings.development else None
        if caught is None:
            raise HTTPException(404, "no such message")
        return render(
            "sink_mail_one.html",
            session,
            title=caught.subject or "Mail",
            mail=caught,
            base="/mail",
            base_template="console.html",
        )

    @app.get("/sms", response_class=HTMLResponse)
    async def sms(session: Operator) -> HTMLResponse:
        if not settings.development:
            raise HTTPException(404, "caught SMS are shown in development only")
        return render(
            "sms.html", session, title="SMS caught", messages=SmsStore(settings.sms_sink_dir).list(), limit=LIST_LIMIT
        )

    return app


async def _attempt(work: Any) -> tuple[Any, str | None]:
    """The result, or None and a sentence: a page shows what it can when Kafka is away."""
    try:
        return await asyncio.wait_for(work, timeout=15), None
    except Exception as exc:  # noqa: BLE001 - any failure of the broker is shown, never a broken page
        return None, f"Kafka did not answer ({type(exc).__name__})"


async def practice_view(services: Services, token: str, practice_id: str, days: int, now: datetime) -> dict[str, Any]:
    """Everything the practice page shows, from booking's and billing's read APIs."""
    start = now - timedelta(days=days)
    period = {"from": start.isoformat(), "to": (now + timedelta(days=1)).isoformat(), "practice_id": practice_id}
    by_practitioner, by_service, overall, cancelled, no_shows = await asyncio.gather(
        services.get("booking", "/reports/cancellations", token, {**period, "group_by": "practitioner"}),
        services.get("booking", "/reports/cancellations", token, {**period, "group_by": "service"}),
        services.get("booking", "/reports/cancellations", token, {**period, "group_by": "practice"}),
        services.get(
            "booking", "/bookings", token, {"practice_id": practice_id, "status": "cancelled", "page_size": 500}
        ),
        services.get(
            "booking", "/bookings", token, {"practice_id": practice_id, "status": "no_show", "page_size": 500}
        ),
    )
    weeks = [(now - timedelta(weeks=w + 1), now - timedelta(weeks=w)) for w in reversed(range(WEEKS_SHOWN))]
    weekly = await asyncio.gather(
        *(
            services.get(
                "booking",
                "/reports/cancellations",
                token,
                {"from": a.isoformat(), "to": b.isoformat(), "practice_id": practice_id, "group_by": "practice"},
            )
            for a, b in weeks
        )
    )
    groups = lambda answer: answer.body["groups"] if answer.ok else []  # noqa: E731
    week_rows = [(f"{a:%d %b}", (groups(w) or [{}])[0]) for (a, _), w in zip(weeks, weekly, strict=True)]
    total = (groups(overall) or [{}])[0]
    cancelled_items = cancelled.body["items"] if cancelled.ok else []
    notice = [
        max(
            0.0,
            (datetime.fromisoformat(b["starts_at"]) - datetime.fromisoformat(b["closed_at"])).total_seconds() / 3600,
        )
        for b in cancelled_items
        if b.get("closed_at")
    ]
    closed = [b["booking_id"] for b in cancelled_items + (no_shows.body["items"] if no_shows.ok else [])]
    fees, fees_status = await fee_totals(services, token, closed[:FEE_BOOKINGS_MAX])
    return {
        "reachable": overall.ok,
        "total": total,
        "charts": [
            charts.bar_chart("Cancellations per week", [(w, float(g.get("cancelled", 0))) for w, g in week_rows]),
            charts.bar_chart("No-shows per week", [(w, float(g.get("no_shows", 0))) for w, g in week_rows]),
            charts.bar_chart(
                "Cancellation rate by practitioner",
                [(g["key"] or "?", g["cancellation_rate"] or 0.0) for g in groups(by_practitioner)],
                percent=True,
            ),
            charts.bar_chart(
                "Cancellation rate by service",
                [(g["key"] or "?", g["cancellation_rate"] or 0.0) for g in groups(by_service)],
                percent=True,
            ),
            charts.bar_chart(
                "Late versus timely", [("timely", float(total.get("timely", 0))), ("late", float(total.get("late", 0)))]
            ),
            charts.histogram("Notice given (hours before the start)", notice, charts.NOTICE_EDGES),
        ],
        "fees": fees,
        "fees_status": fees_status,
        "fee_bookings": min(len(closed), FEE_BOOKINGS_MAX),
    }


async def fee_totals(
    services: Services, token: str, booking_ids: list[str]
) -> tuple[dict[str, dict[str, Decimal]], int]:
    """Per currency: fees raised, collected, waived, deposits and fees refunded; and the status billing
    answered with (403: the person's role may not read money)."""
    answers = await asyncio.gather(*(services.get("billing", f"/bookings/{b}/billing", token) for b in booking_ids))
    totals: dict[str, dict[str, Decimal]] = {}
    status = 200
    for answer in answers:
        if answer.status in (401, 403, 0):
            status = answer.status
            continue
        if not answer.ok:
            continue
        body = answer.body
        for charge in body["charges"]:
            t = totals.setdefault(charge["currency"], _zero())
            t["raised"] += Decimal(charge["amount"])
            if charge["status"] == "waived":
                t["waived"] += Decimal(charge["amount"])
        for payment in body["payments"]:
            if payment["status"] == "captured":
                totals.setdefault(payment["currency"], _zero())["collected"] += Decimal(payment["amount"])
        for deposit in body["deposits"]:
            if deposit["outcome"] == "refunded":
                totals.setdefault(deposit["currency"], _zero())["refunded"] += Decimal(deposit["amount"])
        for movement in body.get("movements", []):  # fees lowered or waived after they were paid
            if movement["kind"] == "refund" and movement["status"] == "succeeded":
                totals.setdefault(movement["currency"], _zero())["refunded"] += Decimal(movement["amount"])
    return totals, status


def _zero() -> dict[str, Decimal]:
    return {"raised": Decimal(0), "collected": Decimal(0), "waived": Decimal(0), "refunded": Decimal(0)}


def main() -> None:
    import uvicorn

    settings = ConsoleSettings()
    uvicorn.run(create_app(settings), host=settings.http_host, port=settings.http_port, access_log=False)
