"""The bridge between Pykka actors and the asyncio event loop's coroutines.

Actors hand work to the loop and get the outcome back as a message (a tell), so no
actor turn waits on I/O and no coroutine waits on a Pykka future. Every such
request says once where the answer goes and what it looks like: a ``Reply`` (the
actor, the message for a value, the message for a failure). Timers are loop timers
whose expiry is a tell as well. All hand-offs are counted here
(``stamp_actor_handoffs_total``). Stamp's actors take their turns on this loop
(actors/base.py), so a hand-off made in a turn is a plain call on the loop's thread
(the task or timer is started at once); from any other thread (an actor on another
loop, a test) it crosses with ``call_soon_threadsafe``.

Intake first: the one event loop answers the HTTP edge and runs the pipeline's I/O.
While ``HOLD_INTAKE_REQUESTS`` intake requests are being handled, the work actors hand
to the loop (``run``, ``spawn``, ``write``) is queued here instead and released in
slices of ``SLICE_HANDOFFS`` every ``SLICE_SECONDS``, oldest first, so the loop spends
its time answering 202s. The pipeline goes on, more slowly, and catches up when the
burst is over (then everything held is released at once). Nothing is lost: an accepted
certificate is in PostgreSQL before its 202, and held work only waits; none waits
longer than ``max_hold_seconds`` (at most ``MAX_HOLD_SECONDS``, and short enough for
the lease renewals), so a steady stream of intakes cannot starve it.
Timers and the crypto workers are not held: a timer only tells its actor, which then
hands its work here, and a crypto job is one write to a worker's socket (its answer is
read by a loop reader callback and told to the actor like any other loop outcome). The
actors' turns themselves are held by the same rule (``actors.base.HOLD_INTAKE_REQUESTS``).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, Generic, TypeVar

import asyncpg
import pykka
import structlog

from actors.base import HOLD_INTAKE_REQUESTS as HOLD_INTAKE_REQUESTS
from actors.base import QUIET_CHUNK, intake_busy
from actors.base import SLICE_SECONDS as SLICE_SECONDS
from stamp import metrics
from stamp.db.batcher import StatementBatcher
from stamp.workers import WorkerPool

T = TypeVar("T")
log = structlog.get_logger(__name__)

SLICE_HANDOFFS = 4
"""Held hand-offs released per slice while intake is busy (one slice every
``SLICE_SECONDS``, the actors' turns' own pace: 200 hand-offs a second, a few dozen
certificates a second at about 8 hand-offs each). Once intake is quiet, held hand-offs
go out ``QUIET_CHUNK`` per loop callback, as held turns do."""
MAX_HOLD_SECONDS = 10.0
"""No hand-off is held longer, whatever the intake: a lease sweep (leases last
``STAMP_LEASE_SECONDS``, 60 s, and are renewed every third of it) or a registry poll is
at most this late. Longer than a burst: work released because it is overdue comes out
all at once, which the slices are there to avoid."""


@dataclass(slots=True)
class _Held:
    since: float
    start: Callable[[], None]  # runs on the loop
    closed: Callable[[BaseException], object]  # the answer when the loop is closed


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
    """A tell from the event loop's coroutines to an actor: one counted hand-off (a
    ``call_soon`` of the actor's turn when it runs on this loop)."""
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
        crypto: WorkerPool | None = None,
        batcher: StatementBatcher | None = None,
        *,
        max_hold_seconds: float = MAX_HOLD_SECONDS,
    ) -> None:
        self.loop = loop
        self.max_hold_seconds = max_hold_seconds
        self.crypto = crypto
        self.batcher = batcher
        self._tasks: set[asyncio.Task[Any]] = set()  # referenced while they run
        self._held: deque[_Held] = deque()
        self._held_lock = threading.Lock()
        self._releasing = False  # a release is scheduled on the loop (or running)
        self.held_total = 0  # hand-offs that waited in the queue (tests, benchmarks)

    def on_loop(self) -> bool:
        """Whether the caller runs on the loop's thread (an actor's turn does)."""
        return asyncio._get_running_loop() is self.loop

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

        def refused(exc: BaseException) -> None:
            coro.close()
            closed(exc)

        self._hand(start, refused)

    def _hand(self, start: Callable[[], None], closed: Callable[[BaseException], object]) -> None:
        """Run ``start`` on the loop: now, or held while intake is busy (see the module).
        Once anything is held, later work queues behind it: the loop sees an actor's
        hand-offs in the order it made them."""
        with self._held_lock:
            hold = bool(self._held) or intake_busy()
            if hold:
                self._held.append(_Held(time.monotonic(), start, closed))
                self.held_total += 1
                wake = not self._releasing
                self._releasing = True
        on_loop = self.on_loop()
        if not hold:
            if on_loop:
                start()  # in a turn: the task starts now, no loop wake-up needed
                return
            try:
                self.loop.call_soon_threadsafe(start)
            except RuntimeError as exc:  # the loop is closed (shutting down): the answer is the failure
                closed(exc)
            return
        if wake:
            if on_loop:
                self.loop.call_soon(self._release)
                return
            try:
                self.loop.call_soon_threadsafe(self._release)
            except RuntimeError as exc:
                self._refuse_held(exc)

    def _release(self) -> None:
        """On the loop: start a slice of the held work (all of it, in chunks, once
        intake is quiet) and come back for the rest."""
        busy = intake_busy()
        now = time.monotonic()
        with self._held_lock:
            count = SLICE_HANDOFFS if busy else QUIET_CHUNK
            overdue = now - self.max_hold_seconds
            taken: list[_Held] = []
            while self._held and (len(taken) < count or self._held[0].since <= overdue):
                taken.append(self._held.popleft())
            again = bool(self._held)
            self._releasing = again
        for held in taken:
            try:
                held.start()
            except Exception:  # one bad hand-off must not strand the others
                log.exception("loop.release_failed")
        if again:
            if busy:
                self.loop.call_later(SLICE_SECONDS, self._release)
            else:
                self.loop.call_soon(self._release)

    def _refuse_held(self, exc: BaseException) -> None:
        """The loop is closed: everything held gets the failure as its answer."""
        with self._held_lock:
            held, self._held = list(self._held), deque()
            self._releasing = False
        for item in held:
            item.closed(exc)

    @property
    def held(self) -> int:
        """Hand-offs waiting for the loop now."""
        return len(self._held)

    def write(
        self, sql: str, args: Sequence[Any], lock_key: tuple[str, ...], reply: Reply[asyncpg.Record]
    ) -> None:
        """One statement through the group commit; its row comes back as ``reply`` says.
        (The batcher counts the hand-off to the loop: it only crosses to start a writer.)
        While intake is busy the statement is held like any other hand-off: the
        pipeline's commits then do not compete with the intake inserts."""
        batcher = self.batcher
        assert batcher is not None
        if not self._held and not intake_busy():
            batcher.submit(sql, args, lock_key, reply, on_loop=self.on_loop())
            return
        metrics.handed_to_loop()
        self._hand(
            partial(batcher.submit, sql, args, lock_key, reply, on_loop=True),
            lambda exc: tell_quietly(reply.to, reply.outcome(None, exc)),
        )

    def compute(self, fn: Callable[[Any], T], arg: Any, reply: Reply[T]) -> None:
        """Run a CPU-heavy pure function in a crypto worker process (stamp/workers.py).
        Submitted in the actor's turn, on the loop (one write to the worker's socket; any
        other thread may submit too) and answered on the loop, which reads the worker's
        answer and queues the actor's next turn: no other thread is involved."""
        assert self.crypto is not None
        try:
            self.crypto.submit(fn, arg, reply)
        except Exception as exc:  # shut down, or arg not picklable: the answer is the failure
            tell_quietly(reply.to, reply.outcome(None, exc))

    def later(self, delay: float, ref: pykka.ActorRef[Any], message: object) -> None:
        """Tell ref message after delay seconds (a loop timer at that deadline)."""

        def arm() -> None:
            self.loop.call_later(delay, tell_from_loop, ref, message)

        metrics.handed_to_loop()
        if self.on_loop():
            arm()
            return
        try:
            self.loop.call_soon_threadsafe(arm)
        except RuntimeError:  # loop closed during shutdown: nothing left to wake
            log.debug("timer.dropped", reason="event loop closed")
