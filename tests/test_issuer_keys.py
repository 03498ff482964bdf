"""Issuer Ed25519 keys: RFC 8032 vectors and every PEM form of the project-origin vector
(docs/crypto.md §2)."""

from __future__ import annotations

import base64
import pickle
import re
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from stamp.crypto.issuer_keys import (
    PKCS8_V1_PREFIX,
    InvalidIssuerKey,
    IssuerKey,
    load_public_key,
    public_key_bytes,
    verify_signature,
)

VECTORS = Path(__file__).resolve().parent / "vectors" / "project-origin.txt"
V = dict(re.findall(r"^(\S+)(?: \(\d+ bytes\))?\s+= (\S+)$", VECTORS.read_text(), re.M))

# RFC 8032 §7.1, TEST 1–3: secret key (seed), public key, message, signature.
RFC8032 = [
    (
        "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60",
        "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a",
        "",
        "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b",
    ),
    (
        "4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb",
        "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c",
        "72",
        "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da085ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00",
    ),
    (
        "c5aa8df43f9f837bedb7442f31dcb7b166d38535076f094b85ce3a2e0b4458f7",
        "fc51cd8e6218a1a38da47ed00230f0580816ed13ba3303ac5deb911548908025",
        "af82",
        "6291d657deec24024827e69c3abe01a30ce548a284743a445e3680d7db5ac3ac18ff9b538d16f290ae67f760984dc6594a7c15e9716ed28dc027beceea1ec40a",
    ),
]


def _pem_body(pem: str) -> str:
    return "".join(line for line in pem.splitlines() if not line.startswith("-----"))


@pytest.mark.parametrize(("seed", "public", "message", "signature"), RFC8032, ids=["test1", "test2", "test3"])
def test_signs_rfc8032_vectors(seed: str, public: str, message: str, signature: str) -> None:
    key = IssuerKey.from_seed(bytes.fromhex(seed))
    assert key.public_key.hex() == public
    assert key.sign(bytes.fromhex(message)).hex() == signature


@pytest.mark.parametrize(("seed", "public", "message", "signature"), RFC8032, ids=["test1", "test2", "test3"])
def test_signs_rfc8032_vectors_after_a_pem_round_trip(
    seed: str, public: str, message: str, signature: str
) -> None:
    key = IssuerKey.from_pem(IssuerKey.from_seed(bytes.fromhex(seed)).private_pem())
    assert key.sign(bytes.fromhex(message)).hex() == signature
    assert verify_signature(bytes.fromhex(public), bytes.fromhex(signature), bytes.fromhex(message))


# --- the configured forms of the project-origin vector ---------------------------------------


def _vector_key() -> IssuerKey:
    return IssuerKey.from_seed(bytes.fromhex(V["seed"]))


def test_private_pem_is_pkcs8_v1_with_the_vector_body() -> None:
    pem = _vector_key().private_pem()
    assert pem.startswith("-----BEGIN PRIVATE KEY-----\n")
    assert pem.endswith("-----END PRIVATE KEY-----\n")
    assert _pem_body(pem) == V["private_pem_body"]
    der = base64.b64decode(_pem_body(pem))
    assert len(der) == 48
    assert der == PKCS8_V1_PREFIX + bytes.fromhex(V["seed"])


def test_private_pem_base64_is_the_old_stamp_configuration_form() -> None:
    assert _vector_key().private_pem_base64() == V["private_pem_base64"]


def test_public_pem_and_its_base64_match_the_vector() -> None:
    key = _vector_key()
    assert _pem_body(key.public_pem()) == V["public_pem_body"]
    assert key.public_pem().startswith("-----BEGIN PUBLIC KEY-----\n")
    assert key.public_pem_base64() == V["public_pem_base64"]


def test_our_public_pem_is_what_cryptography_writes() -> None:
    key = _vector_key()
    pem = load_public_key(key.public_pem()).public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert pem.decode("ascii") == key.public_pem()


@pytest.mark.parametrize(
    "text",
    [
        base64.b64decode(V["private_pem_base64"]).decode("ascii"),
        V["private_pem_base64"],
        "  " + V["private_pem_base64"] + "\n",
        base64.b64decode(V["private_pem_base64"]).decode("ascii").replace("\n", "\r\n"),
        base64.b64decode(V["private_pem_base64"]),
    ],
    ids=["pem", "base64-of-pem", "base64-with-whitespace", "pem-crlf", "pem-bytes"],
)
def test_reads_the_private_key_in_every_configured_form(text: str | bytes) -> None:
    key = IssuerKey.from_pem(text)
    assert key.seed.hex() == V["seed"]
    assert key == _vector_key()


@pytest.mark.parametrize(
    "text",
    [V["public_pem_base64"], base64.b64decode(V["public_pem_base64"]).decode("ascii")],
    ids=["base64-of-pem", "pem"],
)
def test_loads_the_registry_public_key_forms(text: str) -> None:
    assert public_key_bytes(load_public_key(text)) == _vector_key().public_key


def test_generated_key_exports_pkcs8_v1_and_reads_back() -> None:
    key = IssuerKey.generate("DK2")
    der = base64.b64decode(_pem_body(key.private_pem()))
    assert der.startswith(PKCS8_V1_PREFIX) and len(der) == 48
    again = IssuerKey.from_pem(key.private_pem_base64(), grid_area="DK2")
    assert again == key
    assert again.sign(b"header") == key.sign(b"header")


# --- signatures -----------------------------------------------------------------------------


def test_verify_signature_accepts_the_right_signature_and_nothing_else() -> None:
    key = _vector_key()
    signature = key.sign(b"serialized header")
    public = load_public_key(key.public_pem_base64())
    assert verify_signature(public, signature, b"serialized header")
    assert verify_signature(key.public_pem(), signature, b"serialized header")
    assert verify_signature(key.public_key, signature, b"serialized header")
    assert not verify_signature(public, signature, b"serialized headeR")
    tampered = bytes([signature[0] ^ 1]) + signature[1:]
    assert not verify_signature(public, tampered, b"serialized header")
    assert not verify_signature(public, signature[:63], b"serialized header")
    assert not verify_signature(IssuerKey.generate().public_key, signature, b"serialized header")


# --- refusals and secrecy -------------------------------------------------------------------


def test_refuses_a_key_that_is_not_ed25519() -> None:
    pem = (
        ec.generate_private_key(ec.SECP256R1())
        .private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        .decode("ascii")
    )
    with pytest.raises(InvalidIssuerKey, match="not an Ed25519"):
        IssuerKey.from_pem(pem)


def test_refuses_a_public_key_where_a_private_key_is_expected() -> None:
    with pytest.raises(InvalidIssuerKey, match="BEGIN PRIVATE KEY"):
        IssuerKey.from_pem(V["public_pem_base64"])


def test_refuses_an_encrypted_private_key() -> None:
    pem = _vector_key()._private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"password"),
    )
    with pytest.raises(InvalidIssuerKey):
        IssuerKey.from_pem(pem.decode("ascii"))


@pytest.mark.parametrize(
    "text",
    [
        "c2VjcmV0LXN0dWZmLXRoYXQtaXMtbm90LWEta2V5",  # Base64 of non-PEM text
        "secret stuff that is no key at all",
        "-----BEGIN PRIVATE KEY-----\nc2VjcmV0c2VjcmV0\n-----END PRIVATE KEY-----\n",
    ],
)
def test_refusal_messages_do_not_quote_the_input(text: str) -> None:
    with pytest.raises(InvalidIssuerKey) as caught:
        IssuerKey.from_pem(text)
    message = str(caught.value)
    assert "c2Vj" not in message and "secret" not in message


def test_refuses_a_public_key_text_that_is_not_ed25519() -> None:
    pem = (
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    with pytest.raises(InvalidIssuerKey, match="not an Ed25519"):
        load_public_key(pem.decode("ascii"))


def test_repr_shows_grid_area_and_fingerprint_only() -> None:
    key = IssuerKey.from_pem(V["private_pem_base64"], grid_area="DK1")
    text = repr(key)
    assert "DK1" in text and key.fingerprint in text
    for secret in (V["seed"], V["private_pem_body"], V["private_pem_base64"], repr(key.seed)):
        assert secret not in text


def test_issuer_key_pickles_to_an_equal_key() -> None:
    key = IssuerKey.generate("DK1")
    copy = pickle.loads(pickle.dumps(key))
    assert copy == key and copy.grid_area == "DK1"
    assert copy.sign(b"x") == key.sign(b"x")
