"""PostgreSQL away → valid requests answer 503 with Retry-After and nothing is written
(issue 14, item 4). Stamp reaches the test database through a loopback proxy that the
test cuts, so no other test session loses its server."""

from __future__ import annotations

import uuid
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp
import asyncpg
import pytest
from aiohttp import web

from stamp.api.problems import problem_middleware
from tests.stack import REGISTRY, Stack, certificate_body, loopback_host, running_stack
from tests.tcp_proxy import TcpProxy
from tests.waiting import wait_until

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def _ready(stack: Stack) -> bool:
    async with stack.http.get(f"{stack.base}/health/ready") as r:
        return r.status == 200


async def test_valid_requests_while_postgresql_is_away_get_503_and_leave_nothing(
    clean_db: asyncpg.Pool, database_dsn: str, tmp_path: Path
) -> None:
    proxy = TcpProxy.for_dsn(database_dsn)
    await proxy.start()
    try:
        async with running_stack(proxy.dsn(database_dsn), tmp_path) as stack:
            recipient = await stack.create_recipient()
            before = certificate_body(recipient)
            assert (await stack.post_certificate(before))[0] == 202
            await stack.wait_terminal([(REGISTRY, before["certificate"]["id"])])

            await proxy.cut()
            bodies = [certificate_body(recipient) for _ in range(5)]
            for body in bodies:
                async with stack.http.post(f"{stack.base}/v1/certificates", json=body) as r:
                    problem = await r.json(content_type=None)
                    assert r.status == 503, problem
                    assert int(r.headers["Retry-After"]) > 0
                    assert r.content_type == "application/problem+json"
                    assert problem["status"] == 503
            wallet = stack.wallet.create_endpoint()
            async with stack.http.post(
                f"{stack.base}/v1/recipients", json={"walletEndpointReference": wallet.as_json()}
            ) as r:
                assert r.status == 503 and "Retry-After" in r.headers
            async with stack.http.get(f"{stack.base}/health/ready") as r:
                assert r.status == 503

            await proxy.start()
            await wait_until(lambda: _ready(stack), what="ready again", timeout=30)
            ids = [b["certificate"]["id"] for b in bodies]
            assert (
                await clean_db.fetchval("SELECT count(*) FROM certificates WHERE id = ANY($1::uuid[])", ids)
                == 0
            )
            assert await clean_db.fetchval("SELECT count(*) FROM recipients") == 1
            # The client's retry after Retry-After is accepted and issued as usual.
            for body in bodies:
                assert (await stack.post_certificate(body))[0] == 202
            states = await stack.wait_terminal([(REGISTRY, i) for i in ids])
            assert set(states.values()) == {"delivered"}
    finally:
        await proxy.cut()


async def test_proxy_passes_traffic_through(database_dsn: str) -> None:
    """The harness itself: a connection through the proxy reaches the test database."""
    proxy = TcpProxy.for_dsn(database_dsn)
    await proxy.start()
    try:
        conn = await asyncpg.connect(proxy.dsn(database_dsn))
        try:
            assert await conn.fetchval("SELECT current_database()") == urlsplit(database_dsn).path.lstrip("/")
        finally:
            await conn.close()
        await proxy.cut()
        with pytest.raises(OSError):
            await asyncpg.connect(proxy.dsn(database_dsn), timeout=5)
    finally:
        await proxy.cut()


async def test_a_server_out_of_connection_slots_is_a_503_not_a_500(
    pg_server_dsn: str, database_dsn: str
) -> None:
    """PostgreSQL refusing a new connection ("too many clients", SQLSTATE 53300) is the
    server being busy, not a bug: the edge answers 503 + Retry-After as for a server that
    is away. A role with CONNECTION LIMIT 0 makes the real server refuse."""
    role = f"stamp_no_slots_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(pg_server_dsn)
    await admin.execute(f"CREATE ROLE {role} LOGIN CONNECTION LIMIT 0")
    refused_dsn = database_dsn.replace("postgresql://postgres@", f"postgresql://{role}@", 1)
    assert refused_dsn != database_dsn

    async def handler(request: web.Request) -> web.Response:
        conn = await asyncpg.connect(refused_dsn)
        await conn.close()
        return web.Response(text="connected")

    app = web.Application(middlewares=[problem_middleware])
    app.router.add_get("/", handler)
    try:
        async with (
            loopback_host(app) as port,
            aiohttp.ClientSession() as http,
            http.get(f"http://127.0.0.1:{port}/") as r,
        ):
            problem = await r.json(content_type=None)
            assert r.status == 503, problem
            assert int(r.headers["Retry-After"]) > 0
            assert problem["status"] == 503
    finally:
        await admin.execute(f"DROP ROLE {role}")
        await admin.close()
