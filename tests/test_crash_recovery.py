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
import pytest

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
