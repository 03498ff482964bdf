"""The backlog is claimed in batches while Stamp is saturated, not slot by slot.

A claim reads past every certificate in flight whatever it takes, so one claim per
finished certificate made PostgreSQL read ~1,000 index entries per certificate at 512
in flight (docs/database.md, "Claiming the backlog"). Here a burst overfills a small
``STAMP_MAX_IN_FLIGHT``, and the claims' own counters on ``/metrics`` say how many
certificates each claim took.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from actors.supervisor import CLAIM_BATCH_FRACTION, TICK_SECONDS
from stamp.admission import LiveCounts
from stamp.api.runtime import RUNTIME
from stamp.load.scrape import scrape
from tests.stack import REGISTRY, Stack, certificate_body, running_stack

MAX_IN_FLIGHT = 128
BATCH = MAX_IN_FLIGHT // CLAIM_BATCH_FRACTION
BURST = 600


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def claims_stack(database_dsn: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    data_dir: Path = tmp_path_factory.mktemp("backlog-claims")
    async with running_stack(database_dsn, data_dir, max_in_flight=MAX_IN_FLIGHT) as running:
        yield running


CLAIMS = "stamp_backlog_claims_total"
CLAIMED = "stamp_backlog_claimed_certificates_total"


async def _counters(stack: Stack) -> tuple[float, float]:
    metrics = await scrape(stack.http, stack.base, frozenset({CLAIMS, CLAIMED}))
    return metrics.total(CLAIMS), metrics.total(CLAIMED)


@pytest.mark.asyncio(loop_scope="session")
async def test_a_saturated_stamp_claims_its_backlog_in_batches_and_delivers_everything(
    claims_stack: Stack,
) -> None:
    assert BATCH > 1  # otherwise this test could not tell batches from single claims
    recipient = await claims_stack.create_recipient()
    bodies = [certificate_body(recipient) for _ in range(BURST)]
    claims_before, claimed_before = await _counters(claims_stack)

    started = time.monotonic()
    assert await claims_stack.post_in_parallel(bodies, clients=20) == [202] * BURST
    states = await claims_stack.wait_terminal(
        [(REGISTRY, str(b["certificate"]["id"])) for b in bodies],
        timeout=240,
    )
    elapsed = time.monotonic() - started
    assert set(states.values()) == {"delivered"}
    assert claims_stack.app[RUNTIME].live.slots_peak <= MAX_IN_FLIGHT

    claims_after, claimed_after = await _counters(claims_stack)
    claims, claimed = claims_after - claims_before, claimed_after - claimed_before
    # The burst overfilled the slots, so most certificates came from the backlog.
    assert claimed >= BURST - 2 * MAX_IN_FLIGHT
    # A finished certificate's slot waits for BATCH free slots; only the supervisor's
    # tick claims fewer (whatever is free then), at most once a second, and so may a
    # claim that finds fewer rows than slots while intake is still storing them.
    # Claiming slot by slot, as before, fails this (93 claims for 469 certificates).
    others = elapsed / TICK_SECONDS + 5
    assert claims <= claimed / BATCH + others, (claims, claimed, round(elapsed, 1))


def test_slots_are_taken_only_when_enough_are_free() -> None:
    live = LiveCounts()
    assert live.take_slots(10, 500, at_least=4) == 10  # all ten free: as many as the limit allows
    live.release_slots(3)
    assert live.take_slots(10, 500, at_least=4) == 0  # three free: none taken
    assert live.slots_taken == 7
    assert live.take_slots(10, 500) == 3  # without a minimum, any free slot
    assert live.take_slots(10, 500) == 0
