"""Group commit for Stamp's hot statements.

Hundreds of certificates move at once, and each move is one small statement (a
versioned transition, a position allocation, an intake insert). Sent one by one,
each costs a pool checkout and a network round trip, and those round trips were the
event loop's largest cost under load (docs/benchmarks.md). The batcher queues the
statements submitted while a write is under way and sends the next ones together with
asyncpg's ``fetchmany``: one statement, many argument rows, pipelined in one round
trip and committed as one transaction. At low load a batch is a single statement and
is sent at once: batching adds no waiting, it only collects what queued up meanwhile.

Each statement kind has its own queue and writer, so kinds never wait for each other.
Every batched statement returns exactly one row per argument row, so results line up
with requests. Within a batch the rows are ordered by a lock key (the certificate or
recipient they lock), so two batches, in this process or another one sharing the
database, take row locks in the same order and cannot deadlock each other. When a
batch fails, its statements are retried one by one, each in its own transaction, so
a bad row gets its own error and the others still commit.

``submit`` may be called from any thread (actors do); the completion callback runs on
the event loop and must be quick. ``fetch`` is the awaitable form for code already on
the loop (the HTTP edge).

Below saturation nothing queues up and every statement is a batch of its own, so what
a batch costs besides its round trip counts per statement. Two costs go: a batcher made
with ``keep_connections`` keeps that many connections checked out between batches
(asyncpg's acquire and release, with their timeout contexts and a shielded task per
release, cost more CPU than the statement's own send and parse); and a batch of one
statement is sent as a plain statement, not as a pipelined ``fetchmany``. Such a
batcher must be closed (``close``) before its pool, which waits for every connection.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg
import structlog

from stamp import metrics, tracing

log = structlog.get_logger(__name__)

Done = Callable[[asyncpg.Record | None, BaseException | None], None]

MAX_BATCH = 256
"""Argument rows per round trip: big enough to amortise a round trip, small enough
that one batch's locks and latency stay short."""


@dataclass(slots=True)
class _Pending:
    sql: str
    args: Sequence[Any]
    lock_key: tuple[str, ...]
    done: Done
    settled: bool = False
    trace: Any = None  # the submitter's span (tracing on): the round trip links to it


class StatementBatcher:
    def __init__(
        self,
        pool: asyncpg.Pool,
        loop: asyncio.AbstractEventLoop,
        *,
        max_batch: int = MAX_BATCH,
        writers: Mapping[str, int] | None = None,
        keep_connections: int = 0,
    ) -> None:
        self._pool = pool
        self._loop = loop
        self._max_batch = max_batch
        # Writers per statement kind that may run at once (1 unless named here): a kind
        # whose answer someone waits for (the intake insert, before its 202) gets more,
        # so a request never waits behind a whole batch that is still being written.
        self._writers = dict(writers or {})
        self._lock = threading.Lock()
        # One queue and at most ``writers`` running writers per statement kind: a
        # kind's next batch is whatever queued up while its previous one was written,
        # and kinds never wait for each other (an intake insert does not queue behind
        # transitions).
        self._pending: dict[str, deque[_Pending]] = {}
        self._writing: dict[str, int] = {}
        self._running: set[asyncio.Task[None]] = set()  # referenced while they run
        # Connections kept checked out between batches (used on the loop only), at
        # most ``keep_connections``: one per writer busy at the same time below
        # saturation; more busy writers acquire and release as usual.
        self._keep = keep_connections
        self._idle: list[Any] = []
        self.round_trips = 0
        self.statements = 0

    # --- submitting -------------------------------------------------------------------

    def submit(
        self, sql: str, args: Sequence[Any], lock_key: tuple[str, ...], done: Done, *, on_loop: bool = False
    ) -> None:
        """Queue one statement; ``done(row, None)`` or ``done(None, error)`` follows on
        the event loop. Thread-safe; ``on_loop``: called from the event loop itself."""
        pending = _Pending(sql, args, lock_key, done)
        if tracing.ENABLED:
            pending.trace = tracing.current_span_context()
        with self._lock:
            self._pending.setdefault(sql, deque()).append(pending)
            running = self._writing.get(sql, 0)
            if running >= self._writers.get(sql, 1):
                return
            self._writing[sql] = running + 1
        if on_loop:
            self._start_writer(sql)
            return
        try:
            # A hand-off only when no writer of this kind runs: under load, statements
            # join the running writer's next batch without waking the loop.
            metrics.handed_to_loop()
            self._loop.call_soon_threadsafe(self._start_writer, sql)
        except RuntimeError as exc:  # the loop is closed: shutting down, nothing will run it
            with self._lock:
                self._writer_done(sql)  # the writer counted above never starts; others may run
                failed = list(self._pending.pop(sql, ()))
            self._settle(failed, None, exc)

    async def fetch(self, sql: str, args: Sequence[Any], lock_key: tuple[str, ...]) -> asyncpg.Record:
        """Run one statement as part of the next batch and return its row (on the loop)."""
        future: asyncio.Future[asyncpg.Record] = self._loop.create_future()

        def done(row: asyncpg.Record | None, error: BaseException | None) -> None:
            if future.done():  # the awaiting request was cancelled (client went away)
                return
            if row is not None:
                future.set_result(row)
            else:
                future.set_exception(error or RuntimeError("a batched statement answered no row"))

        self.submit(sql, args, lock_key, done, on_loop=True)
        return await future

    # --- writing ---------------------------------------------------------------------

    def _start_writer(self, sql: str) -> None:
        task = self._loop.create_task(self._write_all(sql))
        self._running.add(task)
        task.add_done_callback(self._running.discard)

    def _writer_done(self, sql: str) -> None:
        """Called with the lock held."""
        left = self._writing.get(sql, 0) - 1
        if left > 0:
            self._writing[sql] = left
        else:
            self._writing.pop(sql, None)

    async def _write_all(self, sql: str) -> None:
        # Parallel writers of one kind share what is queued instead of one taking all.
        max_batch = max(1, self._max_batch // self._writers.get(sql, 1))
        while True:
            with self._lock:
                pending = self._pending.get(sql)
                if not pending:
                    self._writer_done(sql)
                    return
                batch = [pending.popleft() for _ in range(min(len(pending), max_batch))]
            try:
                await self._write_kind(sql, batch)
            except BaseException as exc:  # cancelled at shutdown: nobody is left waiting forever
                self._settle(batch, None, exc)
                with self._lock:
                    self._writer_done(sql)
                raise

    async def close(self) -> None:
        """Give the kept connections back to the pool (before it is closed); batches
        written later acquire and release their own."""
        self._keep = 0
        idle, self._idle = self._idle, []
        for conn in idle:
            await self._pool.release(conn)

    async def _connection(self) -> Any:
        while self._idle:
            conn = self._idle.pop()
            if _usable(conn):
                return conn
            await self._pool.release(conn)  # lost meanwhile: the pool replaces it
        return await self._pool.acquire()

    async def _give_back(self, conn: Any, clean: bool) -> None:
        # Kept only after statements that all got an answer: a connection whose
        # statement failed or timed out (a cancellation in progress) or was cancelled
        # goes back to the pool, whose release waits for it or replaces it. (One lost
        # while kept is found when it is taken again.)
        if clean and len(self._idle) < self._keep:
            self._idle.append(conn)
            return
        await self._pool.release(conn)

    async def _write_kind(self, sql: str, items: list[_Pending]) -> None:
        items.sort(key=lambda item: item.lock_key)
        try:
            conn = await self._connection()
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
            self._settle(items, None, exc)  # no connection (database down): all fail alike
            return
        clean = False
        try:
            clean = await self._write_group(conn, sql, items)
        finally:
            await self._give_back(conn, clean)

    async def _write_group(self, conn: Any, sql: str, items: list[_Pending]) -> bool:
        """Write the batch; whether every statement got its answer from the database."""
        if not tracing.ENABLED:
            return await self._write_group_now(conn, sql, items)
        # One span for the round trip, linked to the span of every statement in it.
        attributes = {
            "db.system": "postgresql",
            "db.operation.batch.size": len(items),
            "db.query.summary": tracing.statement_summary(sql),
        }
        with tracing.batch_span("db.group_commit", (item.trace for item in items), attributes):
            return await self._write_group_now(conn, sql, items)

    async def _write_group_now(self, conn: Any, sql: str, items: list[_Pending]) -> bool:
        self.round_trips += 1
        self.statements += len(items)
        if len(items) == 1:  # nothing to pipeline: a plain statement costs less
            return await _write_one(conn, sql, items[0])
        try:
            rows = await conn.fetchmany(sql, [item.args for item in items])
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError) as exc:
            if conn.is_closed():
                self._settle(items, None, exc)
                return False
            log.info("database.batch_retried_one_by_one", statements=len(items), error=type(exc).__name__)
            for item in items:
                self.round_trips += 1
                await _write_one(conn, sql, item)
            return False
        if len(rows) != len(items):
            error = RuntimeError(f"a batched statement returned {len(rows)} rows for {len(items)} requests")
            self._settle(items, None, error)
            return True
        for item, row in zip(items, rows, strict=True):
            _call(item, row, None)
        return True

    def _settle(self, items: list[_Pending], row: asyncpg.Record | None, error: BaseException | None) -> None:
        for item in items:
            _call(item, row, error)


async def _write_one(conn: Any, sql: str, item: _Pending) -> bool:
    """One statement in a round trip of its own (a batch of one, or a failed batch's
    statements one by one); whether the database answered it."""
    try:
        row = await conn.fetchrow(sql, *item.args)
    except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError) as exc:
        _call(item, None, exc)
        return False
    if row is None:
        _call(item, None, RuntimeError("a batched statement returned no row"))
    else:
        _call(item, row, None)
    return True


def _usable(conn: Any) -> bool:
    try:
        return not conn.is_closed()
    except asyncpg.InterfaceError:  # lost while kept: asyncpg already returned it to the pool
        return False


def _call(item: _Pending, row: asyncpg.Record | None, error: BaseException | None) -> None:
    """Answer a statement once; later answers (a failure after it was settled) are dropped."""
    if item.settled:
        return
    item.settled = True
    try:
        item.done(row, error)
    except Exception:  # a callback's bug must not stop the other statements' answers
        log.exception("database.batch_callback_failed")
