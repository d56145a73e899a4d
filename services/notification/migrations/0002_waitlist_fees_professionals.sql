-- The rest of docs/rules.md#notifications: no-show fees, slot offers to waitlisted patients, holds
-- and suspensions told to the professional, manual PMS updates told to the practice.
-- Additive only (new tables, one nullable column), so a replica still on 0001 keeps working.

-- How to reach a booked professional, from booking.scheduled's optional `professional_contact`.
CREATE TABLE professionals (
    professional_id text        PRIMARY KEY,
    practice_id     text        NOT NULL,  -- of the booking that named them: timezone and locale of notices
    first_name      text,
    email           text,
    phone           text,
    locale          text,
    scheduled_at    timestamptz NOT NULL,  -- the event's time: an older replay never wins
    updated_at      timestamptz NOT NULL DEFAULT now()
);

-- The waitlisted patients, from waitlist.joined (personal data, like `patients`).
CREATE TABLE waitlist_entries (
    waitlist_id  text        PRIMARY KEY,
    practice_id  text        NOT NULL,
    patient_id   text        NOT NULL,
    first_name   text        NOT NULL,
    email        text,
    phone        text,
    locale       text,
    joined_at    timestamptz NOT NULL,
    updated_at   timestamptz NOT NULL DEFAULT now()
);

-- Every slot offer seen. `told` is false while the waitlist entry's contacts are not known
-- yet (the two come on different topics, in no fixed order): waitlist.joined tells it then.
CREATE TABLE slot_offers (
    offer_id       text        PRIMARY KEY,
    booking_id     text        NOT NULL,
    waitlist_id    text        NOT NULL,
    expires_at     timestamptz NOT NULL,
    event_id       text        NOT NULL,  -- the booking.slot_offered envelope
    correlation_id text,
    told           boolean     NOT NULL DEFAULT false,
    received_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX slot_offers_untold ON slot_offers (waitlist_id) WHERE NOT told;

-- A booking's no-show fee as far as it is known: the no-show (booking.events.v1), the charge
-- and the card payment (billing.events.v1) arrive in any order; the patient is told once the
-- answer is final (domain.no_show_fee_settlement). One row per booking: a booking has at most
-- one no-show. Every writer upserts this row, so two events of one booking handled at once
-- by two replicas are serialised on it and neither misses the other.
CREATE TABLE no_show_fees (
    booking_id     text        PRIMARY KEY,
    practice_id    text,                      -- from the no-show
    starts_at      timestamptz,               -- from the no-show
    charge_card    boolean,                   -- from the no-show's decision; NULL until seen
    charge_id      text,                      -- from charge.created (kind no_show); NULL until seen
    amount         numeric,
    currency       text,
    code           text,
    code_system    text,
    payment        text        CHECK (payment IN ('captured', 'failed')),
    updated_at     timestamptz NOT NULL DEFAULT now()
);

-- Notices about a professional (holds, suspension) are found by professional as well.
ALTER TABLE deliveries ADD COLUMN professional_id text;
CREATE INDEX deliveries_professional ON deliveries (professional_id, created_at) WHERE professional_id IS NOT NULL;
