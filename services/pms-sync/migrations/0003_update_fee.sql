-- Second release: pms.update_fee. A fee that changes after the fact (final after review,
-- adjusted, waived) goes to the PMS as its own sync, acknowledged and resent like the others;
-- a newer fee update of the same booking supersedes one not acknowledged yet, so a resend never
-- puts an older fee back.
ALTER TABLE syncs DROP CONSTRAINT syncs_action_check;
ALTER TABLE syncs ADD CONSTRAINT syncs_action_check
    CHECK (action IN ('cancel_booking', 'record_no_show', 'update_fee'));
ALTER TABLE syncs DROP CONSTRAINT syncs_status_check;
ALTER TABLE syncs ADD CONSTRAINT syncs_status_check
    CHECK (status IN ('waiting', 'sent', 'completed', 'failed', 'superseded'));

-- A failed fee update is kept for staff here (the read API); the contract's
-- pms.manual_update_required names only cancellations and no-shows, so it is not published.
ALTER TABLE manual_updates DROP CONSTRAINT manual_updates_action_check;
ALTER TABLE manual_updates ADD CONSTRAINT manual_updates_action_check
    CHECK (action IN ('cancel_booking', 'record_no_show', 'update_fee'));

-- What billing.events.v1 said of each charge: in review (the PMS was told no fee), final (the
-- PMS has its fee), waived; and the fee as last announced (null once waived).
CREATE TABLE charges (
    charge_id  text        PRIMARY KEY,
    booking_id text        NOT NULL,
    state      text        NOT NULL CHECK (state IN ('pending_review', 'final', 'waived')),
    fee        jsonb,
    updated_at timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX syncs_fee_updates ON syncs (booking_id) WHERE action = 'update_fee' AND status IN ('waiting', 'sent');
