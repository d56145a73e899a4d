-- A sync may wait (status `waiting`, attempts 0) for the upstream request that carries its
-- chart note, when booking.events.v1 was read first; it is sent when the request arrives, or
-- without it once `next_retry_at` (the end of the wait) has passed.
ALTER TABLE syncs DROP CONSTRAINT syncs_status_check;
ALTER TABLE syncs ADD CONSTRAINT syncs_status_check CHECK (status IN ('waiting', 'sent', 'completed', 'failed'));

DROP INDEX syncs_due;
CREATE INDEX syncs_due ON syncs (next_retry_at) WHERE status IN ('waiting', 'sent');
CREATE INDEX syncs_waiting ON syncs (request_id) WHERE status = 'waiting';
