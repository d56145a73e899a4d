-- An outbox row the broker refuses for good (too large, invalid topic) is set aside with its
-- reason instead of blocking every row behind it; ops read them here:
--   SELECT seq, topic, type, parked_at, park_reason FROM outbox WHERE parked_at IS NOT NULL;
ALTER TABLE outbox ADD COLUMN parked_at timestamptz, ADD COLUMN park_reason text;
DROP INDEX outbox_unpublished;
CREATE INDEX outbox_unpublished ON outbox (seq) WHERE published_at IS NULL AND parked_at IS NULL;
