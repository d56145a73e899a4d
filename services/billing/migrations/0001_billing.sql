-- The billing service's own state: charges, payments, deposit outcomes and the append-only
-- billing audit. Money is integer minor units of its currency (never a float, never rounded).

-- One charge per booking and request (charge_id = uuid5 of both): a redelivery cannot raise a second.
CREATE TABLE charges (
    charge_id        uuid        PRIMARY KEY,
    booking_id       text        NOT NULL,
    request_id       text        NOT NULL,
    practice_id      text        NOT NULL,
    patient_id       text        NOT NULL,
    kind             text        NOT NULL CHECK (kind IN ('late_cancellation', 'no_show')),
    amount_minor     bigint      NOT NULL CHECK (amount_minor > 0),
    currency         char(3)     NOT NULL,
    code             text        NOT NULL,
    code_system      text        NOT NULL CHECK (code_system IN ('CPT', 'CDT', 'custom')),
    charge_card      boolean     NOT NULL,
    -- outstanding: owed on the patient's account (no card charge, or the card charge failed);
    -- pending_capture: waiting for the capture task to charge the card on file; paid: captured.
    status           text        NOT NULL CHECK (status IN ('outstanding', 'pending_capture', 'paid')),
    failure_reason   text,
    policy_version   text        NOT NULL,
    occurred_at      timestamptz NOT NULL,     -- the cancellation's or no-show's own time
    correlation_id   text,                     -- carried onto payment events for tracing
    capture_attempts integer     NOT NULL DEFAULT 0,
    next_capture_at  timestamptz,              -- lease / backoff of the capture task
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    UNIQUE (booking_id, request_id)
);
CREATE INDEX charges_patient ON charges (patient_id, occurred_at);
CREATE INDEX charges_practice_owed ON charges (practice_id, currency) WHERE status <> 'paid';
CREATE INDEX charges_to_capture ON charges (next_capture_at) WHERE status = 'pending_capture';

-- One card payment per charge (payment_id = uuid5 of the charge): the gateway's answer.
CREATE TABLE payments (
    payment_id      uuid        PRIMARY KEY,
    charge_id       uuid        NOT NULL UNIQUE REFERENCES charges (charge_id),
    status          text        NOT NULL CHECK (status IN ('captured', 'failed')),
    amount_minor    bigint      NOT NULL,
    currency        char(3)     NOT NULL,
    gateway         text        NOT NULL,
    gateway_ref     text        NOT NULL,
    idempotency_key text        NOT NULL,
    failure_reason  text,
    recorded_at     timestamptz NOT NULL DEFAULT now()
);

-- What became of a deposit: refunded, kept, or turned into a credit note. One per request.
CREATE TABLE deposit_outcomes (
    booking_id     text        NOT NULL,
    request_id     text        NOT NULL,
    practice_id    text        NOT NULL,
    patient_id     text        NOT NULL,
    outcome        text        NOT NULL CHECK (outcome IN ('refunded', 'kept', 'credit_note')),
    amount_minor   bigint      NOT NULL CHECK (amount_minor >= 0),
    currency       char(3)     NOT NULL,
    credit_note_id uuid        UNIQUE,
    occurred_at    timestamptz NOT NULL,
    recorded_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (booking_id, request_id),
    CHECK ((outcome = 'credit_note') = (credit_note_id IS NOT NULL))
);

-- Who did what to which money, when and why. Append-only.
CREATE TABLE billing_audit (
    seq          bigserial   PRIMARY KEY,
    at           timestamptz NOT NULL,         -- when it happened
    actor        text        NOT NULL,         -- who: "staff:<id>", "service/booking", "service/billing" …
    action       text        NOT NULL,         -- charge_created, payment_captured, deposit_refunded …
    booking_id   text        NOT NULL,
    charge_id    uuid,
    amount_minor bigint,
    currency     char(3),
    reason       text        NOT NULL,         -- why: the policy decision, the gateway's answer …
    detail       jsonb       NOT NULL DEFAULT '{}'::jsonb,
    recorded_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX billing_audit_booking ON billing_audit (booking_id, seq);
CREATE INDEX billing_audit_charge ON billing_audit (charge_id, seq) WHERE charge_id IS NOT NULL;

CREATE FUNCTION billing_audit_is_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'billing_audit is append-only';
END $$;
CREATE TRIGGER billing_audit_append_only BEFORE UPDATE OR DELETE ON billing_audit
    FOR EACH ROW EXECUTE FUNCTION billing_audit_is_append_only();
