"""Bearer authentication of /v1: static tokens (rotated) and JWTs, against a real Stamp."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
import orjson
import pytest
import pytest_asyncio
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from stamp.config import ConfigError, Settings, load_settings
from stamp.credentials import token_digest
from stamp.crypto.hdkeys import ExtendedPrivateKey
from tests.stack import Stack, running_stack

TOKEN_A = secrets.token_urlsafe(32)
TOKEN_B = secrets.token_urlsafe(32)
ISSUER = "https://idp.example.org/realms/energy"
AUDIENCE = "stamp-api"
CHALLENGE = 'Bearer realm="stamp"'
INVALID_CHALLENGE = 'Bearer realm="stamp", error="invalid_token"'


def _pem(key: rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


@dataclass
class JwtKeys:
    rsa: rsa.RSAPrivateKey
    ed: ed25519.Ed25519PrivateKey
    jwks_file: Path
    pem_file: Path

    def env(self) -> dict[str, str]:
        return {
            "STAMP_AUTH_TOKENS": f"{TOKEN_A}, sha256:{hashlib.sha256(TOKEN_B.encode()).hexdigest()}",
            "STAMP_AUTH_JWT_ISSUER": ISSUER,
            "STAMP_AUTH_JWT_AUDIENCE": AUDIENCE,
            "STAMP_AUTH_JWT_JWKS_FILE": str(self.jwks_file),
            "STAMP_AUTH_JWT_PUBLIC_KEY": str(self.pem_file),
            "STAMP_AUTH_JWT_ALGORITHMS": "RS256,EdDSA",
        }


@pytest.fixture(scope="module")
def jwt_keys(tmp_path_factory: pytest.TempPathFactory) -> JwtKeys:
    directory = tmp_path_factory.mktemp("jwt")
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ed_key = ed25519.Ed25519PrivateKey.generate()
    jwk = RSAAlgorithm.to_jwk(rsa_key.public_key(), as_dict=True)
    jwks_file = directory / "jwks.json"
    jwks_file.write_text(json.dumps({"keys": [{**jwk, "kid": "rsa-1", "use": "sig", "alg": "RS256"}]}))
    pem_file = directory / "ed25519.pub.pem"
    pem_file.write_bytes(_pem(ed_key))
    return JwtKeys(rsa_key, ed_key, jwks_file, pem_file)


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def stack(
    database_dsn: str, tmp_path_factory: pytest.TempPathFactory, jwt_keys: JwtKeys
) -> AsyncIterator[Stack]:
    settings = load_settings(jwt_keys.env())
    async with running_stack(
        database_dsn,
        tmp_path_factory.mktemp("stamp"),
        path_base="/api",
        crypto_workers=1,
        auth_tokens=settings.auth_tokens,
        auth_jwt=settings.auth_jwt,
    ) as running:
        yield running


def _claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    claims: dict[str, Any] = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "issuing-body-1",
        "iat": now,
        "exp": now + 300,
    }
    claims.update(overrides)
    return {k: v for k, v in claims.items() if v is not None}


def rs256(keys: JwtKeys, kid: str | None = "rsa-1", **claims: Any) -> str:
    headers = {"kid": kid} if kid else None
    return jwt.encode(_claims(**claims), keys.rsa, algorithm="RS256", headers=headers)


def eddsa(key: ed25519.Ed25519PrivateKey, **claims: Any) -> str:
    return jwt.encode(_claims(**claims), key, algorithm="EdDSA")


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def unsigned(**claims: Any) -> str:
    """An ``alg: none`` token, assembled by hand (as an attacker would)."""
    header = _b64url(orjson.dumps({"alg": "none", "typ": "JWT"}))
    return f"{header}.{_b64url(orjson.dumps(_claims(**claims)))}."


def hs256_with_public_key(keys: JwtKeys) -> str:
    """Algorithm confusion: HS256 'signed' with the RSA public key PEM as the secret."""
    header = _b64url(orjson.dumps({"alg": "HS256", "typ": "JWT", "kid": "rsa-1"}))
    payload = _b64url(orjson.dumps(_claims()))
    signing_input = f"{header}.{payload}".encode()
    signature = hmac.new(_pem(keys.rsa), signing_input, hashlib.sha256).digest()
    return f"{header}.{payload}.{_b64url(signature)}"


def recipient_body() -> dict[str, Any]:
    public = ExtendedPrivateKey.generate().public()
    return {
        "walletEndpointReference": {
            "version": 1,
            "endpoint": "https://wallet.example/v1/slices",
            "publicKey": public.to_base64(),
        }
    }


async def create_recipient(stack: Stack, token: str | None, base: str = "") -> tuple[int, Any, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    async with stack.http.post(
        f"{stack.base}{base}/v1/recipients", json=recipient_body(), headers=headers
    ) as response:
        return response.status, response.headers, await response.json(content_type=None)


async def recipient_count(stack: Stack) -> int:
    return int(await stack.pool.fetchval("SELECT count(*) FROM recipients"))


# --- static tokens --------------------------------------------------------------------------


@pytest.mark.parametrize("base", ["", "/api"])
async def test_a_v1_request_without_a_token_is_refused_with_a_bearer_challenge(
    stack: Stack, base: str
) -> None:
    before = await recipient_count(stack)
    status, headers, body = await create_recipient(stack, None, base)
    assert status == 401
    assert headers["WWW-Authenticate"] == CHALLENGE
    assert headers["Content-Type"].startswith("application/problem+json")
    assert body["status"] == 401 and body["detail"] == "missing token"
    assert await recipient_count(stack) == before
    async with stack.http.get(f"{stack.base}{base}/v1/certificates") as response:
        assert response.status == 401


async def test_a_wrong_token_is_refused_as_invalid(stack: Stack) -> None:
    status, headers, body = await create_recipient(stack, secrets.token_urlsafe(32))
    assert status == 401
    assert headers["WWW-Authenticate"] == INVALID_CHALLENGE
    assert body["detail"] == "invalid token"
    # A prefix of the right token is as wrong as any other.
    status, _, _ = await create_recipient(stack, TOKEN_A[:-1])
    assert status == 401


async def test_other_schemes_and_repeated_headers_do_not_authenticate(stack: Stack) -> None:
    url = f"{stack.base}/v1/certificates"
    basic = "Basic " + base64.b64encode(f"user:{TOKEN_A}".encode()).decode()
    async with stack.http.get(url, headers={"Authorization": basic}) as response:
        assert response.status == 401
        assert response.headers["WWW-Authenticate"] == CHALLENGE
    async with stack.http.get(url, headers={"Authorization": "Bearer"}) as response:
        assert response.status == 401
        assert response.headers["WWW-Authenticate"] == INVALID_CHALLENGE
    repeated = [("Authorization", f"Bearer {TOKEN_A}"), ("Authorization", f"Bearer {TOKEN_B}")]
    async with stack.http.get(url, headers=repeated) as response:
        assert response.status == 401


async def test_each_of_two_rotated_tokens_is_accepted(stack: Stack) -> None:
    status, _, created = await create_recipient(stack, TOKEN_A)
    assert status == 201, created
    # The second token is configured as its SHA-256 digest; the scheme is case-insensitive.
    headers = {"Authorization": f"bearer {TOKEN_B}"}
    async with stack.http.get(f"{stack.base}/api/v1/recipients/{created['id']}", headers=headers) as response:
        assert response.status == 200
        assert (await response.json())["id"] == created["id"]


async def test_an_unknown_v1_path_answers_401_not_404_without_a_token(stack: Stack) -> None:
    async with stack.http.get(f"{stack.base}/v1/no-such-thing") as response:
        assert response.status == 401
    async with stack.http.get(
        f"{stack.base}/v1/no-such-thing", headers={"Authorization": f"Bearer {TOKEN_A}"}
    ) as response:
        assert response.status == 404


@pytest.mark.parametrize("path", ["/health/live", "/health/ready", "/api/health/live", "/api/health/ready"])
async def test_health_stays_open(stack: Stack, path: str) -> None:
    async with stack.http.get(stack.base + path) as response:
        assert response.status == 200


@pytest.mark.parametrize("path", ["/metrics", "/openapi.json", "/docs", "/api/metrics"])
async def test_metrics_and_api_description_need_no_token(stack: Stack, path: str) -> None:
    # Their routes come from other modules (and may not exist yet): whatever they
    # answer, it is not a demand for credentials.
    async with stack.http.get(stack.base + path) as response:
        assert response.status != 401
        assert "WWW-Authenticate" not in response.headers


# --- JWT ------------------------------------------------------------------------------------


async def test_a_valid_rs256_token_verified_through_the_jwks_file_is_accepted(
    stack: Stack, jwt_keys: JwtKeys
) -> None:
    status, _, body = await create_recipient(stack, rs256(jwt_keys), "/api")
    assert status == 201, body


async def test_a_valid_eddsa_token_verified_through_the_pem_key_is_accepted(
    stack: Stack, jwt_keys: JwtKeys
) -> None:
    status, _, body = await create_recipient(stack, eddsa(jwt_keys.ed))
    assert status == 201, body


async def test_a_token_expired_within_the_leeway_is_still_accepted(stack: Stack, jwt_keys: JwtKeys) -> None:
    status, _, _ = await create_recipient(stack, rs256(jwt_keys, exp=int(time.time()) - 5))
    assert status == 201


def _other_rsa() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


REFUSED_TOKENS: dict[str, Callable[[JwtKeys], str]] = {
    "wrong issuer": lambda k: rs256(k, iss="https://evil.example/"),
    "wrong audience": lambda k: rs256(k, aud="another-service"),
    "expired": lambda k: rs256(k, exp=int(time.time()) - 120),
    "not yet valid": lambda k: rs256(k, nbf=int(time.time()) + 600),
    "without expiry": lambda k: rs256(k, exp=None),
    "without audience": lambda k: rs256(k, aud=None),
    "bad signature, same kid": lambda k: jwt.encode(
        _claims(), _other_rsa(), algorithm="RS256", headers={"kid": "rsa-1"}
    ),
    "bad signature, no kid": lambda k: jwt.encode(_claims(), _other_rsa(), algorithm="RS256"),
    "other ed25519 key": lambda k: eddsa(ed25519.Ed25519PrivateKey.generate()),
    "tampered payload": lambda k: _tamper(rs256(k)),
    "alg none": lambda k: unsigned(),
    "hs256 with the public key": hs256_with_public_key,
    "algorithm not allowed": lambda k: jwt.encode(
        _claims(), k.rsa, algorithm="RS512", headers={"kid": "rsa-1"}
    ),
    "garbage": lambda k: "a.b.c",
}


def _tamper(token: str) -> str:
    header, _, signature = token.split(".")
    return f"{header}.{_b64url(orjson.dumps(_claims(sub='someone-else')))}.{signature}"


@pytest.mark.parametrize("case", sorted(REFUSED_TOKENS))
async def test_a_jwt_that_fails_any_check_is_refused_without_saying_why(
    stack: Stack, jwt_keys: JwtKeys, case: str
) -> None:
    token = REFUSED_TOKENS[case](jwt_keys)
    status, headers, body = await create_recipient(stack, token)
    assert status == 401, body
    assert headers["WWW-Authenticate"] == INVALID_CHALLENGE
    assert body == {
        "type": "https://stamp.energy/problems/unauthorized",
        "title": "Unauthorized",
        "status": 401,
        "detail": "invalid token",
    }


# --- configuration ---------------------------------------------------------------------------


def test_authentication_is_off_by_default() -> None:
    assert not Settings().auth_enabled
    assert not load_settings({}).auth_enabled


def test_tokens_are_kept_as_digests_in_either_form_and_deduplicated() -> None:
    env = {"STAMP_AUTH_TOKENS": f"{TOKEN_A},sha256:{hashlib.sha256(TOKEN_A.encode()).hexdigest()},{TOKEN_B}"}
    settings = load_settings(env)
    assert settings.auth_tokens == (token_digest(TOKEN_A), token_digest(TOKEN_B))
    assert settings.auth_enabled
    assert TOKEN_A not in repr(settings)


def test_tokens_file_lines_and_comments(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    path.write_text(
        f"# rotated 2025-01\n{TOKEN_A}\n\n  sha256:{hashlib.sha256(TOKEN_B.encode()).hexdigest()}\n"
    )
    settings = load_settings({"STAMP_AUTH_TOKENS_FILE": str(path)})
    assert settings.auth_tokens == (token_digest(TOKEN_A), token_digest(TOKEN_B))


def test_bad_tokens_are_reported_by_place_without_their_text() -> None:
    weak = "short-secret"
    with pytest.raises(ConfigError) as caught:
        load_settings({"STAMP_AUTH_TOKENS": f"{TOKEN_A},{weak},sha256:abcd,with space in it!"})
    message = str(caught.value)
    assert "STAMP_AUTH_TOKENS item 2" in message and "at least 16" in message
    assert "STAMP_AUTH_TOKENS item 3" in message and "64 hexadecimal" in message
    assert "STAMP_AUTH_TOKENS item 4" in message
    assert weak not in message and TOKEN_A not in message and "with space" not in message


def test_masked_configuration_shows_no_token_or_digest() -> None:
    settings = load_settings({"STAMP_AUTH_TOKENS": f"{TOKEN_A},{TOKEN_B}"})
    shown = orjson.dumps(settings.masked(), default=str).decode()
    assert TOKEN_A not in shown and TOKEN_B not in shown
    assert token_digest(TOKEN_A).hex() not in shown
    assert settings.masked()["auth_tokens"] == "2 configured (masked)"


def test_jwt_configuration_is_read_from_a_jwks_file_and_a_pem(jwt_keys: JwtKeys) -> None:
    policy = load_settings(jwt_keys.env()).auth_jwt
    assert policy is not None
    assert policy.issuer == ISSUER and policy.audience == (AUDIENCE,)
    described = {k.kind: k for k in policy.keys}
    assert described["RSA-2048"].kid == "rsa-1" and described["RSA-2048"].algorithms == ("RS256",)
    assert described["Ed25519"].algorithms == ("EdDSA",)
    assert policy.algorithms == {"RS256", "EdDSA"}


def _write(tmp_path: Path, name: str, content: str | bytes) -> str:
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return str(path)


def _jwt_env(**overrides: str) -> dict[str, str]:
    env = {"STAMP_AUTH_JWT_ISSUER": ISSUER, "STAMP_AUTH_JWT_AUDIENCE": AUDIENCE}
    env.update(overrides)
    return {k: v for k, v in env.items() if v}


def _problems(env: dict[str, str]) -> str:
    with pytest.raises(ConfigError) as caught:
        load_settings(env)
    return str(caught.value)


def test_unusable_jwt_configuration_stops_the_start(tmp_path: Path, jwt_keys: JwtKeys) -> None:
    pem = str(jwt_keys.pem_file)
    rsa_jwk = RSAAlgorithm.to_jwk(jwt_keys.rsa.public_key(), as_dict=True)
    private_jwk = RSAAlgorithm.to_jwk(jwt_keys.rsa, as_dict=True)
    missing = str(tmp_path / "nope.json")
    cases = {
        "cannot read it": _jwt_env(STAMP_AUTH_JWT_JWKS_FILE=missing),
        "not a JSON document": _jwt_env(STAMP_AUTH_JWT_JWKS_FILE=_write(tmp_path, "a.json", "{")),
        "private or symmetric": _jwt_env(
            STAMP_AUTH_JWT_JWKS_FILE=_write(tmp_path, "b.json", json.dumps({"keys": [private_jwk]}))
        ),
        "private or symmetric key material": _jwt_env(
            STAMP_AUTH_JWT_JWKS_FILE=_write(
                tmp_path, "c.json", json.dumps({"keys": [{"kty": "oct", "k": "c2VjcmV0"}]})
            )
        ),
        "HMAC algorithms are not accepted": _jwt_env(
            STAMP_AUTH_JWT_PUBLIC_KEY=pem, STAMP_AUTH_JWT_ALGORITHMS="HS256"
        ),
        "'none' algorithm": _jwt_env(STAMP_AUTH_JWT_PUBLIC_KEY=pem, STAMP_AUTH_JWT_ALGORITHMS="RS256,none"),
        "verifies none of the allowed algorithms": _jwt_env(
            STAMP_AUTH_JWT_PUBLIC_KEY=pem, STAMP_AUTH_JWT_ALGORITHMS="RS256"
        ),
        "holds no signing key": _jwt_env(
            STAMP_AUTH_JWT_JWKS_FILE=_write(
                tmp_path, "d.json", json.dumps({"keys": [{**rsa_jwk, "alg": "RS256"}]})
            ),
            STAMP_AUTH_JWT_ALGORITHMS="EdDSA",
        ),
        "too short": _jwt_env(
            STAMP_AUTH_JWT_PUBLIC_KEY=_write(
                tmp_path, "weak.pem", _pem(rsa.generate_private_key(public_exponent=65537, key_size=1024))
            )
        ),
        "holds a private key": _jwt_env(
            STAMP_AUTH_JWT_PUBLIC_KEY=_write(
                tmp_path,
                "private.pem",
                jwt_keys.ed.private_bytes(
                    serialization.Encoding.PEM,
                    serialization.PrivateFormat.PKCS8,
                    serialization.NoEncryption(),
                ),
            )
        ),
        "STAMP_AUTH_JWT_ISSUER: required": _jwt_env(STAMP_AUTH_JWT_PUBLIC_KEY=pem, STAMP_AUTH_JWT_ISSUER=""),
        "STAMP_AUTH_JWT_AUDIENCE: required": _jwt_env(
            STAMP_AUTH_JWT_PUBLIC_KEY=pem, STAMP_AUTH_JWT_AUDIENCE=""
        ),
        "needs its keys": _jwt_env(),
        "STAMP_AUTH_JWT_LEEWAY_SECONDS": _jwt_env(
            STAMP_AUTH_JWT_PUBLIC_KEY=pem, STAMP_AUTH_JWT_LEEWAY_SECONDS="3600"
        ),
    }
    for expected, env in cases.items():
        assert expected in _problems(env), expected


def test_an_ec_key_from_a_jwks_gets_only_its_curve_algorithm(tmp_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    jwk = ECAlgorithm.to_jwk(key.public_key(), as_dict=True)
    enc_key = {**RSAAlgorithm.to_jwk(_other_rsa().public_key(), as_dict=True), "use": "enc"}
    path = _write(tmp_path, "ec.json", json.dumps({"keys": [enc_key, {**jwk, "kid": "ec"}]}))
    env = _jwt_env(STAMP_AUTH_JWT_JWKS_FILE=path, STAMP_AUTH_JWT_ALGORITHMS="RS256,ES256,ES384")
    policy = load_settings(env).auth_jwt
    assert policy is not None
    [only] = policy.keys  # the encryption key is left out
    assert only.kid == "ec" and only.algorithms == ("ES256",)
