"""BIP32 keys against the official BIP32 test vectors and the project-origin vector (docs/crypto.md §1)."""

from __future__ import annotations

import hashlib
import itertools
import pickle
import re
from pathlib import Path

import coincurve
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stamp.crypto import hdkeys
from stamp.crypto.hdkeys import (
    CURVE_ORDER,
    HARDENED,
    ExtendedPrivateKey,
    ExtendedPublicKey,
    InvalidHDKey,
)

VECTORS = Path(__file__).resolve().parent / "vectors" / "project-origin.txt"
V = dict(re.findall(r"^(\S+)(?: \(\d+ bytes\))?\s+= (\S+)$", VECTORS.read_text(), re.M))

FIELD_PRIME = 2**256 - 2**32 - 977

# --- Base58Check, only to read the published vectors ----------------------------------------

_B58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"


def b58check_decode(text: str) -> bytes:
    number = 0
    for char in text:
        number = number * 58 + _B58.index(char)
    raw = number.to_bytes((number.bit_length() + 7) // 8, "big")
    raw = bytes(len(text) - len(text.lstrip("1"))) + raw
    payload, checksum = raw[:-4], raw[-4:]
    assert hashlib.sha256(hashlib.sha256(payload).digest()).digest()[:4] == checksum, text
    return payload


def xpub(text: str) -> ExtendedPublicKey:
    payload = b58check_decode(text)
    assert payload[:4] == bytes.fromhex("0488b21e")  # mainnet public version bytes
    return ExtendedPublicKey.from_bytes(payload[4:])


def xprv(text: str) -> ExtendedPrivateKey:
    payload = b58check_decode(text)
    assert payload[:4] == bytes.fromhex("0488ade4")  # mainnet private version bytes
    return ExtendedPrivateKey.from_bytes(payload[4:])


# Published in BIP32 ("Test vectors"): path, xpub, xprv. Index None = the master key.
H = HARDENED
BIP32_VECTOR_1 = (
    "000102030405060708090a0b0c0d0e0f",
    [
        (
            None,
            "xpub661MyMwAqRbcFtXgS5sYJABqqG9YLmC4Q1Rdap9gSE8NqtwybGhePY2gZ29ESFjqJoCu1Rupje8YtGqsefD265TMg7usUDFdp6W1EGMcet8",
            "xprv9s21ZrQH143K3QTDL4LXw2F7HEK3wJUD2nW2nRk4stbPy6cq3jPPqjiChkVvvNKmPGJxWUtg6LnF5kejMRNNU3TGtRBeJgk33yuGBxrMPHi",
        ),
        (
            H + 0,
            "xpub68Gmy5EdvgibQVfPdqkBBCHxA5htiqg55crXYuXoQRKfDBFA1WEjWgP6LHhwBZeNK1VTsfTFUHCdrfp1bgwQ9xv5ski8PX9rL2dZXvgGDnw",
            "xprv9uHRZZhk6KAJC1avXpDAp4MDc3sQKNxDiPvvkX8Br5ngLNv1TxvUxt4cV1rGL5hj6KCesnDYUhd7oWgT11eZG7XnxHrnYeSvkzY7d2bhkJ7",
        ),
        (
            1,
            "xpub6ASuArnXKPbfEwhqN6e3mwBcDTgzisQN1wXN9BJcM47sSikHjJf3UFHKkNAWbWMiGj7Wf5uMash7SyYq527Hqck2AxYysAA7xmALppuCkwQ",
            "xprv9wTYmMFdV23N2TdNG573QoEsfRrWKQgWeibmLntzniatZvR9BmLnvSxqu53Kw1UmYPxLgboyZQaXwTCg8MSY3H2EU4pWcQDnRnrVA1xe8fs",
        ),
        (
            H + 2,
            "xpub6D4BDPcP2GT577Vvch3R8wDkScZWzQzMMUm3PWbmWvVJrZwQY4VUNgqFJPMM3No2dFDFGTsxxpG5uJh7n7epu4trkrX7x7DogT5Uv6fcLW5",
            "xprv9z4pot5VBttmtdRTWfWQmoH1taj2axGVzFqSb8C9xaxKymcFzXBDptWmT7FwuEzG3ryjH4ktypQSAewRiNMjANTtpgP4mLTj34bhnZX7UiM",
        ),
        (
            2,
            "xpub6FHa3pjLCk84BayeJxFW2SP4XRrFd1JYnxeLeU8EqN3vDfZmbqBqaGJAyiLjTAwm6ZLRQUMv1ZACTj37sR62cfN7fe5JnJ7dh8zL4fiyLHV",
            "xprvA2JDeKCSNNZky6uBCviVfJSKyQ1mDYahRjijr5idH2WwLsEd4Hsb2Tyh8RfQMuPh7f7RtyzTtdrbdqqsunu5Mm3wDvUAKRHSC34sJ7in334",
        ),
        (
            1000000000,
            "xpub6H1LXWLaKsWFhvm6RVpEL9P4KfRZSW7abD2ttkWP3SSQvnyA8FSVqNTEcYFgJS2UaFcxupHiYkro49S8yGasTvXEYBVPamhGW6cFJodrTHy",
            "xprvA41z7zogVVwxVSgdKUHDy1SKmdb533PjDz7J6N6mV6uS3ze1ai8FHa8kmHScGpWmj4WggLyQjgPie1rFSruoUihUZREPSL39UNdE3BBDu76",
        ),
    ],
)
BIP32_VECTOR_2 = (
    "fffcf9f6f3f0edeae7e4e1dedbd8d5d2cfccc9c6c3c0bdbab7b4b1aeaba8a5a29f9c999693908d8a8784817e7b7875726f6c696663605d5a5754514e4b484542",
    [
        (
            None,
            "xpub661MyMwAqRbcFW31YEwpkMuc5THy2PSt5bDMsktWQcFF8syAmRUapSCGu8ED9W6oDMSgv6Zz8idoc4a6mr8BDzTJY47LJhkJ8UB7WEGuduB",
            "xprv9s21ZrQH143K31xYSDQpPDxsXRTUcvj2iNHm5NUtrGiGG5e2DtALGdso3pGz6ssrdK4PFmM8NSpSBHNqPqm55Qn3LqFtT2emdEXVYsCzC2U",
        ),
        (
            0,
            "xpub69H7F5d8KSRgmmdJg2KhpAK8SR3DjMwAdkxj3ZuxV27CprR9LgpeyGmXUbC6wb7ERfvrnKZjXoUmmDznezpbZb7ap6r1D3tgFxHmwMkQTPH",
            "xprv9vHkqa6EV4sPZHYqZznhT2NPtPCjKuDKGY38FBWLvgaDx45zo9WQRUT3dKYnjwih2yJD9mkrocEZXo1ex8G81dwSM1fwqWpWkeS3v86pgKt",
        ),
        (
            H + 2147483647,
            "xpub6ASAVgeehLbnwdqV6UKMHVzgqAG8Gr6riv3Fxxpj8ksbH9ebxaEyBLZ85ySDhKiLDBrQSARLq1uNRts8RuJiHjaDMBU4Zn9h8LZNnBC5y4a",
            "xprv9wSp6B7kry3Vj9m1zSnLvN3xH8RdsPP1Mh7fAaR7aRLcQMKTR2vidYEeEg2mUCTAwCd6vnxVrcjfy2kRgVsFawNzmjuHc2YmYRmagcEPdU9",
        ),
        (
            1,
            "xpub6DF8uhdarytz3FWdA8TvFSvvAh8dP3283MY7p2V4SeE2wyWmG5mg5EwVvmdMVCQcoNJxGoWaU9DCWh89LojfZ537wTfunKau47EL2dhHKon",
            "xprv9zFnWC6h2cLgpmSA46vutJzBcfJ8yaJGg8cX1e5StJh45BBciYTRXSd25UEPVuesF9yog62tGAQtHjXajPPdbRCHuWS6T8XA2ECKADdw4Ef",
        ),
        (
            H + 2147483646,
            "xpub6ERApfZwUNrhLCkDtcHTcxd75RbzS1ed54G1LkBUHQVHQKqhMkhgbmJbZRkrgZw4koxb5JaHWkY4ALHY2grBGRjaDMzQLcgJvLJuZZvRcEL",
            "xprvA1RpRA33e1JQ7ifknakTFpgNXPmW2YvmhqLQYMmrj4xJXXWYpDPS3xz7iAxn8L39njGVyuoseXzU6rcxFLJ8HFsTjSyQbLYnMpCqE2VbFWc",
        ),
        (
            2,
            "xpub6FnCn6nSzZAw5Tw7cgR9bi15UV96gLZhjDstkXXxvCLsUXBGXPdSnLFbdpq8p9HmGsApME5hQTZ3emM2rnY5agb9rXpVGyy3bdW6EEgAtqt",
            "xprvA2nrNbFZABcdryreWet9Ea4LvTJcGsqrMzxHx98MMrotbir7yrKCEXw7nadnHM8Dq38EGfSh6dqA9QWTyefMLEcBYJUuekgW4BYPJcr9E7j",
        ),
    ],
)
BIP32_VECTORS = [BIP32_VECTOR_1, BIP32_VECTOR_2]


def _public_steps() -> list[tuple[str, int, str]]:
    """(parent xpub, index, child xpub) for every non-hardened step of the vectors."""
    steps = []
    for _, chain in BIP32_VECTORS:
        for (_, parent, _), (index, child, _) in itertools.pairwise(chain):
            assert index is not None
            if index < HARDENED:
                steps.append((parent, index, child))
    return steps


@pytest.mark.parametrize(("parent", "index", "child"), _public_steps())
def test_public_derivation_matches_bip32_vectors(parent: str, index: int, child: str) -> None:
    expected = xpub(child)
    derived = xpub(parent).child(index)
    assert derived == expected
    assert derived.to_bytes() == expected.to_bytes()
    assert xpub(parent).child_public_key(index) == expected.public_key


def test_the_vectors_cover_six_public_steps() -> None:
    assert [index for _, index, _ in _public_steps()] == [1, 2, 1000000000, 0, 1, 2]


@pytest.mark.parametrize(("seed", "chain"), BIP32_VECTORS, ids=["vector1", "vector2"])
def test_private_derivation_and_neutering_match_bip32_vectors(
    seed: str, chain: list[tuple[int | None, str, str]]
) -> None:
    key = ExtendedPrivateKey.from_seed(bytes.fromhex(seed))
    for index, public_text, private_text in chain:
        if index is not None:
            key = key.child(index)
        assert key.to_bytes() == xprv(private_text).to_bytes()
        assert key.public().to_bytes() == xpub(public_text).to_bytes()


def test_master_key_of_vector_1_has_the_published_fingerprint() -> None:
    master = ExtendedPrivateKey.from_seed(bytes.fromhex(BIP32_VECTOR_1[0]))
    assert master.fingerprint.hex() == "3442193e"
    assert master.public().fingerprint.hex() == "3442193e"


# --- project-origin vector ------------------------------------------------------------------


def test_endpoint_key_is_vector_1_seed_path_m_1_neutered() -> None:
    master = ExtendedPrivateKey.from_seed(bytes.fromhex(BIP32_VECTOR_1[0]))
    endpoint = master.child(1).public()
    assert endpoint.to_bytes().hex() == V["endpoint_key_hex"]
    assert endpoint.to_base64() == V["endpoint_key_base64"]
    assert len(endpoint.to_bytes()) == hdkeys.SERIALIZED_LENGTH == 74


def test_endpoint_key_round_trips_through_base64_and_bytes() -> None:
    endpoint = ExtendedPublicKey.from_base64(V["endpoint_key_base64"])
    assert endpoint == ExtendedPublicKey.from_bytes(bytes.fromhex(V["endpoint_key_hex"]))
    assert endpoint == ExtendedPublicKey.parse(V["endpoint_key_base64"])
    assert endpoint == ExtendedPublicKey.parse(bytes.fromhex(V["endpoint_key_hex"]))
    assert (endpoint.depth, endpoint.parent_fingerprint.hex(), endpoint.child_number) == (1, "3442193e", 1)


@pytest.mark.parametrize("position", [1, 2, 42, 2147483647])
def test_owner_keys_match_the_project_origin_vector(position: int) -> None:
    endpoint = ExtendedPublicKey.from_base64(V["endpoint_key_base64"])
    owner = endpoint.child_public_key(position)
    assert owner.hex() == V[f"owner_key_pos_{position}"]
    assert len(owner) == 33


@pytest.mark.parametrize("position", [1, 42, 2147483647])
def test_wallet_private_key_at_position_matches_the_owner_key(position: int) -> None:
    endpoint_private = ExtendedPrivateKey.from_seed(bytes.fromhex(BIP32_VECTOR_1[0])).child(1)
    private = endpoint_private.private_key_at(position)
    public = coincurve.PrivateKey(private).public_key.format(compressed=True)
    assert public.hex() == V[f"owner_key_pos_{position}"]


@settings(max_examples=25, deadline=None)
@given(st.binary(min_size=32, max_size=32), st.integers(0, HARDENED - 1))
def test_public_and_private_derivation_agree(seed: bytes, index: int) -> None:
    key = ExtendedPrivateKey.from_seed(seed)
    assert key.public().child(index) == key.child(index).public()


# --- rejections -----------------------------------------------------------------------------


def _endpoint() -> ExtendedPublicKey:
    return ExtendedPublicKey.from_bytes(bytes.fromhex(V["endpoint_key_hex"]))


@pytest.mark.parametrize("length", [0, 33, 73, 75, 78])
def test_rejects_an_extended_key_of_the_wrong_length(length: int) -> None:
    data = (bytes.fromhex(V["endpoint_key_hex"]) * 2)[:length]
    with pytest.raises(InvalidHDKey, match=f"74 bytes.*got {length}"):
        ExtendedPublicKey.from_bytes(data)


def test_rejects_text_that_is_not_base64() -> None:
    with pytest.raises(InvalidHDKey, match="Base64"):
        ExtendedPublicKey.from_base64("not base64!")


def _off_curve_x() -> int:
    # x with x³ + 7 a non-residue mod p (Euler's criterion): no point has this x.
    x = 1
    while pow(x**3 + 7, (FIELD_PRIME - 1) // 2, FIELD_PRIME) != FIELD_PRIME - 1:
        x += 1
    return x


@pytest.mark.parametrize(
    "key",
    [
        b"\x02" + _off_curve_x().to_bytes(32, "big"),
        b"\x03" + FIELD_PRIME.to_bytes(32, "big"),  # x not reduced mod p
    ],
    ids=["x-not-on-curve", "x-not-a-field-element"],
)
def test_rejects_a_point_not_on_the_curve(key: bytes) -> None:
    data = bytes.fromhex(V["endpoint_key_hex"])[:41] + key
    with pytest.raises(InvalidHDKey, match="not a point on secp256k1"):
        ExtendedPublicKey.from_bytes(data)


@pytest.mark.parametrize("prefix", [0x00, 0x04, 0x05])
def test_rejects_a_key_that_is_not_compressed(prefix: int) -> None:
    data = bytearray.fromhex(V["endpoint_key_hex"])
    data[41] = prefix
    with pytest.raises(InvalidHDKey, match="compressed"):
        ExtendedPublicKey.from_bytes(bytes(data))


@pytest.mark.parametrize("index", [HARDENED, HARDENED + 1, 2**32 - 1])
def test_rejects_a_hardened_index_from_a_public_key(index: int) -> None:
    with pytest.raises(InvalidHDKey, match="hardened"):
        _endpoint().child_public_key(index)
    with pytest.raises(InvalidHDKey, match="hardened"):
        _endpoint().child(index)


def test_rejects_a_negative_index() -> None:
    with pytest.raises(InvalidHDKey, match="negative"):
        _endpoint().child_public_key(-1)


def test_rejects_an_index_that_is_not_an_int() -> None:
    with pytest.raises(InvalidHDKey, match="int"):
        _endpoint().child_public_key(True)
    with pytest.raises(InvalidHDKey, match="int"):
        _endpoint().child_public_key(1.0)  # type: ignore[arg-type]


def test_rejects_children_of_a_depth_255_key() -> None:
    deepest = ExtendedPublicKey(255, bytes(4), 0, bytes(32), _endpoint().public_key)
    with pytest.raises(InvalidHDKey, match="depth 255"):
        deepest.child(0)
    assert len(deepest.child_public_key(0)) == 33  # the owner key does not depend on depth


def test_an_i_l_not_below_the_curve_order_makes_the_child_invalid() -> None:
    parent = _endpoint().public_key
    with pytest.raises(InvalidHDKey, match="invalid"):
        hdkeys._add_tweak_public(parent, CURVE_ORDER.to_bytes(32, "big"), 7)
    with pytest.raises(InvalidHDKey, match="invalid"):
        hdkeys._add_tweak_private((1).to_bytes(32, "big"), (2**256 - 1).to_bytes(32, "big"), 7)


def test_a_child_at_infinity_or_zero_is_invalid() -> None:
    k = 123456789
    parent_private = (CURVE_ORDER - k).to_bytes(32, "big")
    parent_public = coincurve.PrivateKey(parent_private).public_key.format(compressed=True)
    with pytest.raises(InvalidHDKey, match="infinity"):
        hdkeys._add_tweak_public(parent_public, k.to_bytes(32, "big"), 7)
    with pytest.raises(InvalidHDKey, match="zero"):
        hdkeys._add_tweak_private(parent_private, k.to_bytes(32, "big"), 7)


def test_rejects_a_seed_of_the_wrong_size() -> None:
    with pytest.raises(InvalidHDKey, match="16…64"):
        ExtendedPrivateKey.from_seed(bytes(15))
    with pytest.raises(InvalidHDKey, match="16…64"):
        ExtendedPrivateKey.from_seed(bytes(65))


# --- secrets and plumbing -------------------------------------------------------------------


def test_private_key_repr_shows_no_secret() -> None:
    key = ExtendedPrivateKey.generate()
    text = repr(key)
    assert key.private_key.hex() not in text
    assert key.chain_code.hex() not in text
    assert repr(key.private_key) not in text
    assert repr(key.chain_code) not in text


def test_extended_keys_pickle() -> None:
    key = ExtendedPrivateKey.generate()
    assert pickle.loads(pickle.dumps(key)) == key
    assert pickle.loads(pickle.dumps(key.public())) == key.public()


def test_generated_keys_differ() -> None:
    assert ExtendedPrivateKey.generate().private_key != ExtendedPrivateKey.generate().private_key


# --- RIPEMD-160 (for HASH160 when OpenSSL lacks it) ------------------------------------------

RIPEMD160_VECTORS = [  # from the RIPEMD-160 authors' page
    (b"", "9c1185a5c5e9fc54612808977ee8f548b2258d31"),
    (b"a", "0bdc9d2d256b3ee9daae347be6f4dc835a467ffe"),
    (b"abc", "8eb208f7e05d987a9b044a8e98c6b087f15a0bfc"),
    (b"message digest", "5d0689ef49d2fae572b881b123a85ffa21595f36"),
    (b"abcdefghijklmnopqrstuvwxyz", "f71c27109c692c1b56bbdceb5b9d2865b3708dbc"),
    (b"1234567890" * 8, "9b752e45573d4b39f4dbd3323cab82bf63326bfb"),
]


@pytest.mark.parametrize(("message", "digest"), RIPEMD160_VECTORS)
def test_pure_python_ripemd160_matches_published_vectors(message: bytes, digest: str) -> None:
    assert hdkeys._ripemd160_pure(message).hex() == digest
    assert hdkeys.ripemd160(message).hex() == digest


@settings(max_examples=50, deadline=None)
@given(st.binary(max_size=200))
def test_pure_python_ripemd160_agrees_with_openssl(message: bytes) -> None:
    try:
        expected = hashlib.new("ripemd160", message).digest()
    except ValueError:
        pytest.skip("this OpenSSL has no RIPEMD-160 to compare with")
    assert hdkeys._ripemd160_pure(message) == expected
