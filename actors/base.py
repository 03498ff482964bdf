"""Common base of Stamp's actors: Pykka actors whose turns run on a few shared threads.

Every actor is a ``pykka.Actor`` with its own mailbox, refs, tells, asks, registry entry
and ``on_start``/``on_receive``/``on_stop``/``on_failure`` hooks, handling its messages
one at a time and in order. What differs from ``pykka.ThreadingActor`` is only where a
message is handled: not on a thread of the actor's own (one started and torn down per
certificate, ~600 alive under load, each message a thread wake-up and a hand-over of
the GIL) but on one of ``ACTOR_THREADS`` threads shared by all actors. A mailbox that
receives a message while idle queues its actor once on the shared run queue; a thread
then handles up to ``TURN_MESSAGES`` of its messages and queues it again if more are
waiting, so a busy actor cannot starve the others. Actors never block (they hand I/O to
the event loop and answer by message, docs/architecture.md), so a few threads suffice;
measured in docs/benchmarks.md ("Actors on shared threads").
"""

from __future__ import annotations

import contextlib
import contextvars
import itertools
import logging
import queue
import sys
import threading
from collections import deque
from collections.abc import Iterator
from typing import Any

import pykka
from pykka import ActorDeadError, ActorRegistry
from pykka._envelope import Envelope
from pykka.messages import _ActorStop

ACTOR_THREADS = 4
"""Threads that run actors' turns. One would do for the CPU (the GIL), more keep a
slow handler (a log write to a full pipe) from holding up every other actor."""
TURN_MESSAGES = 32
"""Messages an actor handles per turn before it queues again behind the others."""
BUSY_INTAKE_REQUESTS = 16
"""Intake requests in flight from which actor turns run one at a time (see
``_RunQueue._work``); below saturation there are a few at most, so nothing changes."""

logger = logging.getLogger("pykka")


class _RunQueue:
    """The actors with messages waiting, and the threads that give them turns."""

    def __init__(self, threads: int) -> None:
        self._threads = threads
        self._ready: queue.SimpleQueue[StampActor] = queue.SimpleQueue()
        self._started = False
        self._lock = threading.Lock()
        self._names = itertools.count(1)
        self._one_at_a_time = threading.Lock()
        # Intake requests being handled (``intake_request``); written on the event loop
        # only, read by the actor threads.
        self.intake_requests = 0

    def schedule(self, actor: StampActor) -> None:
        if not self._started:
            self._start()
        self._ready.put(actor)

    def _start(self) -> None:
        with self._lock:
            if self._started:
                return
            for _ in range(self._threads):
                # Daemon: everything an actor knows that matters is in PostgreSQL, so an
                # actor thread must never keep the process alive after shutdown.
                thread = threading.Thread(target=self._work, name=f"actors-{next(self._names)}", daemon=True)
                thread.start()
            self._started = True

    def _work(self) -> None:
        while True:
            actor = self._ready.get()
            if self.intake_requests < BUSY_INTAKE_REQUESTS:
                actor._turn()
                continue
            # Requests wait for their 202: the event loop's thread answers them, and it
            # competes for the GIL with every actor thread that has a turn to run. Turns
            # one at a time give the loop about half of the GIL instead of a fifth; the
            # pipeline goes on, more slowly, until the burst is answered. No deadlock:
            # actors never block inside a turn, so a turn always ends and frees the lock.
            with self._one_at_a_time:
                actor._turn()


RUN_QUEUE = _RunQueue(ACTOR_THREADS)


def intake_requests() -> int:
    """Intake requests being handled now (read from any thread)."""
    return RUN_QUEUE.intake_requests


@contextlib.contextmanager
def intake_request() -> Iterator[None]:
    """Counts an intake request while it is handled (on the event loop); many at once
    make the actor threads take turns one at a time (``BUSY_INTAKE_REQUESTS``) and the
    bridge hold the pipeline's work for the loop (``actors.bridge.HOLD_INTAKE_REQUESTS``)."""
    RUN_QUEUE.intake_requests += 1
    try:
        yield
    finally:
        RUN_QUEUE.intake_requests -= 1


class _Mailbox:
    """An actor's inbox (pykka's ``ActorInbox`` protocol): a put into an idle mailbox
    queues its actor for a turn, exactly once until the mailbox is empty again."""

    __slots__ = ("_actor", "_lock", "_messages", "_scheduled")

    def __init__(self) -> None:
        self._actor: StampActor | None = None
        self._messages: deque[Envelope[Any]] = deque()
        self._lock = threading.Lock()
        self._scheduled = False

    def bind(self, actor: StampActor) -> None:
        self._actor = actor

    def put(self, envelope: Envelope[Any], /) -> None:
        with self._lock:
            self._messages.append(envelope)
            if self._scheduled or self._actor is None or not self._actor.running:
                return  # a turn is queued or running (or the actor is not started yet)
            self._scheduled = True
        RUN_QUEUE.schedule(self._actor)

    def start(self) -> None:
        """The actor's first turn (its on_start), queued whatever the mailbox holds."""
        assert self._actor is not None
        with self._lock:
            self._actor.running = True
            self._scheduled = True
        RUN_QUEUE.schedule(self._actor)

    def take(self) -> Envelope[Any] | None:
        """The next message, or None: the mailbox is empty and the turn ends (the next
        put queues the actor again)."""
        with self._lock:
            if self._messages:
                return self._messages.popleft()
            self._scheduled = False
            return None

    def end_turn(self) -> None:
        """A full turn ends: queue again, behind the other actors, if messages are left."""
        with self._lock:
            if not self._messages:
                self._scheduled = False
                return
        assert self._actor is not None
        RUN_QUEUE.schedule(self._actor)

    def get(self) -> Envelope[Any]:
        with self._lock:
            return self._messages.popleft()

    def empty(self) -> bool:
        return not self._messages

    def qsize(self) -> int:
        return len(self._messages)


class StampActor(pykka.Actor):
    """A Pykka actor run in turns on the shared actor threads (see the module)."""

    running = False

    def __init__(self) -> None:
        super().__init__()
        assert isinstance(self.actor_inbox, _Mailbox)
        self.actor_inbox.bind(self)
        self._setup_done = False
        # Each actor's turns run in a context of its own, as on a thread of its own:
        # what a turn sets in a context variable (the current trace span) stays the
        # actor's between its messages and never shows in another actor's turn.
        self._context = contextvars.Context()

    @staticmethod
    def _create_actor_inbox() -> _Mailbox:
        return _Mailbox()

    @staticmethod
    def _create_future() -> pykka.Future[Any]:
        return pykka.ThreadingFuture()

    def _start_actor_loop(self) -> None:
        # on_start runs in the first turn, before any message, like pykka's own loop.
        assert isinstance(self.actor_inbox, _Mailbox)
        self.actor_inbox.start()

    def _turn(self) -> None:
        self._context.run(self._turn_in_context)

    def _turn_in_context(self) -> None:
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
        except BaseException:  # as pykka: stop everything, without blocking a shared thread
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
