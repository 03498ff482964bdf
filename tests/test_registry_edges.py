"""The registry gateway's edge cases for issuance (issue 14, items 2 and 3), against
the registry simulator's faults, seen through what reached the registry.

Every SendTransactions is recorded as it arrives (``RegistrySimulator.on_send``),
before any fault applies, together with what the database held for that certificate
at that moment: so each test can say how many sends happened, that all carried the
same bytes, and that those bytes were persisted before they were sent.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from protos.project_origin.registry.v1 import registry_pb2
from stamp.config import RetryPolicy
from stamp.crypto.transactions import transaction_id
from tests.stack import REGISTRY, Stack, certificate_body, running_stack
from tests.waiting import wait_until

pytestmark = pytest.mark.asyncio(loop_scope="session")

FAST_RETRY = RetryPolicy(base_seconds=0.05, cap_seconds=0.3, max_attempts=5)


@dataclass(frozen=True, slots=True)
class Arrival:
    certificate_id: str
    data: bytes
    persisted: bytes | None  # the certificate's transaction in the database at arrival
    persisted_id: str | None


@dataclass
class Arrivals:
    """The registry's side of every SendTransactions, in order."""

    pool: asyncpg.Pool
    seen: list[Arrival] = field(default_factory=list)

    async def __call__(self, transactions: Sequence[registry_pb2.Transaction]) -> None:
        for tx in transactions:
            certificate_id = tx.header.federated_stream_id.stream_id.value
            row = await self.pool.fetchrow(
                "SELECT transaction, transaction_id FROM certificates WHERE id = $1::uuid", certificate_id
            )
            persisted = None if row is None or row["transaction"] is None else bytes(row["transaction"])
            persisted_id = None if row is None else row["transaction_id"]
            self.seen.append(Arrival(certificate_id, tx.SerializeToString(), persisted, persisted_id))

    def of(self, certificate_id: str) -> list[Arrival]:
        return [a for a in self.seen if a.certificate_id == certificate_id]


@contextlib.asynccontextmanager
async def edge_stack(
    pool: asyncpg.Pool, dsn: str, tmp_path: Path, **options: Any
) -> AsyncIterator[tuple[Stack, Arrivals]]:
    """A Stamp on its own simulators, configured per test; every send recorded."""
    async with running_stack(dsn, tmp_path, **{"registry_retry": FAST_RETRY, **options}) as stack:
        arrivals = Arrivals(pool)
        stack.registry.on_send = arrivals
        yield stack, arrivals


async def _post_one(stack: Stack) -> str:
    recipient = await stack.create_recipient()
    body = certificate_body(recipient)
    status, answer = await stack.post_certificate(body)
    assert status == 202, answer
    certificate_id: str = body["certificate"]["id"]
    return certificate_id


async def _state(stack: Stack, certificate_id: str) -> str:
    state: str = await stack.pool.fetchval("SELECT state FROM certificates WHERE id = $1", certificate_id)
    return state


async def _stored_transaction(stack: Stack, certificate_id: str) -> bytes:
    data = await stack.pool.fetchval("SELECT transaction FROM certificates WHERE id = $1", certificate_id)
    return bytes(data)


def _same_bytes_every_time(arrivals: list[Arrival], stored: bytes) -> None:
    assert arrivals, "nothing reached the registry"
    assert {a.data for a in arrivals} == {stored}, "a re-send carried other bytes than the stored ones"


async def test_the_transaction_is_readable_from_the_database_when_the_registry_receives_it(
    clean_db: asyncpg.Pool, database_dsn: str, tmp_path: Path
) -> None:
    async with edge_stack(clean_db, database_dsn, tmp_path) as (stack, arrivals):
        recipients = [await stack.create_recipient() for _ in range(3)]
        bodies = [certificate_body(recipients[i % 3]) for i in range(12)]
        for body in bodies:
            assert (await stack.post_certificate(body))[0] == 202
        ids = [b["certificate"]["id"] for b in bodies]
        states = await stack.wait_terminal([(REGISTRY, i) for i in ids])
        assert set(states.values()) == {"delivered"}
        for certificate_id in ids:
            (arrival,) = arrivals.of(certificate_id)
            assert arrival.persisted is not None, "sent before its bytes were persisted"
            assert arrival.persisted == arrival.data, "sent other bytes than the persisted ones"
            assert arrival.persisted_id == base64.b64encode(hashlib.sha256(arrival.data).digest()).decode()


async def test_no_transaction_is_asked_about_before_its_poll_delay_has_passed(
    clean_db: asyncpg.Pool, database_dsn: str, tmp_path: Path
) -> None:
    # Status rounds group transactions that come due close together. A transaction
    # may wait a little for a round due after it, never join one due before it: asked
    # early, it is still PENDING, and that costs another round and another poll delay.
    poll = 0.2
    async with edge_stack(clean_db, database_dsn, tmp_path, registry_poll_initial_seconds=poll) as (
        stack,
        arrivals,
    ):
        sent_at: dict[str, float] = {}
        asked_at: dict[str, float] = {}

        async def on_send(transactions: Sequence[registry_pb2.Transaction]) -> None:
            now = time.monotonic()
            for tx in transactions:
                sent_at.setdefault(transaction_id(tx.SerializeToString()), now)
            await arrivals(transactions)

        stack.registry.on_send = on_send
        stack.registry.on_status = lambda tx_id: asked_at.setdefault(tx_id, time.monotonic())
        recipients = [await stack.create_recipient() for _ in range(4)]
        # Back to back: their sends finish a few milliseconds apart, within one round's reach.
        bodies = [certificate_body(recipients[i % 4]) for i in range(24)]
        for body in bodies:
            assert (await stack.post_certificate(body))[0] == 202
        states = await stack.wait_terminal([(REGISTRY, b["certificate"]["id"]) for b in bodies])
        assert set(states.values()) == {"delivered"}
        assert len(sent_at) == len(bodies) and asked_at.keys() == sent_at.keys()
        due = {tx: sent + poll for tx, sent in sent_at.items()}
        early = {tx: round(due[tx] - asked, 4) for tx, asked in asked_at.items() if asked < due[tx]}
        assert not early, f"asked before the poll delay had passed since the send (seconds early): {early}"


async def test_a_lost_send_answer_is_settled_by_the_status_without_a_resend(
    clean_db: asyncpg.Pool, database_dsn: str, tmp_path: Path
) -> None:
    # Strict: a blind re-send of the committed transaction would read FAILED "already exists".
    async with edge_stack(clean_db, database_dsn, tmp_path, registry_options={"strict": True}) as (
        stack,
        arrivals,
    ):
        stack.registry.fail_next("SendTransactions", 1, accept=True)
        certificate_id = await _post_one(stack)
        await stack.wait_terminal([(REGISTRY, certificate_id)])
        assert await _state(stack, certificate_id) == "delivered"
        counters = stack.registry.stream_counters(certificate_id)
        assert (counters.received, counters.resends, counters.distinct_issue_transactions) == (1, 0, 1)
        assert len(arrivals.of(certificate_id)) == 1
        stats = stack.registry.stats()
        assert stats.injected_errors == 1 and stats.status_calls >= 1 and stats.failed == 0


async def test_already_exists_is_settled_by_reading_the_stream(
    clean_db: asyncpg.Pool, database_dsn: str, tmp_path: Path
) -> None:
    async with edge_stack(clean_db, database_dsn, tmp_path, registry_options={"strict": True}) as (
        stack,
        arrivals,
    ):
        registry = stack.registry
        # Stamp's status questions take two seconds: meanwhile an identical copy of its
        # committed transaction arrives again (as a late duplicate would), which a
        # strict registry turns into FAILED "already exists".
        registry.set_latency(2.0, "GetTransactionStatus")
        certificate_id = await _post_one(stack)
        (arrival,) = await wait_until(lambda: arrivals.of(certificate_id), what="the first send")
        tx = registry_pb2.Transaction.FromString(arrival.data)
        tx_id = base64.b64encode(hashlib.sha256(arrival.data).digest()).decode()
        await wait_until(lambda: registry.status(tx_id)[0] == registry_pb2.COMMITTED, what="the commit")
        registry.receive([tx])
        await wait_until(lambda: registry.status(tx_id)[0] == registry_pb2.FAILED, what="FAILED")
        assert "already exists" in registry.status(tx_id)[1]
        await stack.wait_terminal([(REGISTRY, certificate_id)])
        registry.set_latency(0.0)
        assert await _state(stack, certificate_id) == "delivered"
        assert registry.stats().stream_calls >= 1
        assert registry.stream_counters(certificate_id).distinct_issue_transactions == 1
        assert len(arrivals.of(certificate_id)) == 1
        await stack.wallet.wait_for([certificate_id])


async def test_pending_beyond_the_budget_fails_and_an_operator_retry_delivers_the_same_bytes(
    clean_db: asyncpg.Pool, database_dsn: str, tmp_path: Path
) -> None:
    options = {"registry_pending_timeout_seconds": 1.0}
    async with edge_stack(clean_db, database_dsn, tmp_path, **options) as (stack, arrivals):
        recipient = await stack.create_recipient()
        body = certificate_body(recipient)
        certificate_id = body["certificate"]["id"]
        stack.registry.hold(certificate_ids=[certificate_id])
        assert (await stack.post_certificate(body))[0] == 202
        await stack.wait_terminal([(REGISTRY, certificate_id)], timeout=20)
        _, view = await stack.get_certificate(REGISTRY, certificate_id)
        assert view["state"] == "failed", view
        assert view["failure"]["step"] == "registry" and "PENDING" in view["failure"]["reason"]
        stored = await _stored_transaction(stack, certificate_id)

        stack.registry.release()
        async with stack.http.post(f"{stack.base}/v1/certificates/{REGISTRY}/{certificate_id}/retry") as r:
            assert r.status == 202, await r.text()
        await wait_until(lambda: _is(stack, certificate_id, "delivered"), what="delivered after the retry")
        assert await _stored_transaction(stack, certificate_id) == stored
        _same_bytes_every_time(arrivals.of(certificate_id), stored)
        (committed,) = stack.registry.stream_transactions(certificate_id)
        assert committed.SerializeToString() == stored
        assert stack.registry.stream_counters(certificate_id).distinct_issue_transactions == 1


async def _is(stack: Stack, certificate_id: str, state: str) -> bool:
    return await _state(stack, certificate_id) == state


async def test_registry_errors_until_the_retries_run_out_fail_the_certificate(
    clean_db: asyncpg.Pool, database_dsn: str, tmp_path: Path
) -> None:
    async with edge_stack(clean_db, database_dsn, tmp_path) as (stack, arrivals):
        stack.registry.fail_next("SendTransactions", 1000)  # never received
        certificate_id = await _post_one(stack)
        await stack.wait_terminal([(REGISTRY, certificate_id)], timeout=20)
        _, view = await stack.get_certificate(REGISTRY, certificate_id)
        assert view["state"] == "failed", view
        assert view["failure"]["step"] == "registry"
        assert view["failure"]["attempts"] == FAST_RETRY.max_attempts
        # Each failed send was followed by a status question (UNKNOWN), then the same bytes.
        sends = arrivals.of(certificate_id)
        assert len(sends) == FAST_RETRY.max_attempts
        _same_bytes_every_time(sends, await _stored_transaction(stack, certificate_id))
        stats = stack.registry.stats()
        assert stats.received == 0 and stats.status_calls >= FAST_RETRY.max_attempts - 1


async def test_a_registry_slower_than_the_call_timeout_hits_the_deadline_then_recovers(
    clean_db: asyncpg.Pool, database_dsn: str, tmp_path: Path
) -> None:
    options = {
        "registry_call_timeout_seconds": 0.3,
        "registry_retry": RetryPolicy(base_seconds=0.05, cap_seconds=0.2, max_attempts=20),
    }
    async with edge_stack(clean_db, database_dsn, tmp_path, **options) as (stack, arrivals):
        stack.registry.set_latency(1.0, "SendTransactions")
        certificate_id = await _post_one(stack)
        # Each send outlives the deadline, is abandoned by Stamp and never stored.
        await wait_until(lambda: len(arrivals.of(certificate_id)) >= 3, what="three sends", timeout=15)
        assert stack.registry.stats().received == 0
        stack.registry.set_latency(0.0)
        await stack.wait_terminal([(REGISTRY, certificate_id)])
        assert await _state(stack, certificate_id) == "delivered"
        _same_bytes_every_time(arrivals.of(certificate_id), await _stored_transaction(stack, certificate_id))
        assert stack.registry.stream_counters(certificate_id).distinct_issue_transactions == 1
