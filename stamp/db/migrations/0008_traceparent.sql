-- Traces (docs/operations.md): the W3C trace context of the certificate's intake, so
-- that whichever Stamp process drives the certificate (after a restart, a takeover,
-- an operator's retry) continues the trace its POST began. NULL when tracing was off
-- at intake; nothing else reads it. Not a secret: two random ids and a flag byte.
ALTER TABLE certificates ADD COLUMN traceparent text
    CHECK (traceparent IS NULL OR traceparent ~ '^00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$');
