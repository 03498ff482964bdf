"""The wallet simulator answers like a Project Origin wallet and verifies slices like one.

Real servers on loopback: the registry simulator (gRPC) holds real transactions built by
Stamp's bundle builder for a wallet endpoint's key; slices are POSTed with aiohttp; the
wallet reads the registry over gRPC to verify them.
"""

from __future__ import annotations

import asyncio
import base64
import os
import signal
import stat
import sys
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import orjson
import pytest
import pytest_asyncio

from protos.project_origin.registry.v1 import registry_pb2, registry_pb2_grpc
from stamp.crypto.bundle import IssueBundle, IssueRequest, build_issue_bundle
from stamp.crypto.hdkeys import ExtendedPrivateKey, ExtendedPublicKey
from stamp.crypto.issuer_keys import IssuerKey
from stamp.devstack import cli
from stamp.devstack.registry import RegistrySimConfig, RegistrySimulator
from stamp.devstack.registry_reader import GrpcStreamReader, LocalStreamReader, RegistryUnreadable
from stamp.devstack.wallet import (
    SliceRecord,
    SliceStatus,
    WalletEndpointReference,
    WalletSimConfig,
    WalletSimulator,
)
from stamp.devstack.wallet_checks import Check, parse_slice_request, verify_slice
from stamp.domain import CertificateContent, CertificateKey

pytestmark = pytest.mark.asyncio(loop_scope="session")

REGISTRY = "Narnia"
GRID_AREA = "DK1"
ISSUER = IssuerKey.generate()
HASHED = (("assetId", "571234567890123456"), ("meterSerial", "M-42"))


@dataclass
class Env:
    registry: RegistrySimulator
    wallet: WalletSimulator
    stub: registry_pb2_grpc.RegistryServiceStub
    http: aiohttp.ClientSession


@dataclass(frozen=True)
class Issued:
    """A certificate issued for an endpoint, with what its slice must carry."""

    reference: WalletEndpointReference
    certificate_id: str
    position: int
    quantity: int
    bundle: IssueBundle

    def body(self, **changes: Any) -> dict[str, Any]:
        """The camelCase receive-slice body Stamp sends; ``changes`` replace fields."""
        salts = changes.pop("salts", self.bundle.salts)
        values = changes.pop("values", [v for _, v in HASHED])
        body: dict[str, Any] = {
            "publicKey": self.reference.public_key_b64,
            "position": self.position,
            "certificateId": {"registry": REGISTRY, "streamId": self.certificate_id},
            "quantity": self.quantity,
            "randomR": b64(self.bundle.blinding),
            "hashedAttributes": [
                {"key": key, "value": value, "salt": b64(salt)}
                for (key, _), value, salt in zip(HASHED, values, salts, strict=True)
            ],
        }
        body.update(changes)
        return body


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def pascal(value: Any) -> Any:
    """PublicKey, CertificateId.StreamId, …: what the existing (.NET) Stamp sends."""
    if isinstance(value, dict):
        return {k[0].upper() + k[1:]: pascal(v) for k, v in value.items()}
    if isinstance(value, list):
        return [pascal(v) for v in value]
    return value


def build(
    reference: WalletEndpointReference, position: int, quantity: int = 1000, issuer: IssuerKey = ISSUER
) -> Issued:
    certificate_id = str(uuid.uuid4())
    bundle = build_issue_bundle(
        IssueRequest(
            content=CertificateContent(
                key=CertificateKey(REGISTRY, certificate_id),
                recipient_id="0b5c3d6e-8a4f-4f7e-9a51-2f1d3c4b5a69",
                metering_point_id="571234567890123456",
                certificate_type=2,
                quantity=quantity,
                start=1_700_000_000,
                end=1_700_003_600,
                grid_area=GRID_AREA,
                clear_attributes=(("fuelCode", "F01040100"),),
                hashed_attributes=HASHED,
            ),
            recipient_public_key=reference.public_key,
            position=position,
            issuer_private_pem=issuer.private_pem(),
        )
    )
    return Issued(reference, certificate_id, position, quantity, bundle)


async def commit(stub: registry_pb2_grpc.RegistryServiceStub, issued: Issued) -> None:
    """Send the transaction to the registry over gRPC and wait until it reads COMMITTED."""
    tx = registry_pb2.Transaction.FromString(issued.bundle.transaction)
    await stub.SendTransactions(registry_pb2.SendTransactionsRequest(transactions=[tx]))
    for _ in range(500):
        answer = await stub.GetTransactionStatus(
            registry_pb2.GetTransactionStatusRequest(id=issued.bundle.transaction_id)
        )
        if answer.status == registry_pb2.COMMITTED:
            return
        assert answer.status in (registry_pb2.PENDING, registry_pb2.UNKNOWN), answer.message
        await asyncio.sleep(0.01)
    raise AssertionError("the transaction was not committed")


async def issue(env: Env, reference: WalletEndpointReference, position: int, quantity: int = 1000) -> Issued:
    issued = build(reference, position, quantity)
    await commit(env.stub, issued)
    return issued


async def post(env: Env, body: Any, *, url: str | None = None) -> tuple[int, Any]:
    data = body if isinstance(body, bytes) else orjson.dumps(body)
    async with env.http.post(
        url or env.wallet.slices_url, data=data, headers={"Content-Type": "application/json"}
    ) as response:
        return response.status, await response.json(content_type=None)


async def settled(env: Env, issued: Issued) -> list[SliceRecord]:
    return await env.wallet.wait_for([issued.certificate_id], within=5)


@pytest_asyncio.fixture(scope="module", loop_scope="session", params=["grpc", "in-process"])
async def env(request: pytest.FixtureRequest) -> AsyncIterator[Env]:
    """Every test runs twice: the wallet reading the registry over gRPC, and reading the
    registry simulator on the same loop (what the load test's simulators process does)."""
    registry = RegistrySimulator(
        RegistrySimConfig(
            registries=(REGISTRY,), issuer_keys={GRID_AREA: (ISSUER.public_pem(),)}, commit_delay=0.01
        )
    )
    await registry.start()
    wallet = WalletSimulator(
        WalletSimConfig(
            registries={REGISTRY: registry.address}, verify_window=3, retry_initial=0.02, retry_max=0.1
        ),
        registry=registry if request.param == "in-process" else None,
    )
    await wallet.start()
    channel = grpc.aio.insecure_channel(registry.address)
    stub = registry_pb2_grpc.RegistryServiceStub(channel)  # type: ignore[no-untyped-call]
    try:
        async with aiohttp.ClientSession() as http:
            yield Env(registry, wallet, stub, http)
    finally:
        await channel.close(None)
        await wallet.stop()
        await registry.stop()


@pytest.fixture(autouse=True)
def no_faults_left(env: Env) -> Iterator[None]:
    yield
    env.wallet.clear_faults()


# --- correct slices -----------------------------------------------------------------------------


async def test_correct_camel_case_slice_is_accepted_and_verified(env: Env) -> None:
    reference = env.wallet.create_endpoint()
    issued = await issue(env, reference, position=1)
    assert await post(env, issued.body()) == (202, {})
    [record] = await settled(env, issued)
    assert record.status is SliceStatus.VERIFIED, record.reason
    assert (record.position, record.quantity, record.registry) == (1, 1000, REGISTRY)
    assert record.public_key == reference.public_key_b64
    assert not record.early
    assert issued.certificate_id not in {s.certificate_id for s in env.wallet.invalid_slices()}


async def test_pascal_case_slice_is_verified(env: Env) -> None:
    reference = env.wallet.create_endpoint()
    issued = await issue(env, reference, position=7, quantity=4_294_967_295)
    body = pascal(issued.body())
    assert (
        "PublicKey" in body and "StreamId" in body["CertificateId"] and "Salt" in body["HashedAttributes"][0]
    )
    assert await post(env, body) == (202, {})
    [record] = await settled(env, issued)
    assert record.status is SliceStatus.VERIFIED, record.reason


async def test_upper_case_stream_id_names_the_same_certificate(env: Env) -> None:
    reference = env.wallet.create_endpoint()
    issued = await issue(env, reference, position=2)
    body = issued.body(certificateId={"REGISTRY": REGISTRY, "streamid": issued.certificate_id.upper()})
    assert (await post(env, body))[0] == 202
    [record] = await settled(env, issued)
    assert record.status is SliceStatus.VERIFIED, record.reason


# --- wrong slices -----------------------------------------------------------------------------------


def _other_r(issued: Issued) -> dict[str, Any]:
    return {"randomR": b64(build(issued.reference, 1).bundle.blinding)}


Change = Callable[[Issued], dict[str, Any]]

WRONG_VALUES: dict[str, tuple[Change, str]] = {
    "position": (lambda i: {"position": i.position + 1}, "not the endpoint key's child at position 4"),
    "randomR": (_other_r, "does not open to quantity 1000"),
    "quantity": (lambda i: {"quantity": i.quantity + 1}, "does not open to quantity 1001"),
    "salt": (
        lambda i: {"salts": (bytes(16), i.bundle.salts[1])},
        "'assetId' does not hash to the registry's value",
    ),
    "attribute value": (lambda i: {"values": ["571234567890123456", "M-43"]}, "'meterSerial' does not hash"),
    "undisclosed attribute": (
        lambda i: {"hashedAttributes": i.body()["hashedAttributes"][:1]},
        "'meterSerial' on the registry were not disclosed",
    ),
    "wrong registry": (
        lambda i: {"certificateId": {"registry": "Atlantis", "streamId": i.certificate_id}},
        "registry 'Atlantis' is unknown",
    ),
}


@pytest.mark.parametrize("wrong", list(WRONG_VALUES))
async def test_slice_with_a_wrong_value_is_invalid_with_the_reason(env: Env, wrong: str) -> None:
    change, reason = WRONG_VALUES[wrong]
    reference = env.wallet.create_endpoint()
    issued = await issue(env, reference, position=3)
    assert await post(env, issued.body(**change(issued))) == (202, {})  # the wallet accepts, then drops it
    [record] = await settled(env, issued)
    assert record.status is SliceStatus.INVALID
    assert reason in record.reason
    assert record in env.wallet.invalid_slices()
    assert issued.certificate_id not in {s.certificate_id for s in env.wallet.verified_slices()}


async def test_slice_of_a_certificate_never_committed_is_invalid_after_the_window(env: Env) -> None:
    wallet = WalletSimulator(
        WalletSimConfig(registries={REGISTRY: env.registry.address}, verify_window=0.3, retry_initial=0.02)
    )
    await wallet.start()
    try:
        issued = build(wallet.create_endpoint(), position=1)
        assert await post(env, issued.body(), url=wallet.slices_url) == (202, {})
        [record] = await wallet.wait_for([issued.certificate_id], within=3)
        assert record.status is SliceStatus.INVALID
        assert "no certificate with this id" in record.reason and "after 0.3 s" in record.reason
        assert record.early
    finally:
        await wallet.stop()


# --- answers -----------------------------------------------------------------------------------------


async def test_unknown_endpoint_key_gets_404_and_nothing_is_stored(env: Env) -> None:
    issued = build(env.wallet.create_endpoint(), position=1)
    stranger = ExtendedPrivateKey.generate().public().to_base64()
    before = env.wallet.received_count()
    status, problem = await post(env, issued.body(publicKey=stranger))
    assert status == 404 and problem["status"] == 404
    assert env.wallet.received_count() == before


BAD_KEYS = {
    "not Base64": "not base64 at all!",
    "73 bytes": b64(bytes(73)),
    "the 33-byte child key": b64(ExtendedPrivateKey.generate().public().child_public_key(1)),
    "not a curve point": b64(bytes(41) + b"\x02" + b"\xff" * 32),
}


@pytest.mark.parametrize("bad", list(BAD_KEYS))
async def test_unparsable_public_key_gets_400(env: Env, bad: str) -> None:
    issued = build(env.wallet.create_endpoint(), position=1)
    status, problem = await post(env, issued.body(publicKey=BAD_KEYS[bad]))
    assert status == 400
    assert "publicKey" in problem["detail"]


MALFORMED: dict[str, bytes | Change] = {
    "not JSON": b"{not json",
    "an array": b"[]",
    "no randomR": lambda i: {k: v for k, v in i.body().items() if k != "randomR"},
    "negative position": lambda i: i.body(position=-1),
    "position as text": lambda i: i.body(position="1"),
    "quantity over 32 bits": lambda i: i.body(quantity=2**32),
    "stream id not a UUID": lambda i: i.body(certificateId={"registry": REGISTRY, "streamId": "cert-1"}),
    "salt not Base64": lambda i: i.body(hashedAttributes=[{"key": "a", "value": "b", "salt": "%%"}]),
}


@pytest.mark.parametrize("malformed", list(MALFORMED))
async def test_malformed_body_gets_400(env: Env, malformed: str) -> None:
    issued = build(env.wallet.create_endpoint(), position=1)
    make = MALFORMED[malformed]
    body = make if isinstance(make, bytes) else make(issued)
    before = env.wallet.received_count()
    status, _ = await post(env, body)
    assert status == 400
    assert env.wallet.received_count() == before


async def test_disabled_endpoint_gets_400_until_enabled_again(env: Env) -> None:
    reference = env.wallet.create_endpoint()
    issued = await issue(env, reference, position=1)
    env.wallet.disable_endpoint(reference)
    status, problem = await post(env, issued.body())
    assert status == 400 and "disabled" in problem["detail"]
    env.wallet.enable_endpoint(reference)
    assert await post(env, issued.body()) == (202, {})
    [record] = await settled(env, issued)
    assert record.status is SliceStatus.VERIFIED


# --- flags -----------------------------------------------------------------------------------------------


async def test_second_delivery_of_the_same_certificate_is_flagged_as_duplicate(env: Env) -> None:
    issued = await issue(env, env.wallet.create_endpoint(), position=1)
    assert await post(env, issued.body()) == (202, {})
    assert await post(env, issued.body()) == (202, {})  # the real wallet stores it twice
    records = await settled(env, issued)
    assert [r.status for r in records] == [SliceStatus.VERIFIED, SliceStatus.VERIFIED]
    [duplicate] = [d for d in env.wallet.flags().duplicates if d.certificate_id == issued.certificate_id]
    assert duplicate.deliveries == 2
    assert not any(
        p.position == 1 and issued.certificate_id in p.certificate_ids
        for p in env.wallet.flags().reused_positions
    )


async def test_one_position_used_for_two_certificates_is_flagged(env: Env) -> None:
    reference = env.wallet.create_endpoint()
    first = await issue(env, reference, position=5)
    second = await issue(env, reference, position=5)
    elsewhere = await issue(env, env.wallet.create_endpoint(), position=5)  # another endpoint: no reuse
    for issued in (first, second, elsewhere):
        assert await post(env, issued.body()) == (202, {})
    for issued in (first, second, elsewhere):
        assert [r.status for r in await settled(env, issued)] == [SliceStatus.VERIFIED]
    reused = [p for p in env.wallet.flags().reused_positions if p.public_key == reference.public_key_b64]
    assert [(p.position, p.certificate_ids) for p in reused] == [
        (5, (first.certificate_id, second.certificate_id))
    ]
    assert not any(
        p.public_key == elsewhere.reference.public_key_b64 for p in env.wallet.flags().reused_positions
    )


async def test_slice_delivered_before_the_commit_is_flagged_early_and_verified_after_it(
    env: Env,
) -> None:
    issued = build(env.wallet.create_endpoint(), position=1)
    assert await post(env, issued.body()) == (202, {})
    for _ in range(200):
        if any(e.certificate_id == issued.certificate_id for e in env.wallet.flags().early_deliveries):
            break
        await asyncio.sleep(0.01)
    else:
        raise AssertionError("the early delivery was not flagged")
    await commit(env.stub, issued)
    [record] = await settled(env, issued)
    assert record.status is SliceStatus.VERIFIED, record.reason
    assert record.early


# --- faults ------------------------------------------------------------------------------------------------


async def test_next_requests_fail_with_500_and_are_not_stored(env: Env) -> None:
    issued = await issue(env, env.wallet.create_endpoint(), position=1)
    env.wallet.fail_next(2, status=500)
    statuses = [(await post(env, issued.body()))[0] for _ in range(3)]
    assert statuses == [500, 500, 202]
    records = await settled(env, issued)
    assert [r.status for r in records] == [SliceStatus.VERIFIED]
    assert issued.certificate_id not in {d.certificate_id for d in env.wallet.flags().duplicates}


async def test_dropped_connection_after_accepting_leads_a_retry_to_a_duplicate(env: Env) -> None:
    issued = await issue(env, env.wallet.create_endpoint(), position=1)
    env.wallet.drop_next()
    with pytest.raises(aiohttp.ClientError):
        await post(env, issued.body())
    assert [r.certificate_id for r in env.wallet.slices()].count(issued.certificate_id) == 1  # it arrived
    assert await post(env, issued.body()) == (202, {})  # the sender could not know: it delivers again
    assert len(await settled(env, issued)) == 2
    assert issued.certificate_id in {d.certificate_id for d in env.wallet.flags().duplicates}


async def test_hang_times_the_sender_out_without_storing_the_slice(env: Env) -> None:
    issued = await issue(env, env.wallet.create_endpoint(), position=1)
    env.wallet.hang_next(0.3)
    with pytest.raises(asyncio.TimeoutError):
        async with env.http.post(
            env.wallet.slices_url, json=issued.body(), timeout=aiohttp.ClientTimeout(total=0.1)
        ) as response:
            await response.read()
    await asyncio.sleep(0.4)  # the hang is over
    assert issued.certificate_id not in {r.certificate_id for r in env.wallet.slices()}
    assert await post(env, issued.body()) == (202, {})


async def test_faults_injected_over_http_apply_to_the_next_request_or_one_endpoint(env: Env) -> None:
    faults = f"{env.wallet.base_url}/v1/_test/faults"
    target = await issue(env, env.wallet.create_endpoint(), position=1)
    other = await issue(env, env.wallet.create_endpoint(), position=1)

    async with env.http.post(faults, json={"kind": "status", "status": 503, "count": 1}) as r:
        assert r.status == 200
    assert (await post(env, other.body()))[0] == 503

    key = target.reference.public_key_b64
    async with env.http.post(faults, json={"kind": "status", "status": 500, "publicKey": key}) as r:
        assert r.status == 200
        assert (await r.json())["endpoints"][0]["count"] is None  # until cleared
    assert [(await post(env, target.body()))[0] for _ in range(2)] == [500, 500]
    assert (await post(env, other.body()))[0] == 202

    async with env.http.post(faults, json={"kind": "disable", "publicKey": key}) as r:
        assert r.status == 200
    async with env.http.delete(faults) as r:
        cleared = await r.json()
    assert (cleared["next"], cleared["endpoints"], cleared["disabled"]) == ([], [], [])
    assert (await post(env, target.body()))[0] == 202

    async with env.http.post(faults, json={"kind": "explode"}) as r:
        assert r.status == 400
    stranger = ExtendedPrivateKey.generate().public().to_base64()
    async with env.http.post(faults, json={"kind": "disable", "publicKey": stranger}) as r:
        assert r.status == 404


async def test_redirect_and_answer_body_faults_over_http(env: Env) -> None:
    faults = f"{env.wallet.base_url}/v1/_test/faults"
    issued = await issue(env, env.wallet.create_endpoint(), position=1)
    redirect = {"kind": "redirect", "status": 308, "location": "http://elsewhere.example/x"}
    async with env.http.post(faults, json=redirect) as r:
        assert (await r.json())["next"] == [{**redirect, "count": 1}]
    async with env.http.post(env.wallet.slices_url, json=issued.body(), allow_redirects=False) as r:
        assert (r.status, r.headers["Location"]) == (308, "http://elsewhere.example/x")
    async with env.http.post(faults, json={"kind": "status", "status": 404, "body": "hello"}) as r:
        assert r.status == 200
    async with env.http.post(env.wallet.slices_url, json=issued.body()) as r:
        assert (r.status, await r.text()) == (404, "hello")
    async with env.http.post(
        faults, json={"kind": "status", "status": 404, "body": "ab", "bodyBytes": 5}
    ) as r:
        assert r.status == 200
    async with env.http.post(env.wallet.slices_url, json=issued.body()) as r:
        assert (r.status, await r.text()) == (404, "ababa")
    assert [a.as_json() for a in env.wallet.streamed_answers()][-1] == {
        "status": 404,
        "planned": 5,
        "sent": 5,
        "complete": True,
    }
    assert issued.certificate_id not in {r.certificate_id for r in env.wallet.slices()}  # none accepted
    for bad in (
        {"kind": "redirect", "status": 200, "location": "http://x"},
        {"kind": "redirect", "status": 307},
        {"kind": "status", "status": 404, "bodyBytes": -1},
    ):
        async with env.http.post(faults, json=bad) as r:
            assert r.status == 400, bad


async def test_disable_over_http_makes_the_endpoint_answer_400(env: Env) -> None:
    issued = await issue(env, env.wallet.create_endpoint(), position=1)
    faults = f"{env.wallet.base_url}/v1/_test/faults"
    async with env.http.post(
        faults, json={"kind": "disable", "publicKey": issued.reference.public_key_b64}
    ) as r:
        assert r.status == 200
    assert (await post(env, issued.body()))[0] == 400


# --- out-of-process use ------------------------------------------------------------------------------------


async def test_endpoint_created_over_http_receives_and_the_slices_json_reports_it(env: Env) -> None:
    async with env.http.post(f"{env.wallet.base_url}/v1/_test/endpoints", json={"name": "curl-user"}) as r:
        assert r.status == 201
        data = await r.json()
    assert set(data) == {"version", "endpoint", "publicKey"}
    assert data["version"] == 1 and data["endpoint"] == env.wallet.slices_url
    reference = WalletEndpointReference(data["version"], data["endpoint"], data["publicKey"])
    assert len(ExtendedPublicKey.from_base64(reference.public_key_b64).to_bytes()) == 74

    good = await issue(env, reference, position=11)
    bad = await issue(env, reference, position=12)
    assert await post(env, good.body(), url=reference.endpoint) == (202, {})
    assert await post(env, bad.body(quantity=1), url=reference.endpoint) == (202, {})
    await env.wallet.wait_for([good.certificate_id, bad.certificate_id])

    async with env.http.get(f"{env.wallet.base_url}/v1/_test/slices") as r:
        text = await r.text()
    report = orjson.loads(text)
    [verified] = [s for s in report["verified"] if s["certificateId"] == good.certificate_id]
    assert (verified["endpoint"], verified["position"], verified["status"]) == ("curl-user", 11, "verified")
    [invalid] = [s for s in report["invalid"] if s["certificateId"] == bad.certificate_id]
    assert "does not open to quantity 1" in invalid["reason"]
    assert {"duplicates", "reusedPositions", "earlyDeliveries", "received"} <= set(report)
    # Neither R nor a salt leaves the simulator, not even for a slice it holds.
    for issued in (good, bad):
        for secret in (issued.bundle.blinding, *issued.bundle.salts):
            assert b64(secret) not in text
            assert b64(secret) not in repr(env.wallet.slices())
    async with env.http.get(f"{env.wallet.base_url}/v1/_test/slices?summary=true") as r:
        summary = await r.json()
    assert summary["received"] == env.wallet.received_count() and "verified" not in summary


# --- how the wallet reads the registry -------------------------------------------------------------------


async def test_the_wallet_says_how_it_reads_each_registry(env: Env) -> None:
    kind = "in-process" if env.wallet._local_registry is not None else "grpc"
    assert env.wallet.snapshot(details=False)["registryReads"] == {REGISTRY: kind}


async def test_in_process_and_grpc_readers_give_the_same_transactions_and_verdicts(env: Env) -> None:
    local = LocalStreamReader(env.registry, timeout=5)
    remote = GrpcStreamReader(env.registry.address, timeout=5)
    try:
        reference = env.wallet.create_endpoint()
        issued = await issue(env, reference, position=3)
        key = ExtendedPublicKey.from_base64(reference.public_key_b64)
        calls = env.registry.stats().stream_calls
        from_local = await local.read(issued.certificate_id)
        from_grpc = await remote.read(issued.certificate_id)
        assert env.registry.stats().stream_calls == calls + 2  # both count as the RPC
        assert [t.SerializeToString() for t in from_local] == [t.SerializeToString() for t in from_grpc]
        assert len(from_local) == 1
        unchanged: Change = lambda i: {}  # noqa: E731
        for change in [unchanged, *(c for c, _ in WRONG_VALUES.values())]:
            request = parse_slice_request(orjson.dumps(issued.body(**change(issued))))
            verdict = verify_slice(request, key, from_local)
            assert verdict == verify_slice(request, key, from_grpc)
            assert verdict.check is (Check.VERIFIED if change is unchanged else Check.INVALID)
        unknown = str(uuid.uuid4())
        assert await local.read(unknown) == await remote.read(unknown) == []
    finally:
        await remote.close()


async def test_in_process_reads_obey_the_registrys_faults(env: Env) -> None:
    reader = LocalStreamReader(env.registry, timeout=0.2)
    issued = await issue(env, env.wallet.create_endpoint(), position=1)
    env.registry.fail_next("GetStreamTransactions", code=grpc.StatusCode.UNAVAILABLE)
    try:
        with pytest.raises(RegistryUnreadable, match="UNAVAILABLE: injected fault"):
            await reader.read(issued.certificate_id)
        assert len(await reader.read(issued.certificate_id)) == 1  # one call only
        env.registry.set_latency(0.5, "GetStreamTransactions")
        with pytest.raises(RegistryUnreadable, match="DEADLINE_EXCEEDED"):
            await reader.read(issued.certificate_id)
        env.registry.set_latency(0.0)
        await env.registry.go_down()
        with pytest.raises(RegistryUnreadable, match="UNAVAILABLE"):
            await reader.read(issued.certificate_id)
    finally:
        env.registry.clear_faults()
        await env.registry.go_up()
    assert len(await reader.read(issued.certificate_id)) == 1


async def test_a_failed_receipt_check_is_counted_and_the_slice_verified_on_retry(env: Env) -> None:
    issued = await issue(env, env.wallet.create_endpoint(), position=1)
    errors = env.wallet.snapshot(details=False)["receiptCheckErrors"]
    env.registry.fail_next("GetStreamTransactions")
    try:
        assert await post(env, issued.body()) == (202, {})
        [record] = await settled(env, issued)
    finally:
        env.registry.clear_faults()
    assert record.status is SliceStatus.VERIFIED, record.reason
    assert env.wallet.snapshot(details=False)["receiptCheckErrors"] == errors + 1


# --- the CLI ------------------------------------------------------------------------------------------------


async def test_help_describes_the_options(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for option in (
        "--registry-port",
        "--wallet-port",
        "--registry-name",
        "--grid-area",
        "--issuer-key",
        "--out-dir",
    ):
        assert option in out


async def test_devstack_prints_a_usable_stack_and_stops_on_sigterm(tmp_path: Path) -> None:
    loaded = IssuerKey.generate()
    loaded_path = tmp_path / "dk2.pem"
    loaded_path.write_text(loaded.private_pem())
    keys_dir = tmp_path / "keys"
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "stamp.devstack", "--registry-port", "0", "--wallet-port", "0",
        "--grid-area", "DK1", "--issuer-key", f"DK2={loaded_path}", "--out-dir", str(keys_dir),
        "--commit-delay", "0.01",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    assert process.stdout is not None
    lines: list[str] = []
    try:
        while not lines or not lines[-1].startswith('{"version"'):
            line = await asyncio.wait_for(process.stdout.readline(), 30)
            assert line, f"devstack exited early: {lines}"
            lines.append(line.decode().rstrip("\n"))
        output = "\n".join(lines)
        reference = orjson.loads(lines[-1])
        assert reference["version"] == 1 and reference["endpoint"].endswith("/v1/slices")

        generated = keys_dir / "DK1.pem"
        assert stat.S_IMODE(os.stat(generated).st_mode) == 0o600
        dk1 = IssuerKey.from_pem(generated.read_text())
        assert dk1.public_pem_base64() in output and loaded.public_pem_base64() in output
        assert f"STAMP_ISSUER_KEYS=DK1={generated.resolve()},DK2={loaded_path.resolve()}" in output
        [registries] = [w for w in output.split() if w.startswith("STAMP_REGISTRIES=")]
        address = registries.removeprefix("STAMP_REGISTRIES=Narnia=")

        # The printed pieces work together: issue with the printed key, deliver to the reference.
        endpoint = WalletEndpointReference(1, reference["endpoint"], reference["publicKey"])
        issued = build(endpoint, position=1, issuer=dk1)
        channel = grpc.aio.insecure_channel(address)
        try:
            await commit(registry_pb2_grpc.RegistryServiceStub(channel), issued)  # type: ignore[no-untyped-call]
        finally:
            await channel.close(None)
        base = reference["endpoint"].removesuffix("/v1/slices")
        async with aiohttp.ClientSession() as http:
            async with http.post(endpoint.endpoint, json=issued.body()) as r:
                assert r.status == 202
            for _ in range(300):
                async with http.get(f"{base}/v1/_test/slices") as r:
                    report = await r.json()
                if report["verified"]:
                    break
                await asyncio.sleep(0.02)
        assert [s["certificateId"] for s in report["verified"]] == [issued.certificate_id]

        process.send_signal(signal.SIGTERM)
        rest = await asyncio.wait_for(process.stdout.read(), 15)
        assert await asyncio.wait_for(process.wait(), 15) == 0
        assert "stamp devstack: stopped" in rest.decode()
        assert generated.exists()  # --out-dir keeps the keys
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
