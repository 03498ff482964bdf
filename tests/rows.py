"""Rows written straight into Stamp's tables, for tests of the database layer alone."""

from __future__ import annotations

import uuid

import asyncpg


async def insert_recipient(db: asyncpg.Connection | asyncpg.Pool) -> str:
    """A recipient with a placeholder wallet and key; its id."""
    recipient = str(uuid.uuid4())
    await db.execute(
        "INSERT INTO recipients (id, wallet_endpoint_version, wallet_endpoint_url, wallet_public_key) "
        "VALUES ($1, 1, 'http://wallet.example/v1/slices', $2)",
        recipient,
        bytes(74),
    )
    return recipient
