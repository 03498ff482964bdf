"""How the wallet simulator reads a certificate's committed stream from a registry.

Two readers give the same answer, the registry's ``GetStreamTransactions``:

- ``GrpcStreamReader`` calls it over gRPC, as the real wallet does; for a registry in
  another process (``stamp devstack``, a real registry, tests of the wire);
- ``LocalStreamReader`` asks a ``RegistrySimulator`` running on the same event loop
  (the load test's simulators process). The simulator runs the very code behind its
  RPC (``RegistrySimulator.read_stream``): the call is counted, injected faults and
  latency apply, a registry that is down cannot be read. What it saves is the wire:
  a gRPC call costs both simulators more CPU than the checks of the slice.

Either raises ``RegistryUnreadable`` when the registry cannot be read, which the
wallet retries like an unreachable registry.
"""

from __future__ import annotations

import asyncio
from typing import Protocol

import grpc

from protos.project_origin.common.v1 import common_pb2
from protos.project_origin.registry.v1 import registry_pb2, registry_pb2_grpc
from stamp.devstack.registry import ReadRefused, RegistrySimulator
from stamp.gateways.registry_client import split_registry_address


class RegistryUnreadable(Exception):
    """The registry did not answer the read; ``str()`` says why (a status code and a
    text, never slice contents)."""


class StreamReader(Protocol):
    kind: str  # "grpc" or "in-process", for the wallet's snapshot

    async def read(self, certificate_id: str) -> list[registry_pb2.Transaction]:
        """The committed transactions of the certificate's stream (empty: none yet)."""
        ...

    async def close(self) -> None: ...


class GrpcStreamReader:
    kind = "grpc"

    def __init__(self, address: str, timeout: float, root_certificates: bytes | None = None) -> None:
        target, tls = split_registry_address(address)
        self._channel = (
            grpc.aio.secure_channel(target, grpc.ssl_channel_credentials(root_certificates))
            if tls
            else grpc.aio.insecure_channel(target)
        )
        self._stub = registry_pb2_grpc.RegistryServiceStub(self._channel)  # type: ignore[no-untyped-call]
        self._timeout = timeout

    async def read(self, certificate_id: str) -> list[registry_pb2.Transaction]:
        request = registry_pb2.GetStreamTransactionsRequest(stream_id=common_pb2.Uuid(value=certificate_id))
        try:
            response = await self._stub.GetStreamTransactions(request, timeout=self._timeout)
        except grpc.aio.AioRpcError as exc:
            raise RegistryUnreadable(f"{exc.code().name}: {exc.details()}") from exc
        except (grpc.RpcError, TimeoutError) as exc:
            raise RegistryUnreadable(type(exc).__name__) from exc
        return list(response.transactions)

    async def close(self) -> None:
        await self._channel.close(None)


class LocalStreamReader:
    kind = "in-process"

    def __init__(self, registry: RegistrySimulator, timeout: float) -> None:
        self._registry = registry
        self._timeout = timeout

    async def read(self, certificate_id: str) -> list[registry_pb2.Transaction]:
        try:
            # The deadline the gRPC call would have: an injected latency longer than it
            # fails the read the same way.
            async with asyncio.timeout(self._timeout):
                return await self._registry.read_stream(certificate_id)
        except ReadRefused as exc:
            raise RegistryUnreadable(f"{exc.code.name}: {exc.details}") from exc
        except TimeoutError as exc:
            raise RegistryUnreadable("DEADLINE_EXCEEDED: Deadline Exceeded") from exc

    async def close(self) -> None:
        return None
