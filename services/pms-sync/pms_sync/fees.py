"""pms.update_fee (second release): a fee that changes after the fact reaches the PMS.

Consumes billing's `charge.created`, `charge.adjusted` and `charge.waived` (billing.events.v1,
keyed by booking, so one charge's events come in order). What the PMS hears (domain.py):

- a fee raised `pending_review` was left out of the cancellation's command (nobody is told of a
  fee before it is final); when billing announces it `due` (approved, edited, or the window
  ended) the PMS gets `pms.update_fee` with the final fee;
- a final fee adjusted later (lowered, raised, its code corrected) → `pms.update_fee` with the
  charge's `after`; waived → `pms.update_fee` with `fee: null`;
- an edit or a waiver while in review changes nothing the PMS was told: noted only.

The command goes to the integration the booking's cancellation or no-show went to, as a sync
of its own (`sync_id` = uuid5 of the booking and `fee/<charge>/<request id or final>`),
acknowledged and resent like the others by the same scheduler; a replayed event is the same
sync, sent once. A newer fee update supersedes an older one of the same booking that no PMS has
acknowledged yet, so a resend never puts an older fee back. A booking never synced (integration
`none`, `manual`) gets nothing: the contract's manual update has no fee action, and billing's
read API and the console show the change.

`payment.refunded` is not consumed: a refund follows an adjustment or a waiver that was told
already, and the contract sends `pms.update_fee` for the fee, not for the money's movements.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from shared.consumer import SetBased, Unit
from shared.contracts.billing import ChargeAdjusted, ChargeCreated, ChargeWaived
from shared.contracts.common import Fee
from shared.logging import get_logger

from . import domain
from .handlers import PmsSyncDeps, SyncPlan, rounds

log = get_logger(__name__)

# Each handler is set-based: the set's charges locked in one statement, saved in one, and the
# changes to tell written in one statement of each kind (`_tell`). Billing keys its events by
# booking, so a set names each charge once; should one come twice all the same (two keys), the set
# runs in rounds (`handlers.rounds`), so the later event sees what the earlier one saved.

P = TypeVar("P", ChargeCreated, ChargeAdjusted, ChargeWaived)


def _one_charge_at_a_time(
    handle_round: Callable[[Sequence[Unit[PmsSyncDeps]], Sequence[P]], Awaitable[None]],
) -> SetBased:
    """The set-based handler that runs `handle_round` on rounds of distinct charges (one round,
    unless a charge comes twice)."""

    async def handle_many(units: Sequence[Unit[PmsSyncDeps]], events: Sequence[P]) -> None:
        for members in rounds(list(zip(units, events, strict=True)), key=lambda m: m[1].charge_id):
            await handle_round([unit for unit, _ in members], [event for _, event in members])

    handle_many.__name__ = handle_round.__name__
    return SetBased(handle_many)


@dataclass(frozen=True)
class _Tell:
    unit: Unit[PmsSyncDeps]
    booking_id: str
    charge_id: str
    cause: str  # the request id of the change, or `final`
    fee: Fee | None


async def note_charges_created(units: Sequence[Unit[PmsSyncDeps]], events: Sequence[ChargeCreated]) -> None:
    conn, fees = units[0].conn, units[0].deps.fees
    known = await fees.lock_charges(conn, [e.charge_id for e in events])
    saves: list[tuple[str, str, str, dict[str, Any] | None]] = []
    tells: list[_Tell] = []
    for unit, event in zip(units, events, strict=True):
        charge = known.get(event.charge_id)
        state, step = domain.on_charge_created(charge["state"] if charge else None, event.status)
        if step == "ignore" or state is None:
            continue
        fee = Fee(amount=event.amount, currency=event.currency, code=event.code, code_system=event.code_system)
        saves.append((event.charge_id, event.booking_id, state, fee.to_json_dict()))
        if step == "tell":
            tells.append(_Tell(unit, event.booking_id, event.charge_id, "final", fee))
    await _save_and_tell(units[0], saves, tells)


note_charge_created = _one_charge_at_a_time(note_charges_created)


async def note_charges_adjusted(units: Sequence[Unit[PmsSyncDeps]], events: Sequence[ChargeAdjusted]) -> None:
    conn, fees = units[0].conn, units[0].deps.fees
    known = await fees.lock_charges(conn, [e.charge_id for e in events])
    saves: list[tuple[str, str, str, dict[str, Any] | None]] = []
    tells: list[_Tell] = []
    for unit, event in zip(units, events, strict=True):
        charge = known.get(event.charge_id)
        step = domain.on_charge_adjusted(charge["state"] if charge else None)
        if step == "ignore" or charge is None:
            log.debug("fee adjustment of a charge not in force here; nothing to tell", charge_id=event.charge_id)
            continue
        saves.append((event.charge_id, charge["booking_id"], charge["state"], event.after.to_json_dict()))
        if step == "tell":
            tells.append(_Tell(unit, charge["booking_id"], event.charge_id, event.request_id, event.after))
    await _save_and_tell(units[0], saves, tells)


note_charge_adjusted = _one_charge_at_a_time(note_charges_adjusted)


async def note_charges_waived(units: Sequence[Unit[PmsSyncDeps]], events: Sequence[ChargeWaived]) -> None:
    conn, fees = units[0].conn, units[0].deps.fees
    known = await fees.lock_charges(conn, [e.charge_id for e in events])
    saves: list[tuple[str, str, str, dict[str, Any] | None]] = []
    tells: list[_Tell] = []
    for unit, event in zip(units, events, strict=True):
        charge = known.get(event.charge_id)
        step = domain.on_charge_waived(charge["state"] if charge else None)
        if step == "ignore":
            continue
        saves.append((event.charge_id, event.booking_id, "waived", None))
        if step == "tell":
            tells.append(_Tell(unit, event.booking_id, event.charge_id, event.request_id, None))
    await _save_and_tell(units[0], saves, tells)


note_charge_waived = _one_charge_at_a_time(note_charges_waived)


async def _save_and_tell(
    unit0: Unit[PmsSyncDeps], saves: list[tuple[str, str, str, dict[str, Any] | None]], tells: list[_Tell]
) -> None:
    if saves:
        await unit0.deps.fees.save_charges(unit0.conn, saves)
    # A newer fee update supersedes the older ones of its booking: one per booking at a time.
    for members in rounds(tells, key=lambda t: t.booking_id):
        await _tell(members)


async def _tell(tells: Sequence[_Tell]) -> None:
    """`pms.update_fee` to where each booking's cancellation or no-show went, once per change;
    the bookings are distinct."""
    if not tells:
        return
    unit0 = tells[0].unit
    conn, fees = unit0.conn, unit0.deps.fees
    synced = await fees.synced_bookings(conn, [t.booking_id for t in tells])
    plan = SyncPlan()
    for t in tells:
        where = synced.get(t.booking_id)
        if where is None:
            log.debug("fee changed for a booking no PMS was sent; nothing to tell", charge_id=t.charge_id)
            continue
        command = domain.update_fee_command(t.booking_id, where["practice_id"], t.charge_id, t.cause, t.fee)
        request_id = t.cause if t.cause != "final" else t.charge_id
        plan.send(t.unit, where["integration"], request_id, command, topic=where["topic"])
    sent = await plan.carry_out(conn, unit0.deps.repository)
    if sent:  # a replayed event is the same sync, sent once: nothing to supersede then
        superseded = await fees.supersede_fee_updates(conn, [(c.booking_id, c.sync_id) for c in sent])
        log.debug("older fee updates superseded before their ack", superseded=superseded)
