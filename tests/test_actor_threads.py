"""Stamp's actors take turns on a few shared threads (actors/base.py) and still behave
as Pykka actors: on_start first, one message at a time and in order, asks answered,
failures reported, nothing handled after a stop."""

from __future__ import annotations

import contextlib
import contextvars
import threading
import time
from typing import Any

import pykka
import pytest

from actors.base import ACTOR_THREADS, BUSY_INTAKE_REQUESTS, RUN_QUEUE, StampActor, intake_request


class Counter(StampActor):
    def __init__(self, started: list[str]) -> None:
        super().__init__()
        self.started = started
        self.seen: list[int] = []
        self.busy = False
        self.overlaps = 0

    def on_start(self) -> None:
        self.started.append(self.actor_urn)

    def on_receive(self, message: Any) -> Any:
        if self.busy:
            self.overlaps += 1
        self.busy = True
        try:
            if message == "seen":
                return list(self.seen)
            if message == "boom":
                raise ValueError("boom")
            if not self.seen:
                assert self.actor_urn in self.started  # on_start ran before the first message
            self.seen.append(message)
            time.sleep(0)  # let other threads in while "busy"
            return None
        finally:
            self.busy = False


class Failing(StampActor):
    def __init__(self, failures: list[str]) -> None:
        super().__init__()
        self.failures = failures

    def on_receive(self, message: Any) -> Any:
        raise RuntimeError(str(message))

    def on_failure(self, exc_type: object, exc: object, traceback: object) -> None:
        self.failures.append(str(exc))


def test_many_actors_keep_order_on_a_few_threads() -> None:
    threads_before = threading.active_count()
    started: list[str] = []
    refs = [Counter.start(started) for _ in range(300)]
    try:
        senders = [
            threading.Thread(target=lambda ref=ref: [ref.tell(i) for i in range(200)]) for ref in refs[:50]
        ]
        for ref in refs[50:]:
            for i in range(200):
                ref.tell(i)
        for sender in senders:
            sender.start()
        for sender in senders:
            sender.join()
        for ref in refs:
            assert ref.ask("seen", timeout=20) == list(range(200))
        assert len(started) == 300
        assert all(ref.proxy().overlaps.get(timeout=5) == 0 for ref in refs[:20])
        # No thread per actor: the shared ones at most (they may have started earlier).
        assert threading.active_count() <= threads_before + ACTOR_THREADS
    finally:
        for ref in refs:
            ref.stop()


def test_a_failure_stops_the_actor_and_calls_on_failure() -> None:
    failures: list[str] = []
    ref = Failing.start(failures)
    ref.tell("first")
    deadline = time.monotonic() + 10
    while ref.is_alive() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not ref.is_alive()
    assert failures == ["first"]


def test_an_ask_that_raises_answers_the_asker_and_the_actor_lives_on() -> None:
    ref = Counter.start([])
    try:
        with pytest.raises(ValueError, match="boom"):
            ref.ask("boom", timeout=5)
        ref.tell(1)
        assert ref.ask("seen", timeout=5) == [1]
    finally:
        ref.stop()


def test_after_a_stop_nothing_is_handled_and_tells_fail() -> None:
    ref = Counter.start([])
    ref.tell(1)
    ref.stop(block=True, timeout=5)
    assert not ref.is_alive()
    with pytest.raises(pykka.ActorDeadError):
        ref.tell(2)


_VALUE: contextvars.ContextVar[str] = contextvars.ContextVar("value", default="")


class Remembers(StampActor):
    """Sets a context variable in one message and reads it in the next, like an
    actor that keeps its current trace span between messages."""

    def on_receive(self, message: Any) -> Any:
        if message == "read":
            return _VALUE.get()
        _VALUE.set(message)
        return None


def test_each_actor_keeps_its_own_context_between_messages() -> None:
    refs = [Remembers.start() for _ in range(50)]
    try:
        for i, ref in enumerate(refs):
            ref.tell(f"actor-{i}")
        assert [ref.ask("read", timeout=10) for ref in refs] == [f"actor-{i}" for i in range(50)]
        assert _VALUE.get() == ""  # nothing leaked into the asking thread either
    finally:
        for ref in refs:
            ref.stop()


class Sleeper(StampActor):
    """Holds its turn for a while and records how many turns run at once."""

    def __init__(self, running: list[int], peak: list[int], lock: threading.Lock) -> None:
        super().__init__()
        self.in_turn, self.peak, self.lock = running, peak, lock

    def on_receive(self, message: Any) -> Any:
        with self.lock:
            self.in_turn[0] += 1
            self.peak[0] = max(self.peak[0], self.in_turn[0])
        time.sleep(0.02)
        with self.lock:
            self.in_turn[0] -= 1
        return None


def _peak_turns_at_once(busy: bool) -> int:
    running, peak, lock = [0], [0], threading.Lock()
    refs = [Sleeper.start(running, peak, lock) for _ in range(ACTOR_THREADS * 2)]
    try:
        with contextlib.ExitStack() as stack:
            if busy:  # as many intake requests in flight as make the actors yield
                for _ in range(BUSY_INTAKE_REQUESTS):
                    stack.enter_context(intake_request())
            futures = [ref.ask("go", block=False) for ref in refs for _ in range(3)]
            for future in futures:
                future.get(timeout=20)
    finally:
        for ref in refs:
            ref.stop()
    return peak[0]


def test_turns_run_one_at_a_time_while_many_intake_requests_wait() -> None:
    # Unbusy, the shared threads run turns side by side (so the check below can fail).
    assert _peak_turns_at_once(busy=False) > 1
    assert _peak_turns_at_once(busy=True) == 1
    assert RUN_QUEUE.intake_requests == 0
