"""Common base of Stamp's actors: Pykka actors whose turns run on the asyncio event loop.

Every actor is a ``pykka.Actor`` with its own mailbox, refs, tells, asks, registry entry
and ``on_start``/``on_receive``/``on_stop``/``on_failure`` hooks, handling its messages
one at a time and in order. What differs from ``pykka.ThreadingActor`` is only where a
message is handled: not on a thread of the actor's own, but in a *turn*, a callback on
the event loop the actor is bound to. A mailbox that receives a message while idle
queues one turn of its actor on that loop (``call_soon``; ``call_soon_threadsafe``
from another thread); the turn handles up to ``TURN_MESSAGES`` messages and queues
again behind everything else on the loop if more are waiting, so a busy actor cannot
starve the other actors nor the loop's own work (HTTP requests, I/O).

Intake first: the loop also answers the HTTP intake. While ``HOLD_INTAKE_REQUESTS`` or
more intake requests are being handled (the rule by which actors/bridge.py holds the
actors' hand-offs), turns are held too: a turn that comes due waits in its loop's queue
(``_Turns``) and the queue gives ``SLICE_TURNS`` turns every ``SLICE_SECONDS``, oldest
first; once intake is quiet, everything held runs at once (in chunks). Messages only
wait in their mailboxes meanwhile; the pipeline goes on, more slowly.

Which loop: the one given when the actor is built (``StampActor(loop)``). Stamp's actors
get the loop of their process's ``LoopBridge``, the one loop that also runs their I/O:
an actor's hand-off to the loop is then a plain call, and the answer a ``call_soon``
of its turn, with no thread switch, GIL hand-over or self-pipe write at all (actors
never block inside a turn: they hand I/O to the loop and get answers by message,
docs/architecture.md). An actor built without a loop (tools, unit tests) runs on one
loop of this module's own, on a daemon thread started when first needed; so does an
actor whose loop has been closed (shutdown), whose hand-offs then fail as answers.

The one rule this brings: never wait for an actor on its own loop's thread. An
``ask(...).get()`` or ``stop(block=True)`` there would wait for a turn that only the
blocked thread could run; it raises ``RuntimeError`` instead (``_TurnFuture``). Code on
the loop tells, or waits from another thread (``asyncio.to_thread``, as
``stamp.app._stop_actors`` does). Measured in docs/benchmarks.md ("Actor turns on the
event loop").
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import sys
import threading
import weakref
from collections import deque
from collections.abc import Iterator
from typing import Any

import pykka
from pykka import ActorDeadError, ActorRegistry
from pykka._envelope import Envelope
from pykka.messages import _ActorStop

TURN_MESSAGES = 32
"""Messages an actor handles per turn before it queues again behind the others."""
HOLD_INTAKE_REQUESTS = 8
"""Intake requests being handled from which actor turns (and the bridge's hand-offs to
the loop) are held. Below saturation a request takes a few ms, so at hundreds per
second fewer are in flight."""
SLICE_TURNS = 8
"""Held turns given per slice while intake is busy."""
SLICE_SECONDS = 0.02
"""Time between two slices of held turns while intake is busy."""
QUIET_CHUNK = 64
"""Held turns given per loop callback once intake is quiet, so that a long queue does
not become one long callback."""

logger = logging.getLogger("pykka")

_intake_requests = 0
"""Intake requests being handled (``intake_request``); written on the event loop only."""


def intake_requests() -> int:
    """Intake requests being handled now (read from any thread)."""
    return _intake_requests


def intake_busy() -> bool:
    """Whether so many intake requests are being handled that the pipeline yields."""
    return _intake_requests >= HOLD_INTAKE_REQUESTS


@contextlib.contextmanager
def intake_request() -> Iterator[None]:
    """Counts an intake request while it is handled (on the event loop); many at once
    make the actors' turns and the bridge's hand-offs wait (``HOLD_INTAKE_REQUESTS``)."""
    global _intake_requests
    _intake_requests += 1
    try:
        yield
    finally:
        _intake_requests -= 1


class _OwnLoop:
    """The loop of actors built without one: on a daemon thread of its own, started
    when the first such actor is built and never stopped (everything an actor knows
    that matters is in PostgreSQL: it must never keep the process alive)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None

    def get(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                threading.Thread(target=loop.run_forever, name="actors", daemon=True).start()
                self._loop = loop
            return self._loop


OWN_LOOP = _OwnLoop()


class _Turns:
    """The turns held on one loop while intake is busy (see the module); used on that
    loop's thread only."""

    __slots__ = ("_loop", "held", "releasing")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        # Weakly: the loop is the key of ``_TURNS``, which must not keep it alive.
        self._loop = weakref.ref(loop)
        self.held: deque[StampActor] = deque()
        self.releasing = False

    def hold(self, actor: StampActor) -> None:
        self.held.append(actor)
        if not self.releasing:
            self.releasing = True
            self.loop().call_soon(self._release)

    def _release(self) -> None:
        """Give a slice of the held turns (a chunk once intake is quiet), oldest first,
        and come back for the rest. A turn that ends with messages left queues again
        behind the held ones (``StampActor._turn``)."""
        busy = intake_busy()
        for _ in range(min(SLICE_TURNS if busy else QUIET_CHUNK, len(self.held))):
            actor = self.held.popleft()
            try:
                actor.turn_context.run(actor._take_turn)
            except Exception:  # a turn handles its own failures; nothing may strand the rest
                logger.exception(f"Turn of {actor} failed")
        if not self.held:
            self.releasing = False
        elif busy:
            self.loop().call_later(SLICE_SECONDS, self._release)
        else:
            self.loop().call_soon(self._release)

    def loop(self) -> asyncio.AbstractEventLoop:
        """The loop (alive: the holder runs on it)."""
        loop = self._loop()
        assert loop is not None
        return loop


_TURNS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Turns] = weakref.WeakKeyDictionary()
_TURNS_LOCK = threading.Lock()


def _turns_of(loop: asyncio.AbstractEventLoop) -> _Turns:
    with _TURNS_LOCK:
        turns = _TURNS.get(loop)
        if turns is None:
            turns = _TURNS[loop] = _Turns(loop)
        return turns


def held_turns(loop: asyncio.AbstractEventLoop) -> int:
    """Turns waiting on ``loop`` because intake is busy, now."""
    return len(_turns_of(loop).held)


def _schedule(actor: StampActor) -> None:
    """Queue one turn of ``actor`` on its loop, in the actor's own context."""
    loop = actor.turn_loop
    if asyncio._get_running_loop() is loop:
        # On the loop's thread (a turn, a loop callback, a request handler): a plain
        # append to the loop's ready queue, no wake-up needed.
        loop.call_soon(actor._turn, context=actor.turn_context)
        return
    try:
        loop.call_soon_threadsafe(actor._turn, context=actor.turn_context)
    except RuntimeError:
        # The loop is closed (its runtime has shut down): the actor's remaining turns
        # run on the module's own loop, so asks and stops from elsewhere are still
        # answered; its hand-offs to the closed loop fail as their answers.
        actor.turn_loop = OWN_LOOP.get()
        actor.turns = _turns_of(actor.turn_loop)
        actor.turn_loop.call_soon_threadsafe(actor._turn, context=actor.turn_context)


class _TurnFuture(pykka.ThreadingFuture[Any]):
    """A Pykka future that refuses to wait on the thread of the loop whose actor must
    set it: that wait could never end (the turn it waits for would run on that thread)."""

    loop: asyncio.AbstractEventLoop | None = None

    def get(self, *, timeout: float | None = None) -> Any:
        loop = self.loop
        if loop is not None and self._result is None and asyncio._get_running_loop() is loop:
            raise RuntimeError(
                "waiting for an actor on its own event loop's thread would never end: "
                "tell instead, or wait from another thread (asyncio.to_thread)"
            )
        return super().get(timeout=timeout)


class _Mailbox:
    """An actor's inbox (pykka's ``ActorInbox`` protocol): a put into an idle mailbox
    queues one turn of its actor, exactly once until the mailbox is empty again."""

    __slots__ = ("_actor", "_lock", "_messages", "_scheduled")

    def __init__(self) -> None:
        self._actor: StampActor | None = None
        self._messages: deque[Envelope[Any]] = deque()
        # Tells come from other threads too (the crypto pool's answers, tests).
        self._lock = threading.Lock()
        self._scheduled = False

    def bind(self, actor: StampActor) -> None:
        self._actor = actor

    def put(self, envelope: Envelope[Any], /) -> None:
        actor = self._actor
        if isinstance(envelope.reply_to, _TurnFuture) and actor is not None:
            envelope.reply_to.loop = actor.turn_loop  # an ask: see _TurnFuture
        with self._lock:
            self._messages.append(envelope)
            if self._scheduled or actor is None or not actor.running:
                return  # a turn is queued or running (or the actor is not started yet)
            self._scheduled = True
        _schedule(actor)

    def start(self) -> None:
        """The actor's first turn (its on_start), queued whatever the mailbox holds."""
        assert self._actor is not None
        with self._lock:
            self._actor.running = True
            self._scheduled = True
        _schedule(self._actor)

    def take(self) -> Envelope[Any] | None:
        """The next message, or None: the mailbox is empty and the turn ends (the next
        put queues the actor again)."""
        with self._lock:
            if self._messages:
                return self._messages.popleft()
            self._scheduled = False
            return None

    def end_turn(self) -> None:
        """A full turn ends: queue again, behind whatever else the loop has to do, if
        messages are left."""
        with self._lock:
            if not self._messages:
                self._scheduled = False
                return
        assert self._actor is not None
        _schedule(self._actor)

    def get(self) -> Envelope[Any]:
        with self._lock:
            return self._messages.popleft()

    def empty(self) -> bool:
        return not self._messages

    def qsize(self) -> int:
        return len(self._messages)


class StampActor(pykka.Actor):
    """A Pykka actor run in turns on an event loop (see the module): ``loop``, or the
    module's own loop when none is given."""

    running = False

    def __init__(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        super().__init__()
        assert isinstance(self.actor_inbox, _Mailbox)
        self.actor_inbox.bind(self)
        self._setup_done = False
        self.turn_loop = loop if loop is not None else OWN_LOOP.get()
        self.turns = _turns_of(self.turn_loop)
        # Each actor's turns run in a context of its own, as on a thread of its own:
        # what a turn sets in a context variable (the current trace span) stays the
        # actor's between its messages and never shows in another actor's turn.
        self.turn_context = contextvars.Context()

    @staticmethod
    def _create_actor_inbox() -> _Mailbox:
        return _Mailbox()

    @staticmethod
    def _create_future() -> pykka.Future[Any]:
        return _TurnFuture()

    def _start_actor_loop(self) -> None:
        # on_start runs in the first turn, before any message, like pykka's own loop.
        assert isinstance(self.actor_inbox, _Mailbox)
        self.actor_inbox.start()

    def _turn(self) -> None:
        """A turn comes due, on the actor's loop and in its context (``_schedule``): it
        runs now, or waits behind the held ones while intake is busy."""
        turns = self.turns
        if turns.held or intake_busy():
            turns.hold(self)
            return
        self._take_turn()

    def _take_turn(self) -> None:
        mailbox = self.actor_inbox
        assert isinstance(mailbox, _Mailbox)
        if not self._setup_done:
            self._setup_done = True
            self._actor_loop_setup()
        for _ in range(TURN_MESSAGES):
            if self.actor_stopped.is_set():
                self._reject_rest(mailbox)
                return
            envelope = mailbox.take()
            if envelope is None:
                return
            self._handle_envelope(envelope)
        if self.actor_stopped.is_set():
            self._reject_rest(mailbox)
            return
        mailbox.end_turn()

    def _handle_envelope(self, envelope: Envelope[Any]) -> None:
        # pykka's ThreadingActor loop body, for one message.
        try:
            response = self._handle_receive(envelope.message)
            if envelope.reply_to is not None:
                envelope.reply_to.set(response)
        except Exception:
            if envelope.reply_to is not None:
                logger.info(f"Exception returned from {self} to caller:", exc_info=sys.exc_info())
                envelope.reply_to.set_exception()
            else:
                self._handle_failure(*sys.exc_info())
                try:
                    self.on_failure(*sys.exc_info())
                except Exception:  # as pykka: a failing hook stops the actor
                    self._handle_failure(*sys.exc_info())
        except BaseException:  # as pykka: stop everything, without blocking the loop
            logger.debug(f"{sys.exc_info()[1]!r} in {self}. Stopping all actors.")
            self._stop()
            ActorRegistry.stop_all(block=False)

    def _reject_rest(self, mailbox: _Mailbox) -> None:
        """Stopped: asks still waiting get ActorDeadError (a stop request: None)."""
        while (envelope := mailbox.take()) is not None:
            if envelope.reply_to is None:
                continue
            if isinstance(envelope.message, _ActorStop):
                envelope.reply_to.set(None)
            else:
                dead = ActorDeadError(f"{self.actor_ref} stopped before handling the message")
                envelope.reply_to.set_exception(exc_info=(ActorDeadError, dead, None))
