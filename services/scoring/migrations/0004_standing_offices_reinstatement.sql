-- Second release (issue 17): reinstatement, patient standing per practice, office scores.

-- A reinstatement clears the holds that led to the suspension: they no longer count towards
-- the next one (they still ran their course).
ALTER TABLE holds ADD COLUMN cleared_at timestamptz;

-- Every reinstatement, once per professional and time (a replay finds it).
CREATE TABLE reinstatements (
    professional_id  text        NOT NULL REFERENCES professionals (professional_id),
    reinstated_at    timestamptz NOT NULL,
    reviewer_id      text        NOT NULL,
    note             text,
    suspended_at     timestamptz NOT NULL,  -- the suspension it ended
    suspension_holds text[]      NOT NULL,
    event_id         text        NOT NULL,
    recorded_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (professional_id, reinstated_at)
);

-- What scoring needs of a practice's settings: its `standing` rules (latest by their own time).
CREATE TABLE practice_standing_rules (
    practice_id                  text        PRIMARY KEY,
    enabled                      boolean     NOT NULL,
    window_days                  integer     NOT NULL,
    forgive_first                boolean     NOT NULL,
    deposit_required_after       integer     NOT NULL,
    prepayment_required_after    integer     NOT NULL,
    online_booking_blocked_after integer     NOT NULL,
    configured_at                timestamptz NOT NULL
);

-- A patient's standing at one practice: the aggregate every standing write locks first.
-- `next_review_at`: when the oldest counted case ages out (the review job moves it then).
CREATE TABLE patient_standings (
    practice_id    text        NOT NULL,
    patient_id     text        NOT NULL,
    standing       text        NOT NULL DEFAULT 'good'
        CHECK (standing IN ('good', 'deposit_required', 'prepayment_required', 'online_booking_blocked')),
    count          integer     NOT NULL DEFAULT 0,
    changed_at     timestamptz,
    next_review_at timestamptz,
    PRIMARY KEY (practice_id, patient_id)
);
CREATE INDEX patient_standings_due ON patient_standings (next_review_at) WHERE next_review_at IS NOT NULL;

-- The patient's no-shows and late cancellations; one per booking and kind. An excused (waived)
-- case stays recorded but does not count.
CREATE TABLE patient_cases (
    case_id     uuid        PRIMARY KEY,
    practice_id text        NOT NULL,
    patient_id  text        NOT NULL,
    booking_id  text        NOT NULL,
    kind        text        NOT NULL CHECK (kind IN ('no_show', 'late_cancellation')),
    occurred_at timestamptz NOT NULL,
    excused_at  timestamptz,
    event_id    text        NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT now(),
    FOREIGN KEY (practice_id, patient_id) REFERENCES patient_standings (practice_id, patient_id)
);
CREATE INDEX patient_cases_patient ON patient_cases (practice_id, patient_id, occurred_at);
CREATE INDEX patient_cases_booking ON patient_cases (booking_id);

-- Offices (practices of a marketplace) and their score ledger: 100 + sum(delta), never stored.
CREATE TABLE offices (
    practice_id text        PRIMARY KEY,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE office_ledger (
    entry_id    uuid        PRIMARY KEY,
    practice_id text        NOT NULL REFERENCES offices (practice_id),
    booking_id  text        NOT NULL,
    delta       integer     NOT NULL,
    cause       text        NOT NULL CHECK (cause IN ('cancelled_professional', 'late_cancelled_professional')),
    occurred_at timestamptz NOT NULL,
    event_id    text        NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX office_ledger_practice ON office_ledger (practice_id, occurred_at);
