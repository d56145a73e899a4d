-- Second release (issue 17): arrivals, the no-show sweep, and waitlist offers accepted.

-- The practice's no-show sweep: on or off, the grace after the start, and since when it is on
-- (only bookings that start after that are swept, so turning it on flags no old booking).
ALTER TABLE practices
    ADD COLUMN no_show_sweep_enabled  boolean     NOT NULL DEFAULT false,
    ADD COLUMN no_show_grace_minutes  integer     NOT NULL DEFAULT 15,
    ADD COLUMN no_show_sweep_since    timestamptz;

-- When the patient arrived, and when the sweep reported the booking as a suspected no-show (once).
ALTER TABLE bookings
    ADD COLUMN arrived_at            timestamptz,
    ADD COLUMN no_show_suspected_at  timestamptz;
CREATE INDEX bookings_unattended ON bookings (practice_id, starts_at)
    WHERE status = 'scheduled' AND arrived_at IS NULL AND no_show_suspected_at IS NULL;

-- An offer accepted through waitlist.offer_accepted fills the slot once: the new booking it became.
ALTER TABLE slot_offers
    ADD COLUMN new_booking_id text,
    ADD COLUMN filled_at      timestamptz;
