-- Inbox claims are pruned by age (shared.inbox.prune_batch, INBOX_RETENTION_HOURS): find the old
-- ones by index, not by reading the whole table. processed_at only grows, so inserts append
-- to the index's right edge.
CREATE INDEX IF NOT EXISTS inbox_processed_at ON inbox (processed_at);
