"""The bridge between Pykka actor threads and the asyncio event loop.

Actors hand work to the loop and get the outcome back as a message (a tell), so no
actor thread waits on I/O and no coroutine waits on a Pykka future. Every such
request says once where the answer goes and what it looks like: a ``Reply`` (the
actor, the message for a value, the message for a failure). Timers are loop timers
whose expiry is a tell as well. Each crossing between the loop and an actor thread
costs a wake-up and a GIL hand-over; all of them are counted here
(``stamp_actor_handoffs_total``).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, Generic, TypeVar

import asyncpg
import pykka
import structlog

from stamp import metrics
from stamp.db.batcher import StatementBatcher

T = TypeVar("T")
log = structlog.get_logger(__name__)


def describe(exc: BaseException) -> str:
    """A failure as the reason an actor records: the exception's type and message
    (never a secret: no exception Stamp raises carries one)."""
    return f"{type(exc).__name__}: {exc}"


def tell_quietly(ref: pykka.ActorRef[Any], message: object) -> bool:
    """Tell; an actor that has stopped meanwhile is not an error for the sender."""
    try:
        ref.tell(message)
    except pykka.ActorDeadError:
        return False
    return True


def tell_from_loop(ref: pykka.ActorRef[Any], message: object) -> bool:
    """A tell from the event loop to an actor thread: one counted hand-off."""
    metrics.handed_to_actor()
    return tell_quietly(ref, message)


@dataclass(frozen=True, slots=True)
class Reply(Generic[T]):
    """Where an outcome goes: ``ok(value)`` or ``failed(reason)``, told to ``to``."""

    to: pykka.ActorRef[Any]
    ok: Callable[[T], object]
    failed: Callable[[str], object]

    def outcome(self, value: T | None, error: BaseException | None) -> object:
        if error is not None:
            return self.failed(describe(error))
        try:
            return self.ok(value)  # type: ignore[arg-type]
        except Exception as exc:  # a malformed answer is a failure of the call, not of the loop
            return self.failed(describe(exc))

    def __call__(self, value: T | None, error: BaseException | None) -> None:
        """Answer from the event loop (the group commit's completion signature)."""
        tell_from_loop(self.to, self.outcome(value, error))


def _answer(reply: Reply[T], task: asyncio.Task[T]) -> None:
    """A task's outcome, whatever it is, goes back as a message."""
    if task.cancelled():
        reply(None, asyncio.CancelledError())
        return
    error = task.exception()
    if error is not None:
        reply(None, error)
    else:
        reply(task.result(), None)


def _log_failure(what: str, task: asyncio.Task[object]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.warning("loop.task_failed", task=what, error=type(task.exception()).__name__)


class LoopBridge:
    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        executor: concurrent.futures.Executor | None = None,
        batcher: StatementBatcher | None = None,
    ) -> None:
        self.loop = loop
        self.executor = executor
        self.batcher = batcher
        self._tasks: set[asyncio.Task[Any]] = set()  # referenced while they run

    def run(self, coro: Coroutine[Any, Any, T], reply: Reply[T]) -> None:
        """Run coro on the loop; its value or failure comes back as ``reply`` says."""
        metrics.handed_to_loop()
        # A task started by a plain callback, answered from its done callback: no
        # concurrent future chained to it (run_coroutine_threadsafe's extra callbacks
        # cost about as much as the hand-off itself).
        self._start(
            coro, partial(_answer, reply), lambda exc: tell_quietly(reply.to, reply.outcome(None, exc))
        )

    def spawn(self, coro: Coroutine[Any, Any, object], what: str) -> None:
        """Run coro on the loop; nobody waits for it, a failure is logged."""
        metrics.handed_to_loop()
        self._start(coro, partial(_log_failure, what), lambda _exc: None)

    def _start(
        self,
        coro: Coroutine[Any, Any, Any],
        done: Callable[[asyncio.Task[Any]], None],
        closed: Callable[[BaseException], object],
    ) -> None:
        def start() -> None:
            task = self.loop.create_task(coro)
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            task.add_done_callback(done)

        try:
            self.loop.call_soon_threadsafe(start)
        except RuntimeError as exc:  # the loop is closed (shutting down): the answer is the failure
            coro.close()
            closed(exc)

    def write(
        self, sql: str, args: Sequence[Any], lock_key: tuple[str, ...], reply: Reply[asyncpg.Record]
    ) -> None:
        """One statement through the group commit; its row comes back as ``reply`` says.
        (The batcher counts the hand-off to the loop: it only crosses to start a writer.)"""
        assert self.batcher is not None
        self.batcher.submit(sql, args, lock_key, reply)

    def compute(self, fn: Callable[[Any], T], arg: Any, reply: Reply[T]) -> None:
        """Run a CPU-heavy pure function in the executor (process pool). Submitted from
        the actor's thread and answered from the executor's: the loop is not involved."""
        assert self.executor is not None
        try:
            future = self.executor.submit(fn, arg)
        except RuntimeError as exc:  # shut down: the answer is the failure
            tell_quietly(reply.to, reply.outcome(None, exc))
            return

        def done(f: concurrent.futures.Future[T]) -> None:
            try:
                value = f.result()
            except BaseException as exc:
                tell_quietly(reply.to, reply.outcome(None, exc))
            else:
                tell_quietly(reply.to, reply.outcome(value, None))

        future.add_done_callback(done)

    def later(self, delay: float, ref: pykka.ActorRef[Any], message: object) -> None:
        """Tell ref message after delay seconds (a loop timer at that deadline)."""

        def arm() -> None:
            self.loop.call_later(delay, tell_from_loop, ref, message)

        try:
            metrics.handed_to_loop()
            self.loop.call_soon_threadsafe(arm)
        except RuntimeError:  # loop closed during shutdown: nothing left to wake
            log.debug("timer.dropped", reason="event loop closed")
