-- Whether each patient has a card on file at each practice, from upstream.patients.v1
-- (patient.card_registered / patient.card_removed): when known it wins over the booking's
-- card_on_file flag. The newest event by its own time wins, whatever order they arrive in.
CREATE TABLE patient_cards (
    practice_id text        NOT NULL,
    patient_id  text        NOT NULL,
    has_card    boolean     NOT NULL,
    changed_at  timestamptz NOT NULL,
    PRIMARY KEY (practice_id, patient_id)
);
