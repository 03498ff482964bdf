"""The event loop ``stamp serve`` runs on: uvloop where it is installed, else asyncio's.

Everything Stamp does in its own process happens on one event loop: the HTTP edge, the
actors' turns, the group commit, the gRPC and wallet calls. uvloop (libuv, the loop
aiohttp and asyncpg recommend) runs the same asyncio code with less work per callback,
timer and socket read, which shows in the intake's tail at 1,000 requests/s
(docs/benchmarks.md, "uvloop"). ``STAMP_EVENT_LOOP``: ``auto`` (uvloop when it can be
imported), ``uvloop`` (a configuration error where it cannot) or ``asyncio``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

CHOICES = ("auto", "uvloop", "asyncio")


class EventLoopUnavailable(RuntimeError):
    """``uvloop`` was asked for and cannot be imported here."""


def _uvloop() -> Any | None:
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop


def resolve(choice: str) -> str:
    """The loop ``choice`` gives on this machine: ``uvloop`` or ``asyncio``."""
    if choice not in CHOICES:
        raise ValueError(f"must be one of {', '.join(CHOICES)}")
    if choice == "asyncio":
        return "asyncio"
    if _uvloop() is not None:
        return "uvloop"
    if choice == "uvloop":
        raise EventLoopUnavailable("uvloop is not installed (pip install uvloop; not available on Windows)")
    return "asyncio"


def run(main: Coroutine[Any, Any, T], choice: str) -> T:
    """``asyncio.run(main)`` on the loop ``choice`` resolves to."""
    if resolve(choice) == "uvloop":
        uvloop = _uvloop()
        assert uvloop is not None
        result: T = uvloop.run(main)
        return result
    return asyncio.run(main)


def running_loop_name() -> str:
    """``uvloop`` or ``asyncio``: what the running loop is (for logs and check-ups)."""
    return "uvloop" if type(asyncio.get_running_loop()).__module__.startswith("uvloop") else "asyncio"
