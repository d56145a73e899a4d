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

from shared.consumer import Unit
from shared.contracts.billing import ChargeAdjusted, ChargeCreated, ChargeWaived
from shared.contracts.common import Fee
from shared.logging import get_logger

from . import domain
from .handlers import PmsSyncDeps

log = get_logger(__name__)


async def note_charge_created(unit: Unit[PmsSyncDeps], event: ChargeCreated) -> None:
    fees = unit.deps.fees
    known = await fees.lock_charge(unit.conn, event.charge_id)
    state, step = domain.on_charge_created(known["state"] if known else None, event.status)
    if step == "ignore" or state is None:
        return
    fee = Fee(amount=event.amount, currency=event.currency, code=event.code, code_system=event.code_system)
    await fees.save_charge(unit.conn, event.charge_id, event.booking_id, state, fee.to_json_dict())
    if step == "tell":
        await _tell(unit, event.booking_id, event.charge_id, "final", fee)


async def note_charge_adjusted(unit: Unit[PmsSyncDeps], event: ChargeAdjusted) -> None:
    fees = unit.deps.fees
    known = await fees.lock_charge(unit.conn, event.charge_id)
    step = domain.on_charge_adjusted(known["state"] if known else None)
    if step == "ignore" or known is None:
        log.info("fee adjustment of a charge not in force here; nothing to tell", charge_id=event.charge_id)
        return
    await fees.save_charge(unit.conn, event.charge_id, known["booking_id"], known["state"], event.after.to_json_dict())
    if step == "tell":
        await _tell(unit, known["booking_id"], event.charge_id, event.request_id, event.after)


async def note_charge_waived(unit: Unit[PmsSyncDeps], event: ChargeWaived) -> None:
    fees = unit.deps.fees
    known = await fees.lock_charge(unit.conn, event.charge_id)
    step = domain.on_charge_waived(known["state"] if known else None)
    if step == "ignore":
        return
    await fees.save_charge(unit.conn, event.charge_id, event.booking_id, "waived", None)
    if step == "tell":
        await _tell(unit, event.booking_id, event.charge_id, event.request_id, None)


async def _tell(unit: Unit[PmsSyncDeps], booking_id: str, charge_id: str, cause: str, fee: Fee | None) -> None:
    """`pms.update_fee` to where the booking's cancellation or no-show went, once per change."""
    fees, repository = unit.deps.fees, unit.deps.repository
    synced = await fees.synced_booking(unit.conn, booking_id)
    if synced is None:
        log.info("fee changed for a booking no PMS was sent; nothing to tell", charge_id=charge_id)
        return
    command = domain.update_fee_command(booking_id, synced["practice_id"], charge_id, cause, fee)
    added = await repository.add_sync(
        unit.conn,
        sync_id=command.sync_id,
        booking_id=booking_id,
        practice_id=synced["practice_id"],
        request_id=cause if cause != "final" else charge_id,
        integration=synced["integration"],
        action="update_fee",
        topic=synced["topic"],
        command=command.to_json_dict(),
        correlation_id=unit.event.correlation_id,
        waiting=False,
        wait_seconds=domain.ack_wait_seconds(
            1,
            timeout_seconds=unit.deps.settings.pms_ack_timeout_seconds,
            max_backoff_seconds=unit.deps.settings.pms_max_backoff_seconds,
        ),
    )
    if not added:  # the same change again (a replayed event): sent once
        return
    superseded = await fees.supersede_fee_updates(unit.conn, booking_id, command.sync_id)
    if superseded:
        log.info("older fee update superseded before its ack", sync_id=command.sync_id, superseded=superseded)
    unit.emit(synced["topic"], command, subject=booking_id)
