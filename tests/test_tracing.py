"""Traces (issue 16): a real Stamp process exports OTLP/HTTP to an in-process
receiver while certificates go through the Registry and Wallet simulators; the
spans say what docs/operations.md says they say, and hold no secret."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest

from stamp import tracing
from stamp.devstack.registry import RegistrySimConfig, RegistrySimulator
from stamp.devstack.wallet import WalletSimConfig, WalletSimulator
from stamp.domain import CertificateKey
from tests.faults import stamp_env
from tests.logs import json_lines
from tests.otlp_receiver import OtlpReceiver, ReceivedSpan
from tests.process import StampProcess
from tests.stack import GRID_AREA, ISSUER, REGISTRY, certificate_body
from tests.waiting import wait_until

TOKEN = f"tok-{uuid.uuid4().hex}"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
STEPS = [
    "certificate.intake",
    "certificate.allocate",
    "certificate.build",
    "certificate.persist",  # record_transaction → sent_to_registry
    "certificate.registry",
    "certificate.persist",  # issue_and_mark → marked_as_issued
    "certificate.deliver",  # the wallet's 2xx and its record
]


class Traced:
    """Simulators, a receiver and a Stamp process that exports to it."""

    def __init__(self, database_url: str, tmp_path: Path, commit_delay: float) -> None:
        self.database_url = database_url
        self.tmp_path = tmp_path
        self.receiver = OtlpReceiver()
        self.registry = RegistrySimulator(
            RegistrySimConfig(
                registries=(REGISTRY,),
                issuer_keys={GRID_AREA: (ISSUER.public_pem(),)},
                commit_delay=commit_delay,
            )
        )
        self.wallet: WalletSimulator | None = None
        self.stamp: StampProcess | None = None

    async def start(self) -> StampProcess:
        await self.receiver.start()
        await self.registry.start()
        self.wallet = WalletSimulator(WalletSimConfig(registries={REGISTRY: self.registry.address}))
        await self.wallet.start()
        key_file = self.tmp_path / "dk1.pem"
        key_file.write_text(ISSUER.private_pem())
        env = stamp_env(
            self.database_url,
            self.registry.address,
            key_file,
            STAMP_AUTO_MIGRATE="true",
            STAMP_AUTH_TOKENS=TOKEN,
            OTEL_EXPORTER_OTLP_ENDPOINT=self.receiver.endpoint,
            OTEL_SERVICE_NAME="stamp-under-test",
            OTEL_BSP_SCHEDULE_DELAY="100",  # ms: spans reach the receiver before a kill
            # An operator asking for every header must still not export the token.
            OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SERVER_REQUEST=".*",
            OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_CLIENT_REQUEST=".*",
        )
        self.stamp = StampProcess(env, self.tmp_path / "stamp.log")
        await self.stamp.start()
        return self.stamp

    async def stop(self) -> None:
        if self.stamp is not None:
            self.stamp.stop()
        if self.wallet is not None:
            await self.wallet.stop()
        await self.registry.stop()
        await self.receiver.stop()

    async def post(
        self, http: aiohttp.ClientSession, recipients: list[str], singles: int, batched: int
    ) -> list[str]:
        assert self.stamp is not None
        base = self.stamp.base
        bodies = [certificate_body(recipients[i % len(recipients)]) for i in range(singles + batched)]
        for body in bodies[:singles]:
            async with http.post(f"{base}/v1/certificates", json=body, headers=AUTH) as r:
                assert r.status == 202, await r.text()
        if batched:
            async with http.post(
                f"{base}/v1/certificates/batch", json={"certificates": bodies[singles:]}, headers=AUTH
            ) as r:
                assert r.status == 200, await r.text()
                assert (await r.json())["accepted"] == batched
        return [b["certificate"]["id"] for b in bodies]

    async def recipients(self, http: aiohttp.ClientSession, count: int) -> list[str]:
        assert self.stamp is not None
        assert self.wallet is not None
        found = []
        for _ in range(count):
            reference = self.wallet.create_endpoint()
            async with http.post(
                f"{self.stamp.base}/v1/recipients",
                json={"walletEndpointReference": reference.as_json()},
                headers=AUTH,
            ) as r:
                assert r.status == 201, await r.text()
                found.append((await r.json())["id"])
        return found

    async def rows(self, ids: list[str]) -> list[asyncpg.Record]:
        conn = await asyncpg.connect(self.database_url)
        try:
            return await conn.fetch(
                "SELECT id::text, state, position, blinding, salts, transaction, traceparent "
                "FROM certificates WHERE id = ANY($1::uuid[])",
                ids,
            )
        finally:
            await conn.close()

    async def wait_states(self, ids: list[str], states: set[str], timeout: float = 90) -> None:
        async def reached() -> bool:
            rows = await self.rows(ids)
            return len(rows) == len(ids) and all(r["state"] in states for r in rows)

        await wait_until(reached, timeout=timeout, interval=0.1, what=f"every certificate in {states}")

    async def wait_spans(self, ids: list[str], last: str, timeout: float = 30) -> None:
        def exported() -> bool:
            return all(any(s.name == last for s in self.receiver.of_certificate(i)) for i in ids)

        await wait_until(exported, timeout=timeout, interval=0.1, what=f"every certificate's {last} span")


def _secrets(rows: list[asyncpg.Record]) -> list[str]:
    """Everything that must never be in a span: R, the salts, the token, the issuer key."""
    found = [TOKEN, *ISSUER.private_pem().splitlines()[1:-1]]
    for row in rows:
        for secret in [row["blinding"], *(row["salts"] or [])]:
            assert secret
            found += [base64.b64encode(secret).decode(), secret.hex()]
    return found


def _assert_no_secret(spans: list[ReceivedSpan], rows: list[asyncpg.Record]) -> None:
    secrets = _secrets(rows)
    for span in spans:
        for value in span.every_value():
            leaked = [s for s in secrets if s in value]
            assert not leaked, f"a secret in span {span.name}: {value[:80]}…"
        for key in span.attributes:
            assert "authorization" not in key.lower() or span.attributes[key] == "***", (span.name, key)


def _sampled_context(traceparent: str) -> tuple[str, str]:
    """The trace and span ids of a stored W3C traceparent whose sampled flag is set."""
    version, trace_id, span_id, flags = traceparent.split("-")
    assert version == "00" and int(flags, 16) & 1, traceparent
    return trace_id, span_id


def _by_id(spans: list[ReceivedSpan]) -> dict[str, ReceivedSpan]:
    return {s.span_id: s for s in spans}


@pytest.mark.asyncio(loop_scope="session")
@pytest.mark.slow
async def test_one_trace_per_certificate_with_its_steps_in_order_linked_batches_and_no_secret(
    empty_database_dsn: str, tmp_path: Path
) -> None:
    traced = Traced(empty_database_dsn, tmp_path, commit_delay=0.05)
    try:
        stamp = await traced.start()
        async with aiohttp.ClientSession() as http:
            recipients = await traced.recipients(http, 3)
            ids = await traced.post(http, recipients, singles=4, batched=16)
            singles, batched = ids[:4], ids[4:]
            await traced.wait_states(ids, {"delivered"})
            await traced.wait_spans(ids, "certificate.deliver")
        assert await stamp.terminate() == 0  # flushes what is buffered
    finally:
        await traced.stop()
    receiver = traced.receiver
    spans = receiver.spans
    by_id = _by_id(spans)
    rows = await traced.rows(ids)

    traces: dict[str, str] = {}
    for certificate_id in ids:
        own = receiver.of_certificate(certificate_id)
        # One trace per certificate: every span of it in one trace, and no other certificate's.
        trace_ids = {s.trace_id for s in own}
        assert len(trace_ids) == 1, (certificate_id, trace_ids)
        traces[certificate_id] = trace_ids.pop()
        assert [s.name for s in own] == STEPS, (certificate_id, [s.name for s in own])
        assert [s.attributes.get("write") for s in own if s.name == "certificate.persist"] == [
            "record_transaction",
            "issue_and_mark",
        ]
        steps = own[1:]
        for span in own:
            assert span.attributes["registry"] == REGISTRY
            assert span.attributes["recipient.id"] in recipients
            assert span.resource["service.name"] == "stamp-under-test"
        for span in steps:
            assert span.attributes["position"] >= 0  # the allocate span ends with it
            assert span.end >= span.start
            # Steps hang off the intake span: the trace context stored with the certificate.
            assert span.parent_span_id == own[0].span_id, span.name
        assert steps[-1].attributes["state"] == "delivered"
        assert steps[0].attributes["state"] == "stored" and "position" in steps[0].attributes
        # The wallet call is the deliver span's child (the aiohttp client instrumentation).
        deliver = steps[-1]
        calls = [s for s in spans if s.parent_span_id == deliver.span_id and s.kind == "CLIENT"]
        assert any(
            s.attributes.get("http.request.method", s.attributes.get("http.method")) == "POST" for s in calls
        )
    assert len(set(traces.values())) == len(ids)

    # A single POST: the intake span is a child of the request's server span (one trace);
    # a batch item: a trace of its own, linked to the batch request's span.
    for certificate_id in singles:
        intake = receiver.of_certificate(certificate_id)[0]
        parent = by_id[intake.parent_span_id]
        assert parent.kind == "SERVER" and parent.trace_id == intake.trace_id
    batch_requests = {s.span_id for s in spans if s.kind == "SERVER" and "batch" in str(s.attributes)}
    for certificate_id in batched:
        intake = receiver.of_certificate(certificate_id)[0]
        assert intake.parent_span_id == ""
        assert [link.span_id for link in intake.links] and intake.links[0].span_id in batch_requests
    # The stored trace context is the intake span's.
    for row in rows:
        intake = receiver.of_certificate(row["id"])[0]
        assert _sampled_context(row["traceparent"]) == (intake.trace_id, intake.span_id)

    # A batched call is one span linked to each certificate it carried, not a copy each.
    registry_steps = {
        s.span_id: certificate_id
        for certificate_id in ids
        for s in receiver.of_certificate(certificate_id)
        if s.name == "certificate.registry"
    }
    for name in ("registry.send_transactions", "registry.status_round"):
        calls = receiver.named(name)
        carried: list[str] = []
        for call in calls:
            linked = [registry_steps[link.span_id] for link in call.links]
            assert len(linked) == call.attributes["stamp.batch.size"] == len(set(linked)), name
            assert call.trace_id not in traces.values() and call.parent_span_id == "", name
            carried += linked
        assert set(carried) == set(ids), name
    sends = receiver.named("registry.send_transactions")
    # Its gRPC call is its child (the gRPC client instrumentation).
    assert all(any(s.parent_span_id == call.span_id for s in spans) for call in sends)
    persists = {s.span_id for s in spans if s.name == "certificate.persist"}
    commits = receiver.named("db.group_commit")
    linked_persists = {link.span_id for c in commits for link in c.links if link.span_id in persists}
    assert linked_persists == persists
    # Whether calls batch depends on timing (a busy machine may send one by one); at
    # least one batched call of some kind carried several certificates.
    certificate_of = {
        s.span_id: s.attributes["certificate.id"] for s in spans if "certificate.id" in s.attributes
    }
    batched_calls = [*sends, *receiver.named("registry.status_round"), *commits]
    widest = max(
        len({certificate_of[link.span_id] for link in c.links if link.span_id in certificate_of})
        for c in batched_calls
    )
    assert widest > 1, "no batched call carried two certificates"

    _assert_no_secret(spans, rows)
    http_spans = [s for s in spans if s.kind == "SERVER"]
    assert any("http.request.header.authorization" in s.attributes for s in http_spans), (
        "the header capture this test asks for did not happen: the scrubbing is untested"
    )

    # Logs meet traces: a line written inside a certificate's span names it.
    lines = json_lines(traced.tmp_path.joinpath("stamp.log").read_text())
    transitions = [
        line
        for line in lines
        if line.get("event") == "certificate.transitioned" and line.get("certificate_id") in traces
    ]
    # A batch item's intake is its batch's one `certificates.batch_stored` line, not a
    # transition line of its own.
    assert len(transitions) == 5 * len(singles) + 4 * len(batched)
    for line in transitions:
        assert line["trace_id"] == traces[line["certificate_id"]], line
        assert len(line["span_id"]) == 16
        assert line["span_id"] in by_id


@pytest.mark.asyncio(loop_scope="session")
@pytest.mark.slow
async def test_a_certificate_resumed_after_a_kill_continues_its_trace(
    empty_database_dsn: str, tmp_path: Path
) -> None:
    traced = Traced(empty_database_dsn, tmp_path, commit_delay=1.5)
    try:
        stamp = await traced.start()
        async with aiohttp.ClientSession() as http:
            recipients = await traced.recipients(http, 2)
            ids = await traced.post(http, recipients, singles=3, batched=3)
            # Killed while the registry holds every transaction PENDING.
            await traced.wait_states(ids, {"sent_to_registry"}, timeout=60)
            await traced.wait_spans(ids, "certificate.persist")
            first_pid = stamp.process.pid if stamp.process else None
            stamp.kill()
            await stamp.start()
            await traced.wait_states(ids, {"delivered"})
            await traced.wait_spans(ids, "certificate.deliver")
            second_pid = stamp.process.pid if stamp.process else None
        assert await stamp.terminate() == 0
    finally:
        await traced.stop()
    receiver = traced.receiver
    rows = {r["id"]: r for r in await traced.rows(ids)}
    for certificate_id in ids:
        own = receiver.of_certificate(certificate_id)
        intake = own[0]
        assert intake.name == "certificate.intake" and intake.resource["process.pid"] == first_pid
        before = [s for s in own if s.resource["process.pid"] == first_pid]
        after = [s for s in own if s.resource["process.pid"] == second_pid]
        assert [s.name for s in before][:4] == STEPS[:4]
        # The resumed process asks the registry first, then records and delivers.
        assert [s.name for s in after] == [
            "certificate.registry",
            "certificate.persist",
            "certificate.deliver",
        ]
        # ... in the same trace, under the intake span it read from the database.
        for span in after:
            assert span.trace_id == intake.trace_id and span.parent_span_id == intake.span_id
        assert _sampled_context(rows[certificate_id]["traceparent"]) == (intake.trace_id, intake.span_id)
    _assert_no_secret(receiver.spans, list(rows.values()))


def test_check_config_says_where_traces_go_without_secrets(tmp_path: Path) -> None:
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": "https://user:pa55word@collector.example:4318/",
        "OTEL_EXPORTER_OTLP_HEADERS": "Authorization=Bearer%20s3cr3t,x-tenant=t1",
        "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
        "OTEL_TRACES_SAMPLER_ARG": "0.25",
    }
    shown = tracing.TracingConfig.from_env(env).describe()
    assert shown == {
        "enabled": True,
        "exporter": "otlp (http/protobuf)",
        "endpoint": "https://collector.example:4318/v1/traces",
        "service_name": "stamp",
        "sampler": "parentbased_traceidratio",
        "sampler_arg": "0.25",
        "headers": {"authorization": "***", "x-tenant": "***"},
    }
    assert "s3cr3t" not in str(shown) and "pa55word" not in str(shown)
    traces_only = {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://127.0.0.1:4318/v1/traces?api-key=k3y"}
    assert tracing.TracingConfig.from_env(traces_only).endpoint == "http://127.0.0.1:4318/v1/traces"
    assert tracing.TracingConfig.from_env({}).describe() == {
        "enabled": False,
        "reason": "no OTEL_EXPORTER_OTLP_ENDPOINT or OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    }
    off = {**env, "OTEL_SDK_DISABLED": "true"}
    assert tracing.TracingConfig.from_env(off).describe()["enabled"] is False
    with pytest.raises(tracing.TracingConfigError):
        tracing.TracingConfig.from_env({**env, "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"})
    # The command itself.
    key_file = tmp_path / "dk1.pem"
    key_file.write_text(ISSUER.private_pem())
    base = {
        **os.environ,
        "STAMP_REGISTRIES": f"{REGISTRY}=127.0.0.1:1",
        "STAMP_ISSUER_KEYS": f"{GRID_AREA}={key_file}",
    }
    done = subprocess.run(
        [sys.executable, "-m", "stamp.cli", "check-config"],
        env={**base, **env},
        capture_output=True,
        check=True,
    )
    assert json.loads(done.stdout)["tracing"] == shown
    assert b"s3cr3t" not in done.stdout + done.stderr and b"pa55word" not in done.stdout + done.stderr
    refused = subprocess.run(
        [sys.executable, "-m", "stamp.cli", "check-config"],
        env={**base, **env, "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"},
        capture_output=True,
    )
    assert refused.returncode == 2 and b"http/protobuf" in refused.stderr


def test_the_exporter_masks_secret_attributes_whatever_recorded_them() -> None:
    attributes: dict[str, Any] = {
        "http.request.header.authorization": ("Bearer abc",),
        "http.request.header.cookie": "session=1",
        "url.full": "https://user:pw@wallet.example/v1/slices?token=abc#x",
        "url.query": "token=abc",
        "note": "sent with Bearer abc",
        "certificate.id": "c1",
        "blinding": "00ff",
    }
    cleaned = tracing.scrub_attributes(attributes)
    assert cleaned is not None
    assert cleaned["http.request.header.authorization"] == "***"
    assert cleaned["http.request.header.cookie"] == "***"
    assert cleaned["url.full"] == "https://wallet.example/v1/slices"
    assert cleaned["url.query"] == "***"
    assert cleaned["note"] == "sent with Bearer ***"
    assert cleaned["certificate.id"] == "c1"
    assert cleaned["blinding"] == "***"
    assert tracing.scrub_attributes({"certificate.id": "c1", "state": "stored"}) is None


def test_tracing_is_off_without_an_endpoint_and_then_makes_no_span() -> None:
    assert not tracing.ENABLED  # the test process never configured it
    assert tracing.current_span_context() is None
    assert tracing.intake(CertificateKey("r", "c"), "p", own_trace=True) is None
    assert tracing.batch_span("x", [], {}) is tracing.batch_span("y", [], {})  # one shared no-op
