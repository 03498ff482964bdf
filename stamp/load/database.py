"""Databases of their own on a given PostgreSQL server, for measurements and tests:
created with a unique name, dropped afterwards, so that a run's invariant check and
commit count see that run's rows only."""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from urllib.parse import urlsplit, urlunsplit

import asyncpg


def database_dsn(server_dsn: str, database: str) -> str:
    """The same server and credentials, another database."""
    return urlunsplit(urlsplit(server_dsn)._replace(path=f"/{database}"))


async def create_database(server_dsn: str, prefix: str) -> str:
    """Creates an empty database with a unique name; returns its name."""
    name = f"{prefix}_{os.getpid()}_{secrets.token_hex(4)}"
    conn = await asyncpg.connect(server_dsn)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return name


async def drop_database(server_dsn: str, name: str) -> None:
    conn = await asyncpg.connect(server_dsn)
    try:
        # FORCE: a run that failed half-way may leave sessions open.
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


@asynccontextmanager
async def fresh_database(server_dsn: str, prefix: str) -> AsyncIterator[str]:
    """A new database on the server for the duration of the block; yields its DSN."""
    name = await create_database(server_dsn, prefix)
    try:
        yield database_dsn(server_dsn, name)
    finally:
        await drop_database(server_dsn, name)
