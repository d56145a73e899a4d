-- Hold expiry: a professional whose holds could not be lifted (a failure for good) is left out
-- of the expiry job's claim until this time, so it cannot be claimed every poll nor keep the
-- professionals after it waiting.
ALTER TABLE professionals ADD COLUMN hold_expiry_retry_at timestamptz;
