"""Intake first on the event loop (actors/bridge.py): while many intake requests are
being handled, the work actors hand to the loop is held and released in slices, in
the order it was handed over; once intake is quiet everything held runs; nothing
waits longer than ``MAX_HOLD_SECONDS``; and every certificate still reaches its
terminal state while intake stays busy."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from actors import bridge as bridge_module
from actors.base import StampActor, intake_request, intake_requests
from actors.bridge import HOLD_INTAKE_REQUESTS, SLICE_HANDOFFS, SLICE_SECONDS, LoopBridge, Reply
from stamp.api.runtime import RUNTIME
from stamp.db import queries
from stamp.db.batcher import StatementBatcher
from tests.stack import certificate_body, running_stack
from tests.waiting import wait_until

HANDOFFS = 40


class Collector(StampActor):
    """Records the messages it is told."""

    def __init__(self, got: list[object], lock: threading.Lock) -> None:
        super().__init__()
        self.got, self.lock = got, lock

    def on_receive(self, message: Any) -> Any:
        with self.lock:
            self.got.append(message)
        return None


@contextlib.contextmanager
def collector() -> Iterator[tuple[list[object], Any]]:
    """A started Collector actor and the messages it has been told; stopped after."""
    got: list[object] = []
    ref = Collector.start(got, threading.Lock())
    try:
        yield got, ref
    finally:
        ref.stop()


@contextlib.contextmanager
def intake_busy() -> Iterator[None]:
    """As many intake requests in flight as make the bridge hold the pipeline's work."""
    with contextlib.ExitStack() as stack:
        for _ in range(HOLD_INTAKE_REQUESTS):
            stack.enter_context(intake_request())
        yield


@contextlib.contextmanager
def loop_in_thread() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield loop
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()


def _wait_for(condition: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def _hand_over(bridge: LoopBridge, started: list[int], to: Any) -> None:
    """HANDOFFS coroutines, handed over from this (non-loop) thread as an actor does."""

    async def job(n: int) -> int:
        started.append(n)
        return n

    for n in range(HANDOFFS):
        bridge.run(job(n), Reply(to, lambda value: value, lambda reason: reason))


def test_held_while_intake_is_busy_then_released_in_order() -> None:
    with collector() as (got, ref):
        started: list[int] = []
        with loop_in_thread() as loop:
            bridge = LoopBridge(loop)
            with intake_busy():
                _hand_over(bridge, started, ref)
                time.sleep(SLICE_SECONDS * 3)
                # A few slices ran, not everything (on a free loop, without the hold,
                # all 40 start within a millisecond or two).
                assert 0 < len(started) <= SLICE_HANDOFFS * 6
                assert bridge.held > 0
            # Quiet again: everything held runs, in the order it was handed over.
            _wait_for(lambda: len(got) == HANDOFFS, 5)
            assert started == list(range(HANDOFFS))
            assert sorted(got) == list(range(HANDOFFS))  # type: ignore[type-var]
            assert bridge.held == 0
            assert bridge.held_total >= HANDOFFS - SLICE_HANDOFFS
    assert intake_requests() == 0


def test_quiet_intake_holds_nothing() -> None:
    with collector() as (got, ref):
        started: list[int] = []
        with loop_in_thread() as loop:
            bridge = LoopBridge(loop)
            with contextlib.ExitStack() as stack:  # a few requests: below the threshold
                for _ in range(HOLD_INTAKE_REQUESTS - 1):
                    stack.enter_context(intake_request())
                _hand_over(bridge, started, ref)
                _wait_for(lambda: len(got) == HANDOFFS, 5)
            assert bridge.held_total == 0


def test_nothing_is_held_longer_than_the_maximum(monkeypatch: pytest.MonkeyPatch) -> None:
    # No slices at all: only the age limit lets held work through, while intake stays busy.
    monkeypatch.setattr(bridge_module, "SLICE_HANDOFFS", 0)
    with collector() as (got, ref):
        started: list[int] = []
        with loop_in_thread() as loop:
            bridge = LoopBridge(loop, max_hold_seconds=0.3)
            with intake_busy():
                handed = time.monotonic()
                _hand_over(bridge, started, ref)
                time.sleep(0.1)
                assert started == []  # held: no slice releases anything
                _wait_for(lambda: len(got) == HANDOFFS, 5)
                assert time.monotonic() - handed >= 0.3
                assert started == list(range(HANDOFFS))


def test_a_closed_loop_answers_held_work_with_the_failure() -> None:
    with collector() as (got, ref):
        loop = asyncio.new_event_loop()
        loop.close()
        bridge = LoopBridge(loop)
        with intake_busy():
            _hand_over(bridge, [], ref)
        _wait_for(lambda: len(got) == HANDOFFS, 5)
        assert all(isinstance(m, str) and "closed" in m for m in got)
        assert bridge.held == 0


@pytest.mark.asyncio(loop_scope="session")
async def test_pipeline_commits_are_held_while_intake_is_busy(db_pool: asyncpg.Pool) -> None:
    """A statement an actor writes through the group commit waits while intake is busy,
    so it does not compete with the intake inserts; it is written once intake is quiet."""
    loop = asyncio.get_running_loop()
    batcher = StatementBatcher(db_pool, loop)
    bridge = LoopBridge(loop, batcher=batcher)
    with collector() as (got, ref):
        sql = "SELECT $1::int AS n"
        with intake_busy():
            # From an actor's thread, as actors write; the first slice may take some.
            writes = [
                threading.Thread(
                    target=bridge.write, args=(sql, [n], (str(n),), Reply(ref, lambda r: r["n"], str))
                )
                for n in range(HANDOFFS)
            ]
            for w in writes:
                w.start()
                w.join()
            await asyncio.sleep(SLICE_SECONDS / 2)
            assert batcher.statements < HANDOFFS
        await wait_until(lambda: len(got) == HANDOFFS, timeout=2, what="every write answered")
        assert sorted(got) == list(range(HANDOFFS))  # type: ignore[type-var]
        assert batcher.statements == HANDOFFS


@pytest.mark.asyncio(loop_scope="session")
async def test_certificates_reach_their_terminal_state_while_intake_stays_busy(
    database_dsn: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bridges: list[LoopBridge] = []
    original = LoopBridge.__init__

    def capture(self: LoopBridge, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        bridges.append(self)

    monkeypatch.setattr(LoopBridge, "__init__", capture)
    async with running_stack(database_dsn, tmp_path) as stack:
        recipient = await stack.create_recipient()
        with intake_busy():  # busy all along: only the slices move the pipeline
            keys = await stack.post_accepted(recipient, 20)
            states = await stack.wait_terminal(keys, timeout=60)
            assert set(states.values()) == {"delivered"}
        assert bridges and bridges[0].held_total > 0
        assert bridges[0].held == 0
        # A lease renewal, held, still comes before half the lease is gone.
        assert bridges[0].max_hold_seconds <= stack.settings.lease_seconds / 6
    assert intake_requests() == 0


@pytest.mark.asyncio(loop_scope="session")
async def test_a_recipient_created_here_is_cached_at_once(database_dsn: str, tmp_path: Path) -> None:
    """The first certificates of a new recipient (often a burst) need no recipient query."""
    async with running_stack(database_dsn, tmp_path) as stack:
        recipient = await stack.create_recipient()
        cached = stack.app[RUNTIME].recipients.peek(recipient)
        assert cached is not None
        assert cached == await queries.get_recipient(stack.pool, recipient)


@pytest.mark.asyncio(loop_scope="session")
async def test_clients_that_send_their_bodies_slowly_do_not_count_as_intake(
    database_dsn: str, tmp_path: Path
) -> None:
    """An intake counts once its body is in hand: a few connections that send headers
    and then trickle (or withhold) the body must not hold the pipeline back."""
    async with running_stack(database_dsn, tmp_path) as stack:
        recipient = await stack.create_recipient()
        host, port = stack.base.removeprefix("http://").split("/")[0].split(":")
        writers = []
        try:
            for _ in range(HOLD_INTAKE_REQUESTS + 2):
                _, writer = await asyncio.open_connection(host, int(port))
                writer.write(
                    b"POST /v1/certificates HTTP/1.1\r\nHost: stamp\r\n"
                    b"Content-Type: application/json\r\nContent-Length: 4000\r\n\r\n{"
                )
                await writer.drain()
                writers.append(writer)
            await asyncio.sleep(0.3)  # each handler has started and waits for its body
            assert intake_requests() == 0
            # The pipeline is not held meanwhile: a certificate goes all the way.
            body = certificate_body(recipient)
            status, answer = await stack.post_certificate(body)
            assert status == 202, answer
            key = (body["registryName"], body["certificate"]["id"])
            states = await stack.wait_terminal([key], timeout=30)
            assert states == {key[1]: "delivered"}
        finally:
            for writer in writers:
                writer.close()
    assert intake_requests() == 0
