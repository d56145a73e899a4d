-- The notification service's own state: the contact directory (personal data: it never
-- leaves this schema except in the messages sent to the people themselves), the requests it
-- remembers to know who asked, and the delivery log.

-- How to reach a practice's office, and how to write to it.
CREATE TABLE practices (
    practice_id                      text        PRIMARY KEY,
    name                             text        NOT NULL,
    timezone                         text        NOT NULL,
    locale                           text        NOT NULL,
    email                            text,
    phone                            text,
    preferred_channel                text        NOT NULL CHECK (preferred_channel IN ('email', 'sms')),
    notify_practice_on_online_cancel boolean     NOT NULL,
    configured_at                    timestamptz NOT NULL,  -- the event's time: an older replay never wins
    updated_at                       timestamptz NOT NULL DEFAULT now()
);

-- The patient of each booking, as booking.scheduled named them.
CREATE TABLE patients (
    booking_id    text        PRIMARY KEY,
    practice_id   text        NOT NULL,
    patient_id    text        NOT NULL,
    first_name    text        NOT NULL,
    email         text,
    phone         text,
    locale        text,
    starts_at     timestamptz NOT NULL,  -- kept current by booking.rescheduled
    scheduled_at  timestamptz NOT NULL,  -- the event's time: an older replay never wins
    updated_at    timestamptz NOT NULL DEFAULT now()
);

-- Who asked for a cancellation, so a rejection is told to the patient only when they asked.
CREATE TABLE cancellation_requests (
    request_id   text        PRIMARY KEY,
    booking_id   text        NOT NULL,
    actor_kind   text        NOT NULL,
    channel      text        NOT NULL,
    requested_at timestamptz NOT NULL
);

-- One row per message to send: recipient + channel of one causing event. The consumer only
-- records rows; the sender (a background task) sends them and records the outcome.
CREATE TABLE deliveries (
    notification_id uuid        PRIMARY KEY,  -- uuid5(causing event id, recipient, channel)
    event_id        text        NOT NULL,
    event_type      text        NOT NULL,
    correlation_id  text,
    booking_id      text,
    practice_id     text,
    recipient       text        NOT NULL CHECK (recipient IN ('patient', 'practice', 'professional', 'waitlist')),
    channel         text        NOT NULL CHECK (channel IN ('email', 'sms')),
    template        text        NOT NULL,
    locale          text        NOT NULL,
    address         text,                     -- personal data; NULL when the channel was skipped
    subject         text,                     -- email only
    body            text,
    status          text        NOT NULL CHECK (status IN ('pending', 'sent', 'failed', 'skipped')),
    reason          text,                     -- why skipped, or the last error (no personal data)
    attempts        integer     NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    created_at      timestamptz NOT NULL DEFAULT now(),
    finished_at     timestamptz
);
CREATE INDEX deliveries_due ON deliveries (next_attempt_at) WHERE status = 'pending';
CREATE INDEX deliveries_booking ON deliveries (booking_id, created_at);
