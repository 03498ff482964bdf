"""Withdrawal across SIGKILL of a real ``stamp serve`` process: a withdrawal answered
201 is never lost, is sent only after its certificate's issuance is committed, and
one certificate never gets two different WithdrawnEvents — when the same instance
restarts and when a second instance takes over after the leases expired."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest

from stamp.crypto.transactions import WITHDRAWN_EVENT_TYPE
from stamp.devstack.registry import RegistrySimConfig, RegistrySimulator
from stamp.devstack.wallet import WalletSimConfig, WalletSimulator
from tests.process import StampProcess, free_port
from tests.stack import GRID_AREA, ISSUER, REGISTRY, certificate_body
from tests.waiting import wait_until

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.slow]


def _env(database_dsn: str, registry: RegistrySimulator, key_file: Path, instance: str) -> dict[str, str]:
    return {
        "STAMP_DATABASE_URL": database_dsn,
        "STAMP_PORT": str(free_port()),
        "STAMP_REGISTRIES": f"{REGISTRY}={registry.address}",
        "STAMP_ISSUER_KEYS": f"{GRID_AREA}={key_file}",
        "STAMP_INSTANCE_ID": instance,
        "STAMP_LEASE_SECONDS": "3",
        "STAMP_REGISTRY_POLL_INITIAL_SECONDS": "0.05",
        "STAMP_REGISTRY_POLL_MAX_SECONDS": "0.2",
        "STAMP_CRYPTO_WORKERS": "1",
        "STAMP_LOG_LEVEL": "info",
    }


async def _json(http: aiohttp.ClientSession, method: str, url: str, body: Any = None) -> tuple[int, Any]:
    async with http.request(method, url, json=body) as r:
        return r.status, await r.json(content_type=None)


async def _state(conn: asyncpg.Connection, certificate_id: str) -> tuple[str, str | None]:
    row = await conn.fetchrow(
        "SELECT c.state, w.state AS withdrawal FROM certificates c LEFT JOIN withdrawn_certificates w "
        "ON w.certificate_id = c.id WHERE c.id = $1",
        certificate_id,
    )
    assert row is not None
    return row["state"], row["withdrawal"]


@pytest.mark.parametrize("takeover", [False, True], ids=["same-instance", "second-instance"])
async def test_sigkill_between_the_201_and_the_commit_loses_no_withdrawal(
    database_dsn: str, tmp_path: Path, takeover: bool
) -> None:
    registry = RegistrySimulator(
        RegistrySimConfig(
            registries=(REGISTRY,), issuer_keys={GRID_AREA: (ISSUER.public_pem(),)}, commit_delay=0.05
        )
    )
    await registry.start()
    wallet = WalletSimulator(WalletSimConfig(registries={REGISTRY: registry.address}))
    await wallet.start()
    key_file = tmp_path / "dk1.pem"
    key_file.write_text(ISSUER.private_pem())
    first_id = f"crash-{uuid.uuid4().hex[:6]}"
    stamp = StampProcess(_env(database_dsn, registry, key_file, first_id), tmp_path / "stamp.log")
    conn = await asyncpg.connect(database_dsn)
    try:
        await stamp.start()
        async with aiohttp.ClientSession() as http:
            reference = wallet.create_endpoint()
            status, recipient = await _json(
                http, "POST", f"{stamp.base}/v1/recipients", {"walletEndpointReference": reference.as_json()}
            )
            assert status == 201
            # delivered: its withdrawal is sent, and held unprocessed by the registry.
            delivered = certificate_body(recipient["id"])
            assert (await _json(http, "POST", f"{stamp.base}/v1/certificates", delivered))[0] == 202
            delivered_id = delivered["certificate"]["id"]

            async def is_delivered() -> bool:
                return (await _state(conn, delivered_id))[0] == "delivered"

            await wait_until(is_delivered, timeout=60, interval=0.05, what="the delivery")
            # waiting: its issuance is held in the registry, so its withdrawal waits.
            waiting = certificate_body(recipient["id"])
            waiting_id = waiting["certificate"]["id"]
            registry.hold(certificate_ids=[delivered_id, waiting_id])
            assert (await _json(http, "POST", f"{stamp.base}/v1/certificates", waiting))[0] == 202

            async def is_sent() -> bool:
                return (await _state(conn, waiting_id))[0] == "sent_to_registry"

            await wait_until(is_sent, timeout=60, interval=0.05, what="the issuance send")
            answers = {}
            for certificate_id in (delivered_id, waiting_id):
                status, answer = await _json(
                    http, "POST", f"{stamp.base}/v1/certificates/{REGISTRY}/{certificate_id}/withdraw"
                )
                assert status == 201, answer
                answers[certificate_id] = answer

            async def withdrawal_received() -> bool:
                return registry.stream_counters(delivered_id).received == 2

            await wait_until(withdrawal_received, timeout=30, interval=0.02, what="the withdrawal send")
        stamp.kill()  # both withdrawals answered 201, neither committed
        assert await _state(conn, delivered_id) == ("delivered", "pending")
        assert await _state(conn, waiting_id) == ("sent_to_registry", "pending")
        persisted = {
            r["certificate_id"]: bytes(r["transaction"])
            for r in await conn.fetch(
                "SELECT certificate_id::text, transaction FROM withdrawn_certificates "
                "WHERE certificate_id = ANY($1::uuid[])",
                [delivered_id, waiting_id],
            )
        }
        registry.release()
        if takeover:
            env = _env(database_dsn, registry, key_file, f"other-{uuid.uuid4().hex[:6]}")
            stamp = StampProcess(env, tmp_path / "stamp-2.log")
        await stamp.start()

        async def settled() -> bool:
            return await _state(conn, delivered_id) == ("delivered", "committed") and await _state(
                conn, waiting_id
            ) == ("withheld", "committed")

        await wait_until(settled, timeout=60, interval=0.05, what="both withdrawals committed")
        async with aiohttp.ClientSession() as http:
            status, page = await _json(http, "GET", f"{stamp.base}/v1/certificates/withdrawn?limit=1000")
        assert status == 200
        assert {answers[delivered_id]["id"], answers[waiting_id]["id"]} <= {w["id"] for w in page["result"]}
        for certificate_id in (delivered_id, waiting_id):
            withdrawn = [
                tx
                for tx in registry.stream_transactions(certificate_id)
                if tx.header.payload_type == WITHDRAWN_EVENT_TYPE
            ]
            # One WithdrawnEvent, the bytes persisted before the first send.
            assert [tx.SerializeToString() for tx in withdrawn] == [persisted[certificate_id]]
            counters = registry.stream_counters(certificate_id)
            assert counters.received - counters.resends == 2  # one issuance, one withdrawal
        assert wallet.received_requests(waiting_id) == []
    finally:
        stamp.stop()
        await conn.close()
        await wallet.stop()
        await registry.stop()


async def test_a_graceful_stop_hands_a_withdrawal_in_flight_to_another_instance_at_once(
    database_dsn: str, tmp_path: Path
) -> None:
    """The supervisor's lease sweep holds withdrawals like certificates: a stopping
    instance releases its leases of both, so another instance takes over before the
    (long) lease would have expired."""
    registry = RegistrySimulator(
        RegistrySimConfig(
            registries=(REGISTRY,), issuer_keys={GRID_AREA: (ISSUER.public_pem(),)}, commit_delay=0.05
        )
    )
    await registry.start()
    wallet = WalletSimulator(WalletSimConfig(registries={REGISTRY: registry.address}))
    await wallet.start()
    key_file = tmp_path / "dk1.pem"
    key_file.write_text(ISSUER.private_pem())

    def env(instance: str) -> dict[str, str]:
        return {**_env(database_dsn, registry, key_file, instance), "STAMP_LEASE_SECONDS": "120"}

    first_id = f"stop-{uuid.uuid4().hex[:6]}"
    stamp = StampProcess(env(first_id), tmp_path / "stamp.log")
    conn = await asyncpg.connect(database_dsn)
    try:
        await stamp.start()
        async with aiohttp.ClientSession() as http:
            reference = wallet.create_endpoint()
            status, recipient = await _json(
                http, "POST", f"{stamp.base}/v1/recipients", {"walletEndpointReference": reference.as_json()}
            )
            assert status == 201
            body = certificate_body(recipient["id"])
            certificate_id = body["certificate"]["id"]
            assert (await _json(http, "POST", f"{stamp.base}/v1/certificates", body))[0] == 202

            async def is_delivered() -> bool:
                return (await _state(conn, certificate_id))[0] == "delivered"

            await wait_until(is_delivered, timeout=60, interval=0.05, what="the delivery")
            registry.hold(certificate_ids=[certificate_id])
            status, answer = await _json(
                http, "POST", f"{stamp.base}/v1/certificates/{REGISTRY}/{certificate_id}/withdraw"
            )
            assert status == 201, answer

        async def withdrawal_received() -> bool:
            return registry.stream_counters(certificate_id).received == 2

        await wait_until(withdrawal_received, timeout=30, interval=0.02, what="the withdrawal send")
        lease_owner = "SELECT lease_owner FROM withdrawn_certificates WHERE certificate_id = $1"
        assert await conn.fetchval(lease_owner, certificate_id) == first_id
        assert await stamp.terminate() == 0
        assert await conn.fetchval(lease_owner, certificate_id) is None
        assert await _state(conn, certificate_id) == ("delivered", "pending")

        registry.release()
        stamp = StampProcess(env(f"other-{uuid.uuid4().hex[:6]}"), tmp_path / "stamp-2.log")
        await stamp.start()

        async def committed() -> bool:
            return await _state(conn, certificate_id) == ("delivered", "committed")

        await wait_until(committed, timeout=30, interval=0.05, what="the withdrawal committed")
        counters = registry.stream_counters(certificate_id)
        assert counters.received - counters.resends == 2  # one issuance, one withdrawal
    finally:
        stamp.stop()
        await conn.close()
        await wallet.stop()
        await registry.stop()
