"""Registry simulator: a gRPC ``RegistryService`` that validates like Project Origin's.

Used by Stamp's tests, the demo and the load test in place of a real registry. It
keeps the real registry's processing model, because Stamp's registry gateway is built
around it (docs/registry.md):

- ``SendTransactions`` validates nothing and answers at once; each transaction's status
  becomes PENDING and it is queued.
- Each stream's transactions are verified strictly in order; different streams are
  verified in batches, off the event loop, in a small executor (range proofs are CPU
  heavy). The checks are ``registry_rules.verify_transaction`` (docs/registry.md).
- The status then turns COMMITTED or FAILED after ``commit_delay``. FAILED lives only in
  the status cache (``failed_retention``), then reads UNKNOWN; COMMITTED is also read
  from the log. The cache never downgrades a status, so an identical re-send of a
  committed transaction keeps reading COMMITTED while its cached status lives
  (``committed_cache``) and reads FAILED "Certificate with id … already exists" after it
  expired, the real registry's known defect (``strict``: immediately).

All state lives on the event loop the simulator was started on; call its methods from
that loop. Fault injection (``fail_next``, ``set_latency``, ``hold``/``release``,
``forget_uncommitted``, ``force_failure``, ``go_down``/``go_up``) may be changed at any
time, mid-run. ``on_send`` lets a test look at each SendTransactions as it arrives,
``on_status`` at each GetTransactionStatus.

Standalone: ``python -m stamp.devstack.registry --port 5001 --registry Narnia
--issuer-key DK1=<Base64 of the public PEM>``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import contextlib
import signal
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Literal

import grpc
import structlog

from protos.project_origin.electricity.v1 import electricity_pb2
from protos.project_origin.registry.v1 import registry_pb2, registry_pb2_grpc
from stamp.crypto import issuer_keys
from stamp.crypto.transactions import transaction_id
from stamp.devstack.registry_rules import (
    ISSUED_EVENT,
    WITHDRAWN_EVENT,
    Outcome,
    ProofCheck,
    RegistryRules,
    StreamSnapshot,
    Verdict,
    parse_uuid,
    stream_key,
    verify_batch,
)

log = structlog.get_logger(__name__)

RpcMethod = Literal["SendTransactions", "GetTransactionStatus", "GetStreamTransactions"]
RPC_METHODS: tuple[RpcMethod, ...] = ("SendTransactions", "GetTransactionStatus", "GetStreamTransactions")

SendHook = Callable[[Sequence[registry_pb2.Transaction]], Awaitable[None]]
"""Awaited with the transactions of each SendTransactions call as it arrives; the call
is answered only after it returns. Tests use it to see what the sender had persisted
at that moment and that every re-send carried the same bytes."""

StatusHook = Callable[[str], object]
"""Called with the transaction id of each GetTransactionStatus as it arrives. Tests use
it to see when each transaction was first asked about."""


UNKNOWN = registry_pb2.UNKNOWN
PENDING = registry_pb2.PENDING
FAILED = registry_pb2.FAILED
COMMITTED = registry_pb2.COMMITTED


@dataclass(frozen=True, slots=True)
class RegistrySimConfig:
    """How the simulated registry behaves. Times are in seconds.

    ``registries``: the names served on the one port (a header's registry name must be
    one of them). ``issuer_keys``: per grid area, the issuer public keys (PEM or Base64
    of PEM); any one that verifies is enough. ``commit_delay``: how long a decided
    transaction still reads PENDING. ``failed_retention``: how long FAILED is cached
    before it reads UNKNOWN. ``committed_cache``: how long COMMITTED is cached, i.e.
    protected from the re-send defect; ``strict`` makes that zero. ``proof_sample``:
    verify every range proof (1) or one in N (load tests; ``report()`` says so).
    ``executor``/``workers``/``batch_size``: where and how much is verified at once.
    ``tls_certificate_chain``/``tls_private_key`` (PEM): serve TLS instead of plaintext;
    ``address`` is then ``https://host:port``, as Stamp's STAMP_REGISTRIES takes it."""

    registries: tuple[str, ...] = ("Narnia",)
    issuer_keys: Mapping[str, Sequence[str]] = field(default_factory=dict)
    commit_delay: float = 0.2
    failed_retention: float = 3600.0
    committed_cache: float = 3600.0
    strict: bool = False
    proof_sample: int = 1
    batch_size: int = 64
    workers: int = 2
    executor: Literal["thread", "process"] = "thread"
    tls_certificate_chain: bytes | None = None
    tls_private_key: bytes | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        # Accept a single name / a single key per area for convenience; store tuples.
        names = (self.registries,) if isinstance(self.registries, str) else tuple(self.registries)
        keys = {
            area: (texts,) if isinstance(texts, str) else tuple(texts)
            for area, texts in self.issuer_keys.items()
        }
        object.__setattr__(self, "registries", names)
        object.__setattr__(self, "issuer_keys", keys)
        problems = []
        if not names or not all(names):
            problems.append("at least one non-empty registry name is required")
        for area, texts in keys.items():
            for text in texts:
                try:
                    issuer_keys.load_public_key(text)
                except ValueError:
                    problems.append(f"grid area {area!r}: not an Ed25519 public key PEM (or Base64 of one)")
        if min(self.commit_delay, self.failed_retention, self.committed_cache) < 0:
            problems.append("delays and retention times must be ≥ 0")
        if self.proof_sample < 1 or self.batch_size < 1 or self.workers < 1:
            problems.append("proof_sample, batch_size and workers must be ≥ 1")
        if (self.tls_certificate_chain is None) != (self.tls_private_key is None):
            problems.append("TLS needs both a certificate chain and its private key")
        if problems:
            raise ValueError("invalid registry simulator configuration: " + "; ".join(problems))

    @property
    def effective_committed_cache(self) -> float:
        return 0.0 if self.strict else self.committed_cache

    def rules(self) -> RegistryRules:
        keys = {area: tuple(texts) for area, texts in self.issuer_keys.items()}
        return RegistryRules(registries=frozenset(self.registries), issuer_keys=keys)


@dataclass(frozen=True, slots=True)
class AttributeView:
    key: str
    value: str
    hashed: bool


@dataclass(frozen=True, slots=True)
class StreamView:
    """A committed certificate stream as the registry holds it."""

    certificate_id: str
    registry: str
    type: str  # GranularCertificateType name
    start: int
    end: int
    grid_area: str
    owner_public_key: bytes
    owner_key_type: str  # KeyType name
    commitment: bytes
    range_proof: bytes
    attributes: tuple[AttributeView, ...]
    withdrawn: bool
    transaction_ids: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class StreamCounters:
    """What arrived for one stream: every transaction, distinct issuance transactions,
    and re-sends of bytes already received."""

    received: int = 0
    distinct_issue_transactions: int = 0
    resends: int = 0


@dataclass(frozen=True, slots=True)
class RegistryStats:
    send_calls: int
    status_calls: int
    stream_calls: int
    received: int
    distinct: int
    resends: int
    committed: int
    failed: int
    stuck: int
    queued: int
    held: int
    proofs_verified: int
    proofs_skipped: int
    injected_errors: int


# --- internal records -------------------------------------------------------------


@dataclass(slots=True)
class _Queued:
    tx_id: str
    data: bytes
    key: str  # stream key: the parsed stream GUID, or the raw value when it is none
    epoch: int


@dataclass(slots=True)
class _Status:
    state: registry_pb2.TransactionState
    message: str
    since: float  # monotonic time from which it is visible (before that: PENDING)


@dataclass(slots=True)
class _LogEntry:
    tx_id: str
    data: bytes
    visible_at: float


@dataclass(slots=True)
class _Stream:
    registry: str
    event: electricity_pb2.IssuedEvent
    entries: list[_LogEntry] = field(default_factory=list)
    withdrawn_at: float | None = None


@dataclass(slots=True)
class _Counters:
    received: int = 0
    issue_ids: set[str] = field(default_factory=set)
    resends: int = 0


class ReadRefused(Exception):
    """A ``read_stream`` the registry refused, as the RPC would have failed."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"{code.name}: {details}")
        self.code = code
        self.details = details


@dataclass(slots=True)
class _CallFault:
    code: grpc.StatusCode
    accept: bool
    remaining: int


class RegistrySimulator:
    def __init__(self, config: RegistrySimConfig) -> None:
        self.config = config
        self._rules = config.rules()
        self._host = "127.0.0.1"
        self._port = 0
        self._server: grpc.aio.Server | None = None
        self._executor: Executor | None = None
        self._dispatcher: asyncio.Task[None] | None = None
        self._wakeup = asyncio.Event()

        # status cache, committed log and stream state
        self._statuses: dict[str, _Status] = {}
        self._committed: dict[str, float] = {}  # tx id -> visible from
        self._streams: dict[str, _Stream] = {}
        self._stuck: dict[str, str] = {}

        # the queue: one FIFO per stream, streams served in turn, one in flight per stream
        self._queues: dict[str, deque[_Queued]] = {}
        self._ready: deque[str] = deque()
        self._ready_set: set[str] = set()
        self._in_flight: set[str] = set()
        self._parked: set[str] = set()
        self._epoch = 0

        # counters
        self._seen: set[str] = set()
        self._per_stream: dict[str, _Counters] = {}
        self._calls: dict[RpcMethod, int] = dict.fromkeys(RPC_METHODS, 0)
        self._received = self._resends = self._committed_count = self._failed_count = 0
        self._proofs_verified = self._proofs_skipped = self._injected = 0
        self._sample_counter = 0

        # faults
        self._call_faults: dict[RpcMethod, deque[_CallFault]] = {m: deque() for m in RPC_METHODS}
        self._latency: dict[RpcMethod, float] = dict.fromkeys(RPC_METHODS, 0.0)
        self._held_tx: set[str] = set()
        self._held_streams: set[str] = set()
        self._forced: dict[str, str] = {}

        # A test's look at every SendTransactions as it arrives, before any fault or
        # latency applies and before the registry stores anything (see ``on_send``).
        self.on_send: SendHook | None = None
        self.on_status: StatusHook | None = None

    # --- lifecycle ------------------------------------------------------------------

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        """Start processing and serve on host:port (0 = any free port); return the port."""
        if self._dispatcher is not None:
            raise RuntimeError("the registry simulator is already started")
        self._host = host
        self._executor = self._make_executor()
        self._dispatcher = asyncio.get_running_loop().create_task(self._dispatch(), name="registry-sim")
        self._port = port
        await self.go_up()
        log.info("registry_sim.started", host=host, port=self._port, registries=list(self.config.registries))
        return self._port

    async def stop(self) -> None:
        await self.go_down()
        if self._dispatcher is not None:
            self._dispatcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._dispatcher
            self._dispatcher = None
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None

    async def __aenter__(self) -> RegistrySimulator:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def port(self) -> int:
        return self._port

    @property
    def address(self) -> str:
        """``host:port``, or ``https://host:port`` when serving TLS."""
        scheme = "https://" if self.config.tls_private_key is not None else ""
        return f"{scheme}{self._host}:{self._port}"

    @property
    def is_up(self) -> bool:
        return self._server is not None

    async def go_down(self) -> None:
        """Stop serving: the port refuses connections; queued work goes on."""
        if self._server is not None:
            server, self._server = self._server, None
            await server.stop(grace=0)

    async def go_up(self) -> None:
        """Serve again, on the same port."""
        if self._server is not None:
            return
        # No SO_REUSEPORT: two simulators must never share a port by accident.
        server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
        registry_pb2_grpc.add_RegistryServiceServicer_to_server(_Servicer(self), server)  # type: ignore[no-untyped-call]
        where = f"{self._host}:{self._port}"
        key, chain = self.config.tls_private_key, self.config.tls_certificate_chain
        if key is not None and chain is not None:
            bound = server.add_secure_port(where, grpc.ssl_server_credentials([(key, chain)]))
        else:
            bound = server.add_insecure_port(where)
        if bound == 0:
            raise OSError(f"registry simulator cannot bind {self._host}:{self._port}")
        self._port = bound
        await server.start()
        self._server = server

    async def restart(self) -> None:
        """A registry restart: down, every PENDING/FAILED status and queued transaction
        lost, up again. The committed log survives."""
        await self.go_down()
        self.forget_uncommitted()
        await self.go_up()

    def _make_executor(self) -> Executor:
        if self.config.executor == "process":
            # spawn: forking a process that runs gRPC threads is unsafe.
            return ProcessPoolExecutor(self.config.workers, mp_context=get_context("spawn"))
        return ThreadPoolExecutor(self.config.workers, thread_name_prefix="registry-sim-verify")

    # --- fault injection --------------------------------------------------------------

    def fail_next(
        self,
        method: RpcMethod,
        count: int = 1,
        code: grpc.StatusCode = grpc.StatusCode.UNAVAILABLE,
        *,
        accept: bool = False,
    ) -> None:
        """Fail the next ``count`` calls of ``method`` with ``code``. ``accept``: the
        transactions of a failed SendTransactions are stored and processed all the same
        (the caller cannot tell whether they arrived)."""
        if count > 0:
            self._call_faults[method].append(_CallFault(code, accept, count))

    def set_latency(self, seconds: float, method: RpcMethod | None = None) -> None:
        """Delay every call of ``method`` (None: of every method) by ``seconds``."""
        for m in (method,) if method else RPC_METHODS:
            self._latency[m] = seconds

    def hold(self, *, transaction_ids: Iterable[str] = (), certificate_ids: Iterable[str] = ()) -> None:
        """Keep these transactions, and every transaction of these certificates, PENDING
        (unprocessed) until released; later transactions of their streams wait too."""
        self._held_tx.update(transaction_ids)
        self._held_streams.update(stream_key(c) for c in certificate_ids)

    def release(
        self, *, transaction_ids: Iterable[str] | None = None, certificate_ids: Iterable[str] | None = None
    ) -> None:
        """Release held transactions/certificates; with no arguments, release all."""
        if transaction_ids is None and certificate_ids is None:
            self._held_tx.clear()
            self._held_streams.clear()
        self._held_tx.difference_update(transaction_ids or ())
        self._held_streams.difference_update(stream_key(c) for c in certificate_ids or ())
        for key in list(self._parked):
            self._parked.discard(key)
            self._make_ready(key)
        self._wakeup.set()

    def force_failure(self, certificate_id: str, message: str) -> None:
        """Transactions of this certificate processed from now on read FAILED ``message``."""
        self._forced[stream_key(certificate_id)] = message

    def clear_forced_failures(self) -> None:
        self._forced.clear()

    def forget_uncommitted(self) -> None:
        """As after a registry restart: every cached status (PENDING, FAILED and cached
        COMMITTED) and every queued or in-flight transaction is lost; ids not in the
        committed log then read UNKNOWN."""
        self._epoch += 1
        self._statuses.clear()
        self._stuck.clear()
        self._queues.clear()
        self._ready.clear()
        self._ready_set.clear()
        self._parked.clear()

    def clear_faults(self) -> None:
        for faults in self._call_faults.values():
            faults.clear()
        self.set_latency(0.0)
        self.clear_forced_failures()
        self.release()

    # --- inspection -------------------------------------------------------------------

    def stats(self) -> RegistryStats:
        return RegistryStats(
            send_calls=self._calls["SendTransactions"],
            status_calls=self._calls["GetTransactionStatus"],
            stream_calls=self._calls["GetStreamTransactions"],
            received=self._received,
            distinct=len(self._seen),
            resends=self._resends,
            committed=self._committed_count,
            failed=self._failed_count,
            stuck=len(self._stuck),
            queued=sum(len(q) for q in self._queues.values()) + len(self._in_flight),
            held=sum(len(self._queues.get(key, ())) for key in self._parked),
            proofs_verified=self._proofs_verified,
            proofs_skipped=self._proofs_skipped,
            injected_errors=self._injected,
        )

    def report(self) -> str:
        s = self.stats()
        if self.config.proof_sample == 1:
            proofs = f"range proofs: all verified ({s.proofs_verified})"
        else:
            proofs = (
                f"range proofs: SAMPLED, 1 in {self.config.proof_sample} verified "
                f"({s.proofs_verified} verified, {s.proofs_skipped} not checked)"
            )
        return (
            f"registry simulator {', '.join(self.config.registries)}: received {s.received} transactions "
            f"({s.distinct} distinct, {s.resends} re-sends), committed {s.committed}, failed {s.failed}, "
            f"stuck {s.stuck}, queued {s.queued}; {proofs}; injected errors {s.injected_errors}"
        )

    def stream(self, certificate_id: str) -> StreamView | None:
        """The committed certificate, once its commit is visible; None otherwise."""
        key = stream_key(certificate_id)
        record = self._streams.get(key)
        if record is None:
            return None
        return self._view(key, record, time.monotonic())

    def streams(self) -> dict[str, StreamView]:
        now = time.monotonic()
        views = {key: self._view(key, record, now) for key, record in self._streams.items()}
        return {key: view for key, view in views.items() if view is not None}

    def stream_counters(self, certificate_id: str) -> StreamCounters:
        c = self._per_stream.get(stream_key(certificate_id))
        if c is None:
            return StreamCounters()
        return StreamCounters(c.received, len(c.issue_ids), c.resends)

    def status(self, transaction_id: str) -> tuple[registry_pb2.TransactionState, str]:
        """(TransactionState, message) exactly as GetTransactionStatus answers it."""
        now = time.monotonic()
        entry = self._live_status(transaction_id, now)
        if entry is not None:
            if now < entry.since or entry.state == PENDING:
                return PENDING, ""
            return entry.state, entry.message
        visible = self._committed.get(transaction_id)
        if visible is not None and visible <= now:
            return COMMITTED, ""
        if visible is not None:
            return PENDING, ""
        return UNKNOWN, ""

    def stuck(self) -> dict[str, str]:
        """Transactions the real registry would retry for ever (id -> why)."""
        return dict(self._stuck)

    async def wait_idle(self, within: float = 10.0) -> None:
        """Until nothing unheld is queued or being verified (commit delay not included)."""
        deadline = time.monotonic() + within
        while any(key not in self._parked for key in self._queues) or self._in_flight:
            if time.monotonic() > deadline:
                raise TimeoutError("registry simulator still busy")
            await asyncio.sleep(0.005)

    def _view(self, key: str, record: _Stream, now: float) -> StreamView | None:
        visible = [e.tx_id for e in record.entries if e.visible_at <= now]
        if not visible:
            return None
        event = record.event
        return StreamView(
            certificate_id=key,
            registry=record.registry,
            type=electricity_pb2.GranularCertificateType.Name(event.type),
            start=event.period.start.seconds,
            end=event.period.end.seconds,
            grid_area=event.grid_area,
            owner_public_key=event.owner_public_key.content,
            owner_key_type=electricity_pb2.KeyType.Name(event.owner_public_key.type),
            commitment=event.quantity_commitment.content,
            range_proof=event.quantity_commitment.range_proof,
            attributes=tuple(
                AttributeView(a.key, a.value, a.type == electricity_pb2.HASHED) for a in event.attributes
            ),
            withdrawn=record.withdrawn_at is not None and record.withdrawn_at <= now,
            transaction_ids=tuple(visible),
        )

    # --- the registry ---------------------------------------------------------------------

    def receive(self, transactions: Sequence[registry_pb2.Transaction]) -> list[str]:
        """SendTransactions' effect: mark each PENDING and queue it; return the ids."""
        now = time.monotonic()
        ids = []
        for tx in transactions:
            # The registry hashes the message as it re-serializes it.
            data = tx.SerializeToString()
            tx_id = transaction_id(data)
            key = stream_key(tx.header.federated_stream_id.stream_id.value)
            counters = self._per_stream.setdefault(key, _Counters())
            counters.received += 1
            self._received += 1
            if tx_id in self._seen:
                counters.resends += 1
                self._resends += 1
            self._seen.add(tx_id)
            if tx.header.payload_type == ISSUED_EVENT:
                counters.issue_ids.add(tx_id)
            self._set_status(tx_id, PENDING, "", now, now)
            self._queues.setdefault(key, deque()).append(_Queued(tx_id, data, key, self._epoch))
            self._make_ready(key)
            ids.append(tx_id)
        self._wakeup.set()
        return ids

    def stream_transactions(self, stream_id: str) -> list[registry_pb2.Transaction]:
        record = self._streams.get(stream_key(stream_id))
        if record is None:
            return []
        now = time.monotonic()
        return [registry_pb2.Transaction.FromString(e.data) for e in record.entries if e.visible_at <= now]

    async def read_stream(self, stream_id: str) -> list[registry_pb2.Transaction]:
        """``GetStreamTransactions`` as the RPC answers it, for a caller on this loop:
        counted, with injected latency and faults, refused while the registry is down;
        raises ``ReadRefused`` where the RPC fails."""
        if not self.is_up:
            raise ReadRefused(grpc.StatusCode.UNAVAILABLE, "the registry is down")
        fault = await self._before_call("GetStreamTransactions")
        if fault is not None:
            raise ReadRefused(fault.code, "injected fault")
        if parse_uuid(stream_id) is None:
            raise ReadRefused(grpc.StatusCode.UNKNOWN, f"stream id {stream_id!r} is not a UUID")
        return self.stream_transactions(stream_id)

    def _live_status(self, tx_id: str, now: float) -> _Status | None:
        entry = self._statuses.get(tx_id)
        if entry is None or now < entry.since or entry.state == PENDING:
            return entry
        ttl = self.config.failed_retention if entry.state == FAILED else self.config.effective_committed_cache
        if now - entry.since < ttl:
            return entry
        del self._statuses[tx_id]
        return None

    def _set_status(
        self, tx_id: str, state: registry_pb2.TransactionState, message: str, since: float, now: float
    ) -> None:
        current = self._live_status(tx_id, now)
        if current is not None and state < current.state:
            return  # the status cache refuses downgrades (a re-send of a committed tx…)
        self._statuses[tx_id] = _Status(state, message, since)

    def _make_ready(self, key: str) -> None:
        if key in self._in_flight or key in self._ready_set or not self._queues.get(key):
            return
        self._ready.append(key)
        self._ready_set.add(key)

    def _is_held(self, item: _Queued) -> bool:
        return item.tx_id in self._held_tx or item.key in self._held_streams

    def _take_batch(self) -> list[_Queued]:
        batch: list[_Queued] = []
        while self._ready and len(batch) < self.config.batch_size:
            key = self._ready.popleft()
            self._ready_set.discard(key)
            queue = self._queues.get(key)
            if not queue:
                continue
            if self._is_held(queue[0]):
                self._parked.add(key)
                continue
            batch.append(queue.popleft())
            self._in_flight.add(key)
        return batch

    async def _dispatch(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while batch := self._take_batch():
                try:
                    verdicts = await self._verify(loop, batch)
                except Exception:
                    log.exception("registry_sim.verification_crashed")
                    verdicts = [Verdict(Outcome.STUCK, "verifier crashed")] * len(batch)
                for item, verdict in zip(batch, verdicts, strict=True):
                    self._in_flight.discard(item.key)
                    if item.epoch == self._epoch:
                        try:
                            self._apply(item, verdict)
                        except Exception:  # one bad record must not stop the registry
                            log.exception("registry_sim.apply_crashed", transaction_id=item.tx_id)
                    self._make_ready(item.key)
                    if not self._queues.get(item.key) and item.key not in self._parked:
                        self._queues.pop(item.key, None)

    async def _verify(self, loop: asyncio.AbstractEventLoop, batch: list[_Queued]) -> list[Verdict]:
        jobs = [(item.data, self._snapshot(item.key), self._sample_proof()) for item in batch]
        assert self._executor is not None
        # Range proofs (milliseconds each) are verified in the executor, off the loop; the
        # rest of a transaction's checks cost less than handing it to a thread and back.
        heavy = [i for i, job in enumerate(jobs) if job[2]]
        verdicts: list[Verdict | None] = [None] * len(jobs)
        futures = []
        if heavy:
            chunks = max(1, min(self.config.workers, len(heavy)))
            size = -(-len(heavy) // chunks)
            for i in range(0, len(heavy), size):
                part = heavy[i : i + size]
                futures.append(
                    (
                        part,
                        loop.run_in_executor(
                            self._executor, verify_batch, [jobs[k] for k in part], self._rules
                        ),
                    )
                )
        light = [i for i, job in enumerate(jobs) if not job[2]]
        for index, verdict in zip(light, verify_batch([jobs[k] for k in light], self._rules), strict=True):
            verdicts[index] = verdict
        for part, future in futures:
            for index, verdict in zip(part, await future, strict=True):
                verdicts[index] = verdict
        return [v for v in verdicts if v is not None]

    def _sample_proof(self) -> bool:
        self._sample_counter += 1
        return self._sample_counter % self.config.proof_sample == 0

    def _snapshot(self, key: str) -> StreamSnapshot:
        record = self._streams.get(key)
        if record is None:
            return StreamSnapshot()
        return StreamSnapshot(True, record.event.grid_area, record.withdrawn_at is not None)

    def _apply(self, item: _Queued, verdict: Verdict) -> None:
        now = time.monotonic()
        visible = now + self.config.commit_delay
        if verdict.proof is ProofCheck.VERIFIED:
            self._proofs_verified += 1
        elif verdict.proof is ProofCheck.SKIPPED:
            self._proofs_skipped += 1

        forced = self._forced.get(item.key)
        if forced is not None:
            verdict = Verdict(Outcome.FAILED, forced)
        if verdict.outcome is Outcome.STUCK:
            self._stuck[item.tx_id] = verdict.message
            log.warning("registry_sim.stuck", transaction_id=item.tx_id, reason=verdict.message)
            return
        if verdict.outcome is Outcome.FAILED:
            self._failed_count += 1
            self._set_status(item.tx_id, FAILED, verdict.message, visible, now)
            log.info("registry_sim.failed", transaction_id=item.tx_id, message=verdict.message)
            return

        tx = registry_pb2.Transaction.FromString(item.data)
        entry = _LogEntry(item.tx_id, item.data, visible)
        if tx.header.payload_type == WITHDRAWN_EVENT:
            record = self._streams[item.key]
            record.withdrawn_at = visible
        else:
            event = electricity_pb2.IssuedEvent.FromString(tx.payload)
            record = self._streams[item.key] = _Stream(tx.header.federated_stream_id.registry, event)
        record.entries.append(entry)
        self._committed[item.tx_id] = visible
        self._committed_count += 1
        self._set_status(item.tx_id, COMMITTED, "", visible, now)

    # --- RPC plumbing ---------------------------------------------------------------------

    async def _before_call(self, method: RpcMethod) -> _CallFault | None:
        self._calls[method] += 1
        if self._latency[method] > 0:
            await asyncio.sleep(self._latency[method])
        faults = self._call_faults[method]
        if not faults:
            return None
        fault = faults[0]
        fault.remaining -= 1
        if fault.remaining <= 0:
            faults.popleft()
        self._injected += 1
        return fault


class _Servicer(registry_pb2_grpc.RegistryServiceServicer):
    def __init__(self, sim: RegistrySimulator) -> None:
        self._sim = sim

    async def SendTransactions(
        self,
        request: registry_pb2.SendTransactionsRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> registry_pb2.SubmitTransactionResponse:
        if self._sim.on_send is not None:
            await self._sim.on_send(request.transactions)
        fault = await self._sim._before_call("SendTransactions")
        if fault is not None and not fault.accept:
            await context.abort(fault.code, "injected fault: transactions not received")
        self._sim.receive(request.transactions)
        if fault is not None:
            await context.abort(fault.code, "injected fault: transactions received, answer lost")
        return registry_pb2.SubmitTransactionResponse()

    async def GetTransactionStatus(
        self,
        request: registry_pb2.GetTransactionStatusRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> registry_pb2.GetTransactionStatusResponse:
        if self._sim.on_status is not None:
            self._sim.on_status(request.id)
        fault = await self._sim._before_call("GetTransactionStatus")
        if fault is not None:
            await context.abort(fault.code, "injected fault")
        try:
            # The registry decodes the id to the hash: any Base64 spelling of it is the same id.
            digest = base64.b64decode(request.id, validate=True)
        except (binascii.Error, ValueError):
            # The real registry throws, which gRPC reports as UNKNOWN.
            await context.abort(grpc.StatusCode.UNKNOWN, f"transaction id {request.id!r} is not Base64")
        state, message = self._sim.status(base64.b64encode(digest).decode("ascii"))
        return registry_pb2.GetTransactionStatusResponse(status=state, message=message)

    async def GetStreamTransactions(
        self,
        request: registry_pb2.GetStreamTransactionsRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> registry_pb2.GetStreamTransactionsResponse:
        try:
            transactions = await self._sim.read_stream(request.stream_id.value)
        except ReadRefused as exc:
            await context.abort(exc.code, exc.details)
        return registry_pb2.GetStreamTransactionsResponse(transactions=transactions)


# --- standalone ---------------------------------------------------------------------------


def _parse_args(argv: Sequence[str] | None) -> tuple[RegistrySimConfig, str, int]:
    parser = argparse.ArgumentParser(
        prog="python -m stamp.devstack.registry", description="Project Origin registry simulator"
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5001)
    parser.add_argument("--registry", action="append", required=True, help="registry name (repeatable)")
    parser.add_argument(
        "--issuer-key",
        action="append",
        default=[],
        metavar="AREA=PEM",
        help="grid area and issuer public key, PEM or Base64 of PEM (repeatable)",
    )
    parser.add_argument("--commit-delay", type=float, default=0.2)
    parser.add_argument("--failed-retention", type=float, default=3600.0)
    parser.add_argument("--committed-cache", type=float, default=3600.0)
    parser.add_argument("--strict", action="store_true")
    parser.add_argument("--proof-sample", type=int, default=1, help="verify 1 in N range proofs")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--executor", choices=("thread", "process"), default="thread")
    parser.add_argument("--tls-cert", type=Path, metavar="PEM", help="serve TLS with this certificate chain")
    parser.add_argument("--tls-key", type=Path, metavar="PEM", help="… and this private key")
    args = parser.parse_args(argv)
    if (args.tls_cert is None) != (args.tls_key is None):
        parser.error("--tls-cert and --tls-key go together")
    keys: dict[str, list[str]] = {}
    for item in args.issuer_key:
        area, sep, text = item.partition("=")
        if not sep:
            parser.error(f"--issuer-key {item!r}: expected AREA=PEM")
        keys.setdefault(area, []).append(text)
    config = RegistrySimConfig(
        registries=tuple(args.registry),
        issuer_keys={area: tuple(texts) for area, texts in keys.items()},
        commit_delay=args.commit_delay,
        failed_retention=args.failed_retention,
        committed_cache=args.committed_cache,
        strict=args.strict,
        proof_sample=args.proof_sample,
        workers=args.workers,
        executor=args.executor,
        tls_certificate_chain=args.tls_cert.read_bytes() if args.tls_cert else None,
        tls_private_key=args.tls_key.read_bytes() if args.tls_key else None,
    )
    return config, args.host, args.port


async def serve(config: RegistrySimConfig, host: str, port: int) -> None:
    """Run a simulator until SIGINT/SIGTERM (or cancellation), then print its report."""
    sim = RegistrySimulator(config)
    await sim.start(host, port)
    print(f"registry simulator listening on {sim.address}", flush=True)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):  # no signal handlers on Windows loops
            loop.add_signal_handler(signum, stopping.set)
    try:
        await stopping.wait()
    finally:
        print(sim.report(), flush=True)
        await sim.stop()


def main(argv: Sequence[str] | None = None) -> None:
    config, host, port = _parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(config, host, port))


if __name__ == "__main__":
    main()
