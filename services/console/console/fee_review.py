"""The fee review queue (second release): fees billing holds `pending_review`, and staff's
decision on one (`charge.review_decided` on billing.commands.v1: approve, edit, waive).

Guarantees:
- The queue is billing's own read API (`GET /charges/in-review`) called with the signed-in
  person's token: billing decides who reads money and which practices they see.
- A decision is published only for a person whose token holds the roles billing accepts for
  one (owner, manager, biller, or a therapist who also has the financial role; the same rule as
  billing's `may_adjust`, which still checks it: anyone else would get `charge.review_rejected`
  `forbidden`), only for a fee billing still shows in review to that person, and only as that
  person: the actor's id is the token's subject and its roles are the token's roles.
- An edit carries an amount or a code (or both); what the contract refuses (a negative amount,
  a bad code) is answered 422 and never published.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from typing import Any

from fastapi import HTTPException
from pydantic import ValidationError

from shared.auth import Principal
from shared.contracts.common import valid_id
from shared.contracts.upstream import ChargeReviewDecided

DECISIONS = ("approve", "edit", "waive")
CODE_SYSTEMS = ("CPT", "CDT", "custom")
_DECIDERS = frozenset({"owner", "manager", "biller"})


def may_decide(roles: Iterable[str]) -> bool:
    """Owner, manager, biller, or a therapist who also has the financial role (case-insensitive)."""
    held = {role.lower() for role in roles}
    return bool(held & _DECIDERS) or {"therapist", "financial"} <= held


def in_review(billing: Any, charge_id: str) -> dict[str, Any] | None:
    """The charge as billing's `/bookings/{id}/billing` answer shows it, if it is still in review."""
    if not getattr(billing, "ok", False) or not isinstance(billing.body, dict):
        return None
    for charge in billing.body.get("charges") or []:
        if isinstance(charge, dict) and charge.get("charge_id") == charge_id:
            return charge if charge.get("status") == "pending_review" else None
    return None


def decision_of(principal: Principal, charge_id: str, fields: dict[str, str]) -> ChargeReviewDecided:
    """The command a submitted form asks for, as the signed-in person; HTTPException if it is not one."""
    if not may_decide(principal.roles):
        raise HTTPException(403, "your roles may not decide fees (owner, manager, biller, or therapist with financial)")
    decision = fields.get("decision", "")
    if decision not in DECISIONS or not valid_id(charge_id):
        raise HTTPException(422, "decide approve, edit or waive")
    edit: dict[str, Any] = {}
    if decision == "edit":
        amount, code = fields.get("amount", "").strip(), fields.get("code", "").strip()
        code_system = fields.get("code_system", "").strip()
        if not amount and not code:
            raise HTTPException(422, "an edit changes the amount or the code")
        if code_system and code_system not in CODE_SYSTEMS:
            raise HTTPException(422, "the code system is CPT, CDT or custom")
        edit = {"amount": amount or None, "code": code or None, "code_system": code_system or None}
    note = fields.get("note", "").strip() or None
    try:
        return ChargeReviewDecided.new(
            request_id=str(uuid.uuid4()),
            charge_id=charge_id,
            actor={"id": principal.subject, "roles": sorted(principal.roles)},
            decision=decision,
            note=note,
            **edit,
        )
    except ValidationError:
        raise HTTPException(422, "the amount, code or note is not one billing can take") from None
