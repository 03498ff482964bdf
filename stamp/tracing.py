"""OpenTelemetry traces (docs/operations.md): set-up, and the small helpers the edge,
the actors and the group commit call.

Off unless an OTLP endpoint is configured (``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` or
``OTEL_EXPORTER_OTLP_ENDPOINT``). Off costs nothing on the hot path: every hook is
behind the module flag ``ENABLED`` (a plain attribute read), no span object is made,
and the maintained instrumentations (aiohttp server and client, gRPC client,
asyncpg) are not even installed, since they wrap every request and statement.

One trace per certificate: a single ``POST`` continues the request's trace (the
``certificate.intake`` span is a child of the HTTP server span); each item of a batch
gets a trace of its own whose intake span links to the batch request. The intake's
trace context is stored with the certificate (``certificates.traceparent``, migration
0008), so whichever process drives it (after a restart, a takeover, a retry) puts its
step spans in that same trace. Calls made for many certificates at once (one
``SendTransactions``, one status round, one group-commit round trip) are one span
linked to every certificate it carried.

Secrets never reach a span: Stamp's own spans carry ids, states and positions only,
and the exporter is wrapped by ``_ScrubbingExporter``, which masks any attribute
whose name looks secret (authorization, cookies, tokens, R, salts, keys) and strips
credentials and query strings from URLs, whatever an instrumentation recorded.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
from collections.abc import Iterable, Iterator, Mapping, MutableMapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import urlsplit, urlunsplit

from opentelemetry import context as otel_context
from opentelemetry import trace

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

    from stamp.domain import CertificateKey, CertificateRecord
    from stamp.lifecycle import Effect, Journey, LifecycleEvent

ENABLED = False
"""Set once by ``configure``; every hook on the hot path tests it first."""

TRACER_NAME = "stamp"
_tracer: trace.Tracer = trace.NoOpTracer()
_provider: TracerProvider | None = None


# --- configuration -------------------------------------------------------------------------


class TracingConfigError(ValueError):
    """The OTEL_* variables ask for something Stamp does not do."""


@dataclass(frozen=True, slots=True)
class TracingConfig:
    enabled: bool
    endpoint: str | None  # where spans go, without credentials or query
    service_name: str
    sampler: str
    sampler_arg: str | None
    header_names: tuple[str, ...]  # OTEL_EXPORTER_OTLP_(TRACES_)HEADERS: names only, never values
    reason: str  # why tracing is off, when it is

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> TracingConfig:
        env = os.environ if env is None else env
        service = env.get("OTEL_SERVICE_NAME") or "stamp"
        sampler = env.get("OTEL_TRACES_SAMPLER") or "parentbased_always_on"
        sampler_arg = env.get("OTEL_TRACES_SAMPLER_ARG") or None
        protocol = env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or env.get("OTEL_EXPORTER_OTLP_PROTOCOL")
        if protocol and protocol != "http/protobuf":
            raise TracingConfigError(
                f"OTEL_EXPORTER_OTLP_PROTOCOL={protocol}: Stamp exports traces over OTLP/HTTP "
                "(http/protobuf) only; point it at the collector's HTTP port (4318)"
            )
        exporter = (env.get("OTEL_TRACES_EXPORTER") or "otlp").strip().lower()
        if exporter not in ("otlp", "none"):
            raise TracingConfigError(f"OTEL_TRACES_EXPORTER={exporter}: Stamp exports with 'otlp' or 'none'")
        traces_endpoint = env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        base = env.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        endpoint = traces_endpoint or (f"{base.removesuffix('/')}/v1/traces" if base else None)
        headers = env.get("OTEL_EXPORTER_OTLP_TRACES_HEADERS") or env.get("OTEL_EXPORTER_OTLP_HEADERS") or ""
        names = tuple(sorted({h.split("=", 1)[0].strip().lower() for h in headers.split(",") if "=" in h}))
        reason = ""
        if (env.get("OTEL_SDK_DISABLED") or "").strip().lower() == "true":
            reason = "OTEL_SDK_DISABLED=true"
        elif exporter == "none":
            reason = "OTEL_TRACES_EXPORTER=none"
        elif endpoint is None:
            reason = "no OTEL_EXPORTER_OTLP_ENDPOINT or OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"
        shown = safe_url(endpoint) if endpoint else None
        return cls(not reason, shown, service, sampler, sampler_arg, names, reason)

    def describe(self) -> dict[str, Any]:
        """For ``stamp check-config``: whether traces are on and where they go, no secret."""
        if not self.enabled:
            return {"enabled": False, "reason": self.reason}
        shown: dict[str, Any] = {
            "enabled": True,
            "exporter": "otlp (http/protobuf)",
            "endpoint": self.endpoint,
            "service_name": self.service_name,
            "sampler": self.sampler,
        }
        if self.sampler_arg is not None:
            shown["sampler_arg"] = self.sampler_arg
        if self.header_names:
            shown["headers"] = {name: "***" for name in self.header_names}
        return shown


def configure(config: TracingConfig, instance_id: str) -> bool:
    """Install the tracer provider, the OTLP exporter and the instrumentations, when
    ``config`` says traces are on. Call before the app, its clients and channels are
    built: the instrumentations patch their constructors."""
    global ENABLED, _tracer, _provider
    if not config.enabled or ENABLED:
        return ENABLED
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.instrumentation.aiohttp_client import AioHttpClientInstrumentor
    from opentelemetry.instrumentation.aiohttp_server import AioHttpServerInstrumentor
    from opentelemetry.instrumentation.asyncpg import AsyncPGInstrumentor
    from opentelemetry.instrumentation.grpc import GrpcAioInstrumentorClient
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    from stamp import __version__

    resource = Resource.create(
        {
            "service.name": config.service_name,
            "service.instance.id": instance_id,
            "service.version": __version__,
            "process.pid": os.getpid(),  # tells a restarted process's spans apart
        }
    )
    provider = TracerProvider(resource=resource)  # the sampler: OTEL_TRACES_SAMPLER(_ARG)
    exporter = cast("SpanExporter", _ScrubbingExporter(OTLPSpanExporter()))
    provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    _provider = provider
    _tracer = provider.get_tracer(TRACER_NAME, __version__)
    AioHttpServerInstrumentor().instrument(tracer_provider=provider)
    AioHttpClientInstrumentor().instrument(tracer_provider=provider)
    GrpcAioInstrumentorClient().instrument(tracer_provider=provider)  # type: ignore[no-untyped-call]
    # Statement parameters hold R, salts and transactions: never captured.
    AsyncPGInstrumentor(capture_parameters=False).instrument(  # type: ignore[no-untyped-call]
        tracer_provider=provider
    )
    ENABLED = True
    return True


def shutdown() -> None:
    """Export what is buffered (at the end of ``stamp serve``)."""
    if _provider is not None:
        _provider.shutdown()


# --- W3C trace context ---------------------------------------------------------------------


def traceparent(span_context: trace.SpanContext) -> str:
    return f"00-{span_context.trace_id:032x}-{span_context.span_id:016x}-{int(span_context.trace_flags):02x}"


_TRACEPARENT = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")


def span_context_of(value: str | None) -> trace.SpanContext | None:
    """The span context a stored traceparent names (None for none or a malformed one)."""
    match = _TRACEPARENT.match(value or "")
    if match is None:
        return None
    found = trace.SpanContext(
        int(match[1], 16), int(match[2], 16), is_remote=True, trace_flags=trace.TraceFlags(int(match[3], 16))
    )
    return found if found.is_valid else None


def current_span_context() -> trace.SpanContext | None:
    """The span in whose context the caller runs (on any thread), for a link or a
    message; None when tracing is off or nothing is traced here."""
    if not ENABLED:
        return None
    found = trace.get_current_span().get_span_context()
    return found if found.is_valid else None


@contextlib.contextmanager
def child_of(span_context: Any) -> Iterator[None]:
    """Run the block as part of the span another actor sent along (a ``SpanContext``
    in a message), so the instrumented calls in it become its children."""
    if not ENABLED or span_context is None:
        yield
        return
    token = otel_context.attach(trace.set_span_in_context(trace.NonRecordingSpan(span_context)))
    try:
        yield
    finally:
        otel_context.detach(token)


# --- spans of Stamp's own ------------------------------------------------------------------


@functools.lru_cache(maxsize=128)
def statement_summary(sql: str) -> str:
    """A statement's first words, to tell batched statements apart (no parameters)."""
    words = " ".join(sql.split())
    return words if len(words) <= 80 else words[:80] + "…"


def intake(key: CertificateKey, recipient_id: str, *, own_trace: bool) -> str | None:
    """The ``certificate.intake`` span of a certificate being stored, and the
    traceparent to store with it. ``own_trace``: a batch item, which gets a trace of
    its own linked to the batch request's span; a single POST stays in the request's
    trace."""
    if not ENABLED:
        return None
    request = trace.get_current_span().get_span_context()
    attributes = {
        "certificate.id": key.certificate_id,
        "registry": key.registry,
        "recipient.id": recipient_id,
    }
    if own_trace:
        links = [trace.Link(request)] if request.is_valid else []
        alone = otel_context.Context()
        span = _tracer.start_span("certificate.intake", alone, attributes=attributes, links=links)
    else:
        span = _tracer.start_span("certificate.intake", attributes=attributes)
    span.end()  # a point in time: the request's span covers the storing
    return traceparent(span.get_span_context())


_NO_BATCH: contextlib.AbstractContextManager[None] = contextlib.nullcontext()


def batch_span(
    name: str, carried: Iterable[trace.SpanContext | None], attributes: Mapping[str, Any]
) -> contextlib.AbstractContextManager[Any]:
    """One span for a call made for many certificates, linked to each one's span
    (``carried``), in a trace of its own. Use it around the call, on the loop."""
    if not ENABLED:
        return _NO_BATCH
    links = [trace.Link(c) for c in carried if c is not None]
    return _tracer.start_as_current_span(
        name, otel_context.Context(), kind=trace.SpanKind.CLIENT, attributes=dict(attributes), links=links
    )


# --- one certificate's steps ---------------------------------------------------------------

_STEP_NAMES = {
    "Allocate": "certificate.allocate",
    "Build": "certificate.build",
    "Persist": "certificate.persist",
    "Submit": "certificate.registry",
    "Deliver": "certificate.deliver",
    "Wait": "certificate.retry_wait",
}
_NOT_ANSWERS = frozenset({"Started", "Drain"})
_FAILURES = frozenset(
    {"PositionRefused", "BuildFailed", "DatabaseFailed", "RegistryRejected", "RegistryGaveUp"}
)


class CertificateTrace:
    """The spans of one certificate's lifecycle steps, kept by its actor: a step's span
    starts when the lifecycle issues its effect and ends when the answer comes back.
    The actor's turns run in a context of its own (actors/base.py), so the step's span
    stays current for it between messages: log lines and the requests the actor hands
    on carry it."""

    def __init__(self, record: CertificateRecord) -> None:
        key = record.key
        self.base: dict[str, Any] = {
            "certificate.id": key.certificate_id,
            "registry": key.registry,
            "recipient.id": record.content.recipient_id,
        }
        stored = span_context_of(record.traceparent)
        # None: stored while tracing was off; the first step then begins a trace.
        self.parent: otel_context.Context | None = (
            trace.set_span_in_context(trace.NonRecordingSpan(stored)) if stored else None
        )
        self.open: trace.Span | None = None

    @classmethod
    def of(cls, record: CertificateRecord) -> CertificateTrace | None:
        return cls(record) if ENABLED else None

    def advanced(
        self, event: LifecycleEvent, before: Journey, after: Journey, effects: Sequence[Effect]
    ) -> None:
        """After ``lifecycle.advance``: end the step ``event`` answers, start the one
        its effects begin."""
        if after is before:
            return  # nobody waited for this answer
        record = after.record
        name = type(event).__name__
        if self.open is not None and name not in _NOT_ANSWERS:
            self._end(name, record)
        for effect in effects:
            step = _STEP_NAMES.get(type(effect).__name__)
            if step is not None:
                self._start(step, effect, record)
            elif type(effect).__name__ == "Finish":
                self._end("left", record, getattr(effect, "reason", ""))
                if self.parent is not None:
                    otel_context.attach(self.parent)

    def close(self, reason: str) -> None:
        """The actor stops or crashed with a step still open."""
        if self.open is not None:
            self.open.set_attribute("outcome", reason)
            self.open.end()
            self.open = None

    def _start(self, step: str, effect: Effect, record: CertificateRecord) -> None:
        if self.open is not None:
            self.open.end()
        if self.parent is None:
            # A certificate stored while tracing was off: its steps in this process
            # share one trace, begun by the first of them.
            span = _tracer.start_span(step, otel_context.Context())
            self.parent = trace.set_span_in_context(span)
        else:
            span = _tracer.start_span(step, self.parent)
        self.open = span
        span.set_attributes(self.base)
        span.set_attribute("state", record.state.value)
        if record.position is not None:
            span.set_attribute("position", record.position)
        write = getattr(effect, "write", None)
        if write is not None:
            span.set_attribute("write", write.kind.value)
        attempt = getattr(effect, "attempt", None)
        if attempt is not None:
            span.set_attribute("attempt", attempt)
            waited_step = getattr(effect, "step", None)
            span.set_attribute("step", waited_step.value if waited_step is not None else "database")
        otel_context.attach(trace.set_span_in_context(span, self.parent))

    def _end(self, outcome: str, record: CertificateRecord, reason: str = "") -> None:
        span = self.open
        if span is None:
            return
        self.open = None
        span.set_attribute("outcome", outcome)
        if reason:
            span.set_attribute("reason", reason)
        span.set_attribute("state", record.state.value)
        if record.position is not None:
            span.set_attribute("position", record.position)
        if outcome in _FAILURES:
            span.set_status(trace.StatusCode.ERROR, outcome)
        span.end()


# --- log correlation -----------------------------------------------------------------------


def add_trace_ids(_logger: Any, _name: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """structlog processor: a line written inside a span names it (``trace_id``,
    ``span_id``, as in the OTLP/W3C hex form), so logs and traces meet."""
    if ENABLED:
        span_context = trace.get_current_span().get_span_context()
        if span_context.is_valid:
            event["trace_id"] = f"{span_context.trace_id:032x}"
            event["span_id"] = f"{span_context.span_id:016x}"
    return event


# --- no secret leaves in a span ------------------------------------------------------------

_SECRET_NAME = re.compile(
    r"authorization|cookie|token|secret|password|passwd|api[-_]?key|private|blinding|random_?r|salt|pem",
    re.IGNORECASE,
)
_URL_NAMES = frozenset({"url.full", "http.url", "http.target", "url.path", "server.url"})
_BEARER = re.compile(r"\b(bearer|basic)\s+\S+", re.IGNORECASE)


def safe_url(url: str) -> str:
    """A URL without userinfo, query or fragment (where credentials and tokens travel)."""
    if "://" not in url:
        return url.split("?", 1)[0].split("#", 1)[0]
    try:
        parts = urlsplit(url)
    except ValueError:
        return "***"
    return urlunsplit((parts.scheme, parts.netloc.rsplit("@", 1)[-1], parts.path, "", ""))


def scrub_attributes(attributes: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """``attributes`` with secret-named values masked, URLs without credentials or
    query, and any bearer or basic credential masked; None when nothing changed."""
    if not attributes:
        return None
    changed: dict[str, Any] | None = None
    for key, value in attributes.items():
        new = value
        if _SECRET_NAME.search(key):
            new = "***"
        elif isinstance(value, str):
            if key.endswith(".query") and value:
                new = "***"
            elif key in _URL_NAMES:
                new = safe_url(value)
            if _BEARER.search(new):
                new = _BEARER.sub(r"\1 ***", new)
        if new != value:
            if changed is None:
                changed = dict(attributes)
            changed[key] = new
    return changed


class _ScrubbingExporter:
    """Wraps the OTLP exporter: every span leaves through ``scrub_attributes``."""

    def __init__(self, inner: SpanExporter) -> None:
        self.inner = inner

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return self.inner.export([_scrubbed(span) for span in spans])

    def shutdown(self) -> None:
        self.inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self.inner.force_flush(timeout_millis)


def _scrubbed(span: ReadableSpan) -> ReadableSpan:
    from opentelemetry.sdk.trace import Event
    from opentelemetry.sdk.trace import ReadableSpan as Readable

    attributes = scrub_attributes(span.attributes)
    events = list(span.events)
    events_changed = False
    for i, event in enumerate(events):
        cleaned = scrub_attributes(event.attributes)
        if cleaned is not None:
            events[i] = Event(event.name, cleaned, event.timestamp)
            events_changed = True
    if attributes is None and not events_changed:
        return span
    return Readable(
        name=span.name,
        context=span.context,
        parent=span.parent,
        resource=span.resource,
        attributes=attributes if attributes is not None else span.attributes,
        events=events,
        links=span.links,
        kind=span.kind,
        status=span.status,
        start_time=span.start_time,
        end_time=span.end_time,
        instrumentation_scope=span.instrumentation_scope,
    )
