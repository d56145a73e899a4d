-- The booking service's own state: bookings, the requests waiting for a policy decision,
-- and the append-only audit trail.

CREATE TABLE bookings (
    booking_id             text        PRIMARY KEY,
    practice_id            text        NOT NULL,
    practitioner_id        text        NOT NULL,
    service_code           text        NOT NULL,
    starts_at              timestamptz NOT NULL,
    ends_at                timestamptz NOT NULL,
    patient_id             text        NOT NULL,
    patient_portal_account boolean     NOT NULL,
    patient_card_on_file   boolean     NOT NULL,
    professional_id        text,
    series_id              text,
    deposit_amount         numeric(12, 2),
    deposit_currency       text,
    price_amount           numeric(12, 2),
    price_currency         text,
    status                 text        NOT NULL DEFAULT 'scheduled'
        CHECK (status IN ('scheduled', 'cancelled', 'completed', 'no_show')),
    status_label           text,
    classification         text,
    closed_at              timestamptz,
    created_at             timestamptz NOT NULL DEFAULT now(),
    updated_at             timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX bookings_practice_starts ON bookings (practice_id, starts_at);
CREATE INDEX bookings_series ON bookings (series_id, starts_at) WHERE series_id IS NOT NULL;
CREATE INDEX bookings_professional ON bookings (professional_id, starts_at) WHERE professional_id IS NOT NULL;

-- A cancellation or no-show request sent to the policy and not yet decided.
CREATE TABLE pending_requests (
    request_id  text        PRIMARY KEY,
    booking_id  text        NOT NULL REFERENCES bookings (booking_id),
    kind        text        NOT NULL CHECK (kind IN ('cancellation', 'no_show')),
    request     jsonb       NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now(),
    decided_at  timestamptz
);

-- Who did what, when, through which channel, why, under which policy version. Append-only.
CREATE TABLE audit_trail (
    seq            bigserial   PRIMARY KEY,
    booking_id     text        NOT NULL,
    at             timestamptz NOT NULL,
    action         text        NOT NULL,
    actor          jsonb,
    channel        text,
    request_id     text,
    reason         text,
    policy_version text,
    detail         jsonb       NOT NULL DEFAULT '{}'::jsonb,
    recorded_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX audit_trail_booking ON audit_trail (booking_id, seq);

CREATE FUNCTION audit_trail_is_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_trail is append-only';
END $$;
CREATE TRIGGER audit_trail_append_only BEFORE UPDATE OR DELETE ON audit_trail
    FOR EACH ROW EXECUTE FUNCTION audit_trail_is_append_only();
