-- Second release (docs/rules.md, "Fees after the fact"): fees held for staff review, fees changed
-- after money moved (refunds and top-ups through the gateway), waived fees, each patient's card
-- on file per practice (upstream.patients.v1), and Stripe's webhooks.

-- pending_review: raised, waiting for staff until review_until (nothing taken, nobody told);
-- waived: not owed any more (what was paid is refunded).
ALTER TABLE charges DROP CONSTRAINT charges_status_check;
ALTER TABLE charges ADD CONSTRAINT charges_status_check
    CHECK (status IN ('pending_review', 'outstanding', 'pending_capture', 'paid', 'waived'));
ALTER TABLE charges ADD COLUMN review_until timestamptz;
ALTER TABLE charges ADD CONSTRAINT charges_review_until CHECK ((status = 'pending_review') <= (review_until IS NOT NULL));
-- What was taken for the charge and not given back: what is owed is amount_minor - paid_minor.
ALTER TABLE charges ADD COLUMN paid_minor bigint NOT NULL DEFAULT 0 CHECK (paid_minor >= 0);
UPDATE charges SET paid_minor = amount_minor WHERE status = 'paid';
CREATE INDEX charges_in_review ON charges (review_until) WHERE status = 'pending_review';

-- Money moved for a charge after it was first taken: a refund (lowered or waived) or a top-up
-- (raised, charged to the card on file). movement_id = uuid5(charge, request, kind) is the
-- gateway's idempotency key, so a repeated command or a retried call moves the money once.
CREATE TABLE charge_movements (
    movement_id      uuid        PRIMARY KEY,
    charge_id        uuid        NOT NULL REFERENCES charges (charge_id),
    booking_id       text        NOT NULL,
    practice_id      text        NOT NULL,
    patient_id       text        NOT NULL,
    request_id       text        NOT NULL,            -- the adjustment or review that caused it
    kind             text        NOT NULL CHECK (kind IN ('refund', 'top_up')),
    reason           text        NOT NULL CHECK (reason IN ('adjustment', 'waived')),
    amount_minor     bigint      NOT NULL CHECK (amount_minor > 0),
    currency         char(3)     NOT NULL,
    gateway          text        NOT NULL,            -- the gateway that took the money (a refund goes back through it)
    payment_ref      text,                            -- refund: the gateway's payment it gives back from
    -- pending: to be sent; processing: the gateway took it and has not settled it (a webhook
    -- will); succeeded / failed: settled.
    status           text        NOT NULL CHECK (status IN ('pending', 'processing', 'succeeded', 'failed')),
    gateway_ref      text,
    failure_reason   text,
    attempts         integer     NOT NULL DEFAULT 0,
    first_attempt_at timestamptz,
    next_attempt_at  timestamptz,
    actor            text        NOT NULL,
    correlation_id   text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    settled_at       timestamptz,
    UNIQUE (charge_id, request_id, kind)
);
CREATE INDEX charge_movements_due ON charge_movements (next_attempt_at) WHERE status = 'pending';
CREATE INDEX charge_movements_booking ON charge_movements (booking_id, created_at);

-- Every review decision and the one answer it got, by request id (append-only, like adjustments).
CREATE TABLE charge_reviews (
    request_id   text        PRIMARY KEY,
    charge_id    text        NOT NULL,
    practice_id  text,                                -- null when the charge does not exist
    booking_id   text,
    actor        text        NOT NULL,
    actor_roles  text[]      NOT NULL,
    decision     text        NOT NULL CHECK (decision IN ('approve', 'waive', 'edit')),
    outcome      text        NOT NULL CHECK (outcome IN ('approved', 'edited', 'waived', 'rejected', 'refused')),
    reason       text,                                -- rejected: forbidden | not_found | not_pending; refused: why
    before       jsonb,
    after        jsonb,
    note         text,
    requested_at timestamptz NOT NULL,
    recorded_at  timestamptz NOT NULL DEFAULT now(),
    CHECK ((booking_id IS NULL) = (practice_id IS NULL))
);
CREATE INDEX charge_reviews_booking ON charge_reviews (booking_id, requested_at);
CREATE TRIGGER charge_reviews_append_only BEFORE UPDATE OR DELETE ON charge_reviews
    FOR EACH ROW EXECUTE FUNCTION charge_adjustments_is_append_only();

-- The patient's card on file at a practice (patient.card_registered / patient.card_removed).
-- A registration older than what the row holds changes nothing, so events out of order settle
-- on the newest; a removed card keeps its row (removed_at) so an older registration cannot
-- bring it back.
CREATE TABLE practice_cards (
    practice_id        text        NOT NULL,
    patient_id         text        NOT NULL,
    gateway            text        NOT NULL CHECK (gateway IN ('stripe', 'sandbox')),
    customer_ref       text        NOT NULL CHECK (customer_ref <> ''),
    payment_method_ref text        NOT NULL CHECK (payment_method_ref <> ''),
    brand              text,
    last4              text,
    registered_at      timestamptz NOT NULL,
    removed_at         timestamptz,
    updated_at         timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (practice_id, patient_id)
);

-- Stripe's webhook events, once each by Stripe's event id.
CREATE TABLE stripe_events (
    event_id    text        PRIMARY KEY,
    type        text        NOT NULL,
    object_id   text,
    outcome     text        NOT NULL,                 -- what billing did with it
    received_at timestamptz NOT NULL DEFAULT now()
);
