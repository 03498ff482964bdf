"""Stamp's crypto worker processes (stamp/workers.py), with real processes: answers,
failures, a worker killed with jobs in flight, shutdown, submission from other
threads; and through the service, a worker killed while certificates are being built."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import psutil
import pytest
import pytest_asyncio

from stamp import app, scheduling, workers
from stamp.app import init_crypto_worker, warm_crypto_worker
from stamp.workers import PoolClosed, WorkerLost, WorkerPool
from tests.faults import start_scenario, stop_scenario
from tests.slices import needs_custom_slices
from tests.stack import REGISTRY, certificate_body, running_stack
from tests.waiting import wait_until

pytestmark = pytest.mark.asyncio(loop_scope="session")


# Jobs: module-level functions, which a spawned worker imports by name.
def square(x: int) -> int:
    return x * x


def nap_then_echo(arg: tuple[float, object]) -> object:
    time.sleep(arg[0])
    return arg[1]


def fail(message: str) -> int:
    raise ValueError(message)


def big(size: int) -> bytes:
    return os.urandom(16) * (size // 16)


def my_pid(_: object) -> int:
    return os.getpid()


class Answers:
    """Each job's answer as a future, and the thread each ``done`` ran on."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.threads: set[int] = set()

    def submit(self, pool: WorkerPool, fn: Any, arg: Any) -> asyncio.Future[Any]:
        future: asyncio.Future[Any] = self.loop.create_future()

        def done(value: object, error: BaseException | None) -> None:
            self.threads.add(threading.get_ident())
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(value)

        pool.submit(fn, arg, done)
        return future


@pytest_asyncio.fixture(loop_scope="session")
async def pool() -> AsyncIterator[WorkerPool]:
    pool = WorkerPool(2, asyncio.get_running_loop(), warm=os.getpid)
    assert len(set(await pool.start())) == 2
    try:
        yield pool
    finally:
        await pool.close()


def children() -> set[int]:
    return {p.pid for p in psutil.Process().children(recursive=True)}


async def test_jobs_are_answered_whatever_order_they_finish_in(pool: WorkerPool) -> None:
    answers = Answers(asyncio.get_running_loop())
    # Later jobs are shorter: answers come back out of submission order.
    futures = [answers.submit(pool, nap_then_echo, ((20 - i) * 0.005, i)) for i in range(20)]
    squares = [answers.submit(pool, square, i) for i in range(50)]
    assert await asyncio.gather(*futures) == list(range(20))
    assert await asyncio.gather(*squares) == [i * i for i in range(50)]
    # Both workers served, and every answer ran on the loop's thread.
    served = await asyncio.gather(*(answers.submit(pool, nap_then_echo, (0.05, None)) for _ in range(4)))
    assert served == [None] * 4
    pids = await asyncio.gather(
        *(answers.submit(pool, my_pid, None) for _ in range(2)),
        *(answers.submit(pool, nap_then_echo, (0.1, None)) for _ in range(2)),
    )
    assert set(pids[:2]) <= set(pool.pids)
    assert answers.threads == {threading.get_ident()}


async def test_an_exception_in_the_worker_fails_that_job_only(pool: WorkerPool) -> None:
    answers = Answers(asyncio.get_running_loop())
    before, failing, after = (
        answers.submit(pool, square, 3),
        answers.submit(pool, fail, "no proof today"),
        answers.submit(pool, square, 4),
    )
    with pytest.raises(ValueError, match="no proof today"):
        await failing
    assert (await before, await after) == (9, 16)


async def test_a_big_answer_is_read_whole(pool: WorkerPool) -> None:
    answers = Answers(asyncio.get_running_loop())
    sizes = [5 * 2**20, 16, 3 * 2**20 + 16]
    got = await asyncio.gather(*(answers.submit(pool, big, size) for size in sizes))
    assert [len(b) for b in got] == sizes


async def test_submission_from_other_threads_is_answered_on_the_loop(pool: WorkerPool) -> None:
    got: list[Any] = []
    threads_answered: set[int] = set()

    def done(value: object, error: BaseException | None) -> None:
        threads_answered.add(threading.get_ident())
        got.append(value if error is None else error)

    def submit_many(base: int) -> None:
        for i in range(25):
            pool.submit(square, base + i, done)

    threads = [threading.Thread(target=submit_many, args=(100 * n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        await asyncio.to_thread(thread.join)
    await wait_until(lambda: len(got) == 100, what="every answer")
    assert sorted(got) == sorted((100 * n + i) ** 2 for n in range(4) for i in range(25))
    assert threads_answered == {threading.get_ident()}


async def test_a_killed_worker_fails_its_jobs_and_is_replaced(
    pool: WorkerPool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(workers, "JOBS_PER_WORKER", 2)  # so that some jobs wait in the pool's queue
    answers = Answers(asyncio.get_running_loop())
    first = await answers.submit(pool, my_pid, None)
    # Four long jobs: two on each worker; then more queued behind them.
    held = [answers.submit(pool, nap_then_echo, (1.0, i)) for i in range(4)]
    queued = [answers.submit(pool, square, i) for i in range(6)]
    await asyncio.sleep(0.2)
    victim = first
    os.kill(victim, signal.SIGKILL)
    outcomes = await asyncio.gather(*held, return_exceptions=True)
    assert [type(o) for o in outcomes].count(WorkerLost) == 2, outcomes  # the victim's two
    assert sum(isinstance(o, int) for o in outcomes) == 2, outcomes  # the survivor's
    # The queued jobs are answered (by the survivor, then by the replacement too).
    assert await asyncio.gather(*queued) == [i * i for i in range(6)]
    await wait_until(lambda: len(pool.pids) == 2 and victim not in pool.pids, what="a replacement")
    assert (pool.replaced, pool.lost) == (1, 2)
    # Two jobs at once go one to each worker: the replacement takes jobs too.
    seen = await asyncio.gather(*(answers.submit(pool, nap_pid, 0.3) for _ in range(2)))
    assert set(seen) == set(pool.pids)
    await wait_until(lambda: victim not in children(), what="the killed worker collected")


def nap_pid(seconds: float) -> int:
    time.sleep(seconds)
    return os.getpid()


async def test_close_leaves_no_process_and_does_not_hang(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(workers, "STOP_SECONDS", 1.0)
    loop = asyncio.get_running_loop()
    pool = WorkerPool(2, loop, initializer=init_crypto_worker, warm=warm_crypto_worker)
    await pool.start()
    pids = set(pool.pids)
    assert pids <= children()
    answers = Answers(loop)
    stuck = answers.submit(pool, nap_then_echo, (600.0, None))  # a job that would never end
    waiting = [answers.submit(pool, square, i) for i in range(5)]
    await asyncio.sleep(0.2)
    started = time.monotonic()
    await pool.close()
    assert time.monotonic() - started < 10
    assert not pids & children()
    for future in [stuck, *waiting]:
        if not future.done() or future.exception() is None:
            continue
        assert isinstance(future.exception(), PoolClosed)
    with pytest.raises(PoolClosed):
        pool.submit(square, 1, lambda value, error: None)


async def test_a_crypto_worker_killed_mid_build_loses_no_certificate(
    database_dsn: str, tmp_path: Path
) -> None:
    """Through the service: certificates keep arriving while a crypto worker is killed
    (with a job when one can be caught); every one is still delivered."""
    async with running_stack(database_dsn, tmp_path, verify_own_proofs=True) as stack:
        from stamp.app import CRYPTO_WORKERS

        crypto = stack.app[CRYPTO_WORKERS]
        recipient = await stack.create_recipient()
        keys: list[tuple[str, str]] = []

        async def post(n: int) -> None:
            for _ in range(n):
                status, body = await stack.post_certificate(certificate_body(recipient))
                assert status == 202, body
                keys.append((REGISTRY, body["id"]))

        posting = asyncio.create_task(post(40))
        # A worker that holds a job: its answer is lost with it, and the build retried.
        victim = await wait_until(lambda: crypto.busy_pid(), interval=0.001, what="a busy crypto worker")
        os.kill(victim, signal.SIGKILL)
        await posting
        states = await stack.wait_terminal(keys, timeout=120)
        assert set(states.values()) == {"delivered"}, states
        assert crypto.replaced >= 1 and crypto.lost >= 1
        assert victim not in crypto.pids


async def test_stamp_serve_stops_its_crypto_workers(database_dsn: str, tmp_path: Path) -> None:
    scenario = await start_scenario(database_dsn, tmp_path)
    stamp = scenario.stamp
    try:
        assert stamp.process is not None
        serving = psutil.Process(stamp.process.pid)
        spawned = [p for p in serving.children(recursive=True) if "spawn_main" in " ".join(p.cmdline())]
        assert len(spawned) >= 2
        await scenario.create_recipients(1)
        await scenario.post_certificates(1)
        assert await stamp.terminate() == 0
        _, alive = psutil.wait_procs(spawned, timeout=5)
        assert not alive, [p.pid for p in alive]
    finally:
        await stop_scenario(scenario)


async def test_crypto_workers_run_niced_below_stamp() -> None:
    # Proving takes the cycles intake, the loop and PostgreSQL leave (stamp.app); the
    # idle scheduling class was measured too and lowered crypto-bound throughput
    # (docs/benchmarks.md, "The session of 2026-12-07 (second)").
    loop = asyncio.get_running_loop()
    pool = WorkerPool(2, loop, initializer=init_crypto_worker, warm=warm_crypto_worker)
    await pool.start()
    try:
        mine = os.getpriority(os.PRIO_PROCESS, 0)
        assert pool.pids
        assert {os.getpriority(os.PRIO_PROCESS, pid) for pid in pool.pids} == {
            min(19, mine + app.CRYPTO_WORKER_NICENESS)
        }
    finally:
        await pool.close()


@needs_custom_slices
async def test_crypto_workers_ask_for_the_shortest_time_slice() -> None:
    # So that intake's wake-ups preempt them at once (stamp/scheduling.py).
    loop = asyncio.get_running_loop()
    pool = WorkerPool(2, loop, initializer=init_crypto_worker, warm=warm_crypto_worker)
    await pool.start()
    try:
        assert pool.pids
        assert {scheduling.current_slice(pid) for pid in pool.pids} == {app.CRYPTO_WORKER_SLICE_SECONDS}
        assert scheduling.current_slice() != app.CRYPTO_WORKER_SLICE_SECONDS  # Stamp itself keeps its own
    finally:
        await pool.close()
