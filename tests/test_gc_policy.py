"""The collector policy ``stamp serve`` applies once started (stamp/gc_policy.py): start-up's
objects are frozen, the young generation is bigger, and garbage cycles made afterwards
are still collected without anyone calling ``gc.collect``."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from stamp import gc_policy


@pytest.fixture
def settled() -> Iterator[None]:
    before = gc.get_threshold()
    gc_policy.settle_after_startup()
    try:
        yield
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)


class _Node:
    def __init__(self) -> None:
        self.other: _Node | None = None


def test_objects_alive_at_startup_are_frozen_and_the_young_generation_grows(settled: None) -> None:
    alive_at_startup = _Node()  # noqa: F841 (held so that it is alive when frozen)
    assert gc.get_freeze_count() > 1_000
    young, middle, old = gc.get_threshold()
    assert young == gc_policy.YOUNG_THRESHOLD
    assert (middle, old) == (10, 10)  # CPython's own ratios for the older generations


def test_cycles_made_after_startup_are_collected_without_being_asked(settled: None) -> None:
    collected = 0

    def gone(_: object) -> None:
        nonlocal collected
        collected += 1

    refs = []
    made = 3 * gc_policy.YOUNG_THRESHOLD  # enough allocations for several young collections
    for _ in range(made // 2):
        a, b = _Node(), _Node()
        a.other, b.other = b, a  # only the collector can free these
        refs.append(weakref.ref(a, gone))
        del a, b
    # Most cycles went in the young collections the allocations above triggered; the
    # last ones may still wait for the next collection.
    assert collected >= len(refs) - gc_policy.YOUNG_THRESHOLD
