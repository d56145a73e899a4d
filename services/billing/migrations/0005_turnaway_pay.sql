-- Second release (issue 17): turn-away pay an office owes a booked professional it cancelled
-- inside its late window; one row per booking (the policy decided the amount).
CREATE TABLE turnaway_pay (
    booking_id      text        PRIMARY KEY,
    practice_id     text        NOT NULL,
    professional_id text        NOT NULL,
    amount_minor    bigint      NOT NULL CHECK (amount_minor > 0),
    currency        text        NOT NULL,
    owed_at         timestamptz NOT NULL,  -- the cancellation's own time
    request_id      text        NOT NULL,
    event_id        text        NOT NULL,
    recorded_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX turnaway_pay_practice ON turnaway_pay (practice_id, owed_at);
CREATE INDEX turnaway_pay_professional ON turnaway_pay (professional_id, owed_at);
