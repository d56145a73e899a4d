-- Parked rows are counted at every metrics scrape (cancellations_outbox_parked_rows): a partial
-- index keeps that count as cheap as the backlog's, however many published rows the table holds.
CREATE INDEX outbox_parked ON outbox (seq) WHERE parked_at IS NOT NULL;
