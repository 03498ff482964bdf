"""An in-process OTLP/HTTP trace receiver for tests (and, run as a module, a local
sink for ``scripts/bench.py`` with tracing on): an aiohttp server that decodes each
``ExportTraceServiceRequest`` (protobuf, as Stamp's exporter sends it) into plain
``ReceivedSpan`` values.

    python -m tests.otlp_receiver --port 4318     # counts spans; prints the count on exit
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import signal
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.proto.common.v1 import common_pb2

SPAN_KINDS = {0: "UNSPECIFIED", 1: "INTERNAL", 2: "SERVER", 3: "CLIENT", 4: "PRODUCER", 5: "CONSUMER"}


@dataclass(frozen=True)
class ReceivedLink:
    trace_id: str
    span_id: str
    attributes: dict[str, Any]


@dataclass(frozen=True)
class ReceivedSpan:
    trace_id: str
    span_id: str
    parent_span_id: str  # "" for a root
    name: str
    kind: str
    start: int  # ns since the epoch
    end: int
    attributes: dict[str, Any]
    events: list[tuple[str, dict[str, Any]]]
    links: list[ReceivedLink]
    resource: dict[str, Any]
    status_code: int

    def every_value(self) -> list[str]:
        """Every attribute value of the span, its events, links and resource, as text."""
        values = [*self.attributes.values(), *self.resource.values()]
        for _, attributes in self.events:
            values += attributes.values()
        for link in self.links:
            values += link.attributes.values()
        return [str(v) for v in values] + [self.name]


def _value(v: common_pb2.AnyValue) -> Any:
    kind = v.WhichOneof("value")
    if kind == "array_value":
        return [_value(x) for x in v.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: _value(kv.value) for kv in v.kvlist_value.values}
    if kind == "bytes_value":
        return v.bytes_value.hex()
    return getattr(v, kind) if kind else None


def _attributes(kvs: Any) -> dict[str, Any]:
    return {kv.key: _value(kv.value) for kv in kvs}


def decode(body: bytes) -> list[ReceivedSpan]:
    request = trace_service_pb2.ExportTraceServiceRequest.FromString(body)
    spans: list[ReceivedSpan] = []
    for resource_spans in request.resource_spans:
        resource = _attributes(resource_spans.resource.attributes)
        for scope_spans in resource_spans.scope_spans:
            for s in scope_spans.spans:
                spans.append(
                    ReceivedSpan(
                        trace_id=s.trace_id.hex(),
                        span_id=s.span_id.hex(),
                        parent_span_id=s.parent_span_id.hex(),
                        name=s.name,
                        kind=SPAN_KINDS.get(s.kind, str(s.kind)),
                        start=s.start_time_unix_nano,
                        end=s.end_time_unix_nano,
                        attributes=_attributes(s.attributes),
                        events=[(e.name, _attributes(e.attributes)) for e in s.events],
                        links=[
                            ReceivedLink(
                                link.trace_id.hex(), link.span_id.hex(), _attributes(link.attributes)
                            )
                            for link in s.links
                        ],
                        resource=resource,
                        status_code=s.status.code,
                    )
                )
    return spans


@dataclass
class OtlpReceiver:
    spans: list[ReceivedSpan] = field(default_factory=list)
    requests: int = 0
    keep: bool = True  # False: count only (a benchmark's sink)
    received: int = 0
    _runner: web.AppRunner | None = None
    port: int = 0

    @property
    def endpoint(self) -> str:
        """The base URL for OTEL_EXPORTER_OTLP_ENDPOINT."""
        return f"http://127.0.0.1:{self.port}"

    async def start(self, port: int = 0) -> None:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/traces", self._export)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", port)
        await site.start()
        server = site._server
        assert server is not None
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _export(self, request: web.Request) -> web.Response:
        body = await request.read()
        if request.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        spans = decode(body)
        self.requests += 1
        self.received += len(spans)
        if self.keep:
            self.spans.extend(spans)
        answer = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
        return web.Response(body=answer, content_type="application/x-protobuf")

    def named(self, name: str) -> list[ReceivedSpan]:
        return [s for s in self.spans if s.name == name]

    def of_certificate(self, certificate_id: str) -> list[ReceivedSpan]:
        """Stamp's own spans of one certificate, in the order they started."""
        found = [s for s in self.spans if s.attributes.get("certificate.id") == certificate_id]
        return sorted(found, key=lambda s: s.start)


async def _serve(port: int) -> None:
    receiver = OtlpReceiver(keep=False)
    await receiver.start(port)
    print(receiver.port, flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await receiver.stop()
    print(f"spans {receiver.received} requests {receiver.requests}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=4318)
    asyncio.run(_serve(parser.parse_args().port))


if __name__ == "__main__":
    main()
