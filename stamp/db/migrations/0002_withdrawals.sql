-- Withdrawal of issued certificates (api.md "Withdrawal", docs/withdrawal.md).
--
-- A withdrawal is decided by the issuing body and irrevocable in Stamp: the
-- certificate is flagged, its signed WithdrawnEvent transaction is persisted with the
-- withdrawal record (one transaction per withdrawal, invariant 3), and the row's id
-- orders the feed wallets poll.

ALTER TABLE certificates ADD COLUMN withdrawn boolean NOT NULL DEFAULT false;

-- A withdrawn certificate is at rest and is never driven again: no delivery of the
-- slice of a certificate the wallets are told is withdrawn.
ALTER TABLE certificates ADD CONSTRAINT certificates_withdrawn_at_rest
    CHECK (NOT withdrawn OR state IN ('delivered', 'failed'));

-- The same metering point and period may be certified again once the certificate
-- for it is withdrawn (with a new certificate id).
DROP INDEX certificates_metering_period_key;
CREATE UNIQUE INDEX certificates_metering_period_key
    ON certificates (metering_point_id, period_start, period_end) WHERE NOT withdrawn;

CREATE TABLE withdrawn_certificates (
    -- The feed's order. Ids are handed out under an advisory lock held until commit,
    -- so they become visible in order and a reader's lastWithdrawnId never skips one.
    id              bigserial PRIMARY KEY,
    registry_name   text NOT NULL,
    certificate_id  uuid NOT NULL,
    -- Persisted before the first send and never rebuilt: every resend sends these bytes.
    transaction     bytea NOT NULL,
    transaction_id  text NOT NULL,
    state           text NOT NULL DEFAULT 'pending'
                    CHECK (state IN ('pending', 'committed', 'failed')),
    reason          text,
    attempts        integer NOT NULL DEFAULT 0,
    -- Which process drives a pending withdrawal now; another takes over after expiry.
    lease_owner     text,
    lease_until     timestamptz,
    withdrawn_at    timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    UNIQUE (registry_name, certificate_id),
    FOREIGN KEY (registry_name, certificate_id) REFERENCES certificates (registry_name, id)
);
CREATE INDEX withdrawn_certificates_pending_idx ON withdrawn_certificates (id) WHERE state = 'pending';
