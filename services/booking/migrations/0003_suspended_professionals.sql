-- Professionals whose account is suspended: a booking for one that arrives after the suspension
-- (topics are consumed independently) is cancelled by the system as it arrives.
CREATE TABLE suspended_professionals (
    professional_id text        PRIMARY KEY,
    suspended_at    timestamptz NOT NULL,
    cause_event_id  text        NOT NULL
);
