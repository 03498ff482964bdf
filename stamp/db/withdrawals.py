"""The SQL of certificate withdrawal (docs/database.md).

A withdrawal record, its signed transaction, the certificate's ``withdrawn`` flag and
the history event are written by one statement; every later change of a withdrawal
is a compare-and-set from ``pending`` that appends its event in the same statement,
so a second driver of the same withdrawal changes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from stamp.db.queries import Conn, Lease, NewCertificateRow
from stamp.domain import CertificateKey, State
from stamp.withdrawal import ISSUED_STATES, Withdrawal, WithdrawalEvent, WithdrawalState

Connection = asyncpg.Connection | PoolConnectionProxy

# Any fixed 64-bit key: "Stamp's withdrawal feed". Held until commit by whoever hands
# out withdrawal ids, so ids become visible in the order they were handed out.
FEED_LOCK_KEY = 0x5354414D50_0002  # "STAMP", 2

LOCK_FEED = "SELECT pg_advisory_xact_lock($1)"

SELECT_TARGET = """
SELECT c.grid_area, c.state, c.failed_step, c.withdrawn, c.transaction IS NOT NULL AS has_transaction,
       w.id AS withdrawal_id, w.state AS withdrawal_state, w.reason AS withdrawal_reason,
       w.withdrawn_at
FROM certificates c
LEFT JOIN withdrawn_certificates w ON w.registry_name = c.registry_name AND w.certificate_id = c.id
WHERE c.registry_name = $1 AND c.id = $2
FOR UPDATE OF c
"""

INSERT_WITHDRAWAL = """
WITH withdrawal AS (
    INSERT INTO withdrawn_certificates (
        registry_name, certificate_id, transaction, transaction_id, lease_owner, lease_until)
    VALUES ($1, $2, $3, $4, $5::text,
            CASE WHEN $5::text IS NULL THEN NULL ELSE now() + make_interval(secs => $6) END)
    RETURNING id, registry_name, certificate_id, transaction_id, withdrawn_at
),
-- The version is not moved on: a driver of the certificate keeps its writes (a
-- delivery already on its way is recorded as it happened) and learns of the flag
-- from the answer of its next write (stamp/lifecycle.py).
flagged AS (
    UPDATE certificates c SET withdrawn = true, updated_at = now()
    FROM withdrawal w
    WHERE c.registry_name = w.registry_name AND c.id = w.certificate_id
    RETURNING c.registry_name, c.id, c.state
),
event AS (
    INSERT INTO certificate_events (registry_name, certificate_id, event_type, state, detail)
    SELECT f.registry_name, f.id, $7, f.state,
           jsonb_build_object('withdrawalId', w.id, 'transactionId', w.transaction_id)
    FROM flagged f, withdrawal w
)
SELECT id, withdrawn_at FROM withdrawal
"""

# The history event of a withdrawal's change, in the same statement as the change.
_WITH_EVENT = """
WITH changed AS (
    {update}
    RETURNING id, registry_name, certificate_id, transaction, transaction_id, withdrawn_at
),
event AS (
    INSERT INTO certificate_events (registry_name, certificate_id, event_type, state, detail)
    SELECT c.registry_name, c.id, $2, c.state, $3
    FROM changed ch JOIN certificates c ON c.registry_name = ch.registry_name AND c.id = ch.certificate_id
)
SELECT id, registry_name, certificate_id::text AS certificate_id, transaction, transaction_id, withdrawn_at
FROM changed
"""

RECORD_OUTCOME = _WITH_EVENT.format(
    update="""
    UPDATE withdrawn_certificates
    SET state = $4, reason = $5, attempts = $6, lease_owner = NULL, lease_until = NULL, updated_at = now()
    WHERE id = $1 AND state = 'pending'"""
)

# An operator re-drives a failed withdrawal: the same persisted transaction again.
REDRIVE_FAILED = _WITH_EVENT.format(
    update="""
    UPDATE withdrawn_certificates
    SET state = 'pending', reason = NULL, attempts = 0, updated_at = now(),
        lease_owner = $4, lease_until = now() + make_interval(secs => $5)
    WHERE id = $1 AND state = 'failed'"""
)

# Pending withdrawals that nobody drives and whose certificate's issuance is committed:
# never leased (waiting until now, or released by a stopped instance) or with an
# expired lease. What this instance drives keeps a live lease (the supervisor's sweep
# renews it), so it is not claimed again. A withdrawal waiting for its issuance stays
# unleased.
CLAIM_PENDING = """
UPDATE withdrawn_certificates w
SET lease_owner = $1, lease_until = now() + make_interval(secs => $2)
FROM (
    SELECT p.id FROM withdrawn_certificates p
    JOIN certificates c ON c.registry_name = p.registry_name AND c.id = p.certificate_id
    WHERE p.state = 'pending'
      AND (p.lease_owner IS NULL OR p.lease_until < now())
      -- stamp.withdrawal.course is SEND ($4: ISSUED_STATES)
      AND (c.state = ANY($4::text[]) OR (c.state = 'failed' AND c.failed_step = 'wallet'))
    ORDER BY p.id
    LIMIT $3
    FOR UPDATE OF p SKIP LOCKED
) picked
WHERE w.id = picked.id
RETURNING w.id, w.registry_name, w.certificate_id::text AS certificate_id, w.transaction,
          w.transaction_id, w.withdrawn_at
"""

# Pending withdrawals whose certificate will never be in the registry: moot, with the
# history event, in one statement ($1: one withdrawal, or NULL for all of them).
SETTLE_MOOT = """
WITH changed AS (
    UPDATE withdrawn_certificates w
    SET state = 'moot', reason = CASE WHEN c.state = 'rejected' THEN $2 ELSE $3 END,
        lease_owner = NULL, lease_until = NULL, updated_at = now()
    FROM certificates c
    WHERE c.registry_name = w.registry_name AND c.id = w.certificate_id
      AND w.state = 'pending' AND ($1::bigint IS NULL OR w.id = $1)
      -- stamp.withdrawal.course is MOOT
      AND (c.state = 'rejected' OR (c.state = 'failed' AND c.transaction IS NULL))
    RETURNING w.id, w.registry_name, w.certificate_id, w.reason, c.state
),
event AS (
    INSERT INTO certificate_events (registry_name, certificate_id, event_type, state, detail)
    SELECT registry_name, certificate_id, $4, state,
           jsonb_build_object('withdrawalId', id, 'reason', reason)
    FROM changed
)
SELECT count(*) FROM changed
"""
MOOT_REJECTED = "the registry rejected the certificate's issuance: there is no stream to withdraw"
MOOT_NEVER_SENT = (
    "the certificate failed before its transaction was built and was never sent to the registry: "
    "there is no stream to withdraw"
)

# Withdrawals waiting for their certificate's issuance (never leased): the sweep
# comes back sooner while there are any.
COUNT_WAITING = "SELECT count(*) FROM withdrawn_certificates WHERE state = 'pending' AND lease_owner IS NULL"

# Like the certificates' leases: renewed by owner while the instance lives, released
# when it stops or starts (what it drove is then claimed again, by it or another).
RENEW_LEASES = """
UPDATE withdrawn_certificates SET lease_until = now() + make_interval(secs => $2)
WHERE lease_owner = $1 AND state = 'pending'
"""

RELEASE_ALL_LEASES = """
UPDATE withdrawn_certificates SET lease_owner = NULL, lease_until = NULL WHERE lease_owner = $1
"""

FEED_PAGE = """
SELECT id, registry_name, certificate_id::text AS certificate_id, withdrawn_at
FROM withdrawn_certificates
WHERE id > $1 AND state <> 'moot'
ORDER BY id
LIMIT $2 OFFSET $3
"""

FEED_TOTAL = "SELECT count(*) FROM withdrawn_certificates WHERE id > $1 AND state <> 'moot'"

SELECT_WITHDRAWAL = """
SELECT id, state, reason, attempts, transaction, transaction_id, withdrawn_at
FROM withdrawn_certificates WHERE registry_name = $1 AND certificate_id = $2
"""

# The certificate a new one collides with: the same key (withdrawn or not, first), else
# a live certificate of the metering point whose period overlaps (the exclusion
# constraint of migrations 0004 and 0009; the expressions and predicate match its GiST
# index, whose leading column is the metering point's hash). A withdrawn certificate
# no longer holds its period; the answer says whether the row is withdrawn.
SELECT_CONFLICTING = """
SELECT registry_name, id::text, recipient_id::text, metering_point_id, certificate_type,
       quantity, period_start, period_end, grid_area, clear_attributes, hashed_attributes,
       request_digest, state, withdrawn
FROM certificates
WHERE (registry_name = $1 AND id = $2)
   OR (hashtextextended(metering_point_id, 0) = hashtextextended($3, 0)
       AND metering_point_id = $3
       AND int8range(period_start, period_end, '[)') && int8range($4, $5, '[)')
       AND NOT withdrawn)
ORDER BY (registry_name = $1 AND id = $2) DESC, period_start
LIMIT 1
"""


# --- values ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WithdrawalTarget:
    """A certificate about to be withdrawn, and its withdrawal if it has one."""

    grid_area: str
    state: State
    failed_step: str | None
    withdrawn: bool
    has_transaction: bool
    withdrawal_id: int | None
    withdrawal_state: WithdrawalState | None
    withdrawal_reason: str | None
    withdrawn_at: datetime | None


@dataclass(frozen=True, slots=True)
class FeedPage:
    rows: list[asyncpg.Record]
    total: int


def _withdrawal(row: asyncpg.Record) -> Withdrawal:
    return Withdrawal(
        id=row["id"],
        key=CertificateKey(row["registry_name"], row["certificate_id"]),
        transaction_id=row["transaction_id"],
        withdrawn_at=row["withdrawn_at"],
        transaction=bytes(row["transaction"]),
    )


# --- the HTTP edge ----------------------------------------------------------------------------


async def lock_target(conn: Connection, key: CertificateKey) -> WithdrawalTarget | None:
    """Inside a transaction: serialise with every other withdrawal (the feed lock), lock
    the certificate row and read what deciding about its withdrawal needs."""
    await conn.execute(LOCK_FEED, FEED_LOCK_KEY)
    row = await conn.fetchrow(SELECT_TARGET, key.registry, key.certificate_id)
    if row is None:
        return None
    return WithdrawalTarget(
        grid_area=row["grid_area"],
        state=State(row["state"]),
        failed_step=row["failed_step"],
        withdrawn=row["withdrawn"],
        has_transaction=row["has_transaction"],
        withdrawal_id=row["withdrawal_id"],
        withdrawal_state=WithdrawalState(row["withdrawal_state"]) if row["withdrawal_state"] else None,
        withdrawal_reason=row["withdrawal_reason"],
        withdrawn_at=row["withdrawn_at"],
    )


async def insert_withdrawal(
    conn: Connection, key: CertificateKey, transaction: bytes, transaction_id: str, lease: Lease | None
) -> Withdrawal:
    """Store the withdrawal with its transaction, flag the certificate withdrawn and
    append ``CertificateWithdrawn``: one statement, after ``lock_target``. Without a
    lease it waits, unleased, for the certificate's issuance."""
    row = await conn.fetchrow(
        INSERT_WITHDRAWAL,
        key.registry,
        key.certificate_id,
        transaction,
        transaction_id,
        lease.owner if lease else None,
        lease.seconds if lease else 0.0,
        WithdrawalEvent.WITHDRAWN.value,
    )
    assert row is not None  # the insert either returns its row or raises
    return Withdrawal(row["id"], key, transaction_id, row["withdrawn_at"], transaction)


async def redrive_failed(
    conn: Connection, withdrawal_id: int, lease: Lease, previous_reason: str | None
) -> Withdrawal | None:
    """A failed withdrawal is pending again, with the same transaction; None when it
    was not failed (any more)."""
    detail = {"withdrawalId": withdrawal_id, "previousReason": previous_reason}
    row = await conn.fetchrow(
        REDRIVE_FAILED,
        withdrawal_id,
        WithdrawalEvent.RETRIED.value,
        detail,
        lease.owner,
        lease.seconds,
    )
    return None if row is None else _withdrawal(row)


async def find_conflicting(conn: Conn, new: NewCertificateRow) -> asyncpg.Record | None:
    """The stored certificate a new one collides with: the same (registry, id), even
    withdrawn, or one of the same metering point, not withdrawn, whose period overlaps."""
    c = new.content
    return await conn.fetchrow(
        SELECT_CONFLICTING, c.key.registry, c.key.certificate_id, c.metering_point_id, c.start, c.end
    )


async def feed(conn: Connection, *, after_id: int, skip: int, limit: int) -> FeedPage:
    """Withdrawals with an id above ``after_id`` in id order; ``total`` counts them all."""
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        rows = await conn.fetch(FEED_PAGE, after_id, limit, skip)
        total = await conn.fetchval(FEED_TOTAL, after_id)
    return FeedPage(list(rows), int(total))


async def get_withdrawal(conn: Conn, key: CertificateKey) -> asyncpg.Record | None:
    return await conn.fetchrow(SELECT_WITHDRAWAL, key.registry, key.certificate_id)


# --- the withdrawal actor and the supervisor's lease sweep -----------------------------------


async def record_outcome(
    conn: Conn,
    withdrawal_id: int,
    state: WithdrawalState,
    event: WithdrawalEvent,
    detail: dict[str, Any],
    *,
    reason: str | None = None,
    attempts: int = 0,
) -> bool:
    """Settle a pending withdrawal (committed or failed) with its history event; False
    when it was not pending (another driver settled it)."""
    row = await conn.fetchrow(
        RECORD_OUTCOME, withdrawal_id, event.value, detail, state.value, reason, attempts
    )
    return row is not None


async def claim_pending(conn: Conn, *, lease: Lease, limit: int) -> list[Withdrawal]:
    """Lease pending withdrawals whose certificate's issuance is committed and that
    nobody drives."""
    rows = await conn.fetch(
        CLAIM_PENDING, lease.owner, lease.seconds, limit, [s.value for s in ISSUED_STATES]
    )
    return [_withdrawal(r) for r in rows]


async def settle_moot(conn: Conn | Connection, withdrawal_id: int | None = None) -> int:
    """Mark moot the pending withdrawals (or the one) whose certificate will never be
    in the registry; how many."""
    return int(
        await conn.fetchval(
            SETTLE_MOOT, withdrawal_id, MOOT_REJECTED, MOOT_NEVER_SENT, WithdrawalEvent.MOOT.value
        )
    )


async def count_waiting(conn: Conn) -> int:
    return int(await conn.fetchval(COUNT_WAITING))


async def renew_leases(conn: Conn, *, lease: Lease) -> None:
    await conn.execute(RENEW_LEASES, lease.owner, lease.seconds)


async def release_all_leases(conn: Conn, owner: str) -> int:
    status: str = await conn.execute(RELEASE_ALL_LEASES, owner)
    return int(status.split()[-1])
