"""Wallet simulator: the receive-slice API of a Project Origin wallet (docs/wallet.md).

Stamp delivers slices here in tests, the demo and the load test. It answers like the
real wallet (202 ``{}`` / 400 / 404, field names case-insensitive), then verifies each
accepted slice asynchronously by reading the registry's ``GetStreamTransactions``, as the
real wallet does: over gRPC, or straight from a registry simulator on the same event
loop (``registry=``; ``stamp.devstack.registry_reader``). It is stricter than the real
wallet and *flags* what the real one would silently store twice or drop:

- duplicates: the same certificate delivered more than once;
- reused positions: one endpoint position used for two different certificates;
- early deliveries: a slice that arrived while the registry had no committed stream
  for it (checked once, right at receipt; verification then keeps retrying for
  ``verify_window`` seconds, so the slice can still end up verified or invalid).

Every endpoint shares one URL (``/v1/slices``); the endpoint is chosen by the public key
in the body, as in the real wallet. Test-only routes under ``/v1/_test/`` create
endpoints, read what was received and inject faults, so a process that does not hold
this object (Stamp as a subprocess, curl, a load test) can use them too:

- ``POST /v1/_test/endpoints`` (optional ``{"name": …}``) → 201 endpoint reference;
- ``GET /v1/_test/slices`` (``?summary=true`` for counts only) → what ``snapshot()`` says;
- ``GET|POST|DELETE /v1/_test/faults``, see ``apply_fault_json``.

R and salts are never logged and never appear in reprs or in the JSON.
All state lives on the event loop the simulator was started on; call it from there.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import collections
import contextlib
import enum
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson
import structlog
from aiohttp import web

from protos.project_origin.registry.v1 import registry_pb2
from stamp.crypto.hdkeys import ExtendedPrivateKey, ExtendedPublicKey
from stamp.devstack.registry import RegistrySimulator
from stamp.devstack.registry_reader import (
    GrpcStreamReader,
    LocalStreamReader,
    RegistryUnreadable,
    StreamReader,
)
from stamp.devstack.wallet_checks import (
    Check,
    MalformedSlice,
    SliceRequest,
    SliceVerdict,
    parse_slice_request,
    verify_slice,
)
from stamp.devstack.wallet_faults import Fault, FaultPlan, fault_from_json
from stamp.gateways.registry_client import split_registry_address

log = structlog.get_logger(__name__)

SLICES_PATH = "/v1/slices"
RECEIVE_SLICE_VERSION = 1


@dataclass(frozen=True, slots=True)
class WalletSimConfig:
    """``registries``: registry name → gRPC address (``host:port``) the wallet reads
    slices' certificates from. Verification retries while the registry has no committed
    stream (or cannot be reached) for ``verify_window`` seconds, backing off from
    ``retry_initial`` to ``retry_max``; then the slice is invalid. ``public_url``: base
    URL put in endpoint references (default: ``http://<bound host>:<port>``). A
    registry at ``https://host:port`` is read over TLS, trusting
    ``registry_root_certificates`` (PEM; None: the system's roots)."""

    registries: Mapping[str, str] = field(default_factory=dict)
    verify_window: float = 30.0
    retry_initial: float = 0.05
    retry_max: float = 1.0
    rpc_timeout: float = 5.0
    public_url: str | None = None
    registry_root_certificates: bytes | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "registries", dict(self.registries))
        problems = []
        for name, address in self.registries.items():
            host, sep, port = split_registry_address(address)[0].rpartition(":")
            if not name or not sep or not host or not port.isdigit():
                problems.append(f"registry {name!r}: address must be host:port, got {address!r}")
        if min(self.verify_window, self.retry_initial, self.retry_max, self.rpc_timeout) <= 0:
            problems.append("verify_window, retry_initial, retry_max and rpc_timeout must be > 0")
        if problems:
            raise ValueError("invalid wallet simulator configuration: " + "; ".join(problems))


@dataclass(frozen=True, slots=True)
class WalletEndpointReference:
    """What a wallet owner registers at Stamp as a recipient (docs/wallet.md)."""

    version: int
    endpoint: str
    public_key_b64: str
    name: str = ""

    @property
    def public_key(self) -> bytes:
        return base64.b64decode(self.public_key_b64)

    def as_json(self) -> dict[str, Any]:
        return {"version": self.version, "endpoint": self.endpoint, "publicKey": self.public_key_b64}


EndpointRef = WalletEndpointReference | str | bytes
"""An endpoint named by its reference, its Base64 public key or the 74 key bytes."""


class SliceStatus(enum.Enum):
    PENDING = "pending"
    VERIFIED = "verified"
    INVALID = "invalid"


@dataclass(frozen=True, slots=True)
class SliceRecord:
    """One accepted delivery and what verification made of it (no secrets)."""

    sequence: int  # 1-based order of acceptance
    endpoint: str  # endpoint name
    public_key: str  # Base64 of the endpoint's extended public key
    registry: str
    certificate_id: str
    position: int
    quantity: int
    status: SliceStatus
    reason: str
    early: bool
    received_at: float  # unix time

    def as_json(self) -> dict[str, Any]:
        return {
            "sequence": self.sequence,
            "endpoint": self.endpoint,
            "publicKey": self.public_key,
            "registry": self.registry,
            "certificateId": self.certificate_id,
            "position": self.position,
            "quantity": self.quantity,
            "status": self.status.value,
            "reason": self.reason,
            "early": self.early,
            "receivedAt": self.received_at,
        }


@dataclass(frozen=True, slots=True)
class Duplicate:
    registry: str
    certificate_id: str
    deliveries: int


@dataclass(frozen=True, slots=True)
class ReusedPosition:
    endpoint: str
    public_key: str
    position: int
    certificate_ids: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class EarlyDelivery:
    registry: str
    certificate_id: str
    sequence: int


@dataclass(frozen=True, slots=True)
class StreamedAnswer:
    """A fault's long answer (``bodyBytes``): how much of it the client let the
    simulator send before it closed the connection."""

    status: int
    planned: int
    sent: int

    @property
    def complete(self) -> bool:
        return self.sent == self.planned

    def as_json(self) -> dict[str, Any]:
        return {"status": self.status, "planned": self.planned, "sent": self.sent, "complete": self.complete}


@dataclass(frozen=True, slots=True)
class WalletFlags:
    """What the real wallet would not notice but a correct sender never causes."""

    duplicates: tuple[Duplicate, ...]
    reused_positions: tuple[ReusedPosition, ...]
    early_deliveries: tuple[EarlyDelivery, ...]

    def __bool__(self) -> bool:
        return bool(self.duplicates or self.reused_positions or self.early_deliveries)


# --- internal records -------------------------------------------------------------------


@dataclass(slots=True)
class _Endpoint:
    name: str
    key: ExtendedPrivateKey  # its repr holds no secret
    public: ExtendedPublicKey
    reference: WalletEndpointReference


@dataclass(slots=True)
class _Received:
    sequence: int
    endpoint: _Endpoint
    slice: SliceRequest  # holds R and salts (repr=False fields)
    received_at: float
    status: SliceStatus = SliceStatus.PENDING
    reason: str = ""
    early: bool = False

    def record(self) -> SliceRecord:
        s = self.slice
        return SliceRecord(
            self.sequence,
            self.endpoint.name,
            s.public_key_b64,
            s.registry,
            s.certificate_id,
            s.position,
            s.quantity,
            self.status,
            self.reason,
            self.early,
            self.received_at,
        )


class WalletSimulator:
    """``registry``: a registry simulator running on the same event loop. The registry
    names it serves are read from it directly (``LocalStreamReader``: the same answer,
    counts and faults as its RPC, without the wire); the others, and every name when it
    is None, over gRPC at the address ``config.registries`` gives."""

    def __init__(
        self, config: WalletSimConfig | None = None, *, registry: RegistrySimulator | None = None
    ) -> None:
        self.config = config or WalletSimConfig()
        self._local_registry = registry
        self._host = "127.0.0.1"
        self._port = 0
        self._runner: web.AppRunner | None = None
        self._stopping = asyncio.Event()
        self._readers: dict[str, StreamReader] = {}
        self._tasks: set[asyncio.Task[None]] = set()

        self._endpoints: dict[bytes, _Endpoint] = {}
        self._names: set[str] = set()
        self._received: list[_Received] = []
        self._deliveries: collections.Counter[tuple[str, str]] = collections.Counter()
        self._positions: dict[tuple[bytes, int], list[str]] = {}
        self._requests = 0
        self._answered: collections.Counter[str] = collections.Counter()
        self._receipt_check_errors = 0
        self._streamed: list[StreamedAnswer] = []

        self._faults = FaultPlan()
        self._disabled: set[bytes] = set()

    # --- lifecycle ------------------------------------------------------------------------

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        """Serve on host:port (0 = any free port); return the port."""
        if self._runner is not None:
            raise RuntimeError("the wallet simulator is already started")
        self._stopping = asyncio.Event()
        local = self._local_registry
        for name, address in self.config.registries.items():
            self._readers[name] = (
                LocalStreamReader(local, self.config.rpc_timeout)
                if local is not None and name in local.config.registries
                else GrpcStreamReader(
                    address, self.config.rpc_timeout, self.config.registry_root_certificates
                )
            )
        runner = web.AppRunner(self._build_app(), access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        site = web.TCPSite(runner, host, port)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            await self._close_readers()
            raise
        self._runner = runner
        self._host = host
        self._port = int(runner.addresses[0][1])
        log.info(
            "wallet_sim.started",
            url=self.base_url,
            registries={name: reader.kind for name, reader in self._readers.items()},
        )
        return self._port

    async def stop(self) -> None:
        """Stop serving; verifications in progress are abandoned (they stay pending)."""
        self._stopping.set()  # ends injected hangs, so the server can close at once
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()
        # After the server: no handler is left to start another verification.
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._close_readers()

    async def _close_readers(self) -> None:
        readers = list(self._readers.values())
        self._readers.clear()
        for reader in readers:
            await reader.close()

    async def __aenter__(self) -> WalletSimulator:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def port(self) -> int:
        return self._port

    @property
    def base_url(self) -> str:
        if self.config.public_url:
            return self.config.public_url.rstrip("/")
        host = "127.0.0.1" if self._host in ("", "0.0.0.0", "::") else self._host  # noqa: S104
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self._port}"

    @property
    def slices_url(self) -> str:
        return self.base_url + SLICES_PATH

    # --- endpoints --------------------------------------------------------------------------

    def create_endpoint(self, name: str | None = None) -> WalletEndpointReference:
        """A new wallet endpoint with a fresh BIP32 key; its reference for Stamp."""
        if self._runner is None:
            raise RuntimeError("start the wallet simulator before creating endpoints")
        if name is None:
            name = f"endpoint-{len(self._endpoints) + 1}"
            while name in self._names:
                name += "+"
        elif name in self._names:
            raise ValueError(f"an endpoint named {name!r} exists already")
        key = ExtendedPrivateKey.generate()
        public = key.public()
        reference = WalletEndpointReference(RECEIVE_SLICE_VERSION, self.slices_url, public.to_base64(), name)
        self._endpoints[public.to_bytes()] = _Endpoint(name, key, public, reference)
        self._names.add(name)
        log.info("wallet_sim.endpoint_created", endpoint=name)
        return reference

    def endpoints(self) -> list[WalletEndpointReference]:
        return [e.reference for e in self._endpoints.values()]

    def private_key(self, endpoint: EndpointRef) -> ExtendedPrivateKey:
        """The endpoint's extended private key (what the real wallet would hold)."""
        return self._endpoint(endpoint).key

    def disable_endpoint(self, endpoint: EndpointRef) -> None:
        """The wallet answers 400 for this endpoint until enabled again."""
        self._disabled.add(self._endpoint(endpoint).public.to_bytes())

    def enable_endpoint(self, endpoint: EndpointRef) -> None:
        self._disabled.discard(self._endpoint(endpoint).public.to_bytes())

    def _endpoint(self, endpoint: EndpointRef) -> _Endpoint:
        key = _key_bytes(endpoint)
        found = self._endpoints.get(key)
        if found is None:
            raise KeyError("no wallet endpoint has this public key")
        return found

    # --- fault injection ------------------------------------------------------------------

    def inject_next(self, fault: Fault, count: int = 1) -> None:
        """Apply ``fault`` to the next ``count`` slice requests, whatever their endpoint.
        These apply in order, before any endpoint's fault."""
        self._faults.arm_next(fault, count)

    def inject_for(self, endpoint: EndpointRef, fault: Fault, count: int | None = None) -> None:
        """Apply ``fault`` to this endpoint's requests: the next ``count``, or every one
        until cleared (``None``)."""
        self._faults.arm_for(self._endpoint(endpoint).public.to_bytes(), fault, count)

    def fail_next(self, count: int = 1, status: int = 500) -> None:
        self.inject_next(Fault.respond(status), count)

    def hang_next(self, seconds: float, count: int = 1, *, accept: bool = False) -> None:
        self.inject_next(Fault.hang(seconds, accept=accept), count)

    def drop_next(self, count: int = 1, *, accept: bool = True) -> None:
        self.inject_next(Fault.drop(accept=accept), count)

    def fail_endpoint(self, endpoint: EndpointRef, status: int = 500, count: int | None = None) -> None:
        self.inject_for(endpoint, Fault.respond(status), count)

    def clear_faults(self, endpoint: EndpointRef | None = None) -> None:
        """Clear every fault and re-enable every endpoint; or only this endpoint's."""
        if endpoint is None:
            self._faults.clear()
            self._disabled.clear()
            return
        key = self._endpoint(endpoint).public.to_bytes()
        self._faults.clear(key)
        self._disabled.discard(key)

    def faults(self) -> dict[str, Any]:
        """The armed faults, as ``GET /v1/_test/faults`` shows them."""
        return {
            **self._faults.as_json(self._describe),
            "disabled": [self._describe(key) for key in self._disabled],
        }

    def _describe(self, key: bytes) -> dict[str, str]:
        return {"publicKey": _b64(key), "endpoint": self._name(key)}

    def _name(self, key: bytes) -> str:
        endpoint = self._endpoints.get(key)
        return endpoint.name if endpoint else ""

    # --- inspection -------------------------------------------------------------------------

    def slices(self) -> list[SliceRecord]:
        """Every accepted delivery, in order of acceptance."""
        return [r.record() for r in self._received]

    def verified_slices(self) -> list[SliceRecord]:
        return [r.record() for r in self._received if r.status is SliceStatus.VERIFIED]

    def invalid_slices(self) -> list[SliceRecord]:
        return [r.record() for r in self._received if r.status is SliceStatus.INVALID]

    def pending_slices(self) -> list[SliceRecord]:
        return [r.record() for r in self._received if r.status is SliceStatus.PENDING]

    def received_requests(self, certificate_id: str) -> list[SliceRequest]:
        """The slices accepted for one certificate as the wallet owner holds them, R and
        salts included: what a test needs to open the commitment and recompute the
        hashed attributes. Never logged or served."""
        wanted = certificate_id.lower()
        return [r.slice for r in self._received if r.slice.certificate_id == wanted]

    def forget_received(self) -> None:
        """Lose every accepted slice, as a wallet restored from a backup taken before
        them does; its endpoints and keys stay."""
        self._received.clear()
        self._deliveries.clear()
        self._positions.clear()

    def received_count(self) -> int:
        """Accepted deliveries (202, or accepted and then dropped by a fault)."""
        return len(self._received)

    @property
    def request_count(self) -> int:
        """Every POST to the slices URL, including rejected and faulted ones."""
        return self._requests

    def streamed_answers(self) -> list[StreamedAnswer]:
        """The long answers faults sent (``bodyBytes``), finished ones only, in order."""
        return list(self._streamed)

    def flags(self) -> WalletFlags:
        duplicates = tuple(
            Duplicate(registry, certificate_id, count)
            for (registry, certificate_id), count in self._deliveries.items()
            if count > 1
        )
        reused = tuple(
            ReusedPosition(self._name(key), _b64(key), position, tuple(ids))
            for (key, position), ids in self._positions.items()
            if len(ids) > 1
        )
        early = tuple(
            EarlyDelivery(r.slice.registry, r.slice.certificate_id, r.sequence)
            for r in self._received
            if r.early
        )
        return WalletFlags(duplicates, reused, early)

    def snapshot(self, *, details: bool = True) -> dict[str, Any]:
        """What ``GET /v1/_test/slices`` answers (no R, no salts)."""
        by_status = collections.Counter(r.status for r in self._received)
        flags = self.flags()
        summary: dict[str, Any] = {
            "received": len(self._received),
            "requests": self._requests,
            "answered": dict(sorted(self._answered.items())),
            "verifiedCount": by_status[SliceStatus.VERIFIED],
            "invalidCount": by_status[SliceStatus.INVALID],
            "pendingCount": by_status[SliceStatus.PENDING],
            "duplicateCount": len(flags.duplicates),
            "reusedPositionCount": len(flags.reused_positions),
            "earlyDeliveryCount": len(flags.early_deliveries),
            "receiptCheckErrors": self._receipt_check_errors,
            "faultsInjected": self._faults.injected,
            "registryReads": {name: reader.kind for name, reader in self._readers.items()},
            "streamedAnswers": [a.as_json() for a in self._streamed],
        }
        if not details:
            return summary
        records = self.slices()
        return {
            **summary,
            "verified": [r.as_json() for r in records if r.status is SliceStatus.VERIFIED],
            "invalid": [r.as_json() for r in records if r.status is SliceStatus.INVALID],
            "pending": [r.as_json() for r in records if r.status is SliceStatus.PENDING],
            "duplicates": [
                {"registry": d.registry, "certificateId": d.certificate_id, "deliveries": d.deliveries}
                for d in flags.duplicates
            ],
            "reusedPositions": [
                {
                    "endpoint": p.endpoint,
                    "publicKey": p.public_key,
                    "position": p.position,
                    "certificateIds": list(p.certificate_ids),
                }
                for p in flags.reused_positions
            ],
            "earlyDeliveries": [
                {"registry": e.registry, "certificateId": e.certificate_id, "sequence": e.sequence}
                for e in flags.early_deliveries
            ],
        }

    def report(self) -> str:
        """One line for humans (the demo's summary)."""
        s = self.snapshot(details=False)
        return (
            f"wallet simulator: received {s['received']} slices ({s['requests']} requests), "
            f"verified {s['verifiedCount']}, invalid {s['invalidCount']}, pending {s['pendingCount']}; "
            f"flags: duplicates {s['duplicateCount']}, reused positions {s['reusedPositionCount']}, "
            f"early deliveries {s['earlyDeliveryCount']}; injected faults {s['faultsInjected']}"
        )

    async def wait_idle(self, within: float = 10.0) -> None:
        """Until no accepted slice is still being verified."""
        deadline = time.monotonic() + within
        while any(r.status is SliceStatus.PENDING for r in self._received):
            if time.monotonic() > deadline:
                raise TimeoutError("the wallet simulator is still verifying slices")
            await asyncio.sleep(0.01)

    async def wait_for(self, certificate_ids: Iterable[str], within: float = 10.0) -> list[SliceRecord]:
        """Until every one of these certificates has a delivery that is no longer pending;
        return their records."""
        wanted = {c.lower() for c in certificate_ids}
        deadline = time.monotonic() + within
        while True:
            records = [r for r in self._received if r.slice.certificate_id in wanted]
            done = {r.slice.certificate_id for r in records if r.status is not SliceStatus.PENDING}
            if wanted <= done:
                return [r.record() for r in records]
            if time.monotonic() > deadline:
                raise TimeoutError(f"not settled in {within} s: {sorted(wanted - done)[:5]}")
            await asyncio.sleep(0.01)

    # --- the receive-slice API ------------------------------------------------------------------

    def _build_app(self) -> web.Application:
        app = web.Application()
        app.router.add_post(SLICES_PATH, self._post_slice)
        app.router.add_post("/v1/_test/endpoints", self._post_endpoint)
        app.router.add_get("/v1/_test/slices", self._get_slices)
        app.router.add_get("/v1/_test/faults", self._get_faults)
        app.router.add_post("/v1/_test/faults", self._post_fault)
        app.router.add_delete("/v1/_test/faults", self._delete_faults)
        return app

    async def _post_slice(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        self._requests += 1
        parsed: SliceRequest | None = None
        problem = ""
        try:
            parsed = parse_slice_request(raw)
        except MalformedSlice as exc:
            problem = str(exc)
        fault = self._faults.take(parsed.public_key if parsed else None)
        if fault is None:
            response = self._answer(parsed, problem)
        else:
            log.info("wallet_sim.fault_injected", **fault.as_json())
            if fault.kind == "drop":
                if fault.accept:
                    self._answer(parsed, problem)
                self._answered["dropped"] += 1
                if request.transport is not None:
                    request.transport.abort()
                return web.Response(status=500)  # never reaches the client: the connection is gone
            if fault.kind == "status" and fault.body_bytes:
                self._answered[str(fault.status)] += 1
                return await self._stream_answer(request, fault)
            if fault.kind == "status":
                response = (
                    web.Response(status=fault.status, text=fault.body)
                    if fault.body
                    else _problem(fault.status, "injected fault")
                )
            elif fault.kind == "redirect":
                response = web.Response(status=fault.status, headers={"Location": fault.location})
            else:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), fault.seconds)
                if fault.accept:
                    response = self._answer(parsed, problem)
                else:
                    response = _problem(503, f"injected fault: hung for {fault.seconds:g} s")
        self._answered[str(response.status)] += 1
        return response

    async def _stream_answer(self, request: web.Request, fault: Fault) -> web.StreamResponse:
        """``fault.body_bytes`` of answer, made as they are sent; stops when the client
        closes the connection, and records how far it got."""
        response = web.StreamResponse(status=fault.status)
        response.content_type = "text/plain"
        response.content_length = fault.body_bytes
        unit = (fault.body or "x").encode()
        chunk = unit * max(1, 65536 // len(unit))
        sent = 0
        try:
            await response.prepare(request)
            while sent < fault.body_bytes:
                piece = chunk[: fault.body_bytes - sent]
                await response.write(piece)
                sent += len(piece)
            await response.write_eof()
        except ConnectionError:
            pass  # the client hung up: what it refused to read is the point
        finally:
            self._streamed.append(StreamedAnswer(fault.status, fault.body_bytes, sent))
        return response

    def _answer(self, parsed: SliceRequest | None, problem: str) -> web.Response:
        if parsed is None:
            return _problem(400, problem)
        endpoint = self._endpoints.get(parsed.public_key)
        if endpoint is None:
            return _problem(404, "no wallet endpoint has this public key")
        if parsed.public_key in self._disabled:
            return _problem(400, "the wallet is disabled")
        self._accept(parsed, endpoint)
        return web.Response(status=202, body=b"{}", content_type="application/json")

    def _accept(self, slice_: SliceRequest, endpoint: _Endpoint) -> None:
        received = _Received(len(self._received) + 1, endpoint, slice_, time.time())
        self._received.append(received)
        certificate = (slice_.registry, slice_.certificate_id)
        self._deliveries[certificate] += 1
        if self._deliveries[certificate] > 1:
            self._log_slice(received).warning(
                "wallet_sim.duplicate_delivery", deliveries=self._deliveries[certificate]
            )
        users = self._positions.setdefault((slice_.public_key, slice_.position), [])
        if slice_.certificate_id not in users:
            users.append(slice_.certificate_id)
            if len(users) > 1:
                self._log_slice(received).warning("wallet_sim.position_reused", certificate_ids=users)
        log.debug(
            "wallet_sim.slice_accepted", certificate_id=slice_.certificate_id, sequence=received.sequence
        )
        task = asyncio.get_running_loop().create_task(self._verify(received), name="wallet-sim-verify")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    @staticmethod
    def _log_slice(received: _Received) -> Any:
        """A logger bound to the slice: only for what is logged, never per slice (the
        load test posts thousands a minute)."""
        s = received.slice
        return log.bind(
            endpoint=received.endpoint.name,
            registry=s.registry,
            certificate_id=s.certificate_id,
            position=s.position,
        )

    # --- verification -------------------------------------------------------------------------

    async def _verify(self, received: _Received) -> None:
        slice_ = received.slice
        reader = self._readers.get(slice_.registry)
        if reader is None:
            self._finish(received, SliceVerdict(Check.INVALID, f"registry {slice_.registry!r} is unknown"))
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.verify_window
        delay = self.config.retry_initial
        first = True
        last = ""
        while True:
            transactions: list[registry_pb2.Transaction] | None
            try:
                transactions = await reader.read(slice_.certificate_id)
            except RegistryUnreadable as exc:
                transactions = None
                last = f"the registry could not be read ({exc})"
            if first:
                first = False
                if transactions is None:
                    self._receipt_check_errors += 1
                elif not transactions:
                    received.early = True
                    log.warning(
                        "wallet_sim.early_delivery",
                        registry=slice_.registry,
                        certificate_id=slice_.certificate_id,
                        sequence=received.sequence,
                    )
            if transactions is not None:
                try:
                    verdict = verify_slice(slice_, received.endpoint.public, transactions)
                except Exception as exc:  # a checker bug must not leave the slice pending for ever
                    log.exception("wallet_sim.verification_crashed", certificate_id=slice_.certificate_id)
                    verdict = SliceVerdict(Check.INVALID, f"verification crashed: {type(exc).__name__}")
                if verdict.check is not Check.NOT_COMMITTED:
                    self._finish(received, verdict)
                    return
                last = verdict.reason
            if loop.time() + delay > deadline:
                reason = f"{last} after {self.config.verify_window:g} s"
                self._finish(received, SliceVerdict(Check.INVALID, reason))
                return
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.config.retry_max)

    def _finish(self, received: _Received, verdict: SliceVerdict) -> None:
        if verdict.check is Check.VERIFIED:
            received.status = SliceStatus.VERIFIED
            log.debug("wallet_sim.slice_verified", certificate_id=received.slice.certificate_id)
            return
        received.status = SliceStatus.INVALID
        received.reason = verdict.reason
        self._log_slice(received).warning("wallet_sim.slice_invalid", reason=verdict.reason)

    # --- test routes ----------------------------------------------------------------------------

    async def _post_endpoint(self, request: web.Request) -> web.Response:
        name: str | None = None
        raw = await request.read()
        if raw.strip():
            try:
                body = orjson.loads(raw)
            except orjson.JSONDecodeError:
                return _problem(400, "the body is not JSON")
            if not isinstance(body, dict) or not isinstance(body.get("name", ""), str):
                return _problem(400, 'expected {"name": "<endpoint name>"} or no body')
            name = body.get("name") or None
        try:
            reference = self.create_endpoint(name)
        except ValueError as exc:
            return _problem(409, str(exc))
        return web.json_response(reference.as_json(), status=201)

    async def _get_slices(self, request: web.Request) -> web.Response:
        details = request.query.get("summary", "false").lower() not in ("1", "true", "yes")
        return _json(self.snapshot(details=details))

    async def _get_faults(self, request: web.Request) -> web.Response:
        return _json(self.faults())

    async def _delete_faults(self, request: web.Request) -> web.Response:
        self.clear_faults()
        return await self._get_faults(request)

    async def _post_fault(self, request: web.Request) -> web.Response:
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            return _problem(400, "the body is not JSON")
        try:
            self.apply_fault_json(body)
        except KeyError as exc:
            return _problem(404, str(exc.args[0]) if exc.args else "unknown endpoint")
        except (ValueError, TypeError) as exc:
            return _problem(400, str(exc))
        return await self._get_faults(request)

    def apply_fault_json(self, body: Any) -> None:
        """Apply one ``POST /v1/_test/faults`` command. ``kind``:

        - ``status`` (``status``, default 500; ``body``, ``bodyBytes``), ``redirect``
          (``status``, ``location``), ``hang`` (``seconds``, ``accept``, default
          false) or ``drop`` (``accept``, default true): with ``publicKey``, for that
          endpoint, the next ``count`` requests or until cleared (no ``count``); without,
          for the next ``count`` (default 1) requests to any endpoint;
        - ``disable`` / ``enable`` (``publicKey``): the endpoint answers 400 / normally;
        - ``clear``: every fault (with ``publicKey``: that endpoint's only).
        """
        if not isinstance(body, dict):
            raise ValueError("expected a JSON object with a 'kind'")
        kind = body.get("kind")
        key = body.get("publicKey")
        if key is not None and not isinstance(key, str):
            raise ValueError("publicKey must be a Base64 string")
        count = body.get("count")
        if count is not None and (isinstance(count, bool) or not isinstance(count, int)):
            raise ValueError("count must be an integer")
        if kind == "clear":
            self.clear_faults(key)
            return
        if kind in ("disable", "enable"):
            if key is None:
                raise ValueError(f"'{kind}' needs a publicKey")
            (self.disable_endpoint if kind == "disable" else self.enable_endpoint)(key)
            return
        fault = fault_from_json(body)
        if key is not None:
            self.inject_for(key, fault, count)
        else:
            self.inject_next(fault, 1 if count is None else count)


_TITLES = {
    400: "Bad Request",
    404: "Not Found",
    409: "Conflict",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}


def _problem(status: int, detail: str) -> web.Response:
    body = {"type": "about:blank", "title": _TITLES.get(status, "Error"), "status": status, "detail": detail}
    return web.Response(status=status, body=orjson.dumps(body), content_type="application/problem+json")


def _json(body: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(body), content_type="application/json")


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _key_bytes(endpoint: EndpointRef) -> bytes:
    if isinstance(endpoint, WalletEndpointReference):
        return endpoint.public_key
    if isinstance(endpoint, bytes):
        return endpoint
    try:
        return base64.b64decode(endpoint, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise KeyError("the public key is not Base64") from exc
