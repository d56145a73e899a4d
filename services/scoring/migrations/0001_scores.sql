-- The scoring service's own state: one row per professional (the aggregate every write locks),
-- the score ledger and the holds. The score is 100 + sum(ledger.delta); it is never stored, so
-- it cannot drift from the ledger.

CREATE TABLE professionals (
    professional_id  text        PRIMARY KEY,
    suspended_at     timestamptz,              -- set once: account.suspended is emitted once
    suspension_holds text[],                   -- the hold ids that suspended the account
    created_at       timestamptz NOT NULL DEFAULT now()
);

-- Every change of a score, with its cause. Append-only: an excuse or a recalculation adds a
-- compensating entry instead of editing one. The entry id is derived from
-- (professional, booking, cause), so a booking is penalised or rewarded once.
CREATE TABLE score_ledger (
    entry_id        uuid        PRIMARY KEY,
    professional_id text        NOT NULL REFERENCES professionals (professional_id),
    booking_id      text,
    delta           integer     NOT NULL,
    cause           text        NOT NULL
        CHECK (cause IN ('cancelled', 'late_cancelled', 'no_show', 'completed', 'excused', 'recalculated')),
    occurred_at     timestamptz NOT NULL,      -- the causing event's own time
    event_id        text        NOT NULL,      -- the envelope id of the causing event
    recorded_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX score_ledger_professional ON score_ledger (professional_id, occurred_at);

CREATE FUNCTION score_ledger_is_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'score_ledger is append-only';
END $$;
CREATE TRIGGER score_ledger_append_only BEFORE UPDATE OR DELETE ON score_ledger
    FOR EACH ROW EXECUTE FUNCTION score_ledger_is_append_only();

-- Holds: running until lifted (excused by an approved excuse, or expired by the scheduler;
-- both are a later issue, the columns are here for them). One hold per professional and booking.
CREATE TABLE holds (
    hold_id         uuid        PRIMARY KEY,
    professional_id text        NOT NULL REFERENCES professionals (professional_id),
    booking_id      text        NOT NULL,
    cause           text        NOT NULL CHECK (cause IN ('late_cancellation', 'no_show')),
    occurred_at     timestamptz NOT NULL,      -- the causing event's own time (suspension window)
    starts_at       timestamptz NOT NULL,
    ends_at         timestamptz NOT NULL,
    status          text        NOT NULL DEFAULT 'running' CHECK (status IN ('running', 'lifted')),
    lift_cause      text        CHECK (lift_cause IN ('excused', 'expired')),
    lifted_at       timestamptz,
    placed_at       timestamptz NOT NULL DEFAULT now(),
    UNIQUE (professional_id, booking_id),
    CHECK (ends_at > starts_at),
    CHECK ((status = 'lifted') = (lift_cause IS NOT NULL))
);
CREATE INDEX holds_professional ON holds (professional_id, ends_at);
CREATE INDEX holds_running_ends ON holds (ends_at) WHERE status = 'running';
