-- The practice on every row the read API shows, so each is filtered by the caller's practices
-- itself (charges and deposit outcomes have it; payments reach it through their charge).

-- Every audit row is about a charge or a deposit outcome of its booking, written with or after it:
-- the rows already there take the practice of the charge, else of the booking's charges or deposit.
ALTER TABLE billing_audit ADD COLUMN practice_id text;
ALTER TABLE billing_audit DISABLE TRIGGER billing_audit_append_only;
UPDATE billing_audit a SET practice_id = coalesce(
    (SELECT c.practice_id FROM charges c WHERE c.charge_id = a.charge_id),
    (SELECT c.practice_id FROM charges c WHERE c.booking_id = a.booking_id LIMIT 1),
    (SELECT d.practice_id FROM deposit_outcomes d WHERE d.booking_id = a.booking_id LIMIT 1)
);
ALTER TABLE billing_audit ENABLE TRIGGER billing_audit_append_only;
ALTER TABLE billing_audit ALTER COLUMN practice_id SET NOT NULL;

-- Like booking_id: the practice of the charge the request named, null when no such charge exists.
ALTER TABLE charge_adjustments ADD COLUMN practice_id text;
ALTER TABLE charge_adjustments DISABLE TRIGGER charge_adjustments_append_only;
UPDATE charge_adjustments a SET practice_id = (SELECT c.practice_id FROM charges c WHERE c.booking_id = a.booking_id LIMIT 1)
    WHERE a.booking_id IS NOT NULL;
ALTER TABLE charge_adjustments ENABLE TRIGGER charge_adjustments_append_only;
ALTER TABLE charge_adjustments ADD CHECK ((booking_id IS NULL) = (practice_id IS NULL));
