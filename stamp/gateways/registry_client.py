"""gRPC client of the Project Origin registries (``grpc.aio``, one channel per registry).

Transactions go out as the exact bytes Stamp persisted: the SendTransactions request
is framed by hand (field 1, length-delimited, per transaction) instead of being
re-serialised from parsed messages, so what the registry hashes is what Stamp stored
(docs/registry.md; invariant "one transaction per certificate" of
docs/architecture.md).

A registry address is ``host:port`` (plaintext, for a registry on a trusted network
or behind a sidecar) or ``https://host:port`` (TLS, the server verified against
``RegistryTls.root_certificates`` or the system's roots, optionally with a client
certificate).
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import structlog
from grpc import aio

from protos.project_origin.common.v1 import common_pb2
from protos.project_origin.registry.v1 import registry_pb2
from stamp import metrics

log = structlog.get_logger(__name__)

_SERVICE = "/project_origin.registry.v1.RegistryService/"
_TRANSIENT_CODES = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.CANCELLED,
    }
)


class TxStatus(enum.Enum):
    UNKNOWN = registry_pb2.UNKNOWN
    PENDING = registry_pb2.PENDING
    FAILED = registry_pb2.FAILED
    COMMITTED = registry_pb2.COMMITTED
    FINALIZED = registry_pb2.FINALIZED

    @property
    def issued(self) -> bool:
        return self in (TxStatus.COMMITTED, TxStatus.FINALIZED)


@dataclass(frozen=True, slots=True)
class StatusReply:
    status: TxStatus
    message: str


class RegistryCallError(Exception):
    """A call did not get an answer; ``transient`` says whether retrying may help."""

    def __init__(self, registry: str, code: str, detail: str, *, transient: bool) -> None:
        super().__init__(f"registry {registry}: {code}: {detail}")
        self.registry = registry
        self.code = code
        self.transient = transient


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def frame_send_request(transactions: Iterable[bytes]) -> bytes:
    """Serialized SendTransactionsRequest holding the given Transaction bytes verbatim."""
    return b"".join(b"\x0a" + _varint(len(tx)) + tx for tx in transactions)


TLS_SCHEME = "https://"
PLAINTEXT_SCHEME = "http://"


def split_registry_address(address: str) -> tuple[str, bool]:
    """``https://host:port`` → (``host:port``, TLS); ``host:port`` or ``http://…`` →
    plaintext."""
    if address.lower().startswith(TLS_SCHEME):
        return address[len(TLS_SCHEME) :], True
    if address.lower().startswith(PLAINTEXT_SCHEME):
        return address[len(PLAINTEXT_SCHEME) :], False
    return address, False


@dataclass(frozen=True, slots=True)
class RegistryTls:
    """What a TLS registry connection trusts and presents. ``root_certificates``
    None: the system's roots."""

    root_certificates: bytes | None = None
    private_key: bytes | None = field(default=None, repr=False)
    certificate_chain: bytes | None = None

    @classmethod
    def from_files(cls, ca_file: Path | None, cert_file: Path | None, key_file: Path | None) -> RegistryTls:
        def read(path: Path | None) -> bytes | None:
            return path.read_bytes() if path is not None else None

        return cls(read(ca_file), read(key_file), read(cert_file))

    def credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(self.root_certificates, self.private_key, self.certificate_chain)


def _identity(data: bytes) -> bytes:
    return data


@dataclass(frozen=True, slots=True)
class _Methods:
    """A registry's channel and its three methods, made once: a multicallable per call
    was a measurable share of the client's CPU below saturation."""

    channel: aio.Channel
    send: aio.UnaryUnaryMultiCallable[bytes, registry_pb2.SubmitTransactionResponse]
    status: aio.UnaryUnaryMultiCallable[
        registry_pb2.GetTransactionStatusRequest, registry_pb2.GetTransactionStatusResponse
    ]
    stream: aio.UnaryUnaryMultiCallable[
        registry_pb2.GetStreamTransactionsRequest, registry_pb2.GetStreamTransactionsResponse
    ]

    @classmethod
    def of(cls, channel: aio.Channel) -> _Methods:
        return cls(
            channel,
            channel.unary_unary(
                _SERVICE + "SendTransactions",
                request_serializer=_identity,
                response_deserializer=registry_pb2.SubmitTransactionResponse.FromString,
            ),
            channel.unary_unary(
                _SERVICE + "GetTransactionStatus",
                request_serializer=registry_pb2.GetTransactionStatusRequest.SerializeToString,
                response_deserializer=registry_pb2.GetTransactionStatusResponse.FromString,
            ),
            channel.unary_unary(
                _SERVICE + "GetStreamTransactions",
                request_serializer=registry_pb2.GetStreamTransactionsRequest.SerializeToString,
                response_deserializer=registry_pb2.GetStreamTransactionsResponse.FromString,
            ),
        )


class RegistryClient:
    def __init__(
        self,
        addresses: Mapping[str, str],
        *,
        call_timeout: float,
        max_concurrent_calls: int = 64,
        tls: RegistryTls | None = None,
    ) -> None:
        self._addresses = dict(addresses)
        self._tls = tls or RegistryTls()
        self._timeout = call_timeout
        self._channels: dict[str, _Methods] = {}
        self._limit = asyncio.Semaphore(max_concurrent_calls)

    @property
    def registries(self) -> frozenset[str]:
        return frozenset(self._addresses)

    def _methods(self, registry: str) -> _Methods:
        methods = self._channels.get(registry)
        if methods is None:
            target, tls = split_registry_address(self._addresses[registry])
            options = [("grpc.keepalive_time_ms", 30_000), ("grpc.max_receive_message_length", 64 << 20)]
            if tls:
                channel = aio.secure_channel(target, self._tls.credentials(), options=options)
            else:
                channel = aio.insecure_channel(target, options=options)
            methods = self._channels[registry] = _Methods.of(channel)
        return methods

    async def close(self) -> None:
        channels, self._channels = list(self._channels.values()), {}
        for methods in channels:
            await methods.channel.close(grace=None)

    def _error(self, registry: str, method: str, exc: aio.AioRpcError) -> RegistryCallError:
        code = exc.code()
        metrics.registry_call(method, code.name)
        detail = exc.details() or ""
        if code is grpc.StatusCode.UNAVAILABLE and "handshake failed" in detail.lower():
            # A deployment mistake, not a passing outage: say so in words an operator acts on.
            log.error(
                "registry.tls_handshake_failed",
                registry=registry,
                address=self._addresses[registry],
                hint="the registry's certificate is not trusted by STAMP_REGISTRY_TLS_CA_FILE "
                "(or the system's roots), does not name the host, or the registry does not speak TLS",
                detail=detail[-300:],
            )
        return RegistryCallError(registry, code.name, detail, transient=code in _TRANSIENT_CODES)

    async def send(self, registry: str, transactions: list[bytes]) -> None:
        call = self._methods(registry).send
        async with self._limit:
            try:
                await call(frame_send_request(transactions), timeout=self._timeout)
            except aio.AioRpcError as exc:
                raise self._error(registry, "SendTransactions", exc) from exc
        metrics.registry_call("SendTransactions", "OK")

    async def status(self, registry: str, transaction_id: str) -> StatusReply:
        call = self._methods(registry).status
        async with self._limit:
            try:
                reply = await call(
                    registry_pb2.GetTransactionStatusRequest(id=transaction_id), timeout=self._timeout
                )
            except aio.AioRpcError as exc:
                raise self._error(registry, "GetTransactionStatus", exc) from exc
        metrics.registry_call("GetTransactionStatus", "OK")
        return StatusReply(TxStatus(reply.status), reply.message)

    async def statuses(
        self, registry: str, transaction_ids: list[str]
    ) -> list[StatusReply | RegistryCallError]:
        """Status of many transactions, concurrently; a failed call is returned in place."""
        if len(transaction_ids) == 1:  # below saturation, most rounds: no task to gather
            try:
                only: StatusReply | BaseException = await self.status(registry, transaction_ids[0])
            except Exception as exc:
                only = exc
            return [_in_place(registry, only)]
        results = await asyncio.gather(
            *(self.status(registry, tx_id) for tx_id in transaction_ids), return_exceptions=True
        )
        return [_in_place(registry, result) for result in results]

    async def stream_transactions(self, registry: str, certificate_id: str) -> list[bytes]:
        """The stream's transactions in order, as the registry serialises them."""
        call = self._methods(registry).stream
        request = registry_pb2.GetStreamTransactionsRequest(stream_id=common_pb2.Uuid(value=certificate_id))
        async with self._limit:
            try:
                reply = await call(request, timeout=self._timeout)
            except aio.AioRpcError as exc:
                raise self._error(registry, "GetStreamTransactions", exc) from exc
        metrics.registry_call("GetStreamTransactions", "OK")
        return [tx.SerializeToString() for tx in reply.transactions]


def _in_place(registry: str, outcome: StatusReply | BaseException) -> StatusReply | RegistryCallError:
    """One status call's outcome as ``statuses`` returns it: any failure that is not
    already a ``RegistryCallError`` becomes a transient one."""
    if isinstance(outcome, (StatusReply, RegistryCallError)):
        return outcome
    return RegistryCallError(registry, type(outcome).__name__, str(outcome), transient=True)
