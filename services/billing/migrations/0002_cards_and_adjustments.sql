-- Saved cards at the payment processor, and role-checked adjustments of charges.

-- Where a patient's saved card lives at Stripe. The contract only says `card_on_file: bool`;
-- the processor's customer and payment method of a patient are written here by whatever saved
-- the card (the practice's card-saving flow, or an operator). A patient without a row has no
-- card billing can charge through Stripe: the charge fails with `no_card_on_file` and stays owed.
CREATE TABLE patient_cards (
    patient_id               text        PRIMARY KEY,
    stripe_customer_id       text        NOT NULL CHECK (stripe_customer_id <> ''),
    stripe_payment_method_id text        NOT NULL CHECK (stripe_payment_method_id <> ''),
    updated_at               timestamptz NOT NULL DEFAULT now()
);

-- A payment the processor was never asked for (no card on file) has no processor reference.
ALTER TABLE payments ALTER COLUMN gateway_ref DROP NOT NULL;

-- When the capture task first leased the charge, i.e. first sent its idempotency key: a processor
-- forgets keys (Stripe after 24 hours), and asking after that could charge the card twice.
ALTER TABLE charges ADD COLUMN first_capture_at timestamptz;

-- Every adjustment request and the one answer it got, by the command's request id: the same
-- request replayed (under any envelope id) is answered once. Append-only.
CREATE TABLE charge_adjustments (
    request_id   text        PRIMARY KEY,
    charge_id    text        NOT NULL,            -- as the command named it (may name no charge)
    booking_id   text,                            -- null when the charge does not exist
    actor        text        NOT NULL,            -- "staff:<id>"
    actor_roles  text[]      NOT NULL,
    outcome      text        NOT NULL CHECK (outcome IN ('adjusted', 'rejected')),
    reason       text,                            -- why it was rejected
    before       jsonb,                           -- {amount_minor, currency, code, code_system}
    after        jsonb,
    requested_at timestamptz NOT NULL,            -- the command's own time (envelope `time`)
    recorded_at  timestamptz NOT NULL DEFAULT now(),
    CHECK ((outcome = 'rejected') = (reason IS NOT NULL)),
    CHECK ((outcome = 'adjusted') = (after IS NOT NULL))
);
CREATE INDEX charge_adjustments_charge ON charge_adjustments (charge_id, requested_at);

CREATE FUNCTION charge_adjustments_is_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'charge_adjustments is append-only';
END $$;
CREATE TRIGGER charge_adjustments_append_only BEFORE UPDATE OR DELETE ON charge_adjustments
    FOR EACH ROW EXECUTE FUNCTION charge_adjustments_is_append_only();
