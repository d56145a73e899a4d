-- The W3C trace context of the span that emitted each event (shared.tracing), kept beside its
-- body so it survives the relay: the relay's publish span is its child, and the record it sends
-- carries the publish span's context. NULL when the event was emitted outside any trace.
ALTER TABLE outbox ADD COLUMN traceparent text, ADD COLUMN tracestate text;
