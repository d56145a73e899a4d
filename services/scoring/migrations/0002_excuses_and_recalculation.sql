-- Excuses, the holds they excuse, and the nightly recalculation's run record.

-- One row per excuse_id, whatever became of it. Scoring refuses an excuse it cannot apply (no
-- penalty recorded for that professional and booking; a review of an excuse never submitted)
-- by recording it as rejected with the reason: the contract has no event for that, and the
-- message was valid, so it is neither dropped nor dead-lettered.
CREATE TABLE excuses (
    excuse_id          text        PRIMARY KEY,
    -- From the submission; for a review of an unknown excuse, the envelope subject (the topic
    -- is keyed by professional_id).
    professional_id    text,
    booking_id         text,
    document_ref       text,
    submitted_at       timestamptz,
    status             text        NOT NULL CHECK (status IN ('pending', 'approved', 'rejected')),
    reason             text        CHECK (reason IN ('unknown_professional', 'unknown_booking', 'unknown_excuse', 'rejected_by_reviewer')),
    message            text,
    decision           text        CHECK (decision IN ('approved', 'rejected')),  -- the reviewer's
    reviewer_id        text,
    reviewed_at        timestamptz,
    submitted_event_id text,
    reviewed_event_id  text,
    recorded_at        timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now(),
    CHECK ((status = 'rejected') = (reason IS NOT NULL))
);
CREATE INDEX excuses_professional ON excuses (professional_id, recorded_at);
CREATE INDEX excuses_approved ON excuses (professional_id, booking_id) WHERE status = 'approved';

-- An approved excuse marks its booking's hold excused: lifted at once when it was running, and
-- no longer counted towards suspension even when it had expired already.
ALTER TABLE holds
    ADD COLUMN excused_at timestamptz,
    ADD COLUMN excuse_id  text;

-- The recalculation looks a booking's penalties up by professional and booking.
CREATE INDEX score_ledger_booking ON score_ledger (professional_id, booking_id);

-- One nightly recalculation per UTC date across all replicas: the run claims its date in the
-- same transaction as its work.
CREATE TABLE recalculation_runs (
    run_date      date        PRIMARY KEY,
    started_at    timestamptz NOT NULL DEFAULT now(),
    professionals integer     NOT NULL DEFAULT 0,  -- whose score moved
    entries       integer     NOT NULL DEFAULT 0   -- compensating entries added
);
