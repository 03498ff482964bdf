"""Stamp's actors take turns on an event loop (actors/base.py) and still behave as Pykka
actors: on_start first, one message at a time and in order, asks answered, failures
reported, nothing handled after a stop. In a running Stamp every turn runs on the
loop's own thread, and the actors' hand-offs to the loop do not cross threads."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pykka
import pytest

from actors import base
from actors.base import (
    HOLD_INTAKE_REQUESTS,
    OWN_LOOP,
    TURN_MESSAGES,
    StampActor,
    held_turns,
    intake_request,
    intake_requests,
)
from tests.stack import running_stack

CERTIFICATES = 10


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


def test_many_actors_keep_order_on_one_loop() -> None:
    OWN_LOOP.get()  # its thread may have started earlier
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
        # No thread per actor: their turns all run on the one loop.
        assert threading.active_count() == threads_before
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


# --- which loop, and which thread -----------------------------------------------------------


@contextlib.contextmanager
def loop_in_thread() -> Iterator[tuple[asyncio.AbstractEventLoop, threading.Thread]]:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield loop, thread
    finally:
        if not loop.is_closed():
            loop.call_soon_threadsafe(loop.stop)
            thread.join(5)
            loop.close()


class Where(StampActor):
    """Records the thread of each of its hooks; answers with the loop it runs on."""

    def __init__(self, threads: list[int], loop: asyncio.AbstractEventLoop | None = None) -> None:
        super().__init__(loop)
        self.threads = threads

    def on_start(self) -> None:
        self.threads.append(threading.get_ident())

    def on_receive(self, message: Any) -> Any:
        self.threads.append(threading.get_ident())
        return asyncio.get_running_loop()

    def on_stop(self) -> None:
        self.threads.append(threading.get_ident())


def test_turns_run_on_the_loop_the_actor_is_bound_to_and_a_stop_from_elsewhere_works() -> None:
    with loop_in_thread() as (loop, thread):
        threads: list[int] = []
        ref = Where.start(threads, loop)
        assert ref.ask("where", timeout=5) is loop  # asked from this thread, not the loop's
        assert ref.stop(block=True, timeout=5) is True
        assert not ref.is_alive()
        assert threads == [thread.ident] * 3  # on_start, the message, on_stop


def test_an_actor_without_a_loop_runs_on_the_modules_own() -> None:
    threads: list[int] = []
    ref = Where.start(threads)
    try:
        assert ref.ask("where", timeout=5) is OWN_LOOP.get()
    finally:
        ref.stop(block=True, timeout=5)
    assert {t.name for t in threading.enumerate() if t.ident in threads} == {"actors"}


class Recorder(StampActor):
    def __init__(self, name: str, log: list[str], loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(loop)
        self.name, self.log = name, log

    def on_receive(self, message: Any) -> Any:
        if message != "ping":
            self.log.append(self.name)
        return True


def test_a_busy_actor_takes_turns_with_the_other_actors_and_the_loop() -> None:
    log: list[str] = []
    flood = TURN_MESSAGES * 10
    with loop_in_thread() as (loop, _):
        busy = Recorder.start("busy", log, loop)
        other = Recorder.start("other", log, loop)
        assert busy.ask("ping", timeout=5) and other.ask("ping", timeout=5)

        def tell_all() -> None:  # on the loop, all at once
            for _ in range(flood):
                busy.tell(None)
            other.tell(None)
            loop.call_soon(log.append, "loop")

        loop.call_soon_threadsafe(tell_all)
        deadline = time.monotonic() + 10
        while len(log) < flood + 2:
            assert time.monotonic() < deadline, log
            time.sleep(0.01)
        busy.stop()
        other.stop()
    # One turn of the busy actor, then the other actor's, then the loop's own callback,
    # then the busy actor again.
    assert log.index("other") == TURN_MESSAGES
    assert log.index("loop") == TURN_MESSAGES + 1
    assert log.count("busy") == flood


def test_turns_wait_while_intake_is_busy_then_all_run_in_order(monkeypatch: pytest.MonkeyPatch) -> None:
    # No slices: only a quiet intake lets held turns run.
    monkeypatch.setattr(base, "SLICE_TURNS", 0)
    log: list[str] = []
    with loop_in_thread() as (loop, _):
        refs = [Recorder.start(f"actor-{i}", log, loop) for i in range(40)]
        for ref in refs:
            assert ref.ask("ping", timeout=5)
        with contextlib.ExitStack() as busy:
            for _ in range(HOLD_INTAKE_REQUESTS):
                busy.enter_context(intake_request())
            for ref in refs:
                for _ in range(3):
                    ref.tell(None)
            time.sleep(0.2)
            assert log == []  # on a free loop all 120 are handled within a few ms
            assert held_turns(loop) == len(refs)
        deadline = time.monotonic() + 10
        while len(log) < 3 * len(refs):
            assert time.monotonic() < deadline, log
            time.sleep(0.01)
        assert log == [f"actor-{i}" for i in range(40) for _ in range(3)]  # in the order they came due
        assert held_turns(loop) == 0
        for ref in refs:
            ref.stop()
    assert intake_requests() == 0


def test_waiting_for_an_actor_on_its_own_loop_raises_instead_of_hanging() -> None:
    with loop_in_thread() as (loop, _):
        ref = Where.start([], loop)

        async def on_the_loop() -> pykka.Future[Any]:
            with pytest.raises(RuntimeError, match="never end"):
                ref.ask("where", timeout=2)
            answer = ref.ask("where", block=False)  # a tell or a future is fine
            with pytest.raises(RuntimeError, match="never end"):
                ref.stop(block=True, timeout=2)
            return answer

        answer = asyncio.run_coroutine_threadsafe(on_the_loop(), loop).result(timeout=10)
        assert answer.get(timeout=5) is loop  # waited for from this thread
        deadline = time.monotonic() + 5
        while ref.is_alive():  # the stop asked for on the loop still happens
            assert time.monotonic() < deadline
            time.sleep(0.01)


def test_an_actor_whose_loop_has_closed_still_answers() -> None:
    with loop_in_thread() as (loop, thread):
        threads: list[int] = []
        ref = Where.start(threads, loop)
        assert ref.ask("where", timeout=5) is loop
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()
        assert ref.ask("where", timeout=5) is OWN_LOOP.get()
        assert ref.stop(block=True, timeout=5) is True


@pytest.mark.asyncio(loop_scope="session")
async def test_a_running_stamp_takes_every_turn_on_its_loop_without_crossing_threads(
    database_dsn: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In a running Stamp (in process, on this test's loop) every actor turn runs on the
    loop's thread, and the actors' hand-offs to the loop and its answers to them do not
    cross threads: what still does is the crypto pool's answer, one per certificate."""
    loop = asyncio.get_running_loop()
    turn_threads: set[int] = set()
    turns = [0]
    take_turn = StampActor._turn

    def recording_turn(actor: StampActor) -> None:
        turn_threads.add(threading.get_ident())
        turns[0] += 1
        take_turn(actor)

    monkeypatch.setattr(StampActor, "_turn", recording_turn)
    async with running_stack(database_dsn, tmp_path) as stack:
        recipient = await stack.create_recipient()
        await asyncio.sleep(0.5)  # start-up's own crossings (pool warm-up) are over
        crossings = [0]
        threadsafe = loop.call_soon_threadsafe

        def counting(callback: Any, *args: Any, context: contextvars.Context | None = None) -> Any:
            if not threading.current_thread().name.startswith("registry-sim"):  # the test's simulator
                crossings[0] += 1
            return threadsafe(callback, *args, context=context)

        monkeypatch.setattr(loop, "call_soon_threadsafe", counting)
        keys = await stack.post_accepted(recipient, CERTIFICATES)
        states = await stack.wait_terminal(keys, timeout=60)
        assert set(states.values()) == {"delivered"}
        monkeypatch.setattr(loop, "call_soon_threadsafe", threadsafe)
    assert turns[0] >= CERTIFICATES * 5
    assert turn_threads == {threading.get_ident()}
    # About 5 a certificate with the actors on threads of their own (besides the answers
    # to them, which were queue puts); now only the crypto pool's answer (and the odd
    # metrics sample taken off the loop).
    assert crossings[0] <= CERTIFICATES + 3, crossings
