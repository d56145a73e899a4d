-- What booking needs of a practice's settings: its waitlist.
CREATE TABLE practices (
    practice_id      text        PRIMARY KEY,
    waitlist_enabled boolean     NOT NULL DEFAULT false,
    offer_minutes    integer     NOT NULL DEFAULT 30,
    updated_at       timestamptz NOT NULL DEFAULT now()
);

-- Patients waiting for a slot, longest-waiting first.
CREATE TABLE waitlist (
    waitlist_id     text        PRIMARY KEY,
    practice_id     text        NOT NULL,
    patient_id      text        NOT NULL,
    service_code    text,
    practitioner_id text,
    joined_at       timestamptz NOT NULL,
    status          text        NOT NULL DEFAULT 'waiting' CHECK (status IN ('waiting', 'offered', 'booked'))
);
CREATE INDEX waitlist_waiting ON waitlist (practice_id, joined_at) WHERE status = 'waiting';

-- One offer of a released slot to one waitlisted patient; it expires unless taken.
CREATE TABLE slot_offers (
    offer_id    text        PRIMARY KEY,
    booking_id  text        NOT NULL REFERENCES bookings (booking_id),
    waitlist_id text        NOT NULL REFERENCES waitlist (waitlist_id),
    offered_at  timestamptz NOT NULL,
    expires_at  timestamptz NOT NULL,
    status      text        NOT NULL DEFAULT 'open' CHECK (status IN ('open', 'expired', 'accepted')),
    UNIQUE (booking_id, waitlist_id)
);
CREATE INDEX slot_offers_due ON slot_offers (expires_at) WHERE status = 'open';

-- A cancelled slot is either offered (slot_offers) or released for online booking, once.
ALTER TABLE bookings ADD COLUMN slot_released_at timestamptz;
