"""The bridge between Pykka actor threads and the asyncio event loop.

Actors hand coroutines to the loop and get the outcome back as a message (a tell),
so no actor thread waits on I/O and no coroutine waits on a Pykka future. Timers are
loop timers whose expiry is a tell as well.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import asyncpg
import pykka
import structlog

T = TypeVar("T")
log = structlog.get_logger(__name__)


def reply_with(
    reply_to: pykka.ActorRef[Any],
    on_row: Callable[[asyncpg.Record], object],
    on_error: Callable[[BaseException], object],
) -> Callable[[asyncpg.Record | None, BaseException | None], None]:
    """A group-commit completion (``StatementBatcher.submit``) that tells its outcome
    to the actor as a message, like ``LoopBridge.run`` does for a coroutine."""

    def done(row: asyncpg.Record | None, error: BaseException | None) -> None:
        if error is None and row is not None:
            message = on_row(row)
        else:
            message = on_error(error or RuntimeError("a batched statement answered no row"))
        tell_quietly(reply_to, message)

    return done


def tell_quietly(ref: pykka.ActorRef[Any], message: object) -> bool:
    """Tell; an actor that has stopped meanwhile is not an error for the sender."""
    try:
        ref.tell(message)
    except pykka.ActorDeadError:
        return False
    return True


class LoopBridge:
    def __init__(
        self, loop: asyncio.AbstractEventLoop, executor: concurrent.futures.Executor | None = None
    ) -> None:
        self.loop = loop
        self.executor = executor

    def run(
        self,
        coro: Coroutine[Any, Any, T],
        reply_to: pykka.ActorRef[Any],
        on_result: Callable[[T], object],
        on_error: Callable[[BaseException], object],
    ) -> None:
        """Run coro on the loop; tell reply_to on_result(value) or on_error(exc)."""
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)

        def done(f: concurrent.futures.Future[T]) -> None:
            try:
                message = on_result(f.result())
            except BaseException as exc:  # the outcome, whatever it is, goes back as a message
                message = on_error(exc)
            tell_quietly(reply_to, message)

        future.add_done_callback(done)

    def compute(
        self,
        fn: Callable[..., T],
        arg: Any,
        reply_to: pykka.ActorRef[Any],
        on_result: Callable[[T], object],
        on_error: Callable[[BaseException], object],
    ) -> None:
        """Run a CPU-heavy pure function in the executor (process pool)."""

        async def call() -> T:
            return await self.loop.run_in_executor(self.executor, fn, arg)

        self.run(call(), reply_to, on_result, on_error)

    def later(self, delay: float, ref: pykka.ActorRef[Any], message: object) -> None:
        """Tell ref message after delay seconds."""

        def arm() -> None:
            self.loop.call_later(delay, tell_quietly, ref, message)

        try:
            self.loop.call_soon_threadsafe(arm)
        except RuntimeError:  # loop closed during shutdown: nothing left to wake
            log.debug("timer.dropped", reason="event loop closed")
