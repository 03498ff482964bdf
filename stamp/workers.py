"""Stamp's crypto worker processes: a small process pool answered on the event loop.

Proving is CPU-bound and pure, so it runs in ``size`` worker processes, started with
"spawn" (forking a process that runs actor and gRPC threads is unsafe). Each worker is
connected by one socket pair; the parent writes a job as one frame, the worker runs it
and writes its answer as one frame, and the event loop reads the answers in a reader
callback. Unlike ``concurrent.futures.ProcessPoolExecutor`` there is no manager thread
and no queue feeder thread: a job costs the submitting thread one ``send`` and the loop
one wake-up for its answer (the executor cost Stamp about 0.5 ms of CPU per certificate
in those threads and the switches between them; issue 13).

Frames: a header (payload length, job id, whether the job succeeded) then the payload,
a pickle: ``(fn, arg)`` for a job, the value or the exception for an answer. The loop
reads without blocking and keeps partial frames until the rest arrives, so an answer of
any size is read whole.

Dispatch: a new job goes to the least busy ready worker (fewest jobs not answered), at
most ``JOBS_PER_WORKER`` each, so a worker always has its next job at hand even when the
loop is late to read an answer; more wait here, in one queue, and go to whichever
worker answers first. Below saturation a worker holds zero or one job, so a job never
waits behind another while a worker is idle.

Submission (``submit``) works from any thread: it pickles in the calling thread and
writes the frame itself (one ``send``; the few small frames a worker may hold never
fill its socket buffer, so the write does not wait), and is cheap on the loop thread.
Answers — ``done(value, None)`` or ``done(None, exception)`` — are always called on the
loop thread.

Failures: an exception raised by the job is that job's answer. A worker that dies (kill
-9, a crash in native code) fails the jobs sent to it with ``WorkerLost`` (a crypto
failure is retried by the certificate's lifecycle; re-running a job that may have
crashed its worker here could crash the next one too) and is replaced; queued jobs wait
for the replacement. Workers are started from the loop thread only: Linux's
PR_SET_PDEATHSIG, which the initializer may set, fires when the *thread* that started
the worker ends. ``close`` fails what is left, lets every worker exit (its socket
closes) and kills any that does not within ``STOP_SECONDS``: no orphan, no hang.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import multiprocessing
import pickle
import signal
import socket
import struct
import threading
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from multiprocessing.process import BaseProcess
from typing import Any, TypeVar

import structlog

T = TypeVar("T")
log = structlog.get_logger(__name__)

Done = Callable[[Any, BaseException | None], object]
"""An answer: ``done(value, None)`` or ``done(None, exception)``, on the loop thread."""

HEADER = struct.Struct("!IQ?")
"""Payload length, job id, ok (False: the payload is the exception raised)."""
READY_ID = 0
"""The job id of a worker's first frame: the warm-up's result, once it can take jobs."""
JOBS_PER_WORKER = 8
"""Jobs sent to one worker at a time. More than one, so that a worker does not wait for
the loop between two: the loop, not the worker, reads an answer and hands out the job
queued here, and at saturation it can be tens of milliseconds late (a job takes a few).
Bounded, so that the frames a worker holds never fill its socket's buffer (a few KB
each) and what a killed worker takes with it stays small; the rest wait in the pool's
queue for the first worker free."""
READ_BYTES = 256 * 1024
RESPAWN_DELAY_SECONDS = 1.0
"""Before replacing a worker that died before it was ready (it would likely die again)."""
STOP_SECONDS = 5.0
"""How long ``close`` lets the workers finish what they run before killing them."""


class WorkerLost(RuntimeError):
    """The worker running the job ended (killed, crashed) before answering."""


class PoolClosed(RuntimeError):
    """The pool is shut down: the job was refused, or not answered."""


# ---------------------------------------------------------------- in the worker


def _read_exactly(sock: socket.socket, size: int) -> bytes | None:
    """``size`` bytes from a blocking socket, or None at end of stream."""
    buffer = bytearray(size)
    view = memoryview(buffer)
    got = 0
    while got < size:
        n = sock.recv_into(view[got:])
        if n == 0:
            return None
        got += n
    return bytes(buffer)


def _answer_frame(job_id: int, ok: bool, value: object) -> bytes:
    try:
        payload = pickle.dumps(value, pickle.HIGHEST_PROTOCOL)
    except Exception as exc:  # an unpicklable value or exception still answers its job
        ok, payload = False, pickle.dumps(RuntimeError(f"answer not picklable: {exc!r}"))
    return HEADER.pack(len(payload), job_id, ok) + payload


def serve_jobs(
    sock: socket.socket,
    initializer: Callable[..., object] | None,
    initargs: Sequence[Any],
    warm: Callable[[], object] | None,
) -> None:
    """A worker's life: initialize, warm up, say so, then answer jobs until the parent
    closes its end (or dies)."""
    # Ctrl-C in a terminal reaches the whole process group; Stamp stops its workers itself.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if initializer is not None:
        initializer(*initargs)
    try:
        sock.sendall(_answer_frame(READY_ID, True, warm() if warm is not None else None))
        while True:
            header = _read_exactly(sock, HEADER.size)
            if header is None:
                return
            size, job_id, _ = HEADER.unpack(header)
            payload = _read_exactly(sock, size)
            if payload is None:
                return
            try:
                fn, arg = pickle.loads(payload)  # noqa: S301 (from the Stamp that started this worker)
                frame = _answer_frame(job_id, True, fn(arg))
            except Exception as exc:
                frame = _answer_frame(job_id, False, exc)
            sock.sendall(frame)
    except (BrokenPipeError, ConnectionResetError):
        return  # Stamp closed the pool (or ended) while this worker ran: nobody to answer


# ---------------------------------------------------------------- in Stamp


@dataclass(eq=False, slots=True)
class _Worker:
    process: BaseProcess
    sock: socket.socket
    started: asyncio.Future[object]  # the warm-up's result, or why the worker never got ready
    ready: bool = False
    in_flight: set[int] = field(default_factory=set)
    send_lock: threading.Lock = field(default_factory=threading.Lock)
    buffer: bytearray = field(default_factory=bytearray)


class WorkerPool:
    """``size`` worker processes running pure functions; see the module."""

    def __init__(
        self,
        size: int,
        loop: asyncio.AbstractEventLoop,
        *,
        initializer: Callable[..., object] | None = None,
        initargs: Sequence[Any] = (),
        warm: Callable[[], object] | None = None,
        expect: object = None,
    ) -> None:
        """``initializer(*initargs)`` then ``warm()`` run first in every worker; a worker
        whose ``warm()`` is not ``expect`` (when given) takes no job."""
        if size < 1:
            raise ValueError("a worker pool needs at least one worker")
        self.size = size
        self.loop = loop
        self._initializer = initializer
        self._initargs = tuple(initargs)
        self._warm = warm
        self._expect = expect
        self._context = multiprocessing.get_context("spawn")
        self._lock = threading.Lock()  # guards everything below
        self._workers: list[_Worker] = []
        self._jobs: dict[int, Done] = {}  # each job not answered yet: where its answer goes
        self._queued: deque[tuple[int, bytes]] = deque()  # frames waiting for a worker
        self._ids = itertools.count(READY_ID + 1)
        self._closed = False
        self.replaced = 0  # workers started again after one ended (tests, logs)
        self.lost = 0  # jobs failed because their worker ended

    # -- life

    async def start(self) -> list[object]:
        """Start every worker and wait until each is warm; their ``warm()`` results.
        A worker that fails to start fails the start (the caller closes the pool)."""
        workers = [self._spawn() for _ in range(self.size)]
        return list(await asyncio.gather(*(w.started for w in workers)))

    @property
    def pids(self) -> list[int]:
        with self._lock:
            return [w.process.pid for w in self._workers if w.process.pid is not None]

    @property
    def queued(self) -> int:
        """Jobs waiting for a worker."""
        return len(self._queued)

    def busy_pid(self) -> int | None:
        """A worker that holds a job now, if any (tests that kill one)."""
        with self._lock:
            return next((w.process.pid for w in self._workers if w.in_flight), None)

    def _spawn(self) -> _Worker:
        """Start one worker (on the loop thread: see the module on PR_SET_PDEATHSIG)."""
        ours, theirs = socket.socketpair()
        process = self._context.Process(
            target=serve_jobs,
            args=(theirs, self._initializer, self._initargs, self._warm),
            name="stamp-crypto-worker",
            daemon=True,
        )
        try:
            process.start()
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()  # the worker has its own copy: its end closes when it ends
        worker = _Worker(process, ours, self.loop.create_future())
        with self._lock:
            self._workers.append(worker)
        self.loop.add_reader(ours.fileno(), self._readable, worker)
        return worker

    async def close(self) -> None:
        """Fail the jobs not answered, let the workers exit, kill any that lingers."""
        with self._lock:
            self._closed = True
            workers, self._workers = self._workers, []
            jobs, self._jobs = self._jobs, {}
            self._queued.clear()
        for worker in workers:
            self._disconnect(worker)
            if not worker.started.done():
                worker.started.set_exception(PoolClosed("the worker pool is shut down"))
                worker.started.exception()  # retrieved: nobody may wait for it any more
        closed = PoolClosed("the worker pool is shut down")
        for done in jobs.values():
            self._call(done, None, closed)
        # Each worker sees its socket close and returns; one still in a long job is killed.
        await asyncio.gather(*(self._reap(w.process, STOP_SECONDS) for w in workers))

    async def _reap(self, process: BaseProcess, patience: float) -> None:
        ended = asyncio.Event()
        sentinel = process.sentinel
        self.loop.add_reader(sentinel, ended.set)
        try:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(patience):
                    await ended.wait()
            if not ended.is_set():
                log.warning("workers.killed", pid=process.pid, after_seconds=patience)
                process.kill()
                await ended.wait()
        finally:
            self.loop.remove_reader(sentinel)
        process.join()  # it has ended: this only collects its exit status
        process.close()

    def _disconnect(self, worker: _Worker) -> None:
        self.loop.remove_reader(worker.sock.fileno())
        with worker.send_lock:  # no thread is writing to it while it closes
            worker.sock.close()

    # -- jobs

    def submit(self, fn: Callable[[Any], T], arg: Any, done: Done) -> None:
        """Run ``fn(arg)`` in a worker; ``done`` gets the answer on the loop thread. From
        any thread. Raises ``PoolClosed`` once closed, and whatever pickling ``(fn, arg)``
        raises: ``done`` is then never called."""
        payload = pickle.dumps((fn, arg), pickle.HIGHEST_PROTOCOL)
        with self._lock:
            if self._closed:
                raise PoolClosed("the worker pool is shut down")
            job_id = next(self._ids)
            worker = self._least_busy()
            self._jobs[job_id] = done
            if worker is None:
                self._queued.append((job_id, payload))
                return
            worker.in_flight.add(job_id)
        self._send(worker, [(job_id, payload)])

    def _least_busy(self) -> _Worker | None:
        best: _Worker | None = None
        for worker in self._workers:
            busy = len(worker.in_flight)
            if worker.ready and busy < JOBS_PER_WORKER and (best is None or busy < len(best.in_flight)):
                best = worker
                if not busy:
                    break
        return best

    def _take_queued(self, worker: _Worker) -> list[tuple[int, bytes]]:
        """Under the lock: queued jobs for ``worker``, up to what it may hold."""
        taken: list[tuple[int, bytes]] = []
        while self._queued and len(worker.in_flight) < JOBS_PER_WORKER:
            job_id, payload = self._queued.popleft()
            worker.in_flight.add(job_id)
            taken.append((job_id, payload))
        return taken

    def _send(self, worker: _Worker, frames: list[tuple[int, bytes]]) -> None:
        data = b"".join(HEADER.pack(len(p), job_id, True) + p for job_id, p in frames)
        try:
            with worker.send_lock:
                worker.sock.sendall(data)
        except OSError:
            # The worker is gone (or going): its end of stream, seen by the loop, fails
            # these jobs with the others it held.
            log.debug("workers.send_failed", pid=worker.process.pid)

    # -- answers (on the loop thread)

    def _readable(self, worker: _Worker) -> None:
        ended = False
        try:
            while True:
                data = worker.sock.recv(READ_BYTES, socket.MSG_DONTWAIT)
                if not data:
                    ended = True
                    break
                worker.buffer += data
                if len(data) < READ_BYTES:
                    break
        except BlockingIOError:
            pass
        except OSError:
            ended = True
        buffer = worker.buffer
        while len(buffer) >= HEADER.size:
            size, job_id, ok = HEADER.unpack_from(buffer)
            end = HEADER.size + size
            if len(buffer) < end:
                break  # the rest of this frame is on its way
            payload = bytes(buffer[HEADER.size : end])
            del buffer[:end]
            if job_id == READY_ID:
                self._ready(worker, ok, payload)
            else:
                self._answered(worker, job_id, ok, payload)
        if ended:
            self._lost(worker)

    def _answered(self, worker: _Worker, job_id: int, ok: bool, payload: bytes) -> None:
        with self._lock:
            worker.in_flight.discard(job_id)
            done = self._jobs.pop(job_id, None)
            more = self._take_queued(worker)
        if more:  # the worker's next jobs before this answer is unpickled and handled
            self._send(worker, more)
        if done is None:
            return
        try:
            value = pickle.loads(payload)  # noqa: S301 (from a worker of ours, over a socket pair)
        except Exception as exc:
            ok, value = False, RuntimeError(f"answer not readable: {exc!r}")
        if ok:
            self._call(done, value, None)
        else:
            self._call(done, None, value)

    def _ready(self, worker: _Worker, ok: bool, payload: bytes) -> None:
        try:
            warmed = pickle.loads(payload)  # noqa: S301 (from a worker of ours, over a socket pair)
        except Exception as exc:
            warmed = exc
        if self._expect is not None and warmed != self._expect:
            # Never given a job (nor replaced: the next one would say the same).
            log.error("workers.refused", pid=worker.process.pid, warmed=repr(warmed))
            if not worker.started.done():
                worker.started.set_result(warmed)
            return
        with self._lock:
            worker.ready = True
            more = self._take_queued(worker)
        if more:
            self._send(worker, more)
        if not worker.started.done():
            worker.started.set_result(warmed)

    def _lost(self, worker: _Worker) -> None:
        """The worker's socket ended: it exited or was killed. Fail what it held,
        collect it, start another."""
        self._disconnect(worker)
        with self._lock:
            if worker not in self._workers:
                return  # closing
            self._workers.remove(worker)
            lost = [self._jobs.pop(j) for j in worker.in_flight if j in self._jobs]
            worker.in_flight.clear()
            replace = not self._closed
            self.lost += len(lost)
        pid = worker.process.pid
        log.warning("workers.lost", pid=pid, jobs=len(lost), ready=worker.ready)
        error = WorkerLost(f"crypto worker {pid} ended before answering")
        for done in lost:
            self._call(done, None, error)
        reaping = self.loop.create_task(self._reap(worker.process, STOP_SECONDS))
        reaping.add_done_callback(_log_reap_failure)
        if not worker.started.done():
            worker.started.set_exception(WorkerLost(f"crypto worker {pid} ended while starting"))
            worker.started.exception()  # retrieved here; ``start`` (if waiting) still sees it
        if replace:
            delay = 0.0 if worker.ready else RESPAWN_DELAY_SECONDS
            self.loop.call_later(delay, self._replace)

    def _replace(self) -> None:
        with self._lock:
            if self._closed:
                return
            self.replaced += 1
        try:
            worker = self._spawn()
        except OSError as exc:  # no process could be started (resources): try again
            log.error("workers.spawn_failed", error=repr(exc))
            self.loop.call_later(RESPAWN_DELAY_SECONDS, self._replace)
            return
        log.info("workers.replaced", pid=worker.process.pid)

    def _call(self, done: Done, value: object, error: BaseException | None) -> None:
        try:
            done(value, error)
        except Exception:  # one answer's failure must not strand the others
            log.exception("workers.answer_failed")


def _log_reap_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.warning("workers.reap_failed", error=repr(task.exception()))
