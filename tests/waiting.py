"""Wait for a condition instead of sleeping a fixed time before an assertion.

A fixed sleep is either too short on a busy machine (a flaky failure) or too long
everywhere else (a slow suite). ``wait_until`` polls the condition and returns its
first truthy value; on time-out it fails with the last value seen, so the message
says what was still wrong.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


async def wait_until(
    condition: Callable[[], T | Awaitable[T]],
    *,
    timeout: float = 30.0,
    interval: float = 0.02,
    what: str = "the condition",
) -> T:
    """Poll ``condition`` (plain or async) until it returns a truthy value; return it."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = condition()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value  # type: ignore[return-value]
        if loop.time() > deadline:
            raise AssertionError(f"{what} did not hold within {timeout}s (last value: {value!r})")
        await asyncio.sleep(interval)
