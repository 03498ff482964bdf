"""stamp.scheduling: a short time slice asked of the kernel, the rest of the thread's
scheduling left as it was. Each case runs in a thread of its own (tests/slices.py)."""

from __future__ import annotations

import os

import pytest

from stamp import scheduling
from tests.slices import in_thread, needs_custom_slices


@needs_custom_slices
def test_a_short_slice_keeps_the_threads_policy_and_nice_value() -> None:
    def run() -> tuple[bool, float | None, int, int]:
        os.nice(5)
        os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))
        granted = scheduling.request_slice(0.0002)
        nice = os.getpriority(os.PRIO_PROCESS, 0)
        return granted, scheduling.current_slice(), nice, os.sched_getscheduler(0)

    before = os.getpriority(os.PRIO_PROCESS, 0)
    granted, slice_seconds, nice, policy = in_thread(run)
    assert granted
    assert slice_seconds == pytest.approx(0.0002)
    assert nice == min(19, before + 5)
    assert policy == os.SCHED_BATCH


@needs_custom_slices
@pytest.mark.parametrize(
    ("asked", "granted"),
    [(1e-6, scheduling.MIN_SLICE_SECONDS), (0.003, 0.003), (5.0, scheduling.MAX_SLICE_SECONDS)],
)
def test_a_slice_is_clamped_to_the_kernels_range(asked: float, granted: float) -> None:
    def run() -> tuple[bool, float | None]:
        return scheduling.request_slice(asked), scheduling.current_slice()

    ok, slice_seconds = in_thread(run)
    assert ok
    assert slice_seconds == pytest.approx(granted)


@needs_custom_slices
def test_the_slice_is_the_calling_threads_own() -> None:
    mine = scheduling.current_slice()
    assert in_thread(lambda: scheduling.request_slice(0.05))
    assert scheduling.current_slice() == mine
    assert mine != pytest.approx(0.05)


def test_a_process_that_does_not_exist_has_no_slice() -> None:
    # pid_max is at most 2**22: this pid is never in use.
    assert scheduling.current_slice(2**22 + 1) is None
