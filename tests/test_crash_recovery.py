"""Nothing accepted is lost across a SIGKILL: every certificate resumes from its
persisted state and is issued once, at its one position, and delivered."""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import Callable
from pathlib import Path

import aiohttp
import asyncpg
import orjson
import pytest
from aiohttp import web

from stamp.devstack.registry import RegistrySimConfig, RegistrySimulator
from stamp.devstack.wallet import WalletSimConfig, WalletSimulator
from tests.process import StampProcess, free_port
from tests.seed import seeded_random
from tests.stack import GRID_AREA, ISSUER, REGISTRY, certificate_body
from tests.waiting import wait_until

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.slow]


async def test_sigkill_in_the_middle_of_a_run_loses_nothing(database_dsn: str, tmp_path: Path) -> None:
    registry = RegistrySimulator(
        RegistrySimConfig(
            registries=(REGISTRY,), issuer_keys={GRID_AREA: (ISSUER.public_pem(),)}, commit_delay=0.1
        )
    )
    await registry.start()
    wallet = WalletSimulator(WalletSimConfig(registries={REGISTRY: registry.address}))
    await wallet.start()
    key_file = tmp_path / "dk1.pem"
    key_file.write_text(ISSUER.private_pem())
    log_path = tmp_path / "stamp.log"
    stamp = StampProcess(
        {
            "STAMP_DATABASE_URL": database_dsn,
            "STAMP_PORT": str(free_port()),
            "STAMP_REGISTRIES": f"{REGISTRY}={registry.address}",
            "STAMP_ISSUER_KEYS": f"{GRID_AREA}={key_file}",
            "STAMP_INSTANCE_ID": f"crash-{uuid.uuid4().hex[:6]}",
            "STAMP_REGISTRY_POLL_INITIAL_SECONDS": "0.05",
            "STAMP_REGISTRY_POLL_MAX_SECONDS": "0.2",
            "STAMP_CRYPTO_WORKERS": "2",
            "STAMP_LOG_LEVEL": "info",
        },
        log_path,
    )
    try:
        await stamp.start()
        async with aiohttp.ClientSession() as http:
            recipients = []
            for _ in range(10):
                reference = wallet.create_endpoint()
                async with http.post(
                    f"{stamp.base}/v1/recipients", json={"walletEndpointReference": reference.as_json()}
                ) as r:
                    assert r.status == 201
                    recipients.append((await r.json())["id"])
            bodies = [certificate_body(recipients[i % 10]) for i in range(300)]
            for i in range(0, len(bodies), 50):
                statuses = await asyncio.gather(*(_post(http, stamp.base, b) for b in bodies[i : i + 50]))
                assert set(statuses) == {202}
        ids = [b["certificate"]["id"] for b in bodies]
        conn = await asyncpg.connect(database_dsn)
        try:
            # Kill once some certificates are done and many are in every other state.
            kill_at = seeded_random("sigkill").randint(30, 90)
            await _wait_until(conn, ids, lambda delivered: delivered >= kill_at)
            stamp.kill()
            killed_states = await _states(conn, ids)
            await stamp.start()
            await _wait_until(conn, ids, lambda delivered: delivered == len(ids), timeout=180)
            positions = await conn.fetch(
                "SELECT recipient_id, position, count(*) AS n FROM certificates WHERE id = ANY($1::uuid[]) "
                "GROUP BY recipient_id, position HAVING count(*) > 1",
                ids,
            )
        finally:
            await conn.close()
        assert positions == []
        await wallet.wait_for(ids, within=30)
        for certificate_id in ids:
            counters = registry.stream_counters(certificate_id)
            assert counters.distinct_issue_transactions == 1, certificate_id
        verified = {s.certificate_id for s in wallet.verified_slices()}
        assert set(ids) <= verified
        flags = wallet.flags()
        assert not flags.reused_positions and not flags.early_deliveries
        # Only a kill between the wallet's 2xx and its record can repeat a delivery.
        print(f"states at the kill: {killed_states}; repeated deliveries: {len(flags.duplicates)}")
        in_delivery = killed_states.get("marked_as_issued", 0)
        assert len(flags.duplicates) <= in_delivery
        log_text = log_path.read_text()
        assert "certificate.transitioned" in log_text
        assert not re.search(r"BEGIN PRIVATE KEY|randomR|\"salt", log_text)
    finally:
        stamp.stop()
        await wallet.stop()
        await registry.stop()


async def _post(http: aiohttp.ClientSession, base: str, body: dict[str, object]) -> int:
    async with http.post(f"{base}/v1/certificates", json=body) as r:
        await r.read()
        return r.status


async def _states(conn: asyncpg.Connection, ids: list[str]) -> dict[str, int]:
    rows = await conn.fetch(
        "SELECT state, count(*) AS n FROM certificates WHERE id = ANY($1::uuid[]) GROUP BY state", ids
    )
    return {r["state"]: r["n"] for r in rows}


async def _wait_until(
    conn: asyncpg.Connection, ids: list[str], condition: Callable[[int], bool], timeout: float = 120
) -> None:
    async def holds() -> bool:
        states = await _states(conn, ids)
        assert states.get("failed", 0) == 0 and states.get("rejected", 0) == 0, states
        return condition(states.get("delivered", 0))

    await wait_until(holds, timeout=timeout, interval=0.05, what="the delivered count")


async def test_sigkill_right_after_a_failed_wallet_attempt_keeps_the_attempt_in_the_history(
    database_dsn: str, tmp_path: Path
) -> None:
    """A failed wallet attempt is recorded when it fails, not with the next claim: a
    kill during the backoff (long here) loses no attempt from the history."""
    registry = RegistrySimulator(
        RegistrySimConfig(registries=(REGISTRY,), issuer_keys={GRID_AREA: (ISSUER.public_pem(),)})
    )
    await registry.start()
    wallet = WalletSimulator(WalletSimConfig(registries={REGISTRY: registry.address}))
    await wallet.start()
    hits: list[int] = []

    async def unavailable(request: web.Request) -> web.Response:
        await request.read()
        hits.append(1)
        return web.Response(status=503)

    app = web.Application()
    app.router.add_post("/{tail:.*}", unavailable)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    down_url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}/v1/slices"  # type: ignore[union-attr]
    key_file = tmp_path / "dk1.pem"
    key_file.write_text(ISSUER.private_pem())
    stamp = StampProcess(
        {
            "STAMP_DATABASE_URL": database_dsn,
            "STAMP_PORT": str(free_port()),
            "STAMP_REGISTRIES": f"{REGISTRY}={registry.address}",
            "STAMP_ISSUER_KEYS": f"{GRID_AREA}={key_file}",
            "STAMP_INSTANCE_ID": f"crash-{uuid.uuid4().hex[:6]}",
            "STAMP_REGISTRY_POLL_INITIAL_SECONDS": "0.05",
            "STAMP_REGISTRY_POLL_MAX_SECONDS": "0.2",
            # The next attempt is at least 30 s away: only a record made when the
            # attempt failed can be in the history at the kill.
            "STAMP_WALLET_RETRY_BASE_SECONDS": "60",
            "STAMP_WALLET_RETRY_CAP_SECONDS": "60",
            "STAMP_CRYPTO_WORKERS": "1",
            "STAMP_LOG_LEVEL": "info",
        },
        tmp_path / "stamp.log",
    )
    conn = await asyncpg.connect(database_dsn)

    async def failed_attempts() -> list[asyncpg.Record]:
        return list(
            await conn.fetch(
                "SELECT detail FROM certificate_events WHERE certificate_id = $1 "
                "AND event_type = 'CertificateWalletAttemptFailed' ORDER BY seq",
                certificate_id,
            )
        )

    try:
        await stamp.start()
        reference = wallet.create_endpoint()
        async with aiohttp.ClientSession() as http:
            moved = {**reference.as_json(), "endpoint": down_url}
            async with http.post(f"{stamp.base}/v1/recipients", json={"walletEndpointReference": moved}) as r:
                assert r.status == 201
                recipient = (await r.json())["id"]
            body = certificate_body(recipient)
            certificate_id = body["certificate"]["id"]
            assert await _post(http, stamp.base, body) == 202
            await wait_until(lambda: hits, timeout=60, what="a wallet attempt")
            await wait_until(failed_attempts, timeout=10, what="the failed attempt in the history")
            stamp.kill()
            (kept,) = await failed_attempts()
            assert len(hits) == 1
            assert orjson.loads(kept["detail"]) == {
                "endpoint": down_url,
                "reason": "wallet answered 503",
                "attempt": 1,
            }

            # Restarted with the wallet back (its endpoint moved while Stamp was down):
            # delivered, the failed attempt still in the history.
            await conn.execute(
                "UPDATE recipients SET wallet_endpoint_url = $2 WHERE id = $1", recipient, reference.endpoint
            )
            await stamp.start()
        await _wait_until(conn, [certificate_id], lambda delivered: delivered == 1, timeout=120)
        assert len(await failed_attempts()) >= 1
        await wallet.wait_for([certificate_id], within=30)
    finally:
        stamp.stop()
        await conn.close()
        await runner.cleanup()
        await wallet.stop()
        await registry.stop()
