"""The issued certificate carries the posted data (issue 14, item 1).

The wallet simulator checks that a slice and its registry entry agree, but Stamp made
both: a consistent mis-mapping (quantity, period, grid area, attributes, type) would
pass it. Here every field of the request is compared with what the registry stored
(the IssuedEvent as committed) and what the wallet received, recomputing what can be
recomputed independently of Stamp: the hashed values from docs/crypto.md §5 with the
salt the wallet got, the owner key by private BIP32 derivation from the wallet's own
key, the commitment opened with the wallet's R and the *posted* quantity.
"""

from __future__ import annotations

import base64
import hashlib
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio

from protos.project_origin.electricity.v1 import electricity_pb2
from protos.project_origin.registry.v1 import registry_pb2
from stamp.crypto import pedersen
from stamp.crypto.issuer_keys import IssuerKey
from stamp.devstack.registry_rules import ISSUED_EVENT
from stamp.devstack.wallet import WalletEndpointReference
from tests.stack import GRID_AREA, ISSUER, REGISTRY, Stack, running_stack

pytestmark = pytest.mark.asyncio(loop_scope="session")

AREAS = {GRID_AREA: ISSUER, "DK2": IssuerKey.generate(), "SE3": IssuerKey.generate()}
START = 1_750_000_000 + 3600 * (uuid.uuid4().int % 10**5)

CASES: list[dict[str, Any]] = [
    {  # the smallest quantity, the shortest period, unicode everywhere
        "type": "production",
        "quantity": 1,
        "start": START,
        "end": START + 60,
        "gridArea": "DK1",
        "clearTextAttributes": {"fuelCode": "F01040100", "anlæg": "Vindmølle – Ærø ⚡ 風力"},
        "hashedAttributes": [
            {"key": "assetId", "value": "571234567890123456"},
            {"key": "ejer", "value": "Søren Ørsted — 東京"},
        ],
    },
    {  # the largest quantity, the longest period, the integer type, no clear attributes
        "type": 1,
        "quantity": 2**32 - 1,
        "start": START + 7200,
        "end": START + 7200 + 3600,
        "gridArea": "DK2",
        "clearTextAttributes": {},
        "hashedAttributes": [{"key": "meter", "value": "Zähler Nº 7"}],
    },
    {  # mixed case type, another area, nothing hashed
        "type": "Consumption",
        "quantity": 123_456_789,
        "start": START + 14400,
        "end": START + 14400 + 900,
        "gridArea": "SE3",
        "clearTextAttributes": {"techCode": "T010000", "note": "ø"},
        "hashedAttributes": [],
    },
    {
        "type": 2,
        "quantity": 65_536,
        "start": START + 21600,
        "end": START + 21600 + 1800,
        "gridArea": "DK2",
        "clearTextAttributes": {"techCode": "T020000"},
        "hashedAttributes": [{"key": "a", "value": ""}, {"key": "b", "value": "x" * 200}],
    },
]

EXPECTED_TYPE = {
    "production": "PRODUCTION",
    "consumption": "CONSUMPTION",
    "1": "CONSUMPTION",
    "2": "PRODUCTION",
}


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def stack(database_dsn: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    async with running_stack(database_dsn, tmp_path_factory.mktemp("fidelity"), issuer_keys=AREAS) as running:
        yield running


async def _recipient(stack: Stack) -> tuple[str, WalletEndpointReference]:
    reference = stack.wallet.create_endpoint()
    async with stack.http.post(
        f"{stack.base}/v1/recipients", json={"walletEndpointReference": reference.as_json()}
    ) as response:
        assert response.status == 201, await response.text()
        return (await response.json())["id"], reference


def spec_hash(key: str, value: str, certificate_id: str, salt: bytes) -> str:
    """docs/crypto.md §5, written out here rather than imported from Stamp."""
    text = key + value + certificate_id + salt.hex().upper()
    return base64.b64encode(hashlib.sha256(text.encode("utf-8")).digest()).decode("ascii")


def issued_event(stack: Stack, certificate_id: str) -> electricity_pb2.IssuedEvent:
    transactions: list[registry_pb2.Transaction] = stack.registry.stream_transactions(certificate_id)
    issued = [t for t in transactions if t.header.payload_type == ISSUED_EVENT]
    assert len(issued) == 1, transactions
    return electricity_pb2.IssuedEvent.FromString(issued[0].payload)


async def test_every_posted_field_reaches_the_registry_and_the_wallet_unchanged(stack: Stack) -> None:
    recipient_id, endpoint = await _recipient(stack)
    bodies: list[dict[str, Any]] = [
        {
            "recipientId": recipient_id,
            "registryName": REGISTRY,
            "meteringPointId": f"57{uuid.uuid4().int % 10**16:016d}",
            "certificate": {"id": str(uuid.uuid4()).upper() if i == 0 else str(uuid.uuid4()), **case},
        }
        for i, case in enumerate(CASES)
    ]
    for body in bodies:
        status, answer = await stack.post_certificate(body)
        assert status == 202, answer
    ids = [b["certificate"]["id"].lower() for b in bodies]
    states = await stack.wait_terminal([(REGISTRY, i) for i in ids])
    assert set(states.values()) == {"delivered"}, states
    await stack.wallet.wait_for(ids)
    wallet_key = stack.wallet.private_key(endpoint)

    for body in bodies:
        posted = body["certificate"]
        certificate_id = posted["id"].lower()
        event = issued_event(stack, certificate_id)
        (received,) = stack.wallet.received_requests(certificate_id)

        # identity, type, period, area
        assert event.certificate_id.registry == REGISTRY
        assert event.certificate_id.stream_id.value == certificate_id
        assert (
            electricity_pb2.GranularCertificateType.Name(event.type)
            == EXPECTED_TYPE[str(posted["type"]).lower()]
        )
        assert (event.period.start.seconds, event.period.end.seconds) == (posted["start"], posted["end"])
        assert event.grid_area == posted["gridArea"]
        assert event.asset_id_hash == b""

        # the slice the wallet got
        assert (received.registry, received.certificate_id) == (REGISTRY, certificate_id)
        assert received.public_key == endpoint.public_key
        assert received.quantity == posted["quantity"]

        # owner key: the wallet's own (private) derivation at the slice's position
        assert event.owner_public_key.type == electricity_pb2.Secp256k1
        assert event.owner_public_key.content == wallet_key.child(received.position).public_key
        row = await stack.pool.fetchrow("SELECT position FROM certificates WHERE id = $1", certificate_id)
        assert row["position"] == received.position

        # quantity: the commitment opens to the posted quantity with the wallet's R
        blinding = pedersen.blinding_from_bytes(received.random_r)
        assert pedersen.opens(event.quantity_commitment.content, posted["quantity"], blinding)
        assert not pedersen.opens(event.quantity_commitment.content, posted["quantity"] + 1, blinding)

        # attributes: clear ones verbatim; hashed ones recomputed with the wallet's salt
        clear = {a.key: a.value for a in event.attributes if a.type == electricity_pb2.CLEARTEXT}
        assert clear == posted["clearTextAttributes"]
        hashed = {a.key: a.value for a in event.attributes if a.type == electricity_pb2.HASHED}
        assert len(event.attributes) == len(clear) + len(hashed)
        disclosed = {d.key: d for d in received.hashed_attributes}
        assert set(hashed) == set(disclosed) == {h["key"] for h in posted["hashedAttributes"]}
        for attribute in posted["hashedAttributes"]:
            disclosure = disclosed[attribute["key"]]
            assert disclosure.value == attribute["value"]
            assert len(disclosure.salt) == 16
            assert hashed[attribute["key"]] == spec_hash(
                attribute["key"], attribute["value"], certificate_id, disclosure.salt
            )
        salts = [d.salt for d in received.hashed_attributes]
        assert len(set(salts)) == len(salts)  # a fresh salt per attribute
