-- Stamp's initial schema (docs/database.md). Every state change of a certificate is one
-- transaction that updates the row WHERE version = expected and appends an event.

CREATE TABLE recipients (
    id                        uuid PRIMARY KEY,
    wallet_endpoint_version   integer NOT NULL,
    wallet_endpoint_url       text NOT NULL,
    wallet_public_key         bytea NOT NULL CHECK (length(wallet_public_key) = 74),
    -- The next wallet endpoint position to hand out; positions start at 1 like the
    -- existing Stamp. Only ever incremented, under the row lock.
    next_position             bigint NOT NULL DEFAULT 1 CHECK (next_position >= 1),
    created_at                timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE certificates (
    registry_name       text NOT NULL,
    id                  uuid NOT NULL,
    recipient_id        uuid NOT NULL REFERENCES recipients (id),
    metering_point_id   text NOT NULL,
    certificate_type    smallint NOT NULL CHECK (certificate_type IN (1, 2)),
    quantity            bigint NOT NULL CHECK (quantity BETWEEN 1 AND 4294967295),
    period_start        bigint NOT NULL,
    period_end          bigint NOT NULL,
    grid_area           text NOT NULL,
    -- [[key, value], ...] in the order the client sent them: the order is part of
    -- the registry transaction.
    clear_attributes    jsonb NOT NULL DEFAULT '[]',
    hashed_attributes   jsonb NOT NULL DEFAULT '[]',
    -- SHA-256 of the canonical request, to tell an identical re-post from a conflict.
    request_digest      bytea NOT NULL,
    state               text NOT NULL CHECK (state IN (
                            'stored', 'sent_to_registry', 'issued_in_registry',
                            'marked_as_issued', 'delivered', 'rejected', 'failed')),
    version             integer NOT NULL DEFAULT 0,
    position            bigint CHECK (position >= 1),
    -- Persisted before the first send and never rebuilt (invariant 3). Secrets:
    -- blinding (R) and salts are never returned by the API nor logged.
    blinding            bytea CHECK (blinding IS NULL OR length(blinding) = 32),
    salts               bytea[],
    transaction         bytea,
    transaction_id      text,
    rejection_reason    text,
    failed_step         text,
    failure_reason      text,
    attempts            integer NOT NULL DEFAULT 0,
    -- Which process drives this certificate now; another takes over after expiry.
    lease_owner         text,
    lease_until         timestamptz,
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (registry_name, id),
    CHECK (period_start < period_end),
    CHECK ((state = 'stored') OR (state IN ('rejected', 'failed')) OR transaction IS NOT NULL)
);

CREATE UNIQUE INDEX certificates_recipient_position_key
    ON certificates (recipient_id, position) WHERE position IS NOT NULL;
CREATE UNIQUE INDEX certificates_metering_period_key
    ON certificates (metering_point_id, period_start, period_end);
-- The backlog scan: non-terminal certificates in arrival order.
CREATE INDEX certificates_active_idx
    ON certificates (created_at)
    WHERE state IN ('stored', 'sent_to_registry', 'issued_in_registry', 'marked_as_issued');
CREATE INDEX certificates_state_idx ON certificates (state, created_at, registry_name, id);
CREATE INDEX certificates_recipient_idx ON certificates (recipient_id, created_at);

CREATE TABLE certificate_events (
    seq             bigserial PRIMARY KEY,
    registry_name   text NOT NULL,
    certificate_id  uuid NOT NULL,
    event_type      text NOT NULL,
    state           text NOT NULL,
    at              timestamptz NOT NULL DEFAULT clock_timestamp(),
    detail          jsonb NOT NULL DEFAULT '{}',
    FOREIGN KEY (registry_name, certificate_id) REFERENCES certificates (registry_name, id)
);
CREATE INDEX certificate_events_certificate_idx
    ON certificate_events (registry_name, certificate_id, seq);
