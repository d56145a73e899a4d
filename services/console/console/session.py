"""Who is signed in: a bearer token pasted once, kept in an HttpOnly, SameSite=Strict cookie; and CSRF.

Guarantees:
- The token is verified (shared.auth) on every request, so an expired or revoked key signs the
  person out; the cookie is never readable by a script and never sent from another site.
- Every form POST carries a CSRF token bound to the session (an HMAC of the session's token
  under a key made when the console starts) and is refused with 403 without the right one; the
  sign-in form is bound the same way to a one-time cookie.
- Form bodies are parsed with a size limit.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from urllib.parse import parse_qs

from fastapi import HTTPException, Request

from shared.auth import InvalidToken, Principal, TokenVerifier
from shared.http import BodyTooLarge, read_body

SESSION_COOKIE = "console_session"
LOGIN_COOKIE = "console_login"
FORM_MAX_BYTES = 16 * 1024
TOKEN_MAX_CHARS = 8192


class Sessions:
    def __init__(self, verifier: TokenVerifier, secure_cookie: bool) -> None:
        self.verifier = verifier
        self.secure = secure_cookie
        self._key = secrets.token_bytes(32)

    def csrf_for(self, bound_to: str) -> str:
        return hmac.new(self._key, bound_to.encode(), hashlib.sha256).hexdigest()

    def check_csrf(self, bound_to: str | None, sent: str | None) -> None:
        if not bound_to or not sent or not hmac.compare_digest(self.csrf_for(bound_to), sent):
            raise HTTPException(
                403, "this form has expired or did not come from the console: reload the page and try again"
            )

    def principal(self, request: Request) -> tuple[Principal, str] | None:
        token = request.cookies.get(SESSION_COOKIE)
        if not token or len(token) > TOKEN_MAX_CHARS:
            return None
        try:
            return self.verifier.verify(token), token
        except InvalidToken:
            return None

    def verify(self, token: str) -> Principal:
        if len(token) > TOKEN_MAX_CHARS:
            raise InvalidToken("the token is too long")
        return self.verifier.verify(token)

    def cookie_args(self) -> dict[str, object]:
        return {"httponly": True, "samesite": "strict", "secure": self.secure, "path": "/"}


async def form(request: Request) -> dict[str, str]:
    """An application/x-www-form-urlencoded body, first value of each field."""
    try:
        body = await read_body(request, FORM_MAX_BYTES)
    except BodyTooLarge:
        raise HTTPException(413, "the form is too large") from None
    try:
        fields = parse_qs(body.decode("utf-8"), keep_blank_values=True, max_num_fields=20)
    except (UnicodeDecodeError, ValueError):
        raise HTTPException(400, "the form could not be read") from None
    return {name: values[0] for name, values in fields.items()}
