"""Running a scheduling call in a thread of its own (it applies to the calling thread,
so the test process's main thread keeps its slice), and the mark for tests that need a
kernel granting custom time slices."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TypeVar

import pytest

from stamp import scheduling

T = TypeVar("T")


def in_thread(fn: Callable[[], T]) -> T:
    results: list[T] = []
    thread = threading.Thread(target=lambda: results.append(fn()))
    thread.start()
    thread.join()
    assert results, "the thread raised (see the warning above)"
    return results[0]


needs_custom_slices = pytest.mark.skipif(
    not in_thread(lambda: scheduling.request_slice(scheduling.MIN_SLICE_SECONDS)),
    reason="this kernel grants no custom time slice (Linux 6.12 or later does)",
)
