-- The sender's index of the rows to send, keyed on `finished_at IS NULL` instead of
-- `status = 'pending'` (the same rows: a pending row is exactly one not finished, since every
-- statement that ends a row, skipped at insert, sent or failed, sets `finished_at`).
--
-- Why: the statements that end or postpone one row (mark_sent, mark_failed, schedule_retry:
-- `WHERE notification_id = $1 AND status = 'pending'`) imply the old index's predicate, so the
-- planner could pick `deliveries_due`; its statistics are taken when it is nearly empty, so it
-- looked cheaper than the primary key by a hair, and each of those statements scanned every
-- pending row (Rows Removed by Filter: 3000 with 3000 pending, 1-2.5 ms instead of 0.08 ms; the
-- most expensive statement of the system during a burst). With a predicate those statements do
-- not imply, only the primary key can serve them.
--
-- A replica still on 0004's code claims with `status = 'pending'` only: it keeps working, but
-- without an index for its claim until it is replaced.
CREATE INDEX deliveries_unfinished ON deliveries (next_attempt_at) WHERE finished_at IS NULL;
DROP INDEX deliveries_due;
