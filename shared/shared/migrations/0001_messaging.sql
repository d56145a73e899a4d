-- The message-handling tables every service keeps in its own schema (docs/design.md, docs/style.md#outbox-and-inbox-tables).

-- A consumer claims an event id here in the same transaction as its effect:
-- a second delivery finds the row and does nothing.
CREATE TABLE inbox (
    consumer     text        NOT NULL,
    event_id     text        NOT NULL,
    processed_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, event_id)
);

-- Events to publish, written in the transaction of the change that caused them.
-- Column names follow Debezium's outbox router so a move to CDC changes no handler.
CREATE TABLE outbox (
    seq          bigserial   PRIMARY KEY,
    id           uuid        NOT NULL UNIQUE,
    topic        text        NOT NULL,
    key          text,
    type         text        NOT NULL,
    payload      jsonb       NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    published_at timestamptz
);
CREATE INDEX outbox_unpublished ON outbox (seq) WHERE published_at IS NULL;
