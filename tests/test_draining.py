"""Graceful shutdown of a real ``stamp serve`` (issue 14, item 5): after SIGTERM the
process keeps answering — readiness and intake say 503 — while the work in flight
finishes and is recorded; a second signal ends it at once."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import aiohttp
import asyncpg
import pytest

from tests.faults import start_scenario, stop_scenario
from tests.stack import certificate_body
from tests.waiting import wait_until

pytestmark = pytest.mark.asyncio(loop_scope="session")

WALLET_HANG_SECONDS = 3.0


async def _state(dsn: str, certificate_id: str) -> str | None:
    conn = await asyncpg.connect(dsn)
    try:
        state: str | None = await conn.fetchval(
            "SELECT state FROM certificates WHERE id = $1", certificate_id
        )
        return state
    finally:
        await conn.close()


async def test_after_sigterm_readiness_and_intake_answer_503_while_in_flight_work_finishes(
    empty_database_dsn: str, tmp_path: Path
) -> None:
    scenario = await start_scenario(
        empty_database_dsn, tmp_path, STAMP_AUTO_MIGRATE="true", STAMP_WALLET_TIMEOUT_SECONDS="30"
    )
    try:
        await scenario.create_recipients(1)
        # The wallet takes its time over the delivery, then accepts it.
        scenario.wallet.hang_next(WALLET_HANG_SECONDS, accept=True)
        (certificate_id,) = await scenario.post_certificates(1)
        await wait_until(
            lambda: scenario.wallet.request_count >= 1, what="the delivery under way", timeout=30
        )
        process = scenario.stamp.process
        assert process is not None
        process.terminate()
        signalled = time.monotonic()
        async with aiohttp.ClientSession() as http:
            base = scenario.stamp.base

            async def draining() -> bool:
                async with http.get(f"{base}/health/ready") as r:
                    return r.status == 503 and not (await r.json())["checks"]["accepting"]

            await wait_until(draining, what="readiness 503", timeout=2)
            body = certificate_body(scenario.recipients[0])
            async with http.post(f"{base}/v1/certificates", json=body) as r:
                assert r.status == 503 and int(r.headers["Retry-After"]) > 0, await r.text()
            # All of this while the wallet still holds the delivery.
            assert time.monotonic() - signalled < WALLET_HANG_SECONDS
            assert process.poll() is None
        code = await asyncio.to_thread(process.wait, 30)
        assert code == 0
        # The answer that was on its way was recorded: delivered, nothing to re-send.
        assert await _state(empty_database_dsn, certificate_id) == "delivered"
        assert await _state(empty_database_dsn, body["certificate"]["id"]) is None
        assert scenario.wallet.received_count() == 1 and not scenario.wallet.flags().duplicates
    finally:
        await stop_scenario(scenario)


async def test_a_second_sigterm_exits_within_two_seconds_and_nothing_is_lost(
    empty_database_dsn: str, tmp_path: Path
) -> None:
    scenario = await start_scenario(
        empty_database_dsn, tmp_path, STAMP_AUTO_MIGRATE="true", STAMP_WALLET_TIMEOUT_SECONDS="30"
    )
    try:
        await scenario.create_recipients(3)
        # Deliveries that would hold a graceful stop for a long time.
        scenario.wallet.hang_next(20.0, count=5, accept=True)
        await scenario.post_certificates(30)
        await wait_until(lambda: scenario.wallet.request_count >= 1, what="deliveries under way", timeout=30)
        process = scenario.stamp.process
        assert process is not None
        process.terminate()
        async with aiohttp.ClientSession() as http:

            async def draining() -> bool:
                async with http.get(f"{scenario.stamp.base}/health/ready") as r:
                    return r.status == 503

            await wait_until(draining, what="the first signal handled", timeout=5)
        second = time.monotonic()
        process.terminate()
        code = await asyncio.to_thread(process.wait, 10)
        took = time.monotonic() - second
        assert code == 143 and took < 2, (code, took)
        scenario.wallet.clear_faults()
        await scenario.stamp.start()
        await scenario.wait_terminal()
        counts = await scenario.check_invariants()
        assert counts.get("delivered") == 30, counts
    finally:
        await stop_scenario(scenario)
