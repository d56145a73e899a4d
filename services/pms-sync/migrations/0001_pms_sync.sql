-- The pms-sync service's own state: which PMS each practice uses, what the upstream requests
-- carried that booking.events.v1 does not (who reported a no-show, the chart note), every
-- sync sent to a PMS connector with its retries, and every manual update asked of a practice.

-- The per-practice integration registry (practice.configured `pms.integration`).
CREATE TABLE integrations (
    practice_id   text        PRIMARY KEY,
    integration   text        NOT NULL CHECK (integration IN ('praktika', 'core_practice', 'manual', 'none')),
    configured_at timestamptz NOT NULL,  -- the event's time: an older replay never wins
    updated_at    timestamptz NOT NULL DEFAULT now()
);

-- Upstream cancellation requests and no-show reports, by request id. The chart note is
-- clinical data: it stays in this schema and goes only to the practice's own PMS.
CREATE TABLE requests (
    request_id  text        PRIMARY KEY,
    booking_id  text        NOT NULL,
    kind        text        NOT NULL CHECK (kind IN ('cancellation', 'no_show')),
    actor       jsonb       NOT NULL,
    chart_note  text,
    received_at timestamptz NOT NULL DEFAULT now()
);

-- One row per command sent to a PMS connector. `command` is the payload as first sent: a
-- retry sends it again unchanged, with the same sync_id, so the connector can de-duplicate.
CREATE TABLE syncs (
    sync_id        text        PRIMARY KEY,  -- uuid5(booking_id, request_id)
    booking_id     text        NOT NULL,
    practice_id    text        NOT NULL,
    request_id     text        NOT NULL,
    integration    text        NOT NULL CHECK (integration IN ('praktika', 'core_practice')),
    action         text        NOT NULL CHECK (action IN ('cancel_booking', 'record_no_show')),
    topic          text        NOT NULL,
    command        jsonb       NOT NULL,
    correlation_id text,
    status         text        NOT NULL CHECK (status IN ('sent', 'completed', 'failed')),
    attempts       integer     NOT NULL,
    next_retry_at  timestamptz,          -- when an unacknowledged command is sent again (status sent)
    error          text,
    external_ref   text,                 -- the PMS's own id for the change, from the ack
    created_at     timestamptz NOT NULL DEFAULT now(),
    finished_at    timestamptz
);
CREATE INDEX syncs_due ON syncs (next_retry_at) WHERE status = 'sent';
CREATE INDEX syncs_booking ON syncs (booking_id, created_at);

-- What staff must change in their PMS by hand (integration manual, or a sync that failed).
CREATE TABLE manual_updates (
    id          bigserial   PRIMARY KEY,
    booking_id  text        NOT NULL,
    practice_id text        NOT NULL,
    integration text        NOT NULL,
    action      text        NOT NULL CHECK (action IN ('cancel_booking', 'record_no_show')),
    message     text        NOT NULL,
    sync_id     text,                    -- the failed sync, when there was one
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX manual_updates_practice ON manual_updates (practice_id, created_at);
