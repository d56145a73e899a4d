-- Late-cancellation fees billing announced in staff review (charge.created, status
-- pending_review). The cancellation's message quoted no fee for them (nobody is told of a fee
-- before it is final), so the patient is told of the fee once billing announces it final
-- (charge.created again, status due: approved, edited or the window ended undecided). A fee
-- that was never in review was told with the cancellation and is not told again; a fee waived
-- in review is never announced due, so never told. Both announcements of a charge come on
-- billing.events.v1 under the booking's key, so the one in review is always read first.
-- Additive only (a new table), so a replica still on 0003 keeps working (it tells no such fee,
-- as before). A fee whose in-review announcement was read before this table existed is not told.
CREATE TABLE late_fees_in_review (
    charge_id    text        PRIMARY KEY,
    booking_id   text        NOT NULL,
    review_until timestamptz,               -- as announced
    announced_at timestamptz NOT NULL,      -- the in-review announcement's own time
    final_at     timestamptz                -- the final announcement's own time; NULL while in review
);
