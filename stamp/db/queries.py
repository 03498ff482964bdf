"""All of Stamp's SQL, as named, parameterised statements (docs/database.md).

Every state change is a single statement: a compare-and-set ``UPDATE … WHERE version =
$expected`` whose RETURNING feeds the ``INSERT`` of the history event in the same
statement, so the row and its event commit together and a stale writer changes
nothing (invariant 5).
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from stamp.domain import (
    ACTIVE_STATES,
    CertificateContent,
    CertificateKey,
    CertificateRecord,
    Event,
    Recipient,
    State,
    resume_state,
)
from stamp.lifecycle import Write, WriteKind

ACTIVE = [s.value for s in ACTIVE_STATES]
Conn = asyncpg.Pool | asyncpg.Connection

# --- recipients -------------------------------------------------------------------

INSERT_RECIPIENT = """
INSERT INTO recipients (id, wallet_endpoint_version, wallet_endpoint_url, wallet_public_key)
VALUES ($1, $2, $3, $4)
"""

SELECT_RECIPIENT = """
SELECT id::text, wallet_endpoint_version, wallet_endpoint_url, wallet_public_key
FROM recipients WHERE id = $1
"""

SELECT_RECIPIENTS = """
SELECT id::text, wallet_endpoint_version, wallet_endpoint_url, wallet_public_key
FROM recipients WHERE id = ANY($1::uuid[])
"""

# Exactly one row (the group commit needs one), the URL NULL for an unknown recipient.
SELECT_RECIPIENT_ENDPOINT = """
SELECT (SELECT wallet_endpoint_url FROM recipients WHERE id = $1::uuid) AS wallet_endpoint_url
"""

# Moving a recipient's endpoint: the public key is the recipient's identity and never
# changes, so the statement answers the stored key for the caller to compare.
UPDATE_RECIPIENT_ENDPOINT = """
UPDATE recipients SET wallet_endpoint_url = $2 WHERE id = $1
RETURNING id::text, wallet_endpoint_version, wallet_endpoint_url, wallet_public_key
"""

# Positions for a batch of certificates of one recipient, in one statement (the
# function of migration 0003 locks the recipient row first, then numbers the
# certificates in request order without gaps). Aggregated to exactly one row, as the
# batcher needs, whatever the number of certificates.
ALLOCATE_POSITIONS = """
SELECT coalesce(array_agg(a.out_registry ORDER BY a.out_position), '{}') AS registries,
       coalesce(array_agg(a.out_id ORDER BY a.out_position), '{}') AS ids,
       coalesce(array_agg(a.out_position ORDER BY a.out_position), '{}') AS positions,
       coalesce(array_agg(a.out_version ORDER BY a.out_position), '{}') AS versions
FROM stamp_allocate_positions($1, $2::text[], $3::uuid[], $4::int[], $5, $6) a
"""

# --- certificates: intake -----------------------------------------------------------

COUNT_ACTIVE = """
SELECT count(*) FROM certificates
WHERE state IN ('stored', 'sent_to_registry', 'issued_in_registry', 'marked_as_issued')
"""

COUNT_BY_STATE = "SELECT state, count(*) FROM certificates GROUP BY state"

# --- certificates: reads -------------------------------------------------------------


def _record_columns(t: str) -> str:
    return f"""
{t}.registry_name, {t}.id::text AS id, {t}.recipient_id::text AS recipient_id, {t}.metering_point_id,
{t}.certificate_type, {t}.quantity, {t}.period_start, {t}.period_end, {t}.grid_area,
{t}.clear_attributes, {t}.hashed_attributes, {t}.state, {t}.version, {t}.position, {t}.attempts,
{t}.transaction_id, {t}.transaction, {t}.blinding, {t}.salts, {t}.failed_step, {t}.withdrawn,
{t}.redelivery_requested_at IS NOT NULL AS redelivery, {t}.traceparent
"""


CERTIFICATE_RECORD_COLUMNS = _record_columns("certificates")
"""The columns ``record_from_row`` reads, of the ``certificates`` table (for RETURNING)."""


# Intake: the row and its CertificateStored event in one statement, answered with the
# stored record (exactly one row: all NULL on any conflict, as the group commit needs
# one row per statement).
INSERT_CERTIFICATE = f"""
WITH inserted AS (
    INSERT INTO certificates (
        registry_name, id, recipient_id, metering_point_id, certificate_type, quantity,
        period_start, period_end, grid_area, clear_attributes, hashed_attributes,
        request_digest, state, lease_owner, lease_until, traceparent)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, 'stored',
            $13::text, CASE WHEN $13::text IS NULL THEN NULL ELSE now() + make_interval(secs => $14) END,
            $15::text)
    ON CONFLICT DO NOTHING
    RETURNING {_record_columns("certificates")}, certificates.created_at
),
event AS (
    INSERT INTO certificate_events (registry_name, certificate_id, event_type, state, detail, instance_id)
    SELECT registry_name, id::uuid, 'CertificateStored', state, '{{}}'::jsonb, $13::text FROM inserted
)
SELECT i.* FROM (VALUES (1)) AS one (n) LEFT JOIN inserted i ON true
"""

SELECT_RECORD = f"SELECT {_record_columns('c')} FROM certificates c WHERE registry_name = $1 AND id = $2"

# The certificate with its withdrawal, if any (the registry side of it: its own state).
SELECT_VIEW = """
SELECT c.registry_name, c.id::text AS id, c.recipient_id::text AS recipient_id, c.metering_point_id,
       c.certificate_type, c.quantity, c.period_start, c.period_end, c.grid_area, c.clear_attributes,
       c.hashed_attributes, c.state, c.position, c.transaction_id, c.rejection_reason, c.failed_step,
       c.failure_reason, c.attempts, c.withdrawn, c.created_at, c.updated_at,
       w.id AS withdrawal_id, w.state AS withdrawal_state, w.reason AS withdrawal_reason,
       w.transaction_id AS withdrawal_transaction_id, w.withdrawn_at AS withdrawal_withdrawn_at,
       w.updated_at AS withdrawal_updated_at
FROM certificates c
LEFT JOIN withdrawn_certificates w ON w.registry_name = c.registry_name AND w.certificate_id = c.id
WHERE c.registry_name = $1 AND c.id = $2
"""

SELECT_EVENTS = """
SELECT event_type, state, at, detail FROM certificate_events
WHERE registry_name = $1 AND certificate_id = $2 ORDER BY seq
"""

# Keyset paging over (created_at, registry_name, id); every filter is optional.
LIST_CERTIFICATES = """
SELECT registry_name, id::text AS id, recipient_id::text AS recipient_id, metering_point_id,
       certificate_type, quantity, period_start, period_end, grid_area, state, position,
       transaction_id, rejection_reason, failed_step, failure_reason, attempts, withdrawn,
       created_at, updated_at
FROM certificates
WHERE ($1::text IS NULL OR state = $1)
  AND ($2::uuid IS NULL OR recipient_id = $2)
  AND ($3::text IS NULL OR metering_point_id = $3)
  AND ($4::timestamptz IS NULL OR (created_at, registry_name, id) > ($4, $5, $6::uuid))
ORDER BY created_at, registry_name, id
LIMIT $7
"""

# --- certificates: admission and leases --------------------------------------------

# What a certificate actor drives: an unfinished certificate, or a delivered one whose
# re-delivery was requested (never a withdrawn one: its slice is not sent again). Each
# half matches a partial index (migrations 0001 and 0006).
UNFINISHED = "state IN ('stored', 'sent_to_registry', 'issued_in_registry', 'marked_as_issued')"
REDELIVERY_PENDING = "state = 'delivered' AND redelivery_requested_at IS NOT NULL AND NOT withdrawn"
DRIVEN = f"(({UNFINISHED}) OR ({REDELIVERY_PENDING}))"


def _unleased(condition: str) -> str:
    return f"""SELECT registry_name, id, created_at FROM certificates
    WHERE {condition} AND (lease_owner IS NULL OR lease_until < now())
    ORDER BY created_at LIMIT $3 FOR UPDATE SKIP LOCKED"""


# Certificates that nobody drives (never admitted, or their owner's lease ran out),
# oldest first; SKIP LOCKED lets several instances claim side by side. One ordered,
# limited scan per half, so a large backlog is never read whole.
CLAIM_BACKLOG = f"""
WITH unfinished AS ({_unleased(UNFINISHED)}),
redelivering AS ({_unleased(REDELIVERY_PENDING)})
UPDATE certificates c
SET lease_owner = $1, lease_until = now() + make_interval(secs => $2)
FROM (
    SELECT registry_name, id FROM (
        SELECT * FROM unfinished UNION ALL SELECT * FROM redelivering
    ) candidates
    ORDER BY created_at
    LIMIT $3
) picked
WHERE c.registry_name = picked.registry_name AND c.id = picked.id
RETURNING {_record_columns("c")}
"""

RENEW_LEASES = f"""
UPDATE certificates SET lease_until = now() + make_interval(secs => $2)
WHERE lease_owner = $1 AND {DRIVEN}
"""

# At start-up: whatever this instance drove before it stopped is up for grabs again.
RELEASE_ALL_LEASES = """
UPDATE certificates SET lease_owner = NULL, lease_until = NULL WHERE lease_owner = $1
"""

RELEASE_LEASE = """
UPDATE certificates SET lease_owner = NULL, lease_until = NULL
WHERE registry_name = $1 AND id = $2 AND lease_owner = $3
"""

# --- certificates: transitions --------------------------------------------------------

_TRANSITION = """
WITH changed AS (
    UPDATE certificates
    SET state = $4, version = version + 1, updated_at = now(),
        lease_owner = CASE WHEN $4 IN ('delivered', 'withheld', 'rejected', 'failed') THEN NULL ELSE $5 END,
        lease_until = CASE WHEN $4 IN ('delivered', 'withheld', 'rejected', 'failed') THEN NULL
                           ELSE now() + make_interval(secs => $6) END,
        {assignments}
    WHERE registry_name = $1 AND id = $2 AND version = $3
    RETURNING registry_name, id, version, state, withdrawn
),
event AS (
    INSERT INTO certificate_events (registry_name, certificate_id, event_type, state, detail, instance_id)
    SELECT registry_name, id, $7, state, $8, $5 FROM changed
)
SELECT (SELECT version FROM changed) AS version, (SELECT withdrawn FROM changed) AS withdrawn
"""

RECORD_TRANSACTION = _TRANSITION.format(
    assignments="transaction = $9, transaction_id = $10, blinding = $11, salts = $12, attempts = 0"
)
ADVANCE = _TRANSITION.format(assignments="attempts = 0")
REJECT = _TRANSITION.format(assignments="rejection_reason = $9")
FAIL = _TRANSITION.format(assignments="failed_step = $9, failure_reason = $10, attempts = $11")
# A re-delivery ended, delivered or given up (the event says which): nothing pending.
REDELIVERED = _TRANSITION.format(assignments="redelivery_requested_at = NULL, attempts = 0")

# The recipient's wallet endpoint, read by the writes right before a delivery (the
# CTE ``{cte}`` returns ``recipient_id``): the delivery that follows at once goes
# there without a read of its own (stamp/lifecycle.py). NULL when nothing changed.
_ENDPOINT = """(SELECT r.wallet_endpoint_url FROM recipients r
  WHERE r.id = (SELECT recipient_id FROM {cte})) AS wallet_endpoint_url"""

# The registry committed: issued_in_registry and marked_as_issued have no external
# effect between them, so they are one statement; both events stay in the history,
# in order (the history's sequence follows the ORDER BY of the insert). The delivery
# comes next, so the statement also answers the recipient's endpoint.
ISSUE_AND_MARK = """
WITH changed AS (
    UPDATE certificates
    SET state = 'marked_as_issued', version = version + 1, updated_at = now(), attempts = 0,
        lease_owner = $4, lease_until = now() + make_interval(secs => $5)
    WHERE registry_name = $1 AND id = $2 AND version = $3
    RETURNING registry_name, id, version, withdrawn, recipient_id
),
event AS (
    INSERT INTO certificate_events (registry_name, certificate_id, event_type, state, detail, instance_id)
    SELECT c.registry_name, c.id, e.event_type, e.state, '{}'::jsonb, $4::text
    FROM changed c
    CROSS JOIN (VALUES (1, 'CertificateIssuedInRegistry', 'issued_in_registry'),
                       (2, 'CertificateMarkedAsIssued', 'marked_as_issued')) AS e(n, event_type, state)
    ORDER BY e.n
)
SELECT (SELECT version FROM changed) AS version, (SELECT withdrawn FROM changed) AS withdrawn,
"""
ISSUE_AND_MARK += _ENDPOINT.format(cte="changed") + "\n"

# Before every wallet delivery after the first: only the writer that moves the
# version on may send, so two drivers of one certificate never both deliver ($6 an
# event to record with it, if any, $7 its detail). The same statement records a failed
# wallet attempt the moment it failed (state and attempts unchanged, the lease kept
# through the backoff), so a crash before the next claim loses no attempt. A claim
# also answers the recipient's endpoint: its delivery comes next.
_CLAIM = """
WITH claimed AS (
    UPDATE certificates
    SET version = version + 1, {counted} updated_at = now(),
        lease_owner = $4, lease_until = now() + make_interval(secs => $5)
    WHERE registry_name = $1 AND id = $2 AND version = $3 AND {condition}
    RETURNING registry_name, id, version, state, withdrawn, recipient_id
),
event AS (
    INSERT INTO certificate_events (registry_name, certificate_id, event_type, state, detail, instance_id)
    SELECT registry_name, id, $6::text, state, $7::jsonb, $4 FROM claimed WHERE $6::text IS NOT NULL
)
SELECT (SELECT version FROM claimed) AS version, (SELECT withdrawn FROM claimed) AS withdrawn{endpoint}
"""
_CLAIM_ENDPOINT = ",\n" + _ENDPOINT.format(cte="claimed")
CLAIM_DELIVERY = _CLAIM.format(
    counted="attempts = attempts + 1,", condition="state = 'marked_as_issued'", endpoint=_CLAIM_ENDPOINT
)
CLAIM_REDELIVERY = _CLAIM.format(
    counted="attempts = attempts + 1,",
    condition="state = 'delivered' AND redelivery_requested_at IS NOT NULL AND NOT withdrawn",
    endpoint=_CLAIM_ENDPOINT,
)
RECORD_ATTEMPT_FAILED = _CLAIM.format(counted="", condition="state = $8", endpoint="")

RETRY_FAILED = """
WITH changed AS (
    UPDATE certificates
    SET state = $3, version = version + 1, updated_at = now(), attempts = 0,
        failed_step = NULL, failure_reason = NULL, lease_owner = NULL, lease_until = NULL
    WHERE registry_name = $1 AND id = $2 AND state = 'failed'
    RETURNING registry_name, id, version, state
),
event AS (
    INSERT INTO certificate_events (registry_name, certificate_id, event_type, state, detail)
    SELECT registry_name, id, 'CertificateRetried', state, $4 FROM changed
)
SELECT version FROM changed
"""


# --- functions ---------------------------------------------------------------------------


def content_from_row(row: asyncpg.Record) -> CertificateContent:
    """The content of a stored certificate (the record's columns, or a conflict's)."""
    return CertificateContent(
        key=CertificateKey(row["registry_name"], row["id"]),
        recipient_id=row["recipient_id"],
        metering_point_id=row["metering_point_id"],
        certificate_type=row["certificate_type"],
        quantity=row["quantity"],
        start=row["period_start"],
        end=row["period_end"],
        grid_area=row["grid_area"],
        clear_attributes=tuple((k, v) for k, v in row["clear_attributes"]),
        hashed_attributes=tuple((k, v) for k, v in row["hashed_attributes"]),
    )


def record_from_row(row: asyncpg.Record) -> CertificateRecord:
    return CertificateRecord(
        content=content_from_row(row),
        state=State(row["state"]),
        version=row["version"],
        position=row["position"],
        attempts=row["attempts"],
        transaction_id=row["transaction_id"],
        transaction=row["transaction"],
        blinding=row["blinding"],
        salts=tuple(row["salts"]) if row["salts"] is not None else None,
        failed_step=row["failed_step"],
        redelivery=row["redelivery"],
        withdrawn=row["withdrawn"],
        traceparent=row["traceparent"],
    )


async def insert_recipient(conn: Conn, recipient: Recipient) -> None:
    await conn.execute(
        INSERT_RECIPIENT,
        recipient.id,
        recipient.wallet_endpoint_version,
        recipient.wallet_endpoint_url,
        recipient.wallet_public_key,
    )


async def get_recipient(conn: Conn, recipient_id: str) -> Recipient | None:
    row = await conn.fetchrow(SELECT_RECIPIENT, recipient_id)
    if row is None:
        return None
    return Recipient(
        row["id"], row["wallet_endpoint_version"], row["wallet_endpoint_url"], row["wallet_public_key"]
    )


async def get_recipients(conn: Conn, recipient_ids: Sequence[str]) -> list[Recipient]:
    """The recipients among ``recipient_ids`` that exist, in one query."""
    rows = await conn.fetch(SELECT_RECIPIENTS, list(recipient_ids))
    return [
        Recipient(r["id"], r["wallet_endpoint_version"], r["wallet_endpoint_url"], r["wallet_public_key"])
        for r in rows
    ]


@dataclass(frozen=True, slots=True)
class Lease:
    owner: str
    seconds: float


@dataclass(frozen=True, slots=True)
class NewCertificateRow:
    """A certificate to store: its content and the digest of the request that posted
    it (an identical re-post is recognised by it)."""

    content: CertificateContent
    request_digest: bytes
    traceparent: str | None = None  # the intake's trace context (stamp/tracing.py), when on


async def insert_certificate(
    conn: Conn, new: NewCertificateRow, lease: Lease | None = None
) -> CertificateRecord | None:
    """Store a new certificate with its CertificateStored event; None on any conflict.
    With a lease, this instance drives it at once and no other instance claims it."""
    return stored_record(await conn.fetchrow(INSERT_CERTIFICATE, *insert_certificate_args(new, lease)))


def stored_record(row: asyncpg.Record | None) -> CertificateRecord | None:
    """The record an intake insert answered; None when it conflicted."""
    if row is None or row["created_at"] is None:
        return None
    return record_from_row(row)


def insert_certificate_args(new: NewCertificateRow, lease: Lease | None) -> tuple[Any, ...]:
    c = new.content
    return (
        c.key.registry,
        c.key.certificate_id,
        c.recipient_id,
        c.metering_point_id,
        c.certificate_type,
        c.quantity,
        c.start,
        c.end,
        c.grid_area,
        [list(a) for a in c.clear_attributes],
        [list(a) for a in c.hashed_attributes],
        new.request_digest,
        lease.owner if lease else None,
        lease.seconds if lease else 0.0,
        new.traceparent,
    )


async def count_active(conn: Conn) -> int:
    return int(await conn.fetchval(COUNT_ACTIVE))


async def count_by_state(conn: Conn) -> dict[str, int]:
    return {row["state"]: row["count"] for row in await conn.fetch(COUNT_BY_STATE)}


async def get_record(conn: Conn, key: CertificateKey) -> CertificateRecord | None:
    row = await conn.fetchrow(SELECT_RECORD, key.registry, key.certificate_id)
    return None if row is None else record_from_row(row)


async def get_view(conn: Conn, key: CertificateKey) -> tuple[asyncpg.Record, list[asyncpg.Record]] | None:
    row = await conn.fetchrow(SELECT_VIEW, key.registry, key.certificate_id)
    if row is None:
        return None
    events = await conn.fetch(SELECT_EVENTS, key.registry, key.certificate_id)
    return row, events


async def list_certificates(
    conn: Conn,
    *,
    state: str | None,
    recipient_id: str | None,
    metering_point_id: str | None,
    after: tuple[datetime, str, str] | None,
    limit: int,
) -> list[asyncpg.Record]:
    after_at, after_registry, after_id = after if after else (None, None, None)
    return list(
        await conn.fetch(
            LIST_CERTIFICATES,
            state,
            recipient_id,
            metering_point_id,
            after_at,
            after_registry,
            after_id,
            limit,
        )
    )


@dataclass(frozen=True, slots=True)
class AllocatedPosition:
    key: CertificateKey
    position: int
    version: int


async def allocate_positions(
    conn: Conn,
    recipient_id: str,
    wanted: Sequence[tuple[CertificateKey, int]],
    *,
    lease_owner: str,
    lease_seconds: float,
) -> list[AllocatedPosition]:
    """Give each (certificate, expected version) the recipient's next position, in
    order; certificates that are stale or already have one are left out."""
    row = await conn.fetchrow(
        ALLOCATE_POSITIONS, *allocate_positions_args(recipient_id, wanted, lease_owner, lease_seconds)
    )
    assert row is not None  # an aggregate always answers one row
    return allocated_positions(row)


def allocate_positions_args(
    recipient_id: str, wanted: Sequence[tuple[CertificateKey, int]], lease_owner: str, lease_seconds: float
) -> tuple[Any, ...]:
    return (
        recipient_id,
        [k.registry for k, _ in wanted],
        [k.certificate_id for k, _ in wanted],
        [v for _, v in wanted],
        lease_owner,
        lease_seconds,
    )


def allocated_positions(row: asyncpg.Record) -> list[AllocatedPosition]:
    return [
        AllocatedPosition(CertificateKey(registry, certificate_id), position, version)
        for registry, certificate_id, position, version in zip(
            row["registries"], row["ids"], row["positions"], row["versions"], strict=True
        )
    ]


async def claim_backlog(
    conn: Conn, *, owner: str, lease_seconds: float, limit: int
) -> list[CertificateRecord]:
    rows = await conn.fetch(CLAIM_BACKLOG, owner, lease_seconds, limit)
    return [record_from_row(r) for r in rows]


async def renew_leases(conn: Conn, *, owner: str, lease_seconds: float) -> None:
    await conn.execute(RENEW_LEASES, owner, lease_seconds)


async def release_all_leases(conn: Conn, owner: str) -> int:
    status: str = await conn.execute(RELEASE_ALL_LEASES, owner)
    return int(status.split()[-1])


async def release_lease(conn: Conn, key: CertificateKey, owner: str) -> None:
    await conn.execute(RELEASE_LEASE, key.registry, key.certificate_id, owner)


async def transition(
    conn: Conn,
    sql: str,
    key: CertificateKey,
    expected_version: int,
    new_state: State,
    event: Event,
    detail: dict[str, Any],
    lease: Lease,
    *extra: Any,
) -> int | None:
    """Apply one compare-and-set transition; the new version, or None when stale."""
    version: int | None = await conn.fetchval(
        sql, *transition_args(key, expected_version, new_state, event, detail, lease, *extra)
    )
    return version


def transition_args(
    key: CertificateKey,
    expected_version: int,
    new_state: State,
    event: Event,
    detail: dict[str, Any],
    lease: Lease,
    *extra: Any,
) -> tuple[Any, ...]:
    return (
        key.registry,
        key.certificate_id,
        expected_version,
        new_state.value,
        lease.owner,
        lease.seconds,
        event.value,
        detail,
        *extra,
    )


async def claim_delivery(conn: Conn, key: CertificateKey, expected_version: int, lease: Lease) -> int | None:
    version: int | None = await conn.fetchval(
        CLAIM_DELIVERY, *claim_delivery_args(key, expected_version, lease)
    )
    return version


def claim_delivery_args(
    key: CertificateKey,
    expected_version: int,
    lease: Lease,
    event: Event | None = None,
    detail: dict[str, Any] | None = None,
) -> tuple[Any, ...]:
    return (
        key.registry,
        key.certificate_id,
        expected_version,
        lease.owner,
        lease.seconds,
        event.value if event else None,
        detail or {},
    )


# A certificate whose driver keeps crashing: an unfinished one fails; a delivered one
# whose re-delivery was asked for stays delivered and its re-delivery ends failed (its
# slice was delivered once; only the repeat is given up). Either way it is no longer
# driven, and the event says why.
FAIL_AFTER_CRASHES = """
WITH failed AS (
    UPDATE certificates
    SET state = 'failed', version = version + 1, updated_at = now(), failed_step = $3,
        failure_reason = $4, attempts = $5, lease_owner = NULL, lease_until = NULL
    WHERE registry_name = $1 AND id = $2
      AND state IN ('stored', 'sent_to_registry', 'issued_in_registry', 'marked_as_issued')
    RETURNING registry_name, id, state
),
redelivery_ended AS (
    UPDATE certificates
    SET redelivery_requested_at = NULL, version = version + 1, updated_at = now(), attempts = 0,
        lease_owner = NULL, lease_until = NULL
    WHERE registry_name = $1 AND id = $2 AND state = 'delivered' AND redelivery_requested_at IS NOT NULL
    RETURNING registry_name, id, state
),
event AS (
    INSERT INTO certificate_events (registry_name, certificate_id, event_type, state, detail)
    SELECT registry_name, id, 'CertificateFailed', state,
           jsonb_build_object('step', $3::text, 'reason', $4::text, 'attempts', $5::int)
    FROM failed
    UNION ALL
    SELECT registry_name, id, 'CertificateRedeliveryFailed', state,
           jsonb_build_object('reason', $4::text, 'crashes', $5::int)
    FROM redelivery_ended
)
SELECT (SELECT count(*) FROM failed) + (SELECT count(*) FROM redelivery_ended)
"""


async def fail_after_crashes(conn: Conn, key: CertificateKey, step: str, reason: str, attempts: int) -> bool:
    """Unconditional (not versioned): the actor that would own the version is dead.
    An unfinished certificate fails; a pending re-delivery ends failed."""
    return bool(
        await conn.fetchval(FAIL_AFTER_CRASHES, key.registry, key.certificate_id, step, reason, attempts)
    )


SELECT_FAILED_FOR_RETRY = """
SELECT state, failed_step, failure_reason, attempts, transaction IS NOT NULL AS has_transaction, withdrawn
FROM certificates WHERE registry_name = $1 AND id = $2 FOR UPDATE
"""


@dataclass(frozen=True, slots=True)
class RetryOutcome:
    found: bool
    state: State | None  # the state it resumes from; None when it was not failed
    previous_state: str | None = None


async def retry_failed(conn: asyncpg.Connection | PoolConnectionProxy, key: CertificateKey) -> RetryOutcome:
    """Operator retry: a failed certificate resumes from the step that failed, with
    its persisted position, R and transaction. Anything else is left as it is."""
    async with conn.transaction():
        row = await conn.fetchrow(SELECT_FAILED_FOR_RETRY, key.registry, key.certificate_id)
        if row is None:
            return RetryOutcome(False, None)
        if row["withdrawn"] and not row["has_transaction"]:
            # Its withdrawal is moot because it never reached the registry: it stays so.
            return RetryOutcome(True, None, "withdrawn")
        if row["state"] != State.FAILED:
            return RetryOutcome(True, None, row["state"])
        resume = resume_state(row["failed_step"], row["has_transaction"])
        detail = {"from": row["failed_step"], "reason": row["failure_reason"], "attempts": row["attempts"]}
        await conn.fetchval(RETRY_FAILED, key.registry, key.certificate_id, resume.value, detail)
        return RetryOutcome(True, resume)


_WRITES = {
    WriteKind.RECORD_TRANSACTION: RECORD_TRANSACTION,
    WriteKind.ADVANCE: ADVANCE,
    WriteKind.WITHHOLD: ADVANCE,
    WriteKind.REJECT: REJECT,
    WriteKind.FAIL: FAIL,
    WriteKind.REDELIVERED: REDELIVERED,
}
_CLAIMS = {
    WriteKind.CLAIM_DELIVERY: CLAIM_DELIVERY,
    WriteKind.CLAIM_REDELIVERY: CLAIM_REDELIVERY,
    WriteKind.ATTEMPT_FAILED: RECORD_ATTEMPT_FAILED,
}


def lifecycle_write(key: CertificateKey, write: Write, lease: Lease) -> tuple[str, tuple[Any, ...]]:
    """The statement and arguments of one write of the lifecycle (stamp/lifecycle.py)."""
    if write.kind in _CLAIMS:
        args = claim_delivery_args(key, write.expected, lease, write.event, dict(write.detail))
        if write.kind is WriteKind.ATTEMPT_FAILED:
            args = (*args, write.state.value)
        return _CLAIMS[write.kind], args
    if write.kind is WriteKind.ISSUE_AND_MARK:
        return ISSUE_AND_MARK, (key.registry, key.certificate_id, write.expected, lease.owner, lease.seconds)
    assert write.event is not None
    extra: tuple[Any, ...] = ()
    if write.kind is WriteKind.RECORD_TRANSACTION:
        c = write.changes
        extra = (c["transaction"], c["transaction_id"], c["blinding"], list(c["salts"]))
    elif write.kind is WriteKind.REJECT:
        extra = (write.detail["reason"],)
    elif write.kind is WriteKind.FAIL:
        extra = (write.detail["step"], write.detail["reason"], write.detail["attempts"])
    args = transition_args(key, write.expected, write.state, write.event, dict(write.detail), lease, *extra)
    return _WRITES[write.kind], args


# --- re-delivery and moved endpoints -------------------------------------------------------

# Re-delivery requests, one page per statement (its own transaction): the next $8
# delivered certificates the filters select ($1 a recipient, $2/$3 one certificate, $4
# delivered at or after), after the keyset ($5, $6, $7) in (created_at, registry_name,
# id) order (the recipient index), locked, and those not withdrawn nor already pending
# marked, each with its CertificateRedeliveryRequested event: every page is durable
# before the request is answered, and a page never locks more than $8 rows.
REQUEST_REDELIVERY = """
WITH candidates AS (
    SELECT c.registry_name, c.id, c.created_at, c.withdrawn, c.redelivery_requested_at IS NOT NULL AS pending
    FROM certificates c
    WHERE c.state = 'delivered'
      AND ($1::uuid IS NULL OR c.recipient_id = $1::uuid)
      AND ($2::text IS NULL OR (c.registry_name = $2::text AND c.id = $3::uuid))
      AND ($4::timestamptz IS NULL OR EXISTS (
          SELECT 1 FROM certificate_events e
          WHERE e.registry_name = c.registry_name AND e.certificate_id = c.id
            AND e.event_type IN ('CertificateSentToWallet', 'CertificateRedelivered')
            AND e.at >= $4::timestamptz))
      AND ($5::timestamptz IS NULL OR (c.created_at, c.registry_name, c.id) > ($5, $6::text, $7::uuid))
    ORDER BY c.created_at, c.registry_name, c.id
    LIMIT $8
    FOR UPDATE OF c
),
changed AS (
    UPDATE certificates c
    SET redelivery_requested_at = now(), version = c.version + 1, updated_at = now(), attempts = 0
    FROM candidates k
    WHERE c.registry_name = k.registry_name AND c.id = k.id AND NOT k.withdrawn AND NOT k.pending
    RETURNING c.registry_name, c.id, c.state
),
event AS (
    INSERT INTO certificate_events (registry_name, certificate_id, event_type, state, detail)
    SELECT registry_name, id, 'CertificateRedeliveryRequested', state, '{}'::jsonb FROM changed
)
SELECT registry_name, id::text AS id, created_at, withdrawn, pending
FROM candidates ORDER BY created_at, registry_name, id
"""

REDELIVERY_PAGE = 2000
"""Certificates a re-delivery request locks and marks per transaction: a recipient with
hundreds of thousands of them is requested page by page, never in one long lock."""

SELECT_STATE = """
SELECT state, withdrawn FROM certificates WHERE registry_name = $1 AND id = $2
"""


class Redelivery(enum.StrEnum):
    """What a re-delivery request did to one certificate."""

    REQUESTED = "requested"
    ALREADY_REQUESTED = "alreadyRequested"  # pending from an earlier request: left as it is
    WITHDRAWN = "withdrawn"  # never re-delivered


@dataclass(frozen=True, slots=True)
class RedeliveryRequested:
    key: CertificateKey
    outcome: Redelivery


async def request_redelivery(
    conn: Conn,
    *,
    recipient_id: str | None = None,
    key: CertificateKey | None = None,
    delivered_since: datetime | None = None,
    page: int = REDELIVERY_PAGE,
) -> list[RedeliveryRequested]:
    """Ask for the re-delivery of delivered certificates (one, or a recipient's);
    each certificate selected, with what the request did to it.

    Page by page, each its own transaction when ``conn`` is not inside one: an
    interrupted request keeps the pages it wrote, and repeating it finds those
    certificates ``alreadyRequested`` (nothing is queued twice)."""
    outcomes: list[RedeliveryRequested] = []
    after: tuple[datetime | None, str | None, str | None] = (None, None, None)
    while True:
        rows = await conn.fetch(
            REQUEST_REDELIVERY,
            recipient_id,
            key.registry if key else None,
            key.certificate_id if key else None,
            delivered_since,
            *after,
            page,
        )
        outcomes.extend(
            RedeliveryRequested(
                CertificateKey(r["registry_name"], r["id"]),
                Redelivery.WITHDRAWN
                if r["withdrawn"]
                else Redelivery.ALREADY_REQUESTED
                if r["pending"]
                else Redelivery.REQUESTED,
            )
            for r in rows
        )
        if len(rows) < page:
            return outcomes
        last = rows[-1]
        after = (last["created_at"], last["registry_name"], last["id"])


async def certificate_state(conn: Conn, key: CertificateKey) -> tuple[State, bool] | None:
    """The certificate's state and whether it is withdrawn; None when it is unknown."""
    row = await conn.fetchrow(SELECT_STATE, key.registry, key.certificate_id)
    return None if row is None else (State(row["state"]), row["withdrawn"])


async def move_recipient_endpoint(conn: Conn, recipient_id: str, url: str) -> Recipient | None:
    """Point the recipient at a new wallet endpoint; None when it is unknown."""
    row = await conn.fetchrow(UPDATE_RECIPIENT_ENDPOINT, recipient_id, url)
    if row is None:
        return None
    return Recipient(
        row["id"], row["wallet_endpoint_version"], row["wallet_endpoint_url"], row["wallet_public_key"]
    )
