-- What the SMS provider says became of a message after it accepted it (Twilio's status
-- callbacks: queued, sent, delivered, undelivered, failed, ...), on the delivery row.
-- Additive only (nullable columns, one partial index), so a replica still on 0002 keeps working.
ALTER TABLE deliveries
    ADD COLUMN provider_message_id text,         -- the provider's id of the message (Twilio's SID)
    ADD COLUMN provider_status     text,         -- the furthest status reported, never a step back
    ADD COLUMN provider_error_code text,         -- the provider's error code with that status, if any
    ADD COLUMN provider_status_at  timestamptz;  -- when that status was recorded
CREATE UNIQUE INDEX deliveries_provider_message ON deliveries (provider_message_id)
    WHERE provider_message_id IS NOT NULL;
