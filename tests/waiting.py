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
from typing import Any, TypeVar, overload

T = TypeVar("T")


# Two overloads because a union parameter (``T | Awaitable[T]``) makes mypy solve T
# from the coroutine type itself for an async condition, not from what it returns.
# ``T | None`` because the value returned is truthy, so never None: a condition
# answering ``Row | None`` gives the caller a ``Row``.
@overload
async def wait_until(
    condition: Callable[[], Awaitable[T | None]],
    *,
    timeout: float = ...,
    interval: float = ...,
    what: str = ...,
) -> T: ...


@overload
async def wait_until(
    condition: Callable[[], T | None],
    *,
    timeout: float = ...,
    interval: float = ...,
    what: str = ...,
) -> T: ...


async def wait_until(
    condition: Callable[[], Any],
    *,
    timeout: float = 30.0,
    interval: float = 0.02,
    what: str = "the condition",
) -> Any:
    """Poll ``condition`` (plain or async) until it returns a truthy value; return it."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = condition()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if loop.time() > deadline:
            raise AssertionError(f"{what} did not hold within {timeout}s (last value: {value!r})")
        await asyncio.sleep(interval)
