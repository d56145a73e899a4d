-- Every practice.configured makes a new policy version; a decision names the version it used.
CREATE TABLE practice_settings (
    practice_id   text        NOT NULL,
    version       integer     NOT NULL,
    settings      jsonb       NOT NULL,
    name          text        NOT NULL,
    timezone      text        NOT NULL,
    locale        text        NOT NULL,
    configured_at timestamptz NOT NULL,
    PRIMARY KEY (practice_id, version)
);

-- Every decision made, with the version and the words that explain it.
CREATE TABLE decisions (
    request_id     text        PRIMARY KEY,
    booking_id     text        NOT NULL,
    practice_id    text        NOT NULL,
    policy_version text        NOT NULL,
    allowed        boolean     NOT NULL,
    classification text        NOT NULL,
    explanation    text        NOT NULL,
    decision       jsonb       NOT NULL,
    decided_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX decisions_booking ON decisions (booking_id);
