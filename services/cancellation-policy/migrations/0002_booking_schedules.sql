-- When each booking was scheduled (booking.scheduled's own time): a booking is decided by the
-- practice settings in force then (policy_changes_apply_to: new_bookings, the default).
CREATE TABLE booking_schedules (
    booking_id   text        PRIMARY KEY,
    practice_id  text        NOT NULL,
    scheduled_at timestamptz NOT NULL
);

-- The settings in force at a time: the newest configured at or before it.
CREATE INDEX practice_settings_configured ON practice_settings (practice_id, configured_at);
