"""Batch intake's SQL (docs/api.md, "Batch intake"): a whole batch of new certificates
stored by one statement over arrays, in one round trip and one transaction, with the
outcome of each certificate; then, for those it did not store, what they collide with.

Each certificate stays atomic on its own: ``ON CONFLICT DO NOTHING`` skips a
certificate that collides (with a stored one, or with one earlier in the same batch)
without failing the others, and a stored certificate gets its ``CertificateStored``
event in the same statement, whose detail names the batch (``batchId``, the id on the
batch's log line).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import asyncpg
import orjson

from stamp.db.queries import CERTIFICATE_RECORD_COLUMNS, NewCertificateRow, record_from_row
from stamp.domain import CertificateKey, CertificateRecord

# Rows go in in request order (ORDER BY n), so when two certificates of one batch
# collide, the earlier one is stored and the later one is told what it collides with.
INSERT_BATCH = f"""
WITH input AS (
    SELECT * FROM unnest($1::text[], $2::uuid[], $3::uuid[], $4::text[], $5::smallint[], $6::bigint[],
                         $7::bigint[], $8::bigint[], $9::text[], $10::text[], $11::text[], $12::bytea[],
                         $13::text[], $15::text[])
        WITH ORDINALITY AS t (registry_name, id, recipient_id, metering_point_id, certificate_type, quantity,
                              period_start, period_end, grid_area, clear_attributes, hashed_attributes,
                              request_digest, lease_owner, traceparent, n)
),
inserted AS (
    INSERT INTO certificates (
        registry_name, id, recipient_id, metering_point_id, certificate_type, quantity,
        period_start, period_end, grid_area, clear_attributes, hashed_attributes,
        request_digest, state, lease_owner, lease_until, traceparent)
    SELECT registry_name, id, recipient_id, metering_point_id, certificate_type, quantity,
           period_start, period_end, grid_area, clear_attributes::jsonb, hashed_attributes::jsonb,
           request_digest, 'stored', lease_owner,
           CASE WHEN lease_owner IS NULL THEN NULL ELSE now() + make_interval(secs => $14) END,
           traceparent
    FROM input ORDER BY n
    ON CONFLICT DO NOTHING
    RETURNING {CERTIFICATE_RECORD_COLUMNS}, certificates.lease_owner
),
event AS (
    INSERT INTO certificate_events (registry_name, certificate_id, event_type, state, detail, instance_id)
    SELECT registry_name, id::uuid, 'CertificateStored', state, jsonb_build_object('batchId', $16::text),
           lease_owner
    FROM inserted
)
SELECT * FROM inserted
"""

# For each certificate not stored: the stored one it collides with — the same
# (registry, id), even withdrawn, else a live one of the metering point whose period
# overlaps (withdrawals.SELECT_CONFLICTING, per row).
SELECT_CONFLICTS = """
SELECT t.n, c.*
FROM unnest($1::text[], $2::uuid[], $3::text[], $4::bigint[], $5::bigint[])
    WITH ORDINALITY AS t (registry_name, id, metering_point_id, period_start, period_end, n)
CROSS JOIN LATERAL (
    SELECT c.registry_name, c.id::text, c.recipient_id::text, c.metering_point_id, c.certificate_type,
           c.quantity, c.period_start, c.period_end, c.grid_area, c.clear_attributes, c.hashed_attributes,
           c.request_digest, c.state, c.withdrawn
    FROM certificates c
    WHERE (c.registry_name = t.registry_name AND c.id = t.id)
       OR (hashtextextended(c.metering_point_id, 0) = hashtextextended(t.metering_point_id, 0)
           AND c.metering_point_id = t.metering_point_id
           AND int8range(c.period_start, c.period_end, '[)') && int8range(t.period_start, t.period_end, '[)')
           AND NOT c.withdrawn)
    ORDER BY (c.registry_name = t.registry_name AND c.id = t.id) DESC, c.period_start
    LIMIT 1
) c
"""


@dataclass(frozen=True, slots=True)
class StoredBatch:
    """What one batch insert stored: each certificate's recipient by key, and the
    records of those leased to this instance (to be admitted at once; a record is
    built only for them, the others are read again by whoever claims them)."""

    recipients: dict[CertificateKey, str]
    leased: list[CertificateRecord]


def _attributes(pairs: tuple[tuple[str, str], ...]) -> str:
    return orjson.dumps([list(pair) for pair in pairs]).decode()


async def insert_batch(
    conn: asyncpg.Pool | asyncpg.Connection,
    rows: Sequence[NewCertificateRow],
    leased: Sequence[bool],
    *,
    lease_owner: str,
    lease_seconds: float,
    batch_id: str,
) -> StoredBatch:
    """Store every row that collides with nothing, in one statement; ``leased[i]``:
    row i is leased to ``lease_owner`` (admitted at once) if it is stored. Each stored
    row's ``CertificateStored`` event names ``batch_id``."""
    result = await conn.fetch(
        INSERT_BATCH,
        [r.content.key.registry for r in rows],
        [r.content.key.certificate_id for r in rows],
        [r.content.recipient_id for r in rows],
        [r.content.metering_point_id for r in rows],
        [r.content.certificate_type for r in rows],
        [r.content.quantity for r in rows],
        [r.content.start for r in rows],
        [r.content.end for r in rows],
        [r.content.grid_area for r in rows],
        [_attributes(r.content.clear_attributes) for r in rows],
        [_attributes(r.content.hashed_attributes) for r in rows],
        [r.request_digest for r in rows],
        [lease_owner if lease else None for lease in leased],
        lease_seconds,
        [r.traceparent for r in rows],
        batch_id,
    )
    recipients: dict[CertificateKey, str] = {}
    admitted: list[CertificateRecord] = []
    for row in result:
        recipients[CertificateKey(row["registry_name"], row["id"])] = row["recipient_id"]
        if row["lease_owner"] is not None:
            admitted.append(record_from_row(row))
    return StoredBatch(recipients, admitted)


async def find_conflicts(
    conn: asyncpg.Pool | asyncpg.Connection, rows: Sequence[NewCertificateRow]
) -> list[asyncpg.Record | None]:
    """For each row, the stored certificate it collides with (None: nothing now)."""
    if not rows:
        return []
    found = await conn.fetch(
        SELECT_CONFLICTS,
        [r.content.key.registry for r in rows],
        [r.content.key.certificate_id for r in rows],
        [r.content.metering_point_id for r in rows],
        [r.content.start for r in rows],
        [r.content.end for r in rows],
    )
    by_index: dict[int, asyncpg.Record] = {row["n"] - 1: row for row in found}
    return [by_index.get(i) for i in range(len(rows))]
