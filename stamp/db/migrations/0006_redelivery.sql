-- Re-delivery of a delivered certificate's slice (docs/api.md "Re-delivering slices"):
-- the operator's request, recorded before it is answered. A certificate with a request
-- pending is in the backlog like an unfinished one (claimed, leased, resumed after a
-- crash) until the re-delivery ends; withdrawn certificates are never claimed for it.

ALTER TABLE certificates ADD COLUMN redelivery_requested_at timestamptz;

-- The backlog scan's second half (queries.DRIVEN), so it never reads every delivered row.
CREATE INDEX certificates_redelivery_pending_idx ON certificates (created_at)
    WHERE state = 'delivered' AND redelivery_requested_at IS NOT NULL AND NOT withdrawn;
